"""PatchCore (Roth et al., "Towards Total Recall in Industrial Anomaly Detection", CVPR 2022).

An unsupervised baseline over the *same* frozen backbone PRN uses, so that PRN's gain is
measured side by side. No training: a memory bank of locally aggregated patch features of
the normal training images, subsampled by a coreset; a test patch's anomaly score is its
distance to the nearest bank entry.

Adaptation to PRN Edge (defaults; see :class:`PatchCoreConfig`):

* Features: backbone taps 1 and 2 (strides 8 and 16; EfficientNet-Lite0: 40 + 112 = 152
  channels), each averaged over 3x3 neighbourhoods (stride 1, padding 1), the coarser tap
  upsampled bilinearly to the finer grid, concatenated: one 152-d feature per stride-8
  patch (32 x 32 patches at 256 x 256).
* Memory bank: the full features of every training patch, subsampled to 10% by a coreset.
  The random projection (Johnson-Lindenstrauss, seeded Gaussian, 152 -> 128 dims) is used
  *only to select* a greedy coreset, as in the paper; the bank and the scoring keep the
  full 152-d features (they are already small: reducing them would save 16% of the bank
  for distorted distances).
* Coreset: a seeded random subsample by default (:func:`random_coreset`), or greedy
  k-center (the paper's choice; :func:`greedy_coreset`, exact, with a Voronoi-cell pruning
  that only reads the points a new center can capture). Why random: on MVTec bottle at
  10% it scores the same as greedy (image / pixel AUROC, PRO, AP 100 / 98.5 / 94.5 / 76.4
  against 100 / 98.4 / 94.3 / 75.6), in 0 s instead of 24-36 s; on magnetic tile the
  pruning cannot help (concentrated distances) and greedy costs O(N * M), about 8 minutes
  on 2 cores (see :func:`greedy_coreset`).
* Scoring: nearest-neighbour distance in GEMM form (:func:`nearest_neighbor_distance`);
  patch map upsampled bilinearly to the image size and smoothed by a Gaussian (sigma 4);
  image score = max of the (unsmoothed) patch map. The paper's neighbourhood reweighting
  of the image score is not used.

Layout (as anomalib's ``patchcore/torch_model.py``): :class:`PatchCoreModel` is a pure
``nn.Module`` (backbone + embedding + memory bank buffer + scoring) that exports as one
graph for a fixed input size (checked: ``torch.onnx.export``, opset 17, matches ONNX
Runtime to 3e-5 on maps of range 50); :class:`PatchCorePredictor` is the fitting/inference wrapper that implements the
``Predictor`` contract of :mod:`prn_edge.eval` (uint8 RGB NHWC in, maps and scores out).
"""
from __future__ import annotations

import contextlib
import math
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from prn_edge.errors import PRNError
from prn_edge.model.backbones import Backbone, build_backbone

__all__ = [
    "CORESET_METHODS",
    "PatchCoreConfig",
    "PatchCoreModel",
    "PatchCorePredictor",
    "gaussian_blur",
    "greedy_coreset",
    "greedy_coreset_reference",
    "nearest_neighbor_distance",
    "random_coreset",
    "random_projection",
]


CORESET_METHODS = ("greedy", "random")

# Elements of one (queries x bank) distance block: 2^24 floats = 64 MiB in float32.
_DEFAULT_BLOCK_ELEMENTS = 1 << 24


# --------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------
@dataclass
class PatchCoreConfig:
    """PatchCore settings.

    Attributes:
        backbone: one of :data:`prn_edge.model.backbones.BACKBONES`; PRN's offline default.
        layers: indices of the backbone taps to use (0..3 = strides 4, 8, 16, 32); the
            patch grid is the finest of them.
        projection_dim: dimension of the seeded Gaussian random projection used to select
            the greedy coreset (None: select on the full features). The bank keeps the
            full features either way. Ignored by ``coreset="random"``.
        coreset_fraction: fraction of the training patches kept in the memory bank, in
            (0, 1]; 1.0 keeps every patch (no coreset).
        coreset: ``"random"`` (seeded uniform subsample, the default: as accurate as
            greedy on bottle at 10% and free) or ``"greedy"`` (k-center, the paper's
            choice; 24-36 s on bottle, ~8 min on magnetic tile on 2 cores).
        seed: seeds the projection, the greedy start point and the random subsample.
        image_size: input side in pixels (images are S x S).
        smoothing_sigma: Gaussian sigma (pixels, at ``image_size``) applied to the
            upsampled anomaly map; 0 disables smoothing.
    """

    backbone: str = "efficientnet_lite0"
    layers: tuple[int, ...] = (1, 2)
    projection_dim: int | None = 128
    coreset_fraction: float = 0.1
    coreset: str = "random"
    seed: int = 0
    image_size: int = 256
    smoothing_sigma: float = 4.0

    def __post_init__(self) -> None:
        self.layers = tuple(int(i) for i in self.layers)
        if not self.layers or any(i not in (0, 1, 2, 3) for i in self.layers):
            raise PRNError(f"PatchCore layers must be tap indices in 0..3, got {self.layers}")
        if len(set(self.layers)) != len(self.layers):
            raise PRNError(f"PatchCore layers must be distinct, got {self.layers}")
        if self.projection_dim is not None and self.projection_dim < 1:
            raise PRNError(f"projection_dim must be >= 1 or None, got {self.projection_dim}")
        if not 0.0 < self.coreset_fraction <= 1.0:
            raise PRNError(f"coreset_fraction must be in (0, 1], got {self.coreset_fraction}")
        if self.coreset not in CORESET_METHODS:
            raise PRNError(f"unknown coreset {self.coreset!r}: choose {' or '.join(CORESET_METHODS)}")
        if self.image_size < 32 or self.image_size % 32:
            raise PRNError(f"image_size must be a multiple of 32 (>= 32), got {self.image_size}")
        if self.smoothing_sigma < 0:
            raise PRNError(f"smoothing_sigma must be >= 0, got {self.smoothing_sigma}")

    def to_dict(self) -> dict:
        """Plain JSON-serialisable dict."""
        d = asdict(self)
        d["layers"] = list(self.layers)
        return d


# --------------------------------------------------------------------------------------
# Distances
# --------------------------------------------------------------------------------------
def nearest_neighbor_distance(
    queries: Tensor,
    bank: Tensor,
    bank_sqnorm: Tensor | None = None,
    block_elements: int = _DEFAULT_BLOCK_ELEMENTS,
) -> tuple[Tensor, Tensor]:
    """Euclidean distance from each query to its nearest bank entry, in GEMM form.

    ``||a - b||^2 = ||a||^2 - 2 <a, b> + ||b||^2``: one (n, D) x (D, M) matrix product per
    block instead of ``torch.cdist``. Why: the product is a plain ``Gemm``/``MatMul`` that
    every exporter and engine (ONNX Runtime, TensorRT) runs at full speed, while ``cdist``
    is an ATen op that exporters must decompose (anomalib's PatchCore makes the same choice
    for its exported graph). Cancellation
    can make the squared form slightly negative for (near-)identical vectors, so it is
    clamped at 0 before the square root; the square root is taken after the minimum (one
    per query, not per pair). Queries are processed in blocks of at most
    ``block_elements`` distances so that memory stays bounded for large banks.

    Args:
        queries: (N, D) float features.
        bank: (M, D) memory bank, M >= 1.
        bank_sqnorm: (M,) precomputed ``||b||^2`` (computed if None).
        block_elements: max queries x bank distances held at once.

    Returns:
        ``(distance, index)``: (N,) float distances and (N,) int64 indices of the nearest
        bank entries.

    Raises:
        PRNError: mismatched feature dimensions or an empty bank.
    """
    if queries.dim() != 2 or bank.dim() != 2 or queries.shape[1] != bank.shape[1]:
        raise PRNError(
            f"nearest_neighbor_distance needs (N, D) queries and an (M, D) bank, got "
            f"{tuple(queries.shape)} and {tuple(bank.shape)}"
        )
    if bank.shape[0] == 0:
        raise PRNError("the memory bank is empty: fit the model first")
    if bank_sqnorm is None:
        bank_sqnorm = bank.pow(2).sum(dim=1)  # (M,)
    rows = max(1, int(block_elements) // bank.shape[0])
    dists, indices = [], []
    for start in range(0, queries.shape[0], rows):
        q = queries[start:start + rows]  # (n, D)
        # ||b||^2 - 2 <a, b> for the whole block in one addmm; ||a||^2 is added after the
        # min (it does not change the argmin).
        partial = torch.addmm(bank_sqnorm.unsqueeze(0), q, bank.T, alpha=-2.0)  # (n, M)
        best, idx = partial.min(dim=1)  # (n,)
        sq = (best + q.pow(2).sum(dim=1)).clamp_min_(0.0)
        dists.append(sq.sqrt_())
        indices.append(idx)
    if not dists:  # no query
        return queries.new_zeros(0), torch.zeros(0, dtype=torch.long, device=queries.device)
    return torch.cat(dists), torch.cat(indices)


# --------------------------------------------------------------------------------------
# Coreset
# --------------------------------------------------------------------------------------
def random_projection(dim_in: int, dim_out: int, seed: int = 0) -> Tensor:
    """A seeded Gaussian Johnson-Lindenstrauss projection matrix.

    Entries are N(0, 1/dim_out), so squared norms and distances are preserved in
    expectation (``E ||x P||^2 = ||x||^2``).

    Args:
        dim_in: feature dimension D.
        dim_out: projected dimension k.
        seed: the matrix is a pure function of (dim_in, dim_out, seed).

    Returns:
        (D, k) float32 matrix; apply as ``features @ P``.
    """
    generator = torch.Generator().manual_seed(int(seed))
    return torch.randn(dim_in, dim_out, generator=generator) / math.sqrt(dim_out)


def random_coreset(n_points: int, n_select: int, seed: int = 0) -> Tensor:
    """A seeded uniform subsample of ``n_select`` distinct indices out of ``n_points``.

    Returns:
        (n_select,) int64 indices, sorted (the bank keeps the training order).
    """
    _check_selection(n_points, n_select)
    generator = torch.Generator().manual_seed(int(seed))
    return torch.randperm(n_points, generator=generator)[:n_select].sort().values


def _check_selection(n_points: int, n_select: int) -> None:
    if not 1 <= n_select <= n_points:
        raise PRNError(f"a coreset needs 1 <= size <= number of points, got {n_select} of {n_points}")


def _as_points(points: Tensor | np.ndarray) -> np.ndarray:
    """(N, d) features as a C-contiguous float32 numpy array (no copy when already one)."""
    if isinstance(points, Tensor):
        points = points.detach().cpu().numpy()
    points = np.ascontiguousarray(points, dtype=np.float32)
    if points.ndim != 2:
        raise PRNError(f"a coreset needs (N, d) points, got shape {points.shape}")
    return points


def _sq_dist_to(points: np.ndarray, points_sq: np.ndarray, center: np.ndarray, center_sq) -> np.ndarray:
    """(n,) squared distances of (n, d) points to one (d,) center, GEMM form, clamped >= 0.

    The single helper of both coreset paths, so that the fast path and the reference
    round identically (a matrix-vector product computes each row's dot product the same
    way whatever the number of rows).
    """
    dist = points @ center  # (n,)
    dist *= -2.0
    dist += points_sq
    dist += center_sq
    return np.maximum(dist, 0.0, out=dist)


def _start_index(n_points: int, seed: int) -> int:
    generator = torch.Generator().manual_seed(int(seed))
    return int(torch.randint(n_points, (1,), generator=generator))


def _fill_duplicates(selected: np.ndarray, taken: np.ndarray, count: int, seed: int) -> None:
    """Fill ``selected[count:]`` with distinct unselected points, seeded.

    Greedy k-center stops making progress once every point is at distance 0 from a center
    (more points asked for than distinct vectors); the rest are then arbitrary, but they
    must still be distinct indices.
    """
    rest = np.flatnonzero(~taken)
    rest = rest[np.random.default_rng(int(seed) + 1).permutation(rest.size)]
    selected[count:] = rest[: selected.size - count]


def _single_threaded_blas() -> contextlib.AbstractContextManager:
    """Limit numpy's BLAS to one thread for the greedy loops (when threadpoolctl is there).

    The loops are memory-bound matrix-vector products; on the shared 2-core machines a
    second BLAS thread mostly waits at barriers (3000 greedy steps on bottle: 10 s with one
    thread, 28-35 s with two). threadpoolctl comes with scikit-learn (the ``train`` extra).
    """
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return contextlib.nullcontext()
    return threadpool_limits(1, user_api="blas")


# Why numpy in the two greedy loops: each iteration is a dozen small vector operations
# (gathers, comparisons, an argmax over N), thousands of times. On the shared 2-core
# machines torch's intra-op parallel regions stall on these (~8 ms for a comparison over
# 214k floats with 2 threads, 0.2 ms with 1, against 0.01 ms for numpy), while the one
# heavy operation, a matrix-vector product, runs in BLAS either way.
def greedy_coreset_reference(points: Tensor | np.ndarray, n_select: int, seed: int = 0) -> Tensor:
    """Greedy k-center selection, the plain O(N * M) loop (reference for the fast path).

    Start from a seeded random point; repeatedly add the point farthest from the current
    selection. Every iteration reads all N points once (a matrix-vector product): measured
    9-12 ms per iteration for 214k x 128 float32 with one BLAS thread on the shared 2-core
    machine (two threads: 16-50 ms), i.e. 200-260 s for a 10% coreset of MVTec bottle.
    Use :func:`greedy_coreset`, which selects the same points.

    Args:
        points: (N, d) float features (already projected, if wanted).
        n_select: M, the number of points to select.
        seed: chooses the start point.

    Returns:
        (M,) int64 indices in selection order.
    """
    points = _as_points(points)
    n = points.shape[0]
    _check_selection(n, n_select)
    sq = np.einsum("ij,ij->i", points, points)  # (N,)
    min_dist = np.full(n, np.inf, dtype=np.float32)  # (N,) squared, to the selection
    taken = np.zeros(n, dtype=bool)
    selected = np.empty(n_select, dtype=np.int64)
    with _single_threaded_blas():
        _greedy_reference_loop(points, sq, min_dist, taken, selected, _start_index(n, seed), seed)
    return torch.from_numpy(selected)


def _greedy_reference_loop(points, sq, min_dist, taken, selected, idx: int, seed: int) -> None:
    for t in range(selected.size):
        if taken[idx]:  # everything is covered at distance 0
            _fill_duplicates(selected, taken, t, seed)
            break
        selected[t] = idx
        taken[idx] = True
        np.minimum(min_dist, _sq_dist_to(points, sq, points[idx], sq[idx]), out=min_dist)
        min_dist[idx] = 0.0
        idx = int(min_dist.argmax())


def greedy_coreset(points: Tensor | np.ndarray, n_select: int, seed: int = 0, return_stats: bool = False):
    """Greedy k-center selection with exact Voronoi-cell pruning.

    The same selection as :func:`greedy_coreset_reference` (the point farthest from the
    current selection, one at a time), but each iteration only reads the points the new
    center can capture. Every point belongs to the cell of its nearest selected center
    ``mu_g``; ``rho_g`` is the cell's radius (max distance of a member to ``mu_g``). A
    point ``x`` of cell ``g`` moves to the new center ``c`` only if
    ``||x - c|| < ||x - mu_g||``, which by the triangle inequality needs
    ``||c - mu_g|| < 2 ||x - mu_g|| <= 2 rho_g``. So each iteration computes the distance
    of ``c`` to the selected centers (M x d, small), and reads the feature rows of the
    cells with ``||c - mu_g||^2 < 4 rho_g^2`` only. Cells shrink as the selection grows,
    so late iterations read a few percent of the N rows (the O(N) work left is on
    per-point scalars: cell lookup and the argmax). The test has a small relative slack,
    so rounding can only make it read more points, never skip one that moves. When more
    than a third of the points are in reach, the step updates all of them in one
    contiguous pass instead, so the pruning never costs much more than the plain loop.

    How much it saves depends on the data (2 shared CPU cores, 128-d selection space, 10%):
    MVTec bottle, 214k patches: 1.9% of the rows read per step, 24-36 s for the whole
    selection against 200-260 s for the plain loop; magnetic tile, 307k patches: distances
    are concentrated (uniform texture), every step is in the dense case and the cost is
    the plain loop's, O(N * M): ~16 ms per step, about 8 minutes for 30.7k steps.

    Args:
        points: (N, d) float features (already projected, if wanted).
        n_select: M, the number of points to select.
        seed: chooses the start point.
        return_stats: also return a dict with the covering radius after selection, the
            mean fraction of feature rows read per iteration and the seconds spent.

    Returns:
        (M,) int64 indices in selection order (and the stats dict if asked).
    """
    start_time = time.perf_counter()
    points = _as_points(points)
    n, d = points.shape
    _check_selection(n, n_select)
    sq = np.einsum("ij,ij->i", points, points)  # (N,)
    min_dist = np.full(n, np.inf, dtype=np.float32)  # (N,) squared, to own center
    owner = np.zeros(n, dtype=np.int64)  # (N,) selection step of the nearest center
    taken = np.zeros(n, dtype=bool)
    centers = np.empty((n_select, d), dtype=np.float32)  # (M, d) selected points, in order
    centers_sq = np.empty(n_select, dtype=np.float32)  # (M,)
    radius_sq = np.zeros(n_select, dtype=np.float32)  # (M,) squared cell radii rho_g^2
    selected = np.empty(n_select, dtype=np.int64)
    slack = np.float32(4.0 * (1.0 + 1e-4))
    dense_above = n // 3  # a gather reads and writes each row, then the product reads it again
    rows_read = 0

    idx = _start_index(n, seed)
    with _single_threaded_blas():
        for t in range(n_select):
            if taken[idx]:  # everything is covered at distance 0
                _fill_duplicates(selected, taken, t, seed)
                break
            selected[t] = idx
            taken[idx] = True
            c, c_sq = points[idx], sq[idx]
            centers[t], centers_sq[t] = c, c_sq
            ids = None  # None: update every point
            if t > 0:
                # Cells the new center can take points from: ||c - mu_g||^2 < 4 rho_g^2.
                to_centers = _sq_dist_to(centers[:t], centers_sq[:t], c, c_sq)  # (t,)
                active = to_centers < slack * radius_sq[:t]  # (t,) bool
                ids = np.flatnonzero(active[owner])  # (n_a,) points of those cells
                if ids.size > dense_above:
                    # Gathering most rows costs more than one contiguous pass over all of
                    # them (features with concentrated distances, e.g. uniform textures).
                    ids = None
            if ids is None:  # the reference's step, plus the cell bookkeeping
                dist = _sq_dist_to(points, sq, c, c_sq)  # (N,)
                owner[dist < min_dist] = t
                np.minimum(min_dist, dist, out=min_dist)
                min_dist[idx] = 0.0
                owner[idx] = t
                radius_sq[: t + 1] = 0.0
                np.maximum.at(radius_sq, owner, min_dist)  # every cell's radius, exact
                rows_read += n
            else:
                dist = _sq_dist_to(points.take(ids, axis=0), sq[ids], c, c_sq)  # (n_a,)
                closer = dist < min_dist[ids]
                moved = ids[closer]
                min_dist[moved] = dist[closer]
                owner[moved] = t
                min_dist[idx] = 0.0
                owner[idx] = t
                # New radii of the cells that changed (the active ones and cell t): the max
                # distance of their members, all of which are in ids (a cell keeps its own
                # center, so none is left empty; idx itself is in ids unless its distance is 0).
                radius_sq[:t][active] = 0.0
                radius_sq[t] = 0.0
                np.maximum.at(radius_sq, owner[ids], min_dist[ids])
                rows_read += ids.size
            idx = int(min_dist.argmax())

    result = torch.from_numpy(selected)
    if not return_stats:
        return result
    stats = {
        "covering_radius": float(np.sqrt(min_dist.max())),
        "mean_fraction_read": rows_read / (n * n_select),
        "seconds": time.perf_counter() - start_time,
    }
    return result, stats


# --------------------------------------------------------------------------------------
# Smoothing
# --------------------------------------------------------------------------------------
def _gaussian_kernel1d(sigma: float) -> Tensor:
    """Normalised 1-D Gaussian, half-width 4 sigma (as anomalib/scipy: 33 taps for sigma 4)."""
    radius = int(4.0 * sigma + 0.5)
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    return k / k.sum()


def gaussian_blur(maps: Tensor, kernel1d: Tensor) -> Tensor:
    """Separable Gaussian blur of (B, 1, H, W) maps with reflect padding (two 1-D convs)."""
    r = kernel1d.numel() // 2
    x = F.pad(maps, (r, r, 0, 0), mode="reflect")
    x = F.conv2d(x, kernel1d.view(1, 1, 1, -1))  # (B, 1, H, W) along width
    x = F.pad(x, (0, 0, r, r), mode="reflect")
    return F.conv2d(x, kernel1d.view(1, 1, -1, 1))  # (B, 1, H, W) along height


# --------------------------------------------------------------------------------------
# The model (pure nn.Module)
# --------------------------------------------------------------------------------------
class PatchCoreModel(nn.Module):
    """Backbone + patch embedding + memory bank + nearest-neighbour scoring.

    ``forward`` is the whole inference graph (exportable for a fixed input size): RGB in
    [0, 1] -> (anomaly map, image score). Fitting (the coreset) lives outside, in
    :class:`PatchCorePredictor`; the bank is a buffer, so it is saved in the state dict.

    Args:
        config: the settings (layers, image size, smoothing).
        backbone: a built frozen encoder (else built from ``config.backbone`` with its
            default pretrained weights).
    """

    def __init__(self, config: PatchCoreConfig | None = None, backbone: Backbone | None = None) -> None:
        super().__init__()
        self.config = config = PatchCoreConfig() if config is None else config
        if backbone is None:
            backbone = build_backbone(config.backbone)
        elif backbone.name != config.backbone:
            raise PRNError(
                f"backbone {backbone.name!r} does not match PatchCoreConfig.backbone "
                f"{config.backbone!r}: pass a matching config"
            )
        self.backbone = backbone
        self.feature_dim = sum(backbone.channels[i] for i in config.layers)
        self.grid_stride = min(backbone.strides[i] for i in config.layers)
        self.pool = nn.AvgPool2d(3, stride=1, padding=1)  # local aggregation, as PatchCore
        self.register_buffer("memory_bank", torch.zeros(0, self.feature_dim))  # (M, D)
        self.register_buffer("memory_bank_sqnorm", torch.zeros(0))  # (M,)
        kernel = _gaussian_kernel1d(config.smoothing_sigma) if config.smoothing_sigma > 0 else torch.ones(1)
        self.register_buffer("blur_kernel", kernel, persistent=False)

    def train(self, mode: bool = True) -> PatchCoreModel:
        """Stay in eval mode: nothing here is trained (the backbone is frozen)."""
        return super().train(False)

    @property
    def is_fitted(self) -> bool:
        return self.memory_bank.shape[0] > 0

    def set_memory_bank(self, bank: Tensor) -> None:
        """Install the (M, D) bank and its squared norms."""
        if bank.dim() != 2 or bank.shape[1] != self.feature_dim or bank.shape[0] == 0:
            raise PRNError(f"memory bank must be (M >= 1, {self.feature_dim}), got {tuple(bank.shape)}")
        self.memory_bank = bank.detach().float().contiguous()
        self.memory_bank_sqnorm = self.memory_bank.pow(2).sum(dim=1)

    def embed(self, x: Tensor) -> Tensor:
        """Patch features.

        Args:
            x: (B, 3, S, S) RGB in [0, 1].

        Returns:
            (B, D, h, w) features on the finest selected tap's grid (h = S / stride).
        """
        taps = self.backbone(x)
        feats = [self.pool(taps[i]) for i in self.config.layers]  # (B, C_i, h_i, w_i)
        h, w = max(f.shape[-2] for f in feats), max(f.shape[-1] for f in feats)
        feats = [
            f if f.shape[-2:] == (h, w) else F.interpolate(f, size=(h, w), mode="bilinear", align_corners=False)
            for f in feats
        ]
        return torch.cat(feats, dim=1)  # (B, D, h, w)

    @staticmethod
    def flatten(embedding: Tensor) -> Tensor:
        """(B, D, h, w) -> (B * h * w, D), patches in row-major order per image."""
        return embedding.permute(0, 2, 3, 1).reshape(-1, embedding.shape[1])

    def patch_scores(self, embedding: Tensor) -> Tensor:
        """(B, D, h, w) features -> (B, h, w) distance to the nearest bank entry."""
        b, _, h, w = embedding.shape
        dist, _ = nearest_neighbor_distance(self.flatten(embedding), self.memory_bank, self.memory_bank_sqnorm)
        return dist.view(b, h, w)

    def anomaly_map(self, patch_scores: Tensor, size: int) -> Tensor:
        """(B, h, w) patch scores -> (B, 1, size, size): bilinear upsampling, then Gaussian."""
        maps = F.interpolate(patch_scores.unsqueeze(1), size=(size, size), mode="bilinear", align_corners=False)
        if self.config.smoothing_sigma > 0:
            maps = gaussian_blur(maps, self.blur_kernel)
        return maps

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Score images.

        Args:
            x: (B, 3, S, S) RGB in [0, 1].

        Returns:
            ``(maps, scores)``: (B, 1, S, S) anomaly maps and (B,) image scores (max of
            the patch distances, before upsampling and smoothing).
        """
        if not self.is_fitted:
            raise PRNError("PatchCore has an empty memory bank: fit it on normal images first")
        scores = self.patch_scores(self.embed(x))  # (B, h, w)
        return self.anomaly_map(scores, x.shape[-1]), scores.flatten(1).amax(dim=1)


# --------------------------------------------------------------------------------------
# The predictor (fitting + the Predictor contract)
# --------------------------------------------------------------------------------------
def _to_tensor(images: np.ndarray, size: int) -> Tensor:
    """uint8 (B, S, S, 3) RGB -> float (B, 3, S, S) in [0, 1], checking the contract."""
    images = np.asarray(images)
    if images.ndim == 3:
        images = images[None]
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != (size, size, 3):
        raise PRNError(
            f"PatchCore takes uint8 RGB images of shape (B, {size}, {size}, 3), got "
            f"{images.dtype} {images.shape}; resize with prn_edge.runtime.prepare_frame or "
            f"load_sample(sample, size={size})"
        )
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float().div_(255.0)


def _batches(images: Iterable[np.ndarray] | np.ndarray) -> Iterator[np.ndarray]:
    """An (B, S, S, 3) array is one batch; any other iterable yields batches (or images)."""
    if isinstance(images, np.ndarray) and images.ndim == 4:
        yield images
        return
    yield from images


class PatchCorePredictor:
    """PatchCore behind the ``Predictor`` contract of :mod:`prn_edge.eval`.

    ``predict`` takes uint8 RGB (B, S, S, 3) with S = ``image_size`` and returns float32
    maps (B, S, S) and scores (B,). Fit first (:meth:`fit` or :meth:`fit_category`).

    Args:
        config: settings (None: :class:`PatchCoreConfig` defaults).
        backbone: a built frozen encoder matching ``config.backbone`` (None: built with
            its default pretrained weights; pass one to share it between predictors).
    """

    name = "patchcore"

    def __init__(self, config: PatchCoreConfig | None = None, backbone: Backbone | None = None) -> None:
        self.config = PatchCoreConfig() if config is None else config
        self.model = PatchCoreModel(self.config, backbone)
        self.batch_size = 16  # images per forward pass in predict()
        self.fit_stats: dict = {}

    @property
    def image_size(self) -> int:
        return self.config.image_size

    # -- fitting ----------------------------------------------------------------------
    @torch.no_grad()
    def fit(self, images: Iterable[np.ndarray] | np.ndarray, progress: bool = False) -> dict:
        """Build the memory bank from normal images.

        Args:
            images: batches of uint8 RGB (B, S, S, 3) (an iterable of them, or one array).
            progress: print one line per batch to stderr.

        Returns:
            Stats: image/patch counts, feature dimension, bank size, the coreset method and
            its covering radius (greedy, in the selection space), the mean fraction of rows
            the pruned greedy read per step, and seconds spent on features and on the coreset.

        Raises:
            PRNError: no image, or an image that breaks the input contract.
        """
        cfg = self.config
        t0 = time.perf_counter()
        feats, n_images = [], 0
        for batch in _batches(images):
            x = _to_tensor(batch, cfg.image_size)  # (B, 3, S, S)
            feats.append(self.model.flatten(self.model.embed(x)))  # (B * h * w, D)
            n_images += x.shape[0]
            if progress:
                print(f"  patchcore: features of {n_images} images", file=sys.stderr, flush=True)
        if not feats:
            raise PRNError("PatchCore.fit got no image: pass normal training images")
        features = torch.cat(feats)  # (N, D)
        del feats
        t1 = time.perf_counter()

        n = features.shape[0]
        m = max(1, round(cfg.coreset_fraction * n))
        stats: dict = {}
        selection_dim = None  # dimension the greedy selection ran in
        if m == n:
            index = torch.arange(n)
            method = "none"
        elif cfg.coreset == "random":
            index = random_coreset(n, m, cfg.seed)
            method = "random"
        else:
            selection_space = features  # (N, D)
            if cfg.projection_dim is not None and cfg.projection_dim < features.shape[1]:
                # (N, k): distances preserved up to JL distortion; only used to choose points.
                selection_space = features @ random_projection(features.shape[1], cfg.projection_dim, cfg.seed)
            selection_dim = int(selection_space.shape[1])
            if progress:
                print(f"  patchcore: greedy coreset, {m} of {n} patches in "
                      f"{selection_space.shape[1]} dims", file=sys.stderr, flush=True)
            index, stats = greedy_coreset(selection_space, m, cfg.seed, return_stats=True)
            del selection_space
            method = "greedy"
        self.model.set_memory_bank(features[index])
        t2 = time.perf_counter()

        self.fit_stats = {
            "images": n_images,
            "patches": n,
            "feature_dim": int(features.shape[1]),
            "bank_size": int(m),
            "coreset": method,
            "coreset_fraction": cfg.coreset_fraction,
            "selection_dim": selection_dim,
            "covering_radius": stats.get("covering_radius"),  # in the selection space
            "mean_fraction_read": stats.get("mean_fraction_read"),
            "seconds_features": t1 - t0,
            "seconds_coreset": t2 - t1,
            "seconds_total": t2 - t0,
        }
        return self.fit_stats

    @classmethod
    def fit_category(
        cls,
        category,
        config: PatchCoreConfig | None = None,
        batch_size: int = 16,
        progress: bool = True,
        backbone: Backbone | None = None,
    ) -> PatchCorePredictor:
        """Fit on every ``train/good`` image of a scanned category.

        Args:
            category: a :class:`prn_edge.data.mvtec.MVTecCategory`.
            config: settings (None: defaults).
            batch_size: images per forward pass while extracting features.
            progress: print progress to stderr.
            backbone: an already built encoder to reuse.

        Returns:
            The fitted predictor (its ``fit_stats`` hold the fit statistics).
        """
        from prn_edge.data.mvtec import load_sample

        predictor = cls(config, backbone)
        size = predictor.image_size
        samples: Sequence = category.train

        def batches() -> Iterator[np.ndarray]:
            for start in range(0, len(samples), batch_size):
                chunk = samples[start:start + batch_size]
                yield np.stack([load_sample(s, size)[0] for s in chunk])  # (B, S, S, 3)

        stats = predictor.fit(batches(), progress=progress)
        if progress:
            print(f"  patchcore: bank {stats['bank_size']} of {stats['patches']} patches "
                  f"({stats['coreset']}), features {stats['seconds_features']:.1f} s, "
                  f"coreset {stats['seconds_coreset']:.1f} s", file=sys.stderr, flush=True)
        return predictor

    # -- inference --------------------------------------------------------------------
    @torch.no_grad()
    def predict(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Anomaly maps and image scores.

        Args:
            images: uint8 RGB (B, S, S, 3), S = ``image_size``.

        Returns:
            ``(maps, scores)``: float32 (B, S, S) and float32 (B,); higher = more anomalous
            (distances in feature space, not probabilities).

        Raises:
            PRNError: not fitted, or input of the wrong type/shape.
        """
        x = _to_tensor(images, self.image_size)
        maps, scores = [], []
        for start in range(0, x.shape[0], self.batch_size):
            m, s = self.model(x[start:start + self.batch_size])
            maps.append(m[:, 0])
            scores.append(s)
        if not maps:
            s = self.image_size
            return np.zeros((0, s, s), np.float32), np.zeros(0, np.float32)
        return (torch.cat(maps).numpy().astype(np.float32, copy=False),
                torch.cat(scores).numpy().astype(np.float32, copy=False))
