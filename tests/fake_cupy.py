"""A NumPy stand-in for CuPy, so that ``prn_edge.kernels._cupy`` runs its real launch code on a CPU.

Arrays are NumPy arrays with CuPy's ``.data.ptr`` and ``.device``; ``RawModule.get_function``
returns kernels that record each launch and, with ``execute=True``, run it in the CUDA emulator
(``prn_edge.kernels.emulator``). Used by ``test_kernels_wiring.py`` (signatures only) and
``test_kernels_emulated.py`` (results).

With ``execute=True`` every array the code under test allocates (``cupy.empty``: outputs, the
workspace) sits between two 4 KiB guard zones of NaN bytes, and after every launch the guards of
all live allocations must be intact: a kernel writing outside an allocation fails right there,
and one reading outside it reads NaN (the memcheck that a CPU run can offer). :class:`Guarded`
gives the tests' own inputs the same guards.
"""
from __future__ import annotations

import sys
import types
import weakref

import numpy as np

GUARD = 4096  # bytes each side; a multiple of 16, so a guarded array keeps the alignment asked for


class FakeArray(np.ndarray):
    @property
    def data(self):  # noqa: D401 - CuPy's MemoryPointer
        return types.SimpleNamespace(ptr=self.__array_interface__["data"][0])

    @property
    def device(self):
        return FakeDevice(0)


class FakeDevice:
    def __init__(self, id=0):  # noqa: A002 - CuPy's name
        self.id = id

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


class Guarded:
    """Allocations with NaN-byte guard zones on both sides, checked on demand."""

    def __init__(self):
        self._live: weakref.WeakSet = weakref.WeakSet()  # the guards of the arrays still alive

    def empty(self, shape, dtype, misalign: int = 0) -> FakeArray:
        """An uninitialised array, ``misalign`` bytes past a 16-byte boundary."""
        dtype = np.dtype(dtype)
        shape = (shape,) if isinstance(shape, int) else tuple(shape)
        nbytes = int(np.prod(shape)) * dtype.itemsize
        raw = np.full(nbytes + 2 * GUARD + 16, 0xFF, np.uint8)
        start = GUARD + (-raw.ctypes.data % 16) + misalign
        arr = raw[start:start + nbytes].view(dtype).reshape(shape).view(FakeArray)
        arr._guard = guard = _Guard(raw, start, start + nbytes)  # lives (and is checked) as long as arr
        self._live.add(guard)
        return arr

    def copy(self, t) -> FakeArray:
        """A guarded copy of a tensor or array, with the same alignment mod 16."""
        src = t.numpy() if hasattr(t, "numpy") else np.asarray(t)
        arr = self.empty(src.shape, src.dtype, misalign=src.ctypes.data % 16)
        arr[...] = src
        return arr

    def check(self, what: str) -> None:
        for guard in list(self._live):
            raw, lo, hi = guard.raw, guard.lo, guard.hi
            if (raw[:lo] != 0xFF).any() or (raw[hi:] != 0xFF).any():
                raise AssertionError(f"{what} wrote outside an allocation of {hi - lo} bytes")


class _Guard:
    def __init__(self, raw, lo, hi):
        self.raw, self.lo, self.hi = raw, lo, hi


class FakeKernel:
    def __init__(self, name, log, execute, guarded):
        self.name, self.log, self.execute, self.guarded = name, log, execute, guarded

    def __call__(self, grid, block, args, **kwargs):
        self.log.append((self.name, grid, block, args))
        if self.execute:
            from prn_edge.kernels import emulator
            emulator.launch(self.name, grid, block, args)
            self.guarded.check(f"kernel {self.name}")


def install(monkeypatch, execute: bool = False, guarded: Guarded | None = None):
    """Put a fake ``cupy`` in ``sys.modules`` (undone by ``monkeypatch``); returns (module, launch log).

    With ``execute``, launches run in the emulator and allocations are guarded (by ``guarded``, or
    a new :class:`Guarded`), their guards checked after every launch.
    """
    log: list = []
    guarded = guarded or Guarded()
    cp = types.ModuleType("cupy")
    cp.ndarray = FakeArray
    cp.float32, cp.float16, cp.int32 = np.dtype(np.float32), np.dtype(np.float16), np.dtype(np.int32)
    if execute:
        cp.empty = lambda shape, dtype=np.float32: guarded.empty(shape, dtype)
    else:
        cp.empty = lambda shape, dtype=np.float32: np.empty(shape, dtype).view(FakeArray)
    cp.ascontiguousarray = lambda x: np.ascontiguousarray(x).view(FakeArray)

    class RawModule:
        def __init__(self, code, options=()):
            assert "-std=c++17" in options and 'extern "C"' in code

        def get_function(self, name):
            return FakeKernel(name, log, execute, guarded)

    cp.RawModule = RawModule
    cp.cuda = types.SimpleNamespace(Device=FakeDevice, ExternalStream=None)
    monkeypatch.setitem(sys.modules, "cupy", cp)
    from prn_edge.kernels import _cupy
    monkeypatch.setattr(_cupy, "_MODULES", {})
    return cp, log
