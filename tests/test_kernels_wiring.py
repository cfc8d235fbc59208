"""The CuPy launches match the kernels' C signatures (no GPU: CuPy is replaced by a NumPy fake).

A wrong argument count or an int where the kernel takes ``long long`` compiles and launches
silently and only shows up as garbage on a GPU. Here ``prn_edge.kernels`` builds its launches
against a fake ``cupy`` (``fake_cupy.py``: NumPy arrays, recording kernels), and every recorded launch is checked
against the ``extern "C"`` signature parsed from the ``.cu`` source: pointers get arrays, ``int``
gets int32, ``long long`` gets int64, and the grids are within CUDA's limits.
"""
from __future__ import annotations

import re

import fake_cupy as fake_cupy_module
import numpy as np
import pytest
from fake_cupy import FakeArray

from prn_edge.kernels import KERNEL_FILES, kernels_dir, msa_plan, proto_plan

_KERNEL = re.compile(r'extern "C" __global__ void __launch_bounds__\([^)]*\)\s*\\?\s*(\w+)\(([^)]*)\)', re.S)


def _signatures() -> dict[str, list[str]]:
    """{kernel: ["ptr" | "i32" | "i64", ...]} from the sources (the macro-made dot kernels included)."""
    out = {}
    for name in KERNEL_FILES:
        text = (kernels_dir() / name).read_text()
        for kernel, params in _KERNEL.findall(text):
            kinds = []
            for param in params.replace("\\", " ").split(","):
                param = " ".join(param.split())
                kinds.append("ptr" if "*" in param else "i64" if "long long" in param else "i32")
            out[kernel] = kinds
        if "NAME" in out:  # the signature inside the PRN_PROTO_DOT macro, shared by the dot kernels
            macro = out.pop("NAME")
            for kernel in re.findall(r"^PRN_PROTO_DOT\((\w+),", text, re.M):
                out[kernel] = macro
    return out


@pytest.fixture
def fake_cupy(monkeypatch):
    return fake_cupy_module.install(monkeypatch, execute=False)


def _check(log, signatures):
    assert log
    for name, grid, block, args in log:
        kinds = signatures[name]
        assert len(args) == len(kinds), f"{name}: {len(args)} arguments for {len(kinds)} parameters"
        for i, (arg, kind) in enumerate(zip(args, kinds, strict=True)):
            if kind == "ptr":
                assert isinstance(arg, FakeArray), f"{name} argument {i}: expected an array, got {type(arg)}"
            else:
                expected = np.int64 if kind == "i64" else np.int32
                assert type(arg) is expected, f"{name} argument {i}: expected {expected.__name__}, got {type(arg)}"
        assert block == (256,)
        assert 0 < grid[0] < 2 ** 31 and all(0 < g <= 65535 for g in grid[1:]), f"{name}: grid {grid}"


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("batch,k,shape", [(1, 300, (64, 64, 64)), (33, 300, (24, 16, 16)), (3, 1, (3, 5, 7))])
def test_proto_residual_launches_match_the_signatures(fake_cupy, batch, k, shape, dtype):
    cp, log = fake_cupy
    from prn_edge.kernels import _cupy
    features = cp.empty((batch, *shape), dtype)
    bank = cp.empty((k, int(np.prod(shape))), dtype)
    sqnorm = cp.empty((k,), np.float32)
    prepared = _cupy.prepare_proto_residual(features, bank, sqnorm, "square", return_index=True)
    prepared()
    _check(log, _signatures())
    names = [entry[0] for entry in log]
    plan = proto_plan(batch, k, int(np.prod(shape)), np.dtype(dtype).itemsize, True)
    suffix = "f16" if dtype == np.float16 else "f32"
    assert names == [f"prn_proto_dot_k{plan.kt}_{suffix}", "prn_proto_argmin", f"prn_proto_residual_{suffix}"]
    ws = log[0][3][2]
    assert ws.nbytes >= plan.workspace_bytes and log[2][3][5] == 1  # mode "square"
    out, index = prepared.result
    assert out.shape == features.shape and index.dtype == np.int32 and index.shape == (batch,)


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("batch,heads,c,side", [(1, 4, 128, 64), (33, 4, 224, 16), (2, 2, 5, 6)])
def test_multi_size_attention_launches_match_the_signatures(fake_cupy, batch, heads, c, side, dtype):
    cp, log = fake_cupy
    from prn_edge.kernels import _cupy
    qkv = cp.empty((batch, 3 * heads * c, side, side), dtype)
    out = _cupy.multi_size_attention(qkv, heads)
    _check(log, _signatures())
    suffix = "f16" if dtype == np.float16 else "f32"
    assert [entry[0] for entry in log] == [f"prn_msa_scores_{suffix}", "prn_msa_softmax", f"prn_msa_output_{suffix}"]
    plan = msa_plan(batch, heads, 3 * heads * c, side, side, np.dtype(dtype).itemsize, True)
    assert log[0][1] == (plan.score_blocks, batch) and log[2][1] == (plan.out_blocks, batch)
    assert log[1][3][-1] == (1 if dtype == np.float16 else 0)  # weights rounded to FP16 like the reference
    assert out.shape == (batch, heads * c, side, side) and out.dtype == dtype


def test_every_entry_point_has_a_parsed_signature():
    signatures = _signatures()
    for name, entries in KERNEL_FILES.items():
        for entry in entries:
            assert entry in signatures, f"{entry} ({name}): no extern \"C\" signature found"


def test_one_shot_calls_return_fresh_outputs(fake_cupy):
    cp, log = fake_cupy
    from prn_edge.kernels import _cupy
    features = cp.empty((2, 4, 8, 8), np.float32)
    bank = cp.empty((5, 256), np.float32)
    out, index = _cupy.proto_residual(features, bank, cp.empty((5,), np.float32), "abs", return_index=True)
    assert out.shape == features.shape and index.shape == (2,) and len(log) == 3
    given = cp.empty((2, 4, 8, 8), np.float32)
    assert _cupy.proto_residual(features, bank, cp.empty((5,), np.float32), out=given) is given
    with pytest.raises(Exception, match="must be"):
        _cupy.proto_residual(features, bank, cp.empty((5,), np.float32), out=cp.empty((2, 4, 8, 7), np.float32))
