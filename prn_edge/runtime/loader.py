"""Pick and build an :class:`~prn_edge.contract.engine.Engine` for a model folder or file.

The folder's layout is :mod:`prn_edge.contract.model_folder`'s; ``--model`` may also name one
``.onnx``, ``.engine`` or ``.pt`` file. With ``backend="auto"`` the best engine that really
loads here wins, in this order: TensorRT (FP16, FP32, INT8), ONNX Runtime on CUDA, the
CuPy-fused PyTorch model, ONNX Runtime on the CPU (FP32 first: the INT8 model is chosen only
when asked for, since its accuracy is a measured trade-off in the export report; but the CPU
flavour ``model.int8.cpu.onnx`` first where the export wrote one, since it did so only when
that INT8 model held the gate and ran faster than FP32), and the PyTorch reference. A forced backend that cannot load is an error that says why; in ``auto``
mode the reasons are collected and shown only if nothing loads. :func:`plan_engines` lists
every candidate with the reason it cannot run, for ``--list-backends`` and ``prn-bench``.

:func:`connect_server` is the other way to get an engine: a model served by Triton Inference Server
(``prn-inspect --server``), where the server's engine does the work and this one sends frames.
"""
from __future__ import annotations

import importlib.util
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from prn_edge.contract.engine import Engine
from prn_edge.contract.model_folder import (
    CHECKPOINT,
    PRECISIONS,
    ModelFiles,
    find_model_files,
)
from prn_edge.errors import PRNError, first_line
from prn_edge.runtime.backends.onnxruntime import PROVIDERS

__all__ = ["BACKENDS", "Candidate", "connect_server", "load_engine", "open_candidate", "plan_engines"]

log = logging.getLogger(__name__)

BACKENDS = ("auto", "tensorrt", "onnxruntime", "onnxruntime-cuda", "onnxruntime-tensorrt", "onnxruntime-cpu",
            "cupy-fused", "torch")


@dataclass
class Candidate:
    """One way to run the model, in order of preference.

    Attributes:
        backend: a name from :data:`BACKENDS`.
        path: the file it would load.
        precision: fp32, fp16 or int8.
        reason: why it cannot run here ("" if it may).
        default: whether a tool that runs every backend (``prn-bench``) runs it unasked.
        note: why it is not run unasked.
        options: how :meth:`open` builds it (threads, device, plugin library).
    """

    backend: str
    path: Path | None
    precision: str
    reason: str = ""
    default: bool = True
    note: str = ""
    options: dict = field(default_factory=dict, repr=False)

    def open(self) -> Engine:
        """Build this engine (:func:`open_candidate` with :attr:`options`)."""
        return open_candidate(self, **self.options)

    @property
    def available(self) -> bool:
        return not self.reason

    @property
    def key(self) -> str:
        return f"{self.backend}:{self.precision}"


def _has_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def _ort_providers() -> list[str]:
    if not _has_module("onnxruntime"):
        return []
    try:
        import onnxruntime
    except ImportError:
        return []
    return list(onnxruntime.get_available_providers())


def plan_engines(model: str | os.PathLike | ModelFiles, backend: str = "auto", precision: str | None = None, *,
                 threads: int = 0, device: str | None = None, plugin_library=None,
                 spinning: bool = True) -> list[Candidate]:
    """Every candidate for ``backend`` (all of them for ``auto``), best first, with cheap availability checks.

    ``threads``, ``device``, ``plugin_library`` and ``spinning`` are how each candidate's :meth:`Candidate.open`
    will build it (see :func:`load_engine`).

    Raises:
        PRNError: an unknown backend or precision, or an unusable ``model``.
    """
    if backend not in BACKENDS:
        raise PRNError(f"unknown backend {backend!r}: choose one of {', '.join(BACKENDS)} (--backend)")
    if precision is not None and precision not in PRECISIONS:
        raise PRNError(f"unknown precision {precision!r}: choose one of {', '.join(PRECISIONS)} (--precision)")
    files = model if isinstance(model, ModelFiles) else find_model_files(model)
    providers = _ort_providers()
    out: list[Candidate] = []

    def precisions(order):
        return [precision] if precision is not None else list(order)

    def add_files(name, table, order, reason):
        for p in precisions(order):
            if p in table:
                out.append(Candidate(name, table[p], p, reason))
        if not any(c.backend == name for c in out):
            have = ", ".join(sorted(table)) or "none"
            what = "TensorRT engine" if table is files.engines else "ONNX model"
            out.append(Candidate(name, None, precision or "fp32",
                                 f"no {what}{' for ' + precision if precision else ''} in {files.source} "
                                 f"(precisions here: {have})"))

    want = (lambda name: True) if backend == "auto" else (
        lambda name: name == backend or (backend == "onnxruntime" and name in ("onnxruntime-cuda",
                                                                               "onnxruntime-cpu")))
    if want("tensorrt"):
        reason = ("" if _has_module("tensorrt") and _has_module("cupy")
                  else "tensorrt and cupy must be installed (JetPack, or the NVIDIA wheels; pip install cupy-cuda12x)")
        add_files("tensorrt", files.engines, ("fp16", "fp32", "int8"), reason)
    for name in ("onnxruntime-tensorrt", "onnxruntime-cuda"):
        if (backend == name or (backend in ("auto", "onnxruntime") and name == "onnxruntime-cuda")):
            ep = PROVIDERS[name][0]
            reason = "" if ep in providers else (f"this onnxruntime has no {ep} (pip install onnxruntime-gpu)"
                                                 if providers else "onnxruntime is not installed")
            add_files(name, files.onnx, ("fp32", "fp16", "int8"), reason)
    if want("cupy-fused"):
        reason = _fused_reason() if files.checkpoint is not None else f"no {CHECKPOINT} in {files.source}"
        if precision not in (None, "fp32"):
            reason = reason or "the CuPy-fused engine runs the FP32 checkpoint"
        out.append(Candidate("cupy-fused", files.checkpoint, "fp32", reason))
    if want("onnxruntime-cpu"):
        reason = "" if providers else "onnxruntime is not installed (pip install onnxruntime)"
        if files.cpu_int8 is not None:
            # The export wrote its CPU flavour only because it held the gate and ran faster than FP32
            # there: on a CPU it is the INT8 model, and the first choice.
            add_files("onnxruntime-cpu", {**files.onnx, "int8": files.cpu_int8}, ("int8", "fp32", "fp16"), reason)
        else:
            add_files("onnxruntime-cpu", files.onnx, ("fp32", "fp16", "int8"), reason)
    if want("torch"):
        reason = "" if _has_module("torch") else "torch is not installed (pip install 'prn-edge[train]')"
        if files.checkpoint is None:
            reason = (f"no {CHECKPOINT} in {files.source} (the PyTorch engine runs the checkpoint)"
                      + (f"; {files.checkpoint_note}" if files.checkpoint_note else ""))
        elif precision not in (None, "fp32"):
            reason = reason or "the PyTorch engine runs the FP32 checkpoint"
        out.append(Candidate("torch", files.checkpoint, "fp32", reason))
    options = {"threads": threads, "device": device, "plugin_library": plugin_library, "spinning": spinning}
    for c in out:
        c.options = options
        if c.backend == "onnxruntime-cpu" and c.precision == "fp16":
            c.default, c.note = False, ("not run by default: ONNX Runtime's CPU provider has few FP16 kernels "
                                        "(casts around most ops); ask for it with --precisions fp16")
    return out


def _fused_reason() -> str:
    if not _has_module("cupy"):
        return "CuPy is not installed (pip install 'prn-edge[gpu]')"
    from prn_edge.kernels import fused_available

    ok, why = fused_available()
    return "" if ok else why


def open_candidate(candidate: Candidate, *, threads: int = 0, device: str | None = None,
                   plugin_library=None, spinning: bool = True) -> Engine:
    """Build the engine of one candidate (see :func:`plan_engines`).

    Raises:
        PRNError: it cannot load (the backend's one-line reason).
    """
    name = candidate.backend
    if name == "tensorrt":
        from prn_edge.runtime.backends.tensorrt import TensorRTEngine

        return TensorRTEngine(candidate.path, plugin_library=plugin_library)
    if name.startswith("onnxruntime"):
        from prn_edge.runtime.backends.onnxruntime import OnnxRuntimeEngine

        return OnnxRuntimeEngine(candidate.path, providers=PROVIDERS[name], threads=threads, spinning=spinning)
    if name == "cupy-fused":
        from prn_edge.runtime.backends.cupy_fused import CupyFusedEngine

        return CupyFusedEngine(candidate.path, device=device or "cuda", threads=threads)
    from prn_edge.runtime.backends.torch import TorchEngine

    if device is None:
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    return TorchEngine(candidate.path, device=device, threads=threads)


def load_engine(model: str | os.PathLike, backend: str = "auto", *, precision: str | None = None,
                threads: int = 0, device: str | None = None,
                plugin_library: str | os.PathLike | None = None, spinning: bool = True) -> Engine:
    """The best engine for ``model`` that loads here, or the one ``backend`` forces.

    Args:
        model: a model folder written by prn-export, or one ``.onnx`` / ``.engine`` / ``.pt`` file.
        backend: one of :data:`BACKENDS` (``onnxruntime`` = CUDA provider if present, else CPU).
        precision: fp32, fp16 or int8 (default: per backend, see the module docstring).
        threads: CPU threads for ONNX Runtime / torch (0 = their default).
        device: torch device for the torch / cupy-fused engines (default: cuda if usable, else cpu).
        plugin_library: the TensorRT plugin library, when not the default one.
        spinning: ONNX Runtime's idle threads spin-wait between ops (see :class:`OnnxRuntimeEngine`).

    Returns:
        A loaded engine.

    Raises:
        PRNError: a bad model path, backend or precision; a forced backend that cannot load
            (with the reason); or, for ``auto``, no backend at all (with every reason).
    """
    candidates = plan_engines(model, backend, precision, threads=threads, device=device,
                              plugin_library=plugin_library, spinning=spinning)
    reasons = []
    for candidate in candidates:
        if not candidate.available:
            reasons.append(f"{candidate.backend}: {candidate.reason}")
            continue
        try:
            engine = candidate.open()
        except PRNError as exc:
            if backend != "auto" and len([c for c in candidates if c.available]) == 1:
                raise
            reasons.append(f"{candidate.backend} ({candidate.path.name}): {first_line(exc, 300)}")
            log.warning("%s engine not used: %s", candidate.backend, first_line(exc))
            continue
        return engine
    what = "no engine can run" if backend == "auto" else f"the {backend} backend cannot run"
    raise PRNError(f"{what} {Path(model)}: " + "; ".join(reasons))


def connect_server(url: str, model: str | None = None, *, timeout: float = 30.0) -> Engine:
    """An engine whose model runs in Triton Inference Server (``prn-serve`` or NVIDIA's container).

    Args:
        url: ``grpc://HOST:PORT`` or ``http://HOST:PORT``.
        model: the model's name there (default: ``prn``, ``prn-serve``'s).
        timeout: seconds one request may take before the server counts as unavailable.

    Returns:
        A :class:`~prn_edge.runtime.backends.triton.TritonEngine` with the served model's input size,
        threshold and metadata.

    Raises:
        PRNError: a bad URL, tritonclient missing, no such model or not a PRN model there;
            :class:`~prn_edge.contract.engine.EngineUnavailable` when the server cannot be reached.
    """
    from prn_edge.contract.serving import MODEL_NAME
    from prn_edge.runtime.backends.triton import TritonEngine

    return TritonEngine(url, model or MODEL_NAME, timeout=timeout)
