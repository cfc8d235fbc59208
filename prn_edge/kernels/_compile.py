"""Offline compilation of the kernels (no GPU needed): nvcc and NVRTC, and ptxas' resource report.

Used by CI (``tests/test_kernels_compile.py``) and by ``benchmarks/kernel_resources.py``:
every entry point is compiled for the deployment targets (Jetson Orin sm_87, Ada sm_89,
Hopper sm_90) and its registers, shared memory and spills are read from ``ptxas -v``.
NVRTC is reached through ctypes, so it works with any copy of ``libnvrtc`` (the CUDA toolkit,
the ``nvidia-cuda-nvrtc`` wheel that CuPy also uses, or ``$PRN_NVRTC_LIBRARY``).
"""
from __future__ import annotations

import ctypes
import glob
import os
import re
import shutil
import site
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from prn_edge.errors import PRNError

ARCHS = ("sm_87", "sm_89", "sm_90")

_ENTRY = re.compile(r"Compiling entry function '([^']+)' for '(sm_\w+)'")
_FRAME = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
_USED = re.compile(r"Used (\d+) registers")
_SMEM = re.compile(r"(\d+) bytes smem")


@dataclass
class Resources:
    """ptxas' report for one entry point on one architecture."""

    kernel: str
    arch: str
    registers: int = -1
    smem: int = 0          # static shared memory, bytes
    stack: int = 0         # stack frame, bytes
    spill_stores: int = 0  # bytes
    spill_loads: int = 0   # bytes


def parse_ptxas(log: str) -> dict[str, Resources]:
    """Resources per entry point from ``ptxas -v`` output (nvcc's stderr or NVRTC's log)."""
    out: dict[str, Resources] = {}
    current: Resources | None = None
    for line in log.splitlines():
        if m := _ENTRY.search(line):
            current = out.setdefault(m.group(1), Resources(m.group(1), m.group(2)))
            continue
        if current is None:
            continue
        if m := _FRAME.search(line):
            current.stack, current.spill_stores, current.spill_loads = (int(g) for g in m.groups())
        if m := _USED.search(line):
            current.registers = int(m.group(1))
            if s := _SMEM.search(line):
                current.smem = int(s.group(1))
    return out


def find_nvcc() -> Path | None:
    """nvcc on PATH, in $CUDA_HOME/$CUDA_PATH, or in /usr/local/cuda."""
    found = shutil.which("nvcc")
    if found:
        return Path(found)
    for root in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if root and (Path(root) / "bin" / "nvcc").is_file():
            return Path(root) / "bin" / "nvcc"
    return None


def find_cuda_include() -> Path | None:
    """The CUDA toolkit's include/ folder (for host code that includes cuda_runtime_api.h)."""
    roots = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"]
    nvcc = find_nvcc()
    if nvcc is not None:
        roots.insert(0, str(nvcc.resolve().parents[1]))
    for root in roots:
        if root and (Path(root) / "include" / "cuda_runtime_api.h").is_file():
            return Path(root) / "include"
    return None


def nvcc_compile(source: Path, arch: str, out_dir: Path, nvcc: Path | None = None,
                 timeout: float = 300) -> tuple[Path, dict[str, Resources]]:
    """``nvcc -cubin -arch=<arch> -Xptxas -v``: the cubin path and the per-kernel resources.

    Raises:
        PRNError: nvcc missing or the compile failing (with its output).
    """
    nvcc = nvcc or find_nvcc()
    if nvcc is None:
        raise PRNError("nvcc not found (PATH, $CUDA_HOME, /usr/local/cuda): install the CUDA toolkit")
    cubin = out_dir / f"{source.stem}.{arch}.cubin"
    cmd = [str(nvcc), "-cubin", f"-arch={arch}", "-std=c++17", "-Xptxas", "-v", "-o", str(cubin), str(source)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise PRNError(f"nvcc failed on {source.name} for {arch}:\n{proc.stdout}{proc.stderr}")
    return cubin, parse_ptxas(proc.stdout + proc.stderr)


# ---- NVRTC through ctypes ---------------------------------------------------------------------
def _nvrtc_candidates() -> list[str]:
    paths: list[str] = []
    if os.environ.get("PRN_NVRTC_LIBRARY"):
        paths.append(os.environ["PRN_NVRTC_LIBRARY"])
    roots = list(sys.path)
    try:
        roots += site.getsitepackages() + [site.getusersitepackages()]
    except AttributeError:  # some virtualenvs
        pass
    for root in dict.fromkeys(r for r in roots if r):
        paths += sorted(glob.glob(os.path.join(root, "nvidia", "*", "lib", "libnvrtc.so*")), reverse=True)
    for root in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if root:
            paths += sorted(glob.glob(os.path.join(root, "lib64", "libnvrtc.so*")), reverse=True)
    return [p for p in paths if "builtins" not in p and ".alt." not in p]


def find_nvrtc():
    """A loaded ``libnvrtc`` (ctypes.CDLL) or None."""
    for path in _nvrtc_candidates():
        try:
            # NVRTC dlopens libnvrtc-builtins by name at compile time; a wheel's copy sits beside
            # libnvrtc but not on the loader's path, so load it first.
            for builtins in sorted(glob.glob(os.path.join(os.path.dirname(path), "libnvrtc-builtins.so*"))):
                if ".alt." not in builtins:
                    ctypes.CDLL(builtins, mode=ctypes.RTLD_GLOBAL)
            return ctypes.CDLL(path)
        except OSError:
            continue
    return None


def nvrtc_compile(source: str, name: str, arch: str, lib=None) -> tuple[bytes, str]:
    """Compile CUDA source text to a cubin with NVRTC (as CuPy does), ``-Xptxas -v`` on.

    Returns:
        (cubin bytes, NVRTC log including ptxas' report).

    Raises:
        PRNError: libnvrtc missing or the compile failing (with the log).
    """
    lib = lib or find_nvrtc()
    if lib is None:
        raise PRNError("libnvrtc not found: pip install nvidia-cuda-nvrtc (or set PRN_NVRTC_LIBRARY)")
    prog = ctypes.c_void_p()
    check = _nvrtc_checker(lib)
    check(lib.nvrtcCreateProgram(ctypes.byref(prog), source.encode(), name.encode(), 0, None, None),
          "nvrtcCreateProgram")
    try:
        options = [f"--gpu-architecture={arch}", "-std=c++17", "--ptxas-options=-v"]
        argv = (ctypes.c_char_p * len(options))(*(o.encode() for o in options))
        status = lib.nvrtcCompileProgram(prog, len(options), argv)
        size = ctypes.c_size_t()
        check(lib.nvrtcGetProgramLogSize(prog, ctypes.byref(size)), "nvrtcGetProgramLogSize")
        log_buf = ctypes.create_string_buffer(size.value)
        check(lib.nvrtcGetProgramLog(prog, log_buf), "nvrtcGetProgramLog")
        log = log_buf.value.decode(errors="replace")
        if status != 0:
            raise PRNError(f"NVRTC failed on {name} for {arch}:\n{log}")
        check(lib.nvrtcGetCUBINSize(prog, ctypes.byref(size)), "nvrtcGetCUBINSize")
        cubin = ctypes.create_string_buffer(size.value)
        check(lib.nvrtcGetCUBIN(prog, cubin), "nvrtcGetCUBIN")
        return cubin.raw, log
    finally:
        lib.nvrtcDestroyProgram(ctypes.byref(prog))


def nvrtc_version(lib) -> tuple[int, int]:
    major, minor = ctypes.c_int(), ctypes.c_int()
    lib.nvrtcVersion(ctypes.byref(major), ctypes.byref(minor))
    return major.value, minor.value


def _nvrtc_checker(lib):
    lib.nvrtcGetErrorString.restype = ctypes.c_char_p

    def check(status: int, what: str) -> None:
        if status != 0:
            raise PRNError(f"{what} failed: {lib.nvrtcGetErrorString(status).decode()}")
    return check


def compile_all(archs=ARCHS, out_dir: Path | None = None) -> dict[tuple[str, str], dict[str, Resources]]:
    """nvcc-compile every kernel file for every arch: {(file, arch): {kernel: Resources}}."""
    from prn_edge.kernels._source import KERNEL_FILES, kernels_dir
    directory = kernels_dir()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in KERNEL_FILES:
            for arch in archs:
                _, res = nvcc_compile(directory / name, arch, Path(out_dir or tmp))
                results[(name, arch)] = res
    return results
