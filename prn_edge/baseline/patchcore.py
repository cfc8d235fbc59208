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
* Coreset (:mod:`prn_edge.baseline.coreset`): a seeded random subsample by default
  (:func:`~prn_edge.baseline.coreset.random_coreset`), or greedy
  k-center (the paper's choice; :func:`~prn_edge.baseline.coreset.greedy_coreset`, exact, with a Voronoi-cell pruning
  that only reads the points a new center can capture). Why random: on MVTec bottle at
  10% it scores the same as greedy (image / pixel AUROC, PRO, AP 100 / 98.5 / 94.5 / 76.4
  against 100 / 98.4 / 94.3 / 75.6), in 0 s instead of 24-36 s; on magnetic tile the
  pruning cannot help (concentrated distances) and greedy costs O(N * M), about 8 minutes
  on 2 cores (see :func:`~prn_edge.baseline.coreset.greedy_coreset`).
* Scoring: nearest-neighbour distance in GEMM form (:func:`nearest_neighbor_distance`, the
  search of :mod:`prn_edge.model.nearest` that PRN's prototypes use too);
  patch map upsampled bilinearly to the image size and smoothed by a Gaussian (sigma 4);
  image score = max of the (unsmoothed) patch map. The paper's neighbourhood reweighting
  of the image score is not used.

Layout (as anomalib's ``patchcore/torch_model.py``): :class:`PatchCoreModel` is a pure
``nn.Module`` (backbone + embedding + memory bank buffer + scoring) that exports as one
graph for a fixed input size (checked: ``torch.onnx.export``, opset 17, matches ONNX
Runtime to 3e-5 on maps of range 50); :class:`PatchCorePredictor` is the fitting/inference
wrapper: an :class:`~prn_edge.contract.engine.Engine` (uint8 RGB NHWC in, maps and scores
out, checked by the contract), so :mod:`prn_edge.eval` scores it like every PRN backend.
"""
from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from prn_edge.baseline.coreset import (
    CORESET_METHODS,
    greedy_coreset,
    random_coreset,
    random_projection,
)
from prn_edge.contract.engine import Engine, check_frames
from prn_edge.errors import PRNError
from prn_edge.model.backbones import Backbone, build_backbone
from prn_edge.model.deployable import frames_to_tensor
from prn_edge.model.nearest import nearest_neighbours
from prn_edge.model.smoothing import gaussian_blur, gaussian_kernel1d

__all__ = [
    "PatchCoreConfig",
    "PatchCoreModel",
    "PatchCorePredictor",
    "nearest_neighbor_distance",
]

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

    :func:`prn_edge.model.nearest.nearest_neighbours` with the block size given in
    distances: queries are processed in blocks of at most ``block_elements`` query x bank
    distances, so that memory stays bounded for large banks.

    Args:
        queries: (N, D) float features.
        bank: (M, D) memory bank, M >= 1.
        bank_sqnorm: (M,) precomputed ``||b||^2`` (computed if None).
        block_elements: max queries x bank distances held at once.

    Returns:
        ``(distance, index)``: (N,) float distances and (N,) int64 indices of the nearest
        bank entries (ties: the lowest index).

    Raises:
        PRNError: mismatched feature dimensions or an empty bank.
    """
    rows = max(1, int(block_elements) // max(1, bank.shape[0]))
    return nearest_neighbours(queries, bank, bank_sqnorm, chunk=rows)


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
        kernel = gaussian_kernel1d(config.smoothing_sigma) if config.smoothing_sigma > 0 else torch.ones(1)
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
# The predictor (fitting + the engine contract)
# --------------------------------------------------------------------------------------
def _batches(images: Iterable[np.ndarray] | np.ndarray) -> Iterator[np.ndarray]:
    """An (B, S, S, 3) array is one batch; any other iterable yields batches (or images)."""
    if isinstance(images, np.ndarray) and images.ndim == 4:
        yield images
        return
    yield from images


class PatchCorePredictor(Engine):
    """PatchCore as an :class:`~prn_edge.contract.engine.Engine` (the contract of :mod:`prn_edge.eval`).

    ``predict`` takes uint8 RGB (B, S, S, 3) with S = ``image_size`` and returns float32
    maps (B, S, S) and scores (B,) (checked by the engine contract). Fit first
    (:meth:`fit` or :meth:`fit_category`).

    Args:
        config: settings (None: :class:`PatchCoreConfig` defaults).
        backbone: a built frozen encoder matching ``config.backbone`` (None: built with
            its default pretrained weights; pass one to share it between predictors).
    """

    def __init__(self, config: PatchCoreConfig | None = None, backbone: Backbone | None = None) -> None:
        self.config = PatchCoreConfig() if config is None else config
        self.model = PatchCoreModel(self.config, backbone)
        self.name = "patchcore"
        self.backend = "patchcore"
        self.precision = "fp32"
        self.image_size = self.config.image_size
        self.threshold = None  # distances in feature space: no calibrated decision
        self.metadata = {}
        self.path = None  # an in-memory model
        self.batch_size = 16  # images per forward pass in predict()
        self.fit_stats: dict = {}

    def _frames(self, images: np.ndarray) -> Tensor:
        """uint8 (B, S, S, 3) (or one (S, S, 3) image) -> float (B, 3, S, S) in [0, 1], checked."""
        images = np.asarray(images)
        if images.ndim == 3:
            images = images[None]
        return frames_to_tensor(check_frames(images, self.image_size), self.model.memory_bank.device)

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
            x = self._frames(batch)  # (B, 3, S, S)
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
    def _predict(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Anomaly maps and image scores of checked frames (:meth:`predict` checks them).

        Returns:
            ``(maps, scores)``: (B, S, S) and (B,); higher = more anomalous (distances in
            feature space, not probabilities).

        Raises:
            PRNError: not fitted.
        """
        x = frames_to_tensor(images, self.model.memory_bank.device)  # (B, 3, S, S)
        maps, scores = [], []
        for start in range(0, x.shape[0], self.batch_size):
            m, s = self.model(x[start:start + self.batch_size])
            maps.append(m[:, 0])
            scores.append(s)
        return torch.cat(maps).cpu().numpy(), torch.cat(scores).cpu().numpy()

    def _describe(self) -> dict:
        return {"config": self.config.to_dict(), "fit": dict(self.fit_stats)}
