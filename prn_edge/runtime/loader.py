"""Pick and build an :class:`~prn_edge.runtime.engine.Engine` for a model folder or file.

``prn-export`` writes one folder per model::

    DIR/model.onnx, model.fp16.onnx, model.int8.onnx   ONNX Runtime (same I/O, precision in the graph)
    DIR/model*.trt.onnx                                TensorRT plugin variants (not for ONNX Runtime)
    DIR/model.<fp32|fp16|int8>.engine (+ .engine.json) TensorRT engines and their sidecars
    DIR/checkpoint.pt                                  optional: the PyTorch and CuPy-fused engines
    DIR/export_report.json                             its "checkpoint" is used when there is no checkpoint.pt

``--model`` may also name one ``.onnx``, ``.engine`` or ``.pt`` file. With ``backend="auto"``
the best engine that really loads here wins, in this order: TensorRT (FP16, FP32, INT8),
ONNX Runtime on CUDA, the CuPy-fused PyTorch model, ONNX Runtime on the CPU (FP32 first:
the INT8 model is faster on CPUs but is chosen only when asked for, since its accuracy is a
measured trade-off in the export report), and the PyTorch reference. A forced backend that
cannot load is an error that says why; in ``auto`` mode the reasons are collected and shown
only if nothing loads.
"""
from __future__ import annotations

import importlib.util
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from prn_edge.errors import PRNError, first_line
from prn_edge.runtime.engine import Engine, OnnxRuntimeEngine, _precision_of

__all__ = ["BACKENDS", "PRECISIONS", "Candidate", "ModelFiles", "find_model_files", "load_engine", "plan_engines"]

log = logging.getLogger(__name__)

BACKENDS = ("auto", "tensorrt", "onnxruntime", "onnxruntime-cuda", "onnxruntime-tensorrt", "onnxruntime-cpu",
            "cupy-fused", "torch")
PRECISIONS = ("fp32", "fp16", "int8")
ENGINE_SUFFIXES = (".engine", ".plan")
CHECKPOINT_NAME = "checkpoint.pt"
REPORT_NAME = "export_report.json"

_ORT_PROVIDERS = {
    "onnxruntime-cpu": ["CPUExecutionProvider"],
    "onnxruntime-cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
    # The TensorRT provider builds its engines when the session starts (minutes): only when asked for.
    "onnxruntime-tensorrt": ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
}


@dataclass(frozen=True)
class ModelFiles:
    """The runnable files of one model.

    Attributes:
        source: what ``--model`` named.
        onnx: ONNX Runtime models by precision.
        engines: TensorRT engines by precision.
        checkpoint: ``checkpoint.pt`` (PyTorch and CuPy-fused engines), if present.
    """

    source: Path
    onnx: dict[str, Path] = field(default_factory=dict)
    engines: dict[str, Path] = field(default_factory=dict)
    checkpoint: Path | None = None


def find_model_files(model: str | os.PathLike) -> ModelFiles:
    """The files of a model folder, or the one file ``model`` names.

    Raises:
        PRNError: nothing there, or nothing runnable in it.
    """
    path = Path(model).expanduser()
    if path.is_dir():
        onnx = {_precision_of(p): p for p in sorted(path.glob("model*.onnx")) if ".trt." not in p.name}
        engines = {_precision_of(p): p for p in sorted(path.iterdir()) if p.suffix in ENGINE_SUFFIXES}
        files = ModelFiles(path, onnx, engines, _checkpoint_of(path))
        if not (files.onnx or files.engines or files.checkpoint):
            raise PRNError(f"{path}: no model here (expected model.onnx, model.<precision>.engine or "
                           f"{CHECKPOINT_NAME}, as prn-export writes them) (--model)")
        return files
    if not path.is_file():
        raise PRNError(f"{path}: no such model folder or file (--model)")
    if path.suffix == ".onnx":
        if ".trt." in path.name:
            raise PRNError(f"{path}: a TensorRT plugin variant, which ONNX Runtime cannot run; give its "
                           ".engine, or model.onnx (--model)")
        return ModelFiles(path, onnx={_precision_of(path): path})
    if path.suffix in ENGINE_SUFFIXES:
        return ModelFiles(path, engines={_precision_of(path): path})
    if path.suffix == ".pt":
        return ModelFiles(path, checkpoint=path)
    raise PRNError(f"{path}: not a model file (.onnx, .engine or .pt) (--model)")


def _checkpoint_of(folder: Path) -> Path | None:
    """``folder/checkpoint.pt``, else the checkpoint the export report records (if it still exists)."""
    if (folder / CHECKPOINT_NAME).is_file():
        return folder / CHECKPOINT_NAME
    try:
        recorded = json.loads((folder / REPORT_NAME).read_text()).get("checkpoint")
    except (OSError, ValueError, AttributeError):
        return None                       # no or unreadable report: the torch backends say "no checkpoint"
    if not isinstance(recorded, str) or not recorded:
        return None
    path = Path(recorded).expanduser()
    path = path if path.is_absolute() else folder / path
    return path if path.is_file() else None


@dataclass
class Candidate:
    """One way to run the model, in order of preference.

    Attributes:
        backend: a name from :data:`BACKENDS`.
        path: the file it would load.
        precision: fp32, fp16 or int8.
        reason: why it cannot run here ("" if it may).
    """

    backend: str
    path: Path | None
    precision: str
    reason: str = ""

    @property
    def available(self) -> bool:
        return not self.reason


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


def plan_engines(model: str | os.PathLike | ModelFiles, backend: str = "auto",
                 precision: str | None = None) -> list[Candidate]:
    """Every candidate for ``backend`` (all of them for ``auto``), best first, with cheap availability checks.

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
            ep = _ORT_PROVIDERS[name][0]
            reason = "" if ep in providers else (f"this onnxruntime has no {ep} (pip install onnxruntime-gpu)"
                                                 if providers else "onnxruntime is not installed")
            add_files(name, files.onnx, ("fp32", "fp16", "int8"), reason)
    if want("cupy-fused"):
        reason = _fused_reason() if files.checkpoint is not None else f"no {CHECKPOINT_NAME} in {files.source}"
        if precision not in (None, "fp32"):
            reason = reason or "the CuPy-fused engine runs the FP32 checkpoint"
        out.append(Candidate("cupy-fused", files.checkpoint, "fp32", reason))
    if want("onnxruntime-cpu"):
        reason = "" if providers else "onnxruntime is not installed (pip install onnxruntime)"
        add_files("onnxruntime-cpu", files.onnx, ("fp32", "fp16", "int8"), reason)
    if want("torch"):
        reason = "" if _has_module("torch") else "torch is not installed (pip install 'prn-edge[train]')"
        if files.checkpoint is None:
            reason = f"no {CHECKPOINT_NAME} in {files.source} (the PyTorch engine runs the checkpoint)"
        elif precision not in (None, "fp32"):
            reason = reason or "the PyTorch engine runs the FP32 checkpoint"
        out.append(Candidate("torch", files.checkpoint, "fp32", reason))
    return out


def _fused_reason() -> str:
    if not _has_module("cupy"):
        return "CuPy is not installed (pip install 'prn-edge[gpu]')"
    from prn_edge.kernels import fused_available

    ok, why = fused_available()
    return "" if ok else why


def _build(candidate: Candidate, *, threads: int, device: str | None, plugin_library) -> Engine:
    name = candidate.backend
    if name == "tensorrt":
        from prn_edge.runtime.backends.tensorrt import TensorRTEngine

        return TensorRTEngine(candidate.path, plugin_library=plugin_library)
    if name.startswith("onnxruntime"):
        return OnnxRuntimeEngine(candidate.path, providers=_ORT_PROVIDERS[name], threads=threads)
    if name == "cupy-fused":
        from prn_edge.runtime.torch_engine import CupyFusedEngine

        return CupyFusedEngine(candidate.path, device=device or "cuda", threads=threads)
    from prn_edge.runtime.torch_engine import TorchEngine

    if device is None:
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    return TorchEngine(candidate.path, device=device, threads=threads)


def load_engine(model: str | os.PathLike, backend: str = "auto", *, precision: str | None = None,
                threads: int = 0, device: str | None = None,
                plugin_library: str | os.PathLike | None = None) -> Engine:
    """The best engine for ``model`` that loads here, or the one ``backend`` forces.

    Args:
        model: a model folder written by prn-export, or one ``.onnx`` / ``.engine`` / ``.pt`` file.
        backend: one of :data:`BACKENDS` (``onnxruntime`` = CUDA provider if present, else CPU).
        precision: fp32, fp16 or int8 (default: per backend, see the module docstring).
        threads: CPU threads for ONNX Runtime / torch (0 = their default).
        device: torch device for the torch / cupy-fused engines (default: cuda if usable, else cpu).
        plugin_library: the TensorRT plugin library, when not the default one.

    Returns:
        A loaded engine.

    Raises:
        PRNError: a bad model path, backend or precision; a forced backend that cannot load
            (with the reason); or, for ``auto``, no backend at all (with every reason).
    """
    candidates = plan_engines(model, backend, precision)
    reasons = []
    for candidate in candidates:
        if not candidate.available:
            reasons.append(f"{candidate.backend}: {candidate.reason}")
            continue
        try:
            engine = _build(candidate, threads=threads, device=device, plugin_library=plugin_library)
        except PRNError as exc:
            if backend != "auto" and len([c for c in candidates if c.available]) == 1:
                raise
            reasons.append(f"{candidate.backend} ({candidate.path.name}): {first_line(exc, 300)}")
            log.warning("%s engine not used: %s", candidate.backend, first_line(exc))
            continue
        return engine
    what = "no engine can run" if backend == "auto" else f"the {backend} backend cannot run"
    raise PRNError(f"{what} {Path(model)}: " + "; ".join(reasons))
