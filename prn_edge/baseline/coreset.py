"""Coreset selection for PatchCore's memory bank: random, greedy k-center, and its reference.

* :func:`random_coreset`: a seeded uniform subsample (PatchCore's default here: as accurate
  as greedy on MVTec bottle at 10%, and free).
* :func:`greedy_coreset`: greedy k-center (the paper's choice), exact, with a Voronoi-cell
  pruning that only reads the points a new center can capture.
* :func:`greedy_coreset_reference`: the plain O(N * M) greedy loop the fast path is tested
  against (same selection).

:func:`random_projection` is the seeded Johnson-Lindenstrauss matrix the greedy selection
may run in (only to choose points: the bank keeps the full features).
"""
from __future__ import annotations

import contextlib
import math
import time

import numpy as np
import torch
from torch import Tensor

from prn_edge.errors import PRNError

__all__ = [
    "CORESET_METHODS",
    "greedy_coreset",
    "greedy_coreset_reference",
    "random_coreset",
    "random_projection",
]

CORESET_METHODS = ("greedy", "random")


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
