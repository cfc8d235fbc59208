"""Inputs and checks shared by the fused-kernel tests: on the GPU (``test_kernels_gpu.py``) and in
the CPU emulator (``test_kernels_emulated.py``). The same cases, the same tolerances.

Every case draws fresh random inputs (the seed is in each assertion message); the callers fill the
outputs (and the kernels fill their workspace) with NaN before the launch, so nothing unwritten
can pass.

Tolerances (relative to the largest reference magnitude):
* FP32 1e-5: the kernels and the reference both accumulate in FP32, in different orders.
* proto_residual's output, given the index: exact (see check_proto).
* FP16 2e-3: one FP16 rounding of the output is 4.9e-4 relative; the attention's softmax weights
  are rounded to FP16 like the reference's ``.to(v.dtype)``. On top of the fixed bound, the FP16
  attention must be no further from a float64 evaluation than twice the FP16 reference's own
  error (the flash-attention rule: judge against the same-precision reference error).
The nearest-prototype index must equal the reference's, except for a genuine near-tie (the two
reference distances equal to FP32 rounding), where either is right; duplicated prototypes must
resolve to the lower index, bit for bit.
"""
from __future__ import annotations

import secrets

import torch

from prn_edge.model.attention import multi_size_attention
from prn_edge.model.prototypes import prototype_residual, squared_distances

TOL = {torch.float32: 1e-5, torch.float16: 2e-3}
DTYPES = [torch.float32, torch.float16]
DTYPE_IDS = ["fp32", "fp16"]
BATCHES = [1, 2, 7, 33]
# Prototype counts: 1; 12 (2 or 3 k-groups, so each k-group's d-span is split over 2 or 4 warps
# whose sums meet in shared memory, for every batch tile); 300 (one warp per k-group, 5 to 10
# k-blocks, idle warps in the last one).
PROTO_KS = [1, 12, 300]
# (C, H, W) of proto_residual: PRN's scale 1 and scale 2, and an odd shape (scalar paths).
PROTO_SHAPES = {"scale1": (64, 64, 64), "scale2": (40, 32, 32), "odd": (3, 5, 7)}
# (c, side) of the attention: PRN's three scales (paper scale 1: c = 2*64; edge scales 2 and 3:
# c = 2*40, 2*112) and a tiny map whose smallest patches are 1 pixel.
MSA_SHAPES = {"s1": (128, 64), "s2": (80, 32), "s3": (224, 16), "tiny": (3, 8)}
# Fewer heads than PRN's four, and W % 4 != 0 (scalar staging).
MSA_ODD_SHAPES = [(2, 5, 6), (1, 4, 5), (3, 7, 12)]


def generator(device):
    seed = secrets.randbits(31)
    return torch.Generator(device=device).manual_seed(seed), seed


def rel(a, b) -> float:
    a, b = a.double(), b.double()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


# ---- proto_residual ---------------------------------------------------------------------------
def proto_inputs(shape, batch, k, dtype, device):
    """Features and a bank of K prototypes, the FP32 norms of the bank as stored.

    Most images lie near a known prototype; the last one near the last prototype (the edge of the
    last k-group); every third image (1, 4, ...) near none, so that its argmin hangs on small
    differences of whole-bank distances and any dropped slice or lane of a dot product shows. The
    bank has one duplicated row, a tie the kernel must resolve to the lower index."""
    g, seed = generator(device)
    d = shape[0] * shape[1] * shape[2]
    bank = torch.randn(k, d, device=device, generator=g)
    truth = torch.randint(0, k, (batch,), device=device, generator=g)
    truth[-1] = k - 1
    dup = None
    if k >= 8:
        dup = (2, 7)  # bank[7] == bank[2]: images drawn near 7 must get index 2
        bank[7] = bank[2]
        truth[0] = 7
    features = bank[truth].view(batch, *shape) + 0.5 * torch.randn(batch, *shape, device=device, generator=g)
    features[1:-1:3] = torch.randn(features[1:-1:3].shape, device=device, generator=g)
    bank, features = bank.to(dtype), features.to(dtype)
    sqnorm = bank.float().pow(2).sum(1)
    return features, bank, sqnorm, dup, seed


def check_proto(features, bank, sqnorm, mode, out, index, seed, dup=None):
    dtype = features.dtype
    f32, b32 = features.float(), bank.float()
    dist = squared_distances(f32.flatten(1), b32, sqnorm)  # (B, K) the reference's distances
    ref_index = dist.argmin(1)
    index = index.long()
    scale = dist.abs().amax(1).clamp_min(1.0)
    gap = (dist.gather(1, index[:, None]) - dist.gather(1, ref_index[:, None])).squeeze(1).abs() / scale
    mismatch = index != ref_index
    assert not bool((mismatch & (gap > 1e-6)).any()), (
        f"seed {seed}: kernel index {index[mismatch].tolist()} vs reference {ref_index[mismatch].tolist()}, "
        f"relative distance gap {gap[mismatch].tolist()}")
    if dup is not None:
        assert int(index[0]) == dup[0], f"seed {seed}: duplicated prototypes {dup} -> index {int(index[0])}"
    # The residual, given the index, in the storage type: the reference's op-by-op rounding, which
    # the kernel reproduces exactly (one rounded subtraction, then |.| or one rounded product; an
    # FP16 product is exact in FP32 before its rounding), so bit for bit.
    nearest = bank.index_select(0, index).view_as(features)
    diff = features - nearest
    expected = diff.abs() if mode == "abs" else diff * diff
    assert bool(torch.isfinite(out).all()), f"seed {seed}: NaN left in the output (an element was not written)"
    differ = int((out != expected).sum())
    assert differ == 0, (f"seed {seed}: {differ} residual elements differ from the reference's rounding "
                         f"(relative error {rel(out, expected):.3g})")
    # And the end-to-end reference (FP32 math on the stored values) where the indices agree.
    if not bool(mismatch.any()):
        ref = prototype_residual(f32, b32, sqnorm, mode).to(dtype)
        err = rel(out, ref)
        assert err <= TOL[dtype], f"seed {seed}: relative error vs prototype_residual {err:.3g}"


# ---- multi_size_attention ---------------------------------------------------------------------
def qkv_inputs(batch, heads, c, side, dtype, device):
    """Random Q, K, V with Q and K of head s scaled by d_s^(1/4), so that the scores Q K^T / d have
    a spread of about one and the softmax is far from uniform (a weak test otherwise)."""
    g, seed = generator(device)
    x = torch.randn(batch, 3 * heads * c, side, side, device=device, generator=g)
    for s in range(heads):
        d = c * (side >> s) ** 2
        for part in (0, 1):  # Q and K
            lo = part * heads * c + s * c
            x[:, lo:lo + c] *= 1.5 * d ** 0.25
    return x.to(dtype), seed


def check_msa(qkv, heads, out, seed):
    dtype = qkv.dtype
    ref = multi_size_attention(qkv, heads)
    assert bool(torch.isfinite(out).all()), f"seed {seed}: NaN left in the output (an element was not written)"
    err = rel(out, ref)
    assert err <= TOL[dtype], f"seed {seed}: relative error {err:.3g} > {TOL[dtype]}"
    if dtype == torch.float16:
        truth = multi_size_attention(qkv.double(), heads)
        kernel_err, ref_err = rel(out, truth), rel(ref, truth)
        assert kernel_err <= 2 * ref_err + 1e-4, (
            f"seed {seed}: FP16 kernel error {kernel_err:.3g} vs float64 > 2 x the FP16 reference's {ref_err:.3g}")


# ---- real inputs: bottle images through the EfficientNet-Lite0 encoder -------------------------
def bottle_stages(bottle_dir, device):
    """An edge-preset PRN with 5 prototypes per scale from 12 good bottle images, the stages of 7
    test images (4 defective, 3 good: the features and attention inputs of real images), and
    those images."""
    from prn_edge.config import get_config
    from prn_edge.data.mvtec import load_image, scan_category
    from prn_edge.model import PRN

    category = scan_category(bottle_dir)

    def images(samples):
        arrays = [torch.from_numpy(load_image(s.path)).permute(2, 0, 1) for s in samples]
        return (torch.stack(arrays).float() / 255).to(device)

    torch.manual_seed(0)
    model = PRN(get_config("edge")).to(device).eval()
    model.build_prototypes([images(category.train[:12])], k=5)
    test = [s for s in category.test if s.label == 1][:4] + [s for s in category.test if s.label == 0][:3]
    batch = images(test)
    with torch.no_grad():
        record = model.stages(batch)
    return model, record, batch
