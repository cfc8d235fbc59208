"""The exported model folder: its file names, and how a consumer finds what it holds.

``prn-export`` writes one folder per model; the runtime's loader, ``prn-bench`` and any other
consumer read it through :class:`ModelFolder` and :func:`find_model_files`, so the layout is
written down once, here::

    model.onnx, model.fp16.onnx, model.int8.onnx      ONNX Runtime (same I/O, precision in the graph)
    model.trt.onnx, model.<fp16|int8>.trt.onnx        TensorRT plugin variants (not for ONNX Runtime)
    model.<fp32|fp16|int8>.engine (+ .engine.json)    TensorRT engines and their sidecars
    tensorrt.timing_cache                             TensorRT's timing cache, shared by the builds
    export_report.json, export_report.md              what was exported, accuracy per precision
    checkpoint.pt                                     optional: the PyTorch and CuPy-fused engines

When there is no ``checkpoint.pt``, the checkpoint that ``export_report.json`` records under
``"checkpoint"`` (absolute, or relative to the folder) is used if it still exists. stdlib only.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from prn_edge.errors import PRNError, first_line

__all__ = ["CHECKPOINT", "ENGINE_SUFFIXES", "PRECISIONS", "REPORT_JSON", "REPORT_MD", "TIMING_CACHE",
           "ModelFiles", "ModelFolder", "find_model_files", "precision_of", "recorded_checkpoint"]

PRECISIONS = ("fp32", "fp16", "int8")
CHECKPOINT = "checkpoint.pt"
REPORT_JSON = "export_report.json"
REPORT_MD = "export_report.md"
TIMING_CACHE = "tensorrt.timing_cache"
ENGINE_SUFFIXES = (".engine", ".plan")
_ONNX = {"fp32": "model.onnx", "fp16": "model.fp16.onnx", "int8": "model.int8.onnx"}


def _check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise PRNError(f"unknown precision {precision!r}: choose one of {', '.join(PRECISIONS)}")
    return precision


def precision_of(path: str | os.PathLike) -> str:
    """``model.fp16.onnx`` -> fp16; ``model.int8.engine`` -> int8; anything else -> fp32."""
    suffixes = [s.lstrip(".") for s in Path(path).suffixes[:-1]]
    return next((s for s in reversed(suffixes) if s in ("fp16", "int8")), "fp32")


@dataclass(frozen=True)
class ModelFolder:
    """The paths of one model folder (they need not exist yet: ``prn-export`` writes them).

    Attributes:
        root: the folder.
    """

    root: Path

    def __init__(self, root: str | os.PathLike) -> None:
        object.__setattr__(self, "root", Path(root).expanduser())

    def onnx(self, precision: str) -> Path:
        """The ONNX Runtime model of a precision (``model.onnx`` for FP32)."""
        return self.root / _ONNX[_check_precision(precision)]

    def trt_onnx(self, precision: str) -> Path:
        """Its TensorRT plugin variant: ``model.onnx`` -> ``model.trt.onnx``."""
        return self.root / (_ONNX[_check_precision(precision)].removesuffix(".onnx") + ".trt.onnx")

    def engine(self, precision: str) -> Path:
        """The TensorRT engine of a precision."""
        return self.root / f"model.{_check_precision(precision)}.engine"

    @staticmethod
    def sidecar(engine: str | os.PathLike) -> Path:
        """An engine's sidecar: ``model.fp16.engine`` -> ``model.fp16.engine.json``."""
        engine = Path(engine)
        return engine.with_name(engine.name + ".json")

    @property
    def timing_cache(self) -> Path:
        return self.root / TIMING_CACHE

    @property
    def report_json(self) -> Path:
        return self.root / REPORT_JSON

    @property
    def report_md(self) -> Path:
        return self.root / REPORT_MD

    @property
    def checkpoint(self) -> Path:
        return self.root / CHECKPOINT


def recorded_checkpoint(folder: str | os.PathLike) -> tuple[Path | None, str]:
    """The checkpoint a model folder offers, and where it came from (or why there is none).

    ``folder/checkpoint.pt`` first, else the path ``export_report.json`` records (relative to
    the folder when not absolute), if that file still exists.
    """
    layout = ModelFolder(folder)
    if layout.checkpoint.is_file():
        return layout.checkpoint, "the model folder"
    report = layout.report_json
    if not report.is_file():
        return None, f"no {CHECKPOINT} or {REPORT_JSON} in {layout.root}"
    try:
        recorded = json.loads(report.read_text()).get("checkpoint")
    except (OSError, ValueError, AttributeError) as exc:
        return None, f"{report}: unreadable ({first_line(exc)})"
    if not isinstance(recorded, str) or not recorded:
        return None, f"{report} records no checkpoint"
    path = Path(recorded).expanduser()
    path = path if path.is_absolute() else layout.root / path
    if not path.is_file():
        return None, f"the checkpoint {path} recorded in {REPORT_JSON} is gone"
    return path, REPORT_JSON


@dataclass(frozen=True)
class ModelFiles:
    """The runnable files of one model.

    Attributes:
        source: what ``--model`` named.
        onnx: ONNX Runtime models by precision.
        engines: TensorRT engines by precision.
        checkpoint: the checkpoint (PyTorch and CuPy-fused engines), if there is one.
        checkpoint_note: where the checkpoint came from, or why there is none.
    """

    source: Path
    onnx: dict[str, Path] = field(default_factory=dict)
    engines: dict[str, Path] = field(default_factory=dict)
    checkpoint: Path | None = None
    checkpoint_note: str = ""


def find_model_files(model: str | os.PathLike) -> ModelFiles:
    """The files of a model folder, or the one file ``model`` names.

    Raises:
        PRNError: nothing there, or nothing runnable in it.
    """
    path = Path(model).expanduser()
    if path.is_dir():
        onnx = {precision_of(p): p for p in sorted(path.glob("model*.onnx")) if ".trt." not in p.name}
        engines = {precision_of(p): p for p in sorted(path.iterdir()) if p.suffix in ENGINE_SUFFIXES}
        checkpoint, note = recorded_checkpoint(path)
        files = ModelFiles(path, onnx, engines, checkpoint, note)
        if not (files.onnx or files.engines or files.checkpoint):
            raise PRNError(f"{path}: no model here (expected model.onnx, model.<precision>.engine or "
                           f"{CHECKPOINT}, as prn-export writes them) (--model)")
        return files
    if not path.is_file():
        raise PRNError(f"{path}: no such model folder or file (--model)")
    if path.suffix == ".onnx":
        if ".trt." in path.name:
            raise PRNError(f"{path}: a TensorRT plugin variant, which ONNX Runtime cannot run; give its "
                           ".engine, or model.onnx (--model)")
        return ModelFiles(path, onnx={precision_of(path): path})
    if path.suffix in ENGINE_SUFFIXES:
        return ModelFiles(path, engines={precision_of(path): path})
    if path.suffix == ".pt":
        return ModelFiles(path, checkpoint=path, checkpoint_note="--model")
    raise PRNError(f"{path}: not a model file (.onnx, .engine or .pt) (--model)")
