"""Multi-scale prototypes (docs/model.md, "Prototypes" and "Residual"): k-means, nearest prototype, residual.

Two ways to match (``PRNConfig.prototype_match``), one search:

* ``image`` (the paper): each image's feature map at one scale is one point in D = C*H*W
  dimensions. The bank of K prototypes per scale is found by k-means over the normal training
  images; each image takes its nearest prototype over the whole map, so position (h, w) is
  compared with position (h, w) of one normal image. Right for centred, aligned parts.
* ``patch``: each position's C-dim feature vector is one point; the bank holds k-means centres
  of the training images' vectors, and every position takes its own nearest one, wherever it
  came from. A shifted, rotated or textured part finds its normal look elsewhere in the bank.

Both are the same operation on a different view (:func:`match_residual`): ``patch`` lays the
(B, C, H, W) map out as B*H*W "images" of shape (C, 1, 1). The nearest-neighbour search runs in
GEMM form (:mod:`prn_edge.model.nearest`, shared with PatchCore), and the fused ``ProtoResidual``
kernel, the ONNX function and the TensorRT plugin serve both matches unchanged.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from prn_edge.errors import PRNError
from prn_edge.model.nearest import nearest_neighbours, squared_distances


def nearest_prototype(features: Tensor, bank: Tensor, bank_sqnorm: Tensor | None = None) -> Tensor:
    """Index of the nearest prototype for each image, over the whole feature map.

    Args:
        features: (B, C, H, W) feature maps.
        bank: (K, C*H*W) prototypes.
        bank_sqnorm: (K,) their squared norms.

    Returns:
        (B,) int64 indices; ties resolve to the lowest index.
    """
    flat = features.flatten(1)  # (B, D)
    return squared_distances(flat, bank, bank_sqnorm).argmin(dim=1)


def prototype_residual(features: Tensor, bank: Tensor, bank_sqnorm: Tensor | None = None,
                       mode: str = "abs") -> Tensor:
    """Residual of each feature map to its nearest prototype (same shape as ``features``).

    This is the reference semantics of the fused ``ProtoResidual`` kernel and of the ONNX
    function ``prn.ProtoResidual``.
    """
    index = nearest_prototype(features, bank, bank_sqnorm)  # (B,)
    nearest = bank.index_select(0, index).view_as(features)  # (B, C, H, W)
    diff = features - nearest
    if mode == "abs":
        return diff.abs()
    if mode == "square":
        return diff * diff
    raise PRNError(f"unknown residual mode {mode!r}: choose 'abs' or 'square'")


def match_residual(features: Tensor, prototypes: Tensor, sqnorm: Tensor, mode: str, match: str,
                   residual_fn=prototype_residual) -> Tensor:
    """The residual of ``features`` (B, C, H, W) under ``match``, computed by ``residual_fn``.

    ``residual_fn(features, prototypes, sqnorm, mode)`` is :func:`prototype_residual` or a fused
    stand-in with the same semantics; ``patch`` calls it on the (B*H*W, C, 1, 1) view.
    """
    if match == "image":
        return residual_fn(features, prototypes, sqnorm, mode)
    if match != "patch":
        raise PRNError(f"unknown prototype match {match!r}: choose 'image' or 'patch'")
    b, c, h, w = features.shape
    patches = feature_vectors(features)[:, :, None, None]
    return residual_fn(patches, prototypes, sqnorm, mode).reshape(b, h, w, c).permute(0, 3, 1, 2)


def feature_vectors(features: Tensor) -> Tensor:
    """(B, C, H, W) -> (B*H*W, C): the points ``patch`` matching clusters and searches."""
    return features.permute(0, 2, 3, 1).reshape(-1, features.shape[1])


@dataclass
class KMeansResult:
    centers: Tensor      # (K, D)
    assignment: Tensor   # (N,) int64
    inertia: float       # sum of squared distances to the assigned centers
    iterations: int
    converged: bool


def kmeans(points: Tensor, k: int, *, max_iterations: int = 300, seed: int = 0,
           chunk_size: int = 4096) -> KMeansResult:
    """Lloyd's k-means with L2 distance, seeded init and re-seeded empty clusters.

    Initialisation: K distinct points drawn with ``seed``. An empty cluster is re-seeded
    with the point currently farthest from its center (deterministic, and it strictly
    lowers the inertia). Distances are computed in GEMM form, in chunks of points so that
    memory stays bounded for large N.

    Args:
        points: (N, D) data, float.
        k: number of clusters, 1 <= k <= N.
        max_iterations: cap on Lloyd iterations.
        seed: seed for the initial centers.
        chunk_size: points per distance block.

    Returns:
        The centers, final assignment, inertia and iteration count.

    Raises:
        PRNError: k outside [1, N].
    """
    if points.dim() != 2:
        raise PRNError(f"kmeans expects (N, D) points, got shape {tuple(points.shape)}")
    n = points.shape[0]
    if not 1 <= k <= n:
        raise PRNError(f"kmeans needs 1 <= k <= number of points, got k={k}, N={n}")
    points = points.detach()
    generator = torch.Generator().manual_seed(seed)
    # Choose K distinct *values*: duplicated images must not become two identical centers.
    order = torch.randperm(n, generator=generator)
    unique_rows = _first_unique_rows(points, order, k)
    centers = points[unique_rows].clone()
    point_sqnorm = points.pow(2).sum(dim=1)  # (N,)

    assignment = torch.full((n,), -1, dtype=torch.long, device=points.device)
    converged = False
    iteration = 0
    for iteration in range(1, max_iterations + 1):
        new_assignment, dist = _assign(points, point_sqnorm, centers, chunk_size)
        if torch.equal(new_assignment, assignment):
            converged = True
            break
        assignment = new_assignment
        centers = _update_centers(points, assignment, centers, dist)
    _, dist = _assign(points, point_sqnorm, centers, chunk_size)
    return KMeansResult(centers=centers, assignment=assignment, inertia=float(dist.sum()),
                        iterations=iteration, converged=converged)


def _first_unique_rows(points: Tensor, order: Tensor, k: int) -> Tensor:
    chosen: list[int] = []
    for index in order.tolist():
        if all(not torch.equal(points[index], points[c]) for c in chosen):
            chosen.append(index)
            if len(chosen) == k:
                break
    if len(chosen) < k:  # fewer distinct points than k: duplicates are unavoidable
        rest = [i for i in order.tolist() if i not in chosen]
        chosen.extend(rest[: k - len(chosen)])
    return torch.tensor(chosen, dtype=torch.long)


def _assign(points: Tensor, point_sqnorm: Tensor, centers: Tensor, chunk_size: int) -> tuple[Tensor, Tensor]:
    """Nearest center per point and its true squared distance (clamped at 0)."""
    dist, index = nearest_neighbours(points, centers, chunk=chunk_size, query_sqnorm=point_sqnorm,
                                     squared=True)
    return index, dist


def _update_centers(points: Tensor, assignment: Tensor, centers: Tensor, dist: Tensor) -> Tensor:
    k = centers.shape[0]
    sums = torch.zeros_like(centers).index_add_(0, assignment, points)
    counts = torch.bincount(assignment, minlength=k)
    new_centers = sums / counts.clamp_min(1).unsqueeze(1).to(sums.dtype)
    empty = (counts == 0).nonzero().flatten().tolist()
    if empty:
        # Re-seed each empty cluster with one of the currently worst-served points.
        worst = dist.argsort(descending=True)[: len(empty)]
        new_centers[torch.tensor(empty, device=centers.device)] = points[worst]
    return new_centers


class PrototypeBank(nn.Module):
    """The K prototypes of one scale and their squared norms, stored as buffers.

    Buffers (not parameters): they are fixed after clustering, travel in the state dict
    and the checkpoint, and become initialisers of the exported graph. A prototype is a
    whole map (D = C*H*W) with ``match="image"``, one feature vector (D = C) with ``"patch"``.
    """

    def __init__(self, channels: int, height: int, width: int, num_prototypes: int = 0, match: str = "image"):
        super().__init__()
        if match not in ("image", "patch"):
            raise PRNError(f"unknown prototype match {match!r}: choose 'image' or 'patch'")
        self.shape = (channels, height, width)
        self.match = match
        dim = channels * height * width if match == "image" else channels
        self.register_buffer("prototypes", torch.zeros(num_prototypes, dim))  # (K, D)
        self.register_buffer("sqnorm", torch.zeros(num_prototypes))         # (K,)

    @property
    def num_prototypes(self) -> int:
        return self.prototypes.shape[0]

    @property
    def dim(self) -> int:
        return self.prototypes.shape[1]

    def set(self, prototypes: Tensor) -> None:
        """Install a (K, D) bank (or (K, C, H, W)) and recompute its norms."""
        prototypes = prototypes.detach().reshape(prototypes.shape[0], -1).to(
            dtype=torch.float32, device=self.prototypes.device)
        if prototypes.shape[1] != self.dim or prototypes.shape[0] < 1:
            raise PRNError(f"prototype bank must be (K>=1, {self.dim}), got {tuple(prototypes.shape)}")
        self.prototypes = prototypes.contiguous()
        self.sqnorm = prototypes.pow(2).sum(dim=1)

    def forward(self, features: Tensor, mode: str = "abs") -> Tensor:
        if self.num_prototypes == 0:
            raise PRNError("the prototype bank is empty: build prototypes (prn-train) or load a checkpoint")
        return match_residual(features, self.prototypes, self.sqnorm, mode, self.match)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # Accept a bank of any K from a checkpoint: resize the buffers before the copy.
        for name in ("prototypes", "sqnorm"):
            key = prefix + name
            if key in state_dict and state_dict[key].shape != getattr(self, name).shape:
                setattr(self, name, torch.empty_like(state_dict[key]))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
