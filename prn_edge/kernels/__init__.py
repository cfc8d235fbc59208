"""The fused CUDA kernels of PRN from Python: CuPy launches of ``kernels/*.cu``.

Two ops, each matching its PyTorch reference (the definition every backend is tested against):

* :func:`proto_residual` = :func:`prn_edge.model.prototypes.prototype_residual`
* :func:`multi_size_attention` = :func:`prn_edge.model.attention.multi_size_attention`

FP32 and FP16 storage, FP32 arithmetic. The same ``.cu`` sources are compiled into the TensorRT
plugin library by ``CMakeLists.txt`` (``kernels/plugins/``). Importing this package needs
neither CuPy nor a GPU; :func:`fused_available` says whether the kernels can run here and why
not; :mod:`prn_edge.kernels.emulator` runs the same sources on a CPU, for the tests. Shared names:
:data:`KERNEL_FILES` (sources and their entry points),
:func:`kernels_dir`, :func:`load_source`, and the launch plans :func:`proto_plan`,
:func:`msa_plan` (the Python twin of ``kernels/prn_plan.h``).
"""
from __future__ import annotations

import importlib

from prn_edge.errors import PRNError, first_line
from prn_edge.kernels._plan import MsaPlan, ProtoPlan, msa_plan, proto_plan
from prn_edge.kernels._source import KERNEL_FILES, constants, kernels_dir, load_source

__all__ = ["proto_residual", "multi_size_attention", "prepare_proto_residual", "prepare_multi_size_attention",
           "fused_available", "KERNEL_FILES", "kernels_dir", "load_source", "constants", "proto_plan", "msa_plan",
           "ProtoPlan", "MsaPlan"]


def proto_residual(features, bank, bank_sqnorm, mode="abs", *, out=None, return_index: bool = False):
    """Residual of each feature map to its nearest prototype, fused on the GPU.

    Args:
        features: (B, C, H, W) (or any (B, ...)) float32/float16 CuPy array or torch CUDA tensor.
        bank: (K, D) prototypes, D = C*H*W, same dtype as ``features`` (cast if not).
        bank_sqnorm: (K,) squared norms ||P_k||^2 (float32; cast if not).
        mode: ``"abs"`` (|F - P|) or ``"square"`` ((F - P)^2).
        out: optional contiguous output of the shape and dtype of ``features``, written in place.
        return_index: also return the (B,) int32 indices of the chosen prototypes.

    Returns:
        The residual, the kind of array ``features`` is (or ``out``); with ``return_index``,
        ``(residual, index)``.

    Raises:
        PRNError: CuPy missing, inputs not on a CUDA device, or shapes/dtypes the kernels do not take.
    """
    return _impl().proto_residual(features, bank, bank_sqnorm, mode, out=out, return_index=return_index)


def multi_size_attention(qkv, num_heads: int = 4, *, out=None):
    """The attention core of one MSA layer, all heads, fused on the GPU.

    Args:
        qkv: (B, 3*num_heads*c, H, W) float32/float16 CuPy array or torch CUDA tensor, channels
            [Q of heads 0.., K of heads 0.., V of heads 0..]; H == W, divisible by 2^(num_heads-1).
        num_heads: 1 to 4 (patch sides H, H/2, H/4, H/8).
        out: optional contiguous (B, num_heads*c, H, W) output, written in place.

    Returns:
        (B, num_heads*c, H, W), the kind of array ``qkv`` is (or ``out``).

    Raises:
        PRNError: CuPy missing, inputs not on a CUDA device, or shapes the kernels do not take.
    """
    return _impl().multi_size_attention(qkv, num_heads, out=out)


def prepare_proto_residual(features, bank, bank_sqnorm, mode="abs", *, out=None, return_index: bool = False):
    """:func:`proto_residual` split in two: checks, plan and allocations now; launches on call.

    Returns:
        A callable that (re)launches the kernels on the same buffers and returns what
        :func:`proto_residual` would (with ``return_index``, the index is a view of the workspace,
        valid until the next call). For benchmarks and loops over fixed buffers.
    """
    return _impl().prepare_proto_residual(features, bank, bank_sqnorm, mode, out=out, return_index=return_index)


def prepare_multi_size_attention(qkv, num_heads: int = 4, *, out=None):
    """:func:`multi_size_attention` split in two: checks, plan and allocations now; launches on call."""
    return _impl().prepare_multi_size_attention(qkv, num_heads, out=out)


def fused_available() -> tuple[bool, str]:
    """Whether the fused kernels can run here: ``(True, device)`` or ``(False, reason)``.

    Checks CuPy, a CUDA device, the kernel sources, and compiles them (NVRTC) on the current
    device, so a True means the next call will launch.
    """
    try:
        cp = importlib.import_module("cupy")
    except ImportError:
        return False, "CuPy is not installed: pip install 'prn-edge[gpu]' (cupy-cuda12x)"
    try:
        count = cp.cuda.runtime.getDeviceCount()
    except Exception as exc:  # noqa: BLE001 - no driver raises CUDARuntimeError
        return False, f"no usable CUDA device: {exc}"
    if count < 1:
        return False, "no CUDA device"
    try:
        kernels_dir()
    except PRNError as exc:
        return False, str(exc)
    try:
        for name in KERNEL_FILES:
            _impl().module(name)
    except Exception as exc:  # noqa: BLE001 - NVRTC errors come in several types
        return False, f"compiling the kernels with NVRTC failed: {first_line(exc)}"
    dev = cp.cuda.Device()
    props = cp.cuda.runtime.getDeviceProperties(dev.id)
    name = props["name"].decode() if isinstance(props["name"], bytes) else props["name"]
    return True, f"{name} (sm_{props['major']}{props['minor']}), CuPy {cp.__version__}"


def _impl():
    from prn_edge.kernels import _cupy
    return _cupy
