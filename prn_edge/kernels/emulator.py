"""The fused CUDA kernels run on the CPU, through an emulation of CUDA's execution model.

``kernels/emulator/cuda_emulator.h`` turns CUDA threads into fibers (real ``__syncthreads``
barriers and warp shuffles, poisoned shared memory, divergent-barrier and deadlock reports), and
``kernels/emulator/emulated_kernels.cpp`` compiles the unchanged ``kernels/*.cu`` against it with
g++. This module builds that library (once per source version, cached), and runs:

* :func:`launch`: one entry point on NumPy arrays, exactly as CuPy launches it (the CuPy path's
  own launch code drives it in ``tests/test_kernels_emulated.py``);
* :func:`proto_residual_enqueue`, :func:`msa_enqueue`: the TensorRT plugins' host launchers
  (``prn_*_enqueue`` of ``kernels/prn_launch.h``), with their C++ plans.

It is a test instrument: it proves the kernels' indexing, tiling, reductions, tie-breaking and
rounding on machines without a GPU, not their speed (one CPU core, about a million emulated
thread switches a second) nor what only hardware shows (memory ordering between blocks, timing).
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

import numpy as np

from prn_edge.errors import PRNError
from prn_edge.kernels._plan import proto_plan
from prn_edge.kernels._source import kernels_dir

_FLAGS = ("-std=c++17", "-O2", "-fPIC", "-shared", "-fno-strict-aliasing", "-ffp-contract=off",
          "-Wall", "-Wextra", "-Wno-unknown-pragmas")
_CACHE = Path(os.environ.get("PRN_EDGE_CACHE", Path.home() / ".cache" / "prn-edge")) / "emulator"
_LOCK = threading.Lock()  # one emulated grid at a time: the emulator's state is process-wide
_LIB: ctypes.CDLL | None = None

DTYPE_CODES = {np.dtype(np.float32): 0, np.dtype(np.float16): 1}  # prn::DType


def compiler() -> str | None:
    """The C++ compiler the emulator is built with (``$CXX``, g++ or c++), or None."""
    return os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")


def available() -> tuple[bool, str]:
    """``(True, compiler)`` if the emulator can be built here, else ``(False, reason)``."""
    cxx = compiler()
    if cxx is None:
        return False, "no C++ compiler (g++) to build the CUDA emulator"
    try:
        kernels_dir()
    except PRNError as exc:
        return False, str(exc)
    return True, cxx


def _sources() -> list[Path]:
    root = kernels_dir()
    files = sorted(p for p in root.iterdir() if p.suffix in (".cu", ".cuh", ".h"))
    return files + sorted(p for p in (root / "emulator").iterdir() if p.suffix in (".h", ".cpp", ".ld"))


def build(source: Path) -> ctypes.CDLL:
    """Compile ``source`` (C++ that includes ``cuda_emulator.h``) into a shared library and load it.

    Cached under ``~/.cache/prn-edge/emulator`` (or ``$PRN_EDGE_CACHE``) by the hash of the source,
    of every file in ``kernels/`` and ``kernels/emulator/``, of the flags and of the compiler's
    version; built aside and renamed into place, so concurrent builds do not see a partial file.
    """
    cxx = compiler()
    if cxx is None:
        raise PRNError("no C++ compiler (g++) to build the CUDA emulator: install g++ or set $CXX")
    version = subprocess.run([cxx, "--version"], capture_output=True, text=True, check=False).stdout
    digest = hashlib.sha256("\0".join([version, *_FLAGS]).encode())
    for path in [Path(source), *_sources()]:
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    target = _CACHE / f"{Path(source).stem}_{digest.hexdigest()[:16]}.so"
    if not target.exists():
        _CACHE.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=_CACHE) as tmp:
            built = Path(tmp) / target.name
            emu = kernels_dir() / "emulator"
            proc = subprocess.run([cxx, *_FLAGS, f"-I{emu}", "-o", str(built), str(source),
                                   f"-Wl,-T,{emu / 'shared_memory.ld'}"], capture_output=True, text=True,
                                  check=False)
            if proc.returncode != 0:
                raise PRNError(f"building the CUDA emulator ({Path(source).name}) failed: "
                               f"{proc.stderr.strip()[:2000]}")
            os.replace(built, target)
    return ctypes.CDLL(str(target))


def library() -> ctypes.CDLL:
    """The emulated kernels (``kernels/emulator/emulated_kernels.cpp``), built on first use (about 10 s)."""
    global _LIB
    if _LIB is not None:
        return _LIB
    lib = build(kernels_dir() / "emulator" / "emulated_kernels.cpp")
    lib.prn_emu_error.restype = ctypes.c_char_p
    lib.prn_emu_entries.restype = ctypes.c_char_p
    lib.prn_emu_launch.argtypes = [ctypes.c_char_p, *([ctypes.c_uint] * 6), ctypes.POINTER(ctypes.c_void_p)]
    lib.prn_emu_set_schedule_seed.argtypes = [ctypes.c_ulonglong]
    lib.prn_emu_set_schedule_seed(schedule_seed())
    lib.prn_emu_half_to_float.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t]
    lib.prn_emu_float_to_half.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t]
    lib.prn_proto_residual_workspace.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_longlong, ctypes.c_int]
    lib.prn_proto_residual_workspace.restype = ctypes.c_size_t
    lib.prn_proto_residual_enqueue.argtypes = [
        *([ctypes.c_void_p] * 5), ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_longlong,
        ctypes.c_int, ctypes.c_int, ctypes.c_void_p]
    lib.prn_msa_workspace.argtypes = [ctypes.c_int] * 6
    lib.prn_msa_workspace.restype = ctypes.c_size_t
    lib.prn_msa_enqueue.argtypes = [*([ctypes.c_void_p] * 3), ctypes.c_size_t, *([ctypes.c_int] * 6),
                                    ctypes.c_void_p]
    _LIB = lib
    return lib


def schedule_seed() -> int:
    """The seed of the emulated thread order: ``$PRN_EMU_SCHEDULE_SEED`` (default 1; 0 = index order)."""
    try:
        return int(os.environ.get("PRN_EMU_SCHEDULE_SEED", "1"))
    except ValueError as exc:
        raise PRNError(f"PRN_EMU_SCHEDULE_SEED must be an integer, got {os.environ['PRN_EMU_SCHEDULE_SEED']!r}") from exc


def entries() -> list[str]:
    """The kernel entry points compiled into the emulator."""
    return library().prn_emu_entries().decode().split()


def half_bits_to_float(bits: np.ndarray) -> np.ndarray:
    """The kernels' FP16 -> FP32 conversion (``to_float``) as emulated, on uint16 bit patterns."""
    bits = np.ascontiguousarray(bits, np.uint16)
    out = np.empty(bits.shape, np.float32)
    library().prn_emu_half_to_float(_pointer(bits), _pointer(out), bits.size)
    return out


def float_to_half_bits(values: np.ndarray) -> np.ndarray:
    """The kernels' FP32 -> FP16 conversion (``from_float``, round to nearest even) as emulated."""
    values = np.ascontiguousarray(values, np.float32)
    out = np.empty(values.shape, np.uint16)
    library().prn_emu_float_to_half(_pointer(values), _pointer(out), values.size)
    return out


def _pointer(arr: np.ndarray) -> int:
    return arr.__array_interface__["data"][0]


def _raise_error(lib, what: str):
    message = lib.prn_emu_error().decode()
    lib.prn_emu_clear_error()
    raise PRNError(f"{what}: {message}")


def launch(entry: str, grid, block, args) -> None:
    """Run one kernel grid: ``args`` as CuPy takes them (NumPy arrays, np.int32 / np.int64 / np.float32).

    Raises:
        PRNError: an argument the emulator cannot pass, or an error the emulator caught
            (divergent barrier, deadlock, shuffle with exited lanes, bad grid).
    """
    lib = library()
    grid = tuple(int(g) for g in grid) + (1,) * (3 - len(grid))
    block = tuple(int(b) for b in block) + (1,) * (3 - len(block))
    values = []
    for i, arg in enumerate(args):
        if isinstance(arg, np.ndarray):
            values.append(ctypes.c_void_p(_pointer(arg)))
        elif isinstance(arg, np.int32):
            values.append(ctypes.c_int32(int(arg)))
        elif isinstance(arg, np.int64):
            values.append(ctypes.c_int64(int(arg)))
        elif isinstance(arg, np.float32):
            values.append(ctypes.c_float(float(arg)))
        else:
            raise PRNError(f"{entry} argument {i}: the emulator passes NumPy arrays and NumPy scalars, "
                           f"got {type(arg).__name__}")
    params = (ctypes.c_void_p * max(len(values), 1))(*[ctypes.addressof(v) for v in values])
    with _LOCK:
        rc = lib.prn_emu_launch(entry.encode(), *grid, *block, params)
        if rc != 0:
            _raise_error(lib, f"emulated {entry}")


def _contiguous(arr: np.ndarray, name: str, dtype=None) -> np.ndarray:
    if not isinstance(arr, np.ndarray):
        raise PRNError(f"{name} must be a NumPy array, got {type(arr).__name__}")
    if dtype is not None and arr.dtype != dtype:
        raise PRNError(f"{name} must be {np.dtype(dtype).name}, got {arr.dtype.name}")
    if not arr.flags.c_contiguous:
        raise PRNError(f"{name} must be C-contiguous")
    return arr


def _storage_dtype(arr: np.ndarray, name: str) -> np.dtype:
    """The dtype of a C-contiguous float32 / float16 input (else a one-line PRNError)."""
    _contiguous(arr, name)
    if arr.dtype not in DTYPE_CODES:
        raise PRNError(f"{name} must be float32 or float16, got {arr.dtype.name}")
    return arr.dtype


_GUARD = 4096  # bytes of NaN on each side of the workspace, checked after the launches


def _workspace(nbytes: int) -> tuple[np.ndarray, np.ndarray]:
    """(raw buffer, 256-byte-aligned workspace inside it), all NaN bytes (0xFF: NaN as float32,
    -1 as int32), so that unwritten partials show and a write past either end is caught."""
    if nbytes == 0:
        raise PRNError("the plugin launcher's plan rejects these shapes (workspace size 0)")
    raw = np.full(nbytes + 2 * _GUARD + 256, 0xFF, np.uint8)
    start = _GUARD + (-raw.ctypes.data % 256)
    return raw, raw[start:start + nbytes]


def _run_launcher(name: str, workspace_bytes: int, call) -> np.ndarray:
    """``call(workspace_pointer, workspace_bytes)`` of a plugin launcher on a poisoned, guarded
    workspace; returns the workspace. Raises PRNError on an error code or a write past its ends."""
    lib = library()
    raw, ws = _workspace(workspace_bytes)
    with _LOCK:
        rc = call(_pointer(ws), ws.nbytes)
        if rc != 0:
            _raise_error(lib, f"{name} returned {rc}")
    lo = ws.ctypes.data - raw.ctypes.data
    if (raw[:lo] != 0xFF).any() or (raw[lo + ws.nbytes:] != 0xFF).any():
        raise PRNError(f"{name} wrote outside its {ws.nbytes}-byte workspace")
    return ws


def proto_residual_enqueue(features: np.ndarray, bank: np.ndarray, sqnorm: np.ndarray, out: np.ndarray,
                           mode: int) -> np.ndarray:
    """The ProtoResidual plugin's launcher (``prn_proto_residual_enqueue``) on NumPy buffers.

    ``features`` (B, ...) and ``bank`` (K, D) float32 or float16, ``sqnorm`` (K,) float32, ``out``
    like ``features``. The workspace is sized by ``prn_proto_residual_workspace``, NaN-poisoned and
    guarded (a write past either end raises).

    Returns:
        The (B,) int32 prototype indices the launcher chose (read back from its workspace).
    """
    lib = library()
    dtype = _storage_dtype(features, "features")
    _contiguous(bank, "bank", dtype)
    _contiguous(sqnorm, "sqnorm", np.float32)
    _contiguous(out, "out", dtype)
    B, K, D = features.shape[0], bank.shape[0], bank.shape[1]
    if features[0].size != D or out.shape != features.shape:
        raise PRNError(f"shapes do not agree: features {features.shape}, bank {bank.shape}, out {out.shape}")
    code = DTYPE_CODES[dtype]
    ws = _run_launcher("prn_proto_residual_enqueue", lib.prn_proto_residual_workspace(B, K, D, code),
                       lambda ws_ptr, ws_bytes: lib.prn_proto_residual_enqueue(
                           _pointer(features), _pointer(bank), _pointer(sqnorm), _pointer(out), ws_ptr, ws_bytes,
                           B, K, D, int(mode), code, None))
    plan = proto_plan(B, K, D, dtype.itemsize, True)  # the index sits where the plan puts it
    return ws[plan.index_offset:plan.index_offset + 4 * B].view(np.int32).copy()


def msa_enqueue(qkv: np.ndarray, out: np.ndarray, num_heads: int) -> None:
    """The MultiSizeAttention plugin's launcher (``prn_msa_enqueue``) on NumPy buffers."""
    lib = library()
    dtype = _storage_dtype(qkv, "qkv")
    _contiguous(out, "out", dtype)
    if qkv.ndim != 4:
        raise PRNError(f"qkv must be (B, 3*heads*c, H, W), got shape {qkv.shape}")
    B, C, H, W = qkv.shape
    code = DTYPE_CODES[dtype]
    _run_launcher("prn_msa_enqueue", lib.prn_msa_workspace(B, num_heads, C, H, W, code),
                  lambda ws_ptr, ws_bytes: lib.prn_msa_enqueue(_pointer(qkv), _pointer(out), ws_ptr, ws_bytes, B,
                                                               num_heads, C, H, W, code, None))
