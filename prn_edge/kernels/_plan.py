"""Launch plans of the fused kernels: the Python twin of ``kernels/prn_plan.h``.

The TensorRT plugins plan with the C++ header, the CuPy path with this module; both must give
the same grids and workspace layouts (``tests/test_kernels_compile.py`` compiles the header
with g++ and compares). Keep the two line for line; the constants come from
``kernels/prn_constants.h`` itself.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from prn_edge.errors import PRNError
from prn_edge.kernels._source import constants


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def _align256(n: int) -> int:
    return (n + 255) & ~255


@dataclass(frozen=True)
class ProtoPlan:
    """Grid and workspace of proto_residual (field meanings: ``ProtoPlan`` in prn_plan.h)."""

    B: int
    K: int
    D: int
    vec: int
    residual_vec: int
    kt: int
    kgroups: int
    wk: int
    wd: int
    kblocks: int
    per_warp: int
    chunk: int
    slices: int
    index_offset: int
    workspace_bytes: int


@lru_cache(maxsize=256)
def proto_plan(B: int, K: int, D: int, itemsize: int, aligned: bool) -> ProtoPlan:
    """Plan ProtoResidual for features (B, D) and a bank (K, D) of ``itemsize``-byte floats.

    Raises:
        PRNError: shapes the kernels do not take.
    """
    c = constants()
    if B < 1 or K < 1 or D < 1:
        raise PRNError(f"proto_residual needs B >= 1, K >= 1 and D >= 1, got B={B}, K={K}, D={D}")
    if K * D >= 1 << 40:
        raise PRNError(f"proto_residual: the bank is too large (K * D = {K * D} >= 2^40)")
    full_vec = c["kProtoVecF16"] if itemsize == 2 else c["kProtoVecF32"]
    vec = full_vec if aligned and D % full_vec == 0 else 1
    residual_vec = 1 if aligned and D % 8 == 0 else 0
    kt = c["kProtoKTSmall"] if B <= c["kProtoSmallBatch"] else c["kProtoKTLarge"]
    kgroups = _ceil_div(K, kt)
    wk = 1
    while wk < c["kWarps"] and wk < kgroups:
        wk *= 2
    wd = c["kWarps"] // wk
    kblocks = _ceil_div(kgroups, wk)
    step = 32 * full_vec
    wanted_slices = _ceil_div(c["kProtoTargetBlocks"], kblocks)
    per_warp = _ceil_div(D, wanted_slices * wd)
    per_warp = _ceil_div(per_warp, step) * step
    per_warp = max(per_warp, c["kProtoMinIters"] * step)
    chunk = per_warp * wd
    slices = _ceil_div(D, chunk)
    index_offset = _align256(slices * B * K * 4)
    workspace_bytes = _align256(index_offset + B * 4)
    return ProtoPlan(B, K, D, vec, residual_vec, kt, kgroups, wk, wd, kblocks, per_warp, chunk, slices,
                     index_offset, workspace_bytes)


@dataclass(frozen=True)
class MsaPlan:
    """Grids and workspace of multi_size_attention (field meanings: ``MsaPlan`` in prn_plan.h)."""

    B: int
    heads: int
    c: int
    H: int
    W: int
    vec: int
    n: tuple[int, ...]
    p: tuple[int, ...]
    d: tuple[int, ...]
    units: tuple[int, ...]
    splits: tuple[int, ...]
    groups: tuple[int, ...]
    partial_off: tuple[int, ...]
    partial_per_image: int
    weight_off: tuple[int, ...]
    weights_per_image: int
    rows_per_image: int
    score_blocks: int
    out_blocks: int
    weights_offset: int
    workspace_bytes: int


@lru_cache(maxsize=256)
def msa_plan(B: int, heads: int, channels: int, H: int, W: int, itemsize: int, aligned: bool) -> MsaPlan:
    """Plan MultiSizeAttention for qkv (B, channels, H, W) of ``itemsize``-byte floats.

    Raises:
        PRNError: shapes the kernels do not take.
    """
    k = constants()
    if not 1 <= heads <= k["kMsaMaxHeads"]:
        raise PRNError(f"multi_size_attention supports 1 to {k['kMsaMaxHeads']} heads, got {heads}")
    if B < 1 or channels < 1 or channels % (3 * heads):
        raise PRNError(f"multi_size_attention needs B >= 1 and 3 * num_heads * c input channels, "
                       f"got B={B}, {channels} channels for {heads} heads")
    if H != W or H % (1 << (heads - 1)):
        raise PRNError(f"multi_size_attention needs square maps whose side divides by 2^(num_heads-1), "
                       f"got {H}x{W} for {heads} heads")
    if (1 << (heads - 1)) * W > k["kMsaStage"]:
        raise PRNError(f"multi_size_attention: {H}x{W} maps are too wide for the staging buffer "
                       f"(2^(heads-1) * W must be <= {k['kMsaStage']})")
    c = channels // (3 * heads)
    vec = 4 if aligned and W % 4 == 0 else 1
    chw = c * H * W
    n, p, d, units, splits, groups, poff, woff = ([] for _ in range(8))
    per_image = weights = rows = score_blocks = out_blocks = 0
    for s in range(heads):
        ps = H >> s
        ns = (H // ps) * (W // ps)
        ds = c * ps * ps
        us = c * ps
        sp = min(k["kMsaMaxSplits"], us, chw // k["kMsaScoreBlockElems"], ds * itemsize // (16 * ns))
        sp = max(1, sp)
        gr = max(1, min(us, _ceil_div(chw, k["kMsaOutBlockElems"])))
        for values, value in ((n, ns), (p, ps), (d, ds), (units, us), (splits, sp), (groups, gr),
                              (poff, per_image), (woff, weights)):
            values.append(value)
        per_image += sp * ns * ns
        weights += ns * ns
        rows += ns
        score_blocks += sp
        out_blocks += gr
    weights_offset = _align256(B * per_image * 4)
    workspace_bytes = _align256(weights_offset + B * weights * 4)
    return MsaPlan(B, heads, c, H, W, vec, tuple(n), tuple(p), tuple(d), tuple(units), tuple(splits),
                   tuple(groups), tuple(poff), per_image, tuple(woff), weights, rows, score_blocks, out_blocks,
                   weights_offset, workspace_bytes)
