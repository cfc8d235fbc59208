"""The fused kernels compile for every deployment target, without spills, on a machine with no GPU.

* nvcc: each ``kernels/*.cu`` once per architecture (Jetson Orin sm_87, Ada sm_89, Hopper
  sm_90) with ``-cubin -Xptxas -v``; every expected entry point is compiled and none spills
  or uses local memory (skipped when nvcc is not installed).
* NVRTC (the compiler CuPy uses at run time): the same sources, inlined exactly as
  ``prn_edge.kernels`` hands them to CuPy (skipped when libnvrtc is not found).
* The launch plans: the Python twin (``prn_edge.kernels._plan``) agrees with
  ``kernels/prn_plan.h``, which the TensorRT plugins use (g++ compiles the header).
* Importing ``prn_edge.kernels`` needs neither CuPy nor a GPU.
"""
from __future__ import annotations

import json
import shutil
import subprocess

import pytest

from prn_edge.errors import PRNError
from prn_edge.kernels import KERNEL_FILES, constants, kernels_dir, load_source, msa_plan, proto_plan
from prn_edge.kernels import _compile

from test_imports import run_blocked

ARCHS = _compile.ARCHS


@pytest.fixture(scope="session")
def nvcc_results(tmp_path_factory):
    """{(file, arch): (cubin bytes, {kernel: Resources})}, compiled once for the whole session."""
    nvcc = _compile.find_nvcc()
    if nvcc is None:
        pytest.skip("nvcc not found (PATH, $CUDA_HOME, /usr/local/cuda): install the CUDA toolkit to "
                    "compile-check the kernels")
    out = tmp_path_factory.mktemp("cubin")
    results = {}
    for name in KERNEL_FILES:
        for arch in ARCHS:
            cubin, res = _compile.nvcc_compile(kernels_dir() / name, arch, out, nvcc)
            results[(name, arch)] = (cubin.read_bytes(), res)
    return results


def _check_resources(name: str, arch: str, cubin: bytes, res: dict) -> None:
    expected = KERNEL_FILES[name]
    missing = [k for k in expected if k not in res or k.encode() not in cubin]
    assert not missing, f"{name} for {arch}: entry points missing from the cubin: {missing}"
    for kernel in expected:
        r = res[kernel]
        assert r.registers > 0, f"{kernel} ({arch}): no register count in ptxas' report"
        assert r.spill_stores == 0 and r.spill_loads == 0, (
            f"{kernel} ({arch}) spills: {r.spill_stores} B stored, {r.spill_loads} B loaded")
        assert r.stack == 0, f"{kernel} ({arch}) uses {r.stack} B of local memory (stack frame)"
        assert r.smem <= 48 * 1024, f"{kernel} ({arch}): {r.smem} B static shared memory > 48 KiB"
        assert r.registers <= 255


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("name", sorted(KERNEL_FILES))
def test_nvcc_compiles_without_spills(nvcc_results, name, arch):
    cubin, res = nvcc_results[(name, arch)]
    _check_resources(name, arch, cubin, res)


def test_nvrtc_compiles_the_cupy_sources():
    """What CuPy's RawModule compiles: the inlined sources, through NVRTC (one target, sm_87)."""
    lib = _compile.find_nvrtc()
    if lib is None:
        pytest.skip("libnvrtc not found (pip install nvidia-cuda-nvrtc, or set PRN_NVRTC_LIBRARY): the "
                    "NVRTC path that CuPy uses is not compile-checked here")
    for name in KERNEL_FILES:
        source = load_source(name)
        assert '#include "' not in source.replace('// (already included', '')
        cubin, log = _compile.nvrtc_compile(source, name, "sm_87", lib)
        _check_resources(name, "sm_87", cubin, _compile.parse_ptxas(log))
        assert "error" not in log.lower(), log


def test_parse_ptxas_report():
    log = """ptxas info    : Compiling entry function 'k1' for 'sm_87'
ptxas info    : Function properties for k1
    8 bytes stack frame, 4 bytes spill stores, 12 bytes spill loads
ptxas info    : Used 80 registers, used 1 barriers, 8 bytes cumulative stack size, 18432 bytes smem, 400 bytes cmem[0]
ptxas info    : Compiling entry function 'k2' for 'sm_87'
ptxas info    : Function properties for k2
    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 26 registers, used 0 barriers, 384 bytes cmem[0]
"""
    res = _compile.parse_ptxas(log)
    assert (res["k1"].registers, res["k1"].smem, res["k1"].stack, res["k1"].spill_stores,
            res["k1"].spill_loads) == (80, 18432, 8, 4, 12)
    assert (res["k2"].registers, res["k2"].smem, res["k2"].spill_loads) == (26, 0, 0)
    assert res["k2"].arch == "sm_87"


# ---- launch plans: Python twin == kernels/prn_plan.h ------------------------------------------
PROTO_SHAPES = [(b, k, d, dt, al) for b in (1, 2, 4, 5, 7, 33) for k in (1, 3, 8, 33, 300)
                for d in (105, 4096, 262144, 204800) for dt in (0, 1) for al in (0, 1)]
MSA_SHAPES = [(b, h, ch, s, dt, al) for b in (1, 7, 33) for h in (1, 2, 4)
              for ch in (3 * h * 3, 12 * 128 // 4 * h, 3 * h * 224) for s in (8, 16, 32, 64)
              for dt in (0, 1) for al in (0, 1)] + [(2, 2, 6, 6, 0, 1), (1, 4, 12, 2048, 0, 1)]

_DRIVER = r"""
#include <cstdio>
#include "prn_plan.h"
int main() {
    int b, k, dt, al, h, ch, s; long long d; char kind[8];
    while (std::scanf("%7s", kind) == 1) {
        if (kind[0] == 'p') {
            std::scanf("%d %d %lld %d %d", &b, &k, &d, &dt, &al);
            prn::ProtoPlan p; const char* why = nullptr;
            if (!prn::proto_plan(b, k, d, dt, al != 0, &p, &why)) { std::printf("null\n"); continue; }
            std::printf("[%d,%d,%lld,%d,%d,%d,%d,%d,%d,%d,%lld,%lld,%d,%zu,%zu]\n", p.B, p.K, p.D, p.vec,
                        p.residual_vec, p.kt, p.kgroups, p.wk, p.wd, p.kblocks, p.per_warp, p.chunk, p.slices,
                        p.index_offset, p.workspace_bytes);
        } else {
            std::scanf("%d %d %d %d %d %d", &b, &h, &ch, &s, &dt, &al);
            prn::MsaPlan m; const char* why = nullptr;
            if (!prn::msa_plan(b, h, ch, s, s, dt, al != 0, &m, &why)) { std::printf("null\n"); continue; }
            std::printf("[%d,%d,%d,%d,%d,%d,[", m.B, m.heads, m.c, m.H, m.W, m.vec);
            for (int i = 0; i < m.heads; ++i)
                std::printf("%s[%d,%d,%lld,%d,%d,%d,%lld,%d]", i ? "," : "", m.n[i], m.p[i], m.d[i], m.units[i],
                            m.splits[i], m.groups[i], m.partial_off[i], m.weight_off[i]);
            std::printf("],%lld,%d,%d,%d,%d,%zu,%zu]\n", m.partial_per_image, m.weights_per_image,
                        m.rows_per_image, m.score_blocks, m.out_blocks, m.weights_offset, m.workspace_bytes);
        }
    }
    return 0;
}
"""


def _py_proto(b, k, d, dt, al):
    try:
        p = proto_plan(b, k, d, 2 if dt else 4, bool(al))
    except PRNError:
        return None
    return [p.B, p.K, p.D, p.vec, p.residual_vec, p.kt, p.kgroups, p.wk, p.wd, p.kblocks, p.per_warp, p.chunk,
            p.slices, p.index_offset, p.workspace_bytes]


def _py_msa(b, h, ch, s, dt, al):
    try:
        m = msa_plan(b, h, ch, s, s, 2 if dt else 4, bool(al))
    except PRNError:
        return None
    heads = [[m.n[i], m.p[i], m.d[i], m.units[i], m.splits[i], m.groups[i], m.partial_off[i], m.weight_off[i]]
             for i in range(m.heads)]
    return [m.B, m.heads, m.c, m.H, m.W, m.vec, heads, m.partial_per_image, m.weights_per_image,
            m.rows_per_image, m.score_blocks, m.out_blocks, m.weights_offset, m.workspace_bytes]


def test_python_plans_match_the_cpp_header(tmp_path):
    gxx = shutil.which("g++") or shutil.which("c++")
    if gxx is None:
        pytest.skip("no C++ compiler (g++) to compile kernels/prn_plan.h")
    src = tmp_path / "plan_driver.cpp"
    src.write_text(_DRIVER)
    exe = tmp_path / "plan_driver"
    subprocess.run([gxx, "-std=c++17", "-O1", f"-I{kernels_dir()}", str(src), "-o", str(exe)], check=True,
                   capture_output=True, timeout=120)
    lines = [f"p {' '.join(map(str, s))}" for s in PROTO_SHAPES] + [f"m {' '.join(map(str, s))}" for s in MSA_SHAPES]
    proc = subprocess.run([str(exe)], input="\n".join(lines) + "\n", capture_output=True, text=True, check=True,
                          timeout=60)
    cpp = [json.loads(line) for line in proc.stdout.splitlines()]
    py = [_py_proto(*s) for s in PROTO_SHAPES] + [_py_msa(*s) for s in MSA_SHAPES]
    assert len(cpp) == len(py)
    for shape, a, b in zip(PROTO_SHAPES + MSA_SHAPES, cpp, py, strict=True):
        assert a == b, f"plan mismatch for {shape}: C++ {a} vs Python {b}"
    assert sum(p is None for p in py) > 0  # some shapes are rejected by both (e.g. 2^(h-1) * W > 2048)


def test_plans_reject_shapes_the_kernels_do_not_take():
    with pytest.raises(PRNError, match="heads"):
        msa_plan(1, 5, 15 * 8, 64, 64, 4, True)
    with pytest.raises(PRNError, match="square"):
        msa_plan(1, 4, 12 * 8, 64, 32, 4, True)
    with pytest.raises(PRNError, match="channels"):
        msa_plan(1, 4, 100, 64, 64, 4, True)
    with pytest.raises(PRNError, match="K >= 1"):
        proto_plan(1, 0, 10, 4, True)


def test_plans_bound_the_workspace_and_partials():
    """Partials stay a small fraction of the bytes each op streams (the point of the split sizes)."""
    for b in (1, 33):
        p = proto_plan(b, 300, 262144, 4, True)
        assert p.slices * b * 300 * 4 < 0.02 * 300 * 262144 * 4
        assert p.slices * p.chunk >= 262144 and p.per_warp % (32 * 4) == 0
        m = msa_plan(b, 4, 12 * 128, 64, 64, 4, True)
        assert m.partial_per_image * 4 <= 0.125 * 2 * 4 * 128 * 64 * 64 * 4
        assert m.n == (1, 4, 16, 64) and m.p == (64, 32, 16, 8) and m.d[0] == 128 * 64 * 64


def test_sources_and_constants():
    c = constants()
    assert c["kThreads"] == 256 and c["kWarps"] * 32 == c["kThreads"]
    for name in KERNEL_FILES:
        text = load_source(name)
        assert "prn_constants.h ----" in text and 'extern "C" __global__' in text
        for entry in KERNEL_FILES[name]:
            assert entry in text


def test_import_needs_neither_cupy_nor_a_gpu():
    proc = run_blocked("""
        import prn_edge.kernels as k
        ok, why = k.fused_available()
        assert not ok and "CuPy" in why, why
        assert k.proto_plan(1, 300, 262144, 4, True).slices > 0
        try:
            k.proto_residual(None, None, None)
        except k.PRNError as exc:
            assert "cupy" in str(exc).lower()
        else:
            raise AssertionError("expected a PRNError")
        print("ok")
    """.replace("k.PRNError", "__import__('prn_edge.errors').errors.PRNError"))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok"
