"""CuPy launches of the fused kernels (imported only when a kernel is called).

The ``.cu`` sources are compiled once per process and device with NVRTC through
``cupy.RawModule`` (CuPy also caches the binary on disk, keyed on the inlined source text).
Inputs may be CuPy arrays or torch CUDA tensors: torch tensors are viewed through DLPack (no
copy) and the kernels run on torch's current stream; CuPy arrays run on CuPy's current stream.
Results come back as the same kind of array as the input.
"""
from __future__ import annotations

import os
from contextlib import nullcontext

import numpy as np

from prn_edge.errors import PRNError, require
from prn_edge.kernels._plan import msa_plan, proto_plan
from prn_edge.kernels._source import KERNEL_FILES, constants, load_source

_MODULES: dict[tuple[int, str], object] = {}
# Tests set this (or $PRN_KERNELS_POISON_WORKSPACE=1) to fill the workspace with NaN bytes
# before every launch, so that a kernel reading a partial sum nobody wrote fails loudly.
POISON_WORKSPACE = os.environ.get("PRN_KERNELS_POISON_WORKSPACE") == "1"
_NVRTC_OPTIONS = ("-std=c++17",)
_MODES = {"abs": 0, "square": 1, 0: 0, 1: 1}


def cupy():
    return require("cupy", "the fused CUDA kernels")


def module(name: str):
    """The compiled RawModule of one ``.cu`` file on the current device (compiled on first use)."""
    cp = cupy()
    key = (cp.cuda.Device().id, name)
    mod = _MODULES.get(key)
    if mod is None:
        mod = cp.RawModule(code=load_source(name), options=_NVRTC_OPTIONS)
        for entry in KERNEL_FILES[name]:
            mod.get_function(entry)  # compiles now: errors surface here, not mid-inference
        _MODULES[key] = mod
    return mod


def _is_torch(x) -> bool:
    return type(x).__module__.split(".")[0] == "torch"


class _Call:
    """Inputs converted to CuPy on one device and stream, and the way back to the caller's kind."""

    def __init__(self, first):
        self.cp = cp = cupy()
        self.torch = _is_torch(first)
        if self.torch:
            if not first.is_cuda:
                raise PRNError("the fused kernels need CUDA tensors, got a CPU tensor: move it with .cuda()")
            import torch
            self.device = cp.cuda.Device(first.device.index)
            with self.device:
                self.stream = cp.cuda.ExternalStream(torch.cuda.current_stream(first.device).cuda_stream)
        elif isinstance(first, cp.ndarray):
            self.device = first.device
            self.stream = None  # CuPy's current stream
        else:
            raise PRNError(f"the fused kernels take CuPy arrays or torch CUDA tensors, got {type(first).__name__}")

    def __enter__(self):
        self._dev = self.device.__enter__()
        self._ctx = self.stream if self.stream is not None else nullcontext()
        self._ctx.__enter__()
        return self

    def __exit__(self, *exc):
        self._ctx.__exit__(*exc)
        self.device.__exit__(*exc)

    def array(self, x, name: str, dtype=None):
        """A C-contiguous CuPy view (or copy, when it must be) of ``x`` on this call's device."""
        cp = self.cp
        if _is_torch(x):
            if not x.is_cuda:
                raise PRNError(f"{name} is a CPU tensor: the fused kernels need CUDA tensors")
            x = cp.from_dlpack(x.detach())
        elif not isinstance(x, cp.ndarray):
            raise PRNError(f"{name} must be a CuPy array or a torch CUDA tensor, got {type(x).__name__}")
        if x.device.id != self.device.id:
            raise PRNError(f"{name} is on device {x.device.id}, the other inputs on {self.device.id}")
        if dtype is not None and x.dtype != dtype:
            x = x.astype(dtype)
        return cp.ascontiguousarray(x)

    def output(self, out, shape, dtype, name: str = "out"):
        """(CuPy view to write, object to return): ``out`` if given (checked), else a new array."""
        if out is None:
            arr = self.cp.empty(shape, dtype=dtype)
            return arr, arr
        if not (out.is_contiguous() if _is_torch(out) else getattr(out, "flags", None) is not None
                and out.flags.c_contiguous):
            raise PRNError(f"{name} must be a contiguous CuPy array or torch CUDA tensor")
        view = self.array(out, name)  # a view: the kernels write into `out` itself
        if tuple(view.shape) != tuple(shape) or view.dtype != dtype:
            raise PRNError(f"{name} must be {tuple(shape)} {np.dtype(dtype).name}, "
                           f"got {tuple(view.shape)} {view.dtype.name}")
        return view, out

    def workspace(self, nbytes: int):
        ws = self.cp.empty(max(nbytes, 256), dtype=np.uint8)
        if POISON_WORKSPACE:
            ws.fill(0xFF)  # NaN as float32, -1 as int32
        return ws

    def back(self, arr):
        if self.torch and isinstance(arr, self.cp.ndarray):
            import torch
            return torch.from_dlpack(arr)
        return arr


def _aligned(*arrays) -> bool:
    return all(a.data.ptr % 16 == 0 for a in arrays)


def _float_dtype(cp, arr, name: str):
    if arr.dtype not in (cp.float32, cp.float16):
        raise PRNError(f"{name} must be float32 or float16, got {arr.dtype.name}")
    return arr.dtype


class Prepared:
    """The kernel launches of one call, bound to its buffers: calling it launches them again.

    ``prepare_*`` does the checks, the conversions, the plan and the allocations once; the
    returned object only launches (3 kernels, a few microseconds of Python), on the stream of the
    original call. ``result`` is what the one-shot function returns. For benchmarks and for
    repeated calls on the same buffers (or CUDA-graph capture).
    """

    def __init__(self, call: "_Call", launches, result, keep):
        self._stream = call.stream
        self._device = call.device
        self._launches = launches
        self.result = result
        self._keep = keep  # the CuPy views and the workspace must outlive the launches

    def __call__(self):
        with self._device, (self._stream if self._stream is not None else nullcontext()):
            for kernel, grid, block, args in self._launches:
                kernel(grid, block, args)
        return self.result


def prepare_proto_residual(features, bank, bank_sqnorm, mode="abs", *, out=None,
                           return_index: bool = False) -> Prepared:
    cp = cupy()
    if mode not in _MODES:
        raise PRNError(f"unknown residual mode {mode!r}: choose 'abs' or 'square'")
    with _Call(features) as call:
        f = call.array(features, "features")
        dtype = _float_dtype(cp, f, "features")
        if f.ndim < 2:
            raise PRNError(f"features must be (B, ...) with at least 2 dims, got shape {f.shape}")
        B, D = f.shape[0], int(np.prod(f.shape[1:]))
        p = call.array(bank, "bank", dtype=dtype)
        if p.ndim != 2 or p.shape[1] != D:
            raise PRNError(f"bank must be (K, {D}) for features of shape {tuple(f.shape)}, got {tuple(p.shape)}")
        K = p.shape[0]
        sq = call.array(bank_sqnorm, "bank_sqnorm", dtype=cp.float32)
        if sq.shape != (K,):
            raise PRNError(f"bank_sqnorm must be ({K},), got {tuple(sq.shape)}")
        o, result = call.output(out, f.shape, dtype)
        plan = proto_plan(B, K, D, dtype.itemsize, _aligned(f, p, o))
        ws = call.workspace(plan.workspace_bytes)
        index = ws[plan.index_offset:plan.index_offset + 4 * B].view(cp.int32)
        suffix = "f16" if dtype == cp.float16 else "f32"
        mod = module("proto_residual.cu")
        block = (constants()["kThreads"],)
        i32, i64 = np.int32, np.int64
        launches = [
            # 1. partial dot products of every image with every prototype, per d-slice
            (mod.get_function(f"prn_proto_dot_k{plan.kt}_{suffix}"), (plan.slices, plan.kblocks), block,
             (f, p, ws, i32(B), i32(K), i64(D), i32(plan.wd), i64(plan.per_warp), i32(plan.vec))),
            # 2. distances and argmin per image
            (mod.get_function("prn_proto_argmin"), (B,), block,
             (ws, sq, index, i32(B), i32(K), i32(plan.slices))),
            # 3. the residual to the chosen prototype
            (mod.get_function(f"prn_proto_residual_{suffix}"), (-(-D // (block[0] * 8)), B), block,
             (f, p, index, o, i64(D), i32(_MODES[mode]), i32(plan.residual_vec))),
        ]
        value = result if out is not None else call.back(o)
        if return_index:
            value = (value, index)
        return Prepared(call, launches, value, (f, p, sq, o, ws))


def proto_residual(features, bank, bank_sqnorm, mode="abs", *, out=None, return_index: bool = False):
    prepared = prepare_proto_residual(features, bank, bank_sqnorm, mode, out=out, return_index=return_index)
    value = prepared()
    if return_index:  # a copy: the index lives in the workspace, which is freed with `prepared`
        with prepared._device, (prepared._stream if prepared._stream is not None else nullcontext()):
            residual, index = value
            return residual, _back(index.copy(), torch_kind=_is_torch(features))
    return value


def _back(arr, torch_kind: bool):
    if torch_kind:
        import torch
        return torch.from_dlpack(arr)
    return arr


def prepare_multi_size_attention(qkv, num_heads: int = 4, *, out=None) -> Prepared:
    cp = cupy()
    with _Call(qkv) as call:
        x = call.array(qkv, "qkv")
        dtype = _float_dtype(cp, x, "qkv")
        if x.ndim != 4:
            raise PRNError(f"qkv must be (B, 3*heads*c, H, W), got shape {tuple(x.shape)}")
        B, C, H, W = (int(v) for v in x.shape)
        o, result = call.output(out, (B, C // 3, H, W), dtype)
        plan = msa_plan(B, num_heads, C, H, W, dtype.itemsize, _aligned(x, o))
        ws = call.workspace(plan.workspace_bytes)
        weights = ws[plan.weights_offset:]
        sp = [np.int32(plan.splits[s] if s < num_heads else 0) for s in range(4)]
        gr = [np.int32(plan.groups[s] if s < num_heads else 0) for s in range(4)]
        suffix = "f16" if dtype == cp.float16 else "f32"
        mod = module("multi_size_attention.cu")
        k = constants()
        block = (k["kThreads"],)
        i32 = np.int32
        vec = i32(1 if plan.vec > 1 else 0)
        launches = [
            # 1. partial scores Q K^T of every head over slices of d
            (mod.get_function(f"prn_msa_scores_{suffix}"), (plan.score_blocks, B), block,
             (x, ws, i32(num_heads), i32(plan.c), i32(H), vec, *sp)),
            # 2. sum of the slices, / d, softmax
            (mod.get_function("prn_msa_softmax"), (-(-plan.rows_per_image // k["kWarps"]), B), block,
             (ws, weights, i32(num_heads), i32(plan.c), i32(H), *sp, i32(dtype == cp.float16))),
            # 3. weights @ V, folded back into (B, heads*c, H, W)
            (mod.get_function(f"prn_msa_output_{suffix}"), (plan.out_blocks, B), block,
             (x, weights, o, i32(num_heads), i32(plan.c), i32(H), vec, *gr)),
        ]
        value = result if out is not None else call.back(o)
        return Prepared(call, launches, value, (x, o, ws))


def multi_size_attention(qkv, num_heads: int = 4, *, out=None):
    return prepare_multi_size_attention(qkv, num_heads, out=out)()
