"""Nearest neighbour in GEMM form: the one search PRN's prototypes, k-means and PatchCore share.

``||a - b||^2 = ||a||^2 - 2 <a, b> + ||b||^2``: one ``(n, D) x (D, M)`` matrix product per
block of queries instead of ``n * M`` difference vectors or ``torch.cdist``. Why: the product
is a plain ``Gemm`` / ``MatMul`` that every exporter and engine (ONNX Runtime, TensorRT) runs
at full speed, while ``cdist`` is an ATen op that exporters must decompose. ``||a||^2`` does
not change which entry is nearest, so it is added after the minimum (once per query).

Tie rule: identical bank entries give bit-identical values, and the minimum resolves ties to
the **lowest index** (``torch.min`` / ``torch.argmin`` return the first minimal value).

* :func:`squared_distances`: the ``(N, M)`` distances without the ``||a||^2`` term (the
  reference the fused ``ProtoResidual`` kernel is checked against).
* :func:`nearest_neighbours`: the nearest entry of each query and its distance, in blocks
  of queries so that memory stays bounded for large banks (k-means over many points,
  PatchCore's memory bank).
"""
from __future__ import annotations

import torch
from torch import Tensor

from prn_edge.errors import PRNError

__all__ = ["nearest_neighbours", "squared_distances"]


def squared_distances(points: Tensor, centers: Tensor, center_sqnorm: Tensor | None = None) -> Tensor:
    """||x - c||^2 up to the per-point constant ||x||^2, in GEMM form.

    ``argmin_k ||x - c_k||^2 = argmin_k (||c_k||^2 - 2 <x, c_k>)``: one (N, D) x (D, K)
    product instead of N*K difference vectors. Ties (identical centers) give bit-identical
    values, so ``argmin`` resolves them to the lowest k.

    Args:
        points: (N, D) features.
        centers: (K, D) prototypes.
        center_sqnorm: (K,) precomputed ||c_k||^2 (computed if None).

    Returns:
        (N, K) distances without the ||x||^2 term.
    """
    if center_sqnorm is None:
        center_sqnorm = centers.pow(2).sum(dim=1)
    return center_sqnorm.unsqueeze(0) - 2.0 * (points @ centers.T)  # (N, K)


def nearest_neighbours(queries: Tensor, bank: Tensor, bank_sqnorm: Tensor | None = None, *,
                       chunk: int | None = None, query_sqnorm: Tensor | None = None,
                       squared: bool = False) -> tuple[Tensor, Tensor]:
    """Euclidean distance from each query to its nearest bank entry, and that entry's index.

    Cancellation can make the squared form slightly negative for (near-)identical vectors,
    so it is clamped at 0 (before the square root, taken once per query).

    Args:
        queries: (N, D) float features.
        bank: (M, D) entries, M >= 1.
        bank_sqnorm: (M,) precomputed ``||b||^2`` (computed if None).
        chunk: queries per block (None: all at once); a block holds ``chunk x M`` distances.
        query_sqnorm: (N,) precomputed ``||a||^2`` (computed per block if None).
        squared: return squared distances (no square root).

    Returns:
        ``(distance, index)``: (N,) float distances (squared with ``squared``) and (N,)
        int64 indices of the nearest entries; ties go to the lowest index.

    Raises:
        PRNError: mismatched shapes, an empty bank or a chunk below 1.
    """
    if queries.dim() != 2 or bank.dim() != 2 or queries.shape[1] != bank.shape[1]:
        raise PRNError(f"nearest_neighbours needs (N, D) queries and an (M, D) bank, got "
                       f"{tuple(queries.shape)} and {tuple(bank.shape)}")
    if bank.shape[0] == 0:
        raise PRNError("nearest_neighbours: the bank is empty (no entry to be nearest to)")
    if chunk is not None and chunk < 1:
        raise PRNError(f"nearest_neighbours: chunk must be >= 1 or None, got {chunk}")
    n = queries.shape[0]
    if n == 0:
        return queries.new_zeros(0), torch.zeros(0, dtype=torch.long, device=queries.device)
    if bank_sqnorm is None:
        bank_sqnorm = bank.pow(2).sum(dim=1)  # (M,)
    rows = n if chunk is None else int(chunk)
    dists, indices = [], []
    for start in range(0, n, rows):
        q = queries[start:start + rows]  # (n, D)
        best, idx = squared_distances(q, bank, bank_sqnorm).min(dim=1)  # (n,)
        q_sq = q.pow(2).sum(dim=1) if query_sqnorm is None else query_sqnorm[start:start + rows]
        sq = (best + q_sq).clamp_min(0.0)
        dists.append(sq if squared else sq.sqrt())
        indices.append(idx)
    if len(dists) == 1:
        return dists[0], indices[0]
    return torch.cat(dists), torch.cat(indices)
