"""Which backends a model offers, as the runtime's loader sees them, and how to open each one.

The runtime decides what a model folder holds and how an engine is built
(:func:`prn_edge.runtime.loader.plan_engines` / :func:`~prn_edge.runtime.loader.load_engine`);
the benchmark only asks it for *every* candidate instead of the best one, so ``prn-bench``
and ``prn-inspect`` run exactly the same engines. Candidates that cannot run here are kept
with the runtime's reason, so a report says what was not measured and why.

The PyTorch reference needs the training checkpoint: ``--checkpoint FILE``, else
``DIR/checkpoint.pt``, else the path that ``DIR/export_report.json`` records under
``"checkpoint"`` (relative to ``DIR``).
"""
from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prn_edge.errors import PRNError, first_line

__all__ = ["BACKENDS", "PRECISIONS", "Candidate", "discover", "find_checkpoint", "matches"]

#: Backend names of the runtime's loader, plus ``onnxruntime`` for both of its providers here.
BACKENDS = ("torch", "onnxruntime", "onnxruntime-cpu", "onnxruntime-cuda", "tensorrt", "cupy-fused")
PRECISIONS = ("fp32", "fp16", "int8")
REPORT_FILE = "export_report.json"


@dataclass
class Candidate:
    """One (backend, precision) of a model.

    Attributes:
        backend, precision: what it is (backend as the runtime names it).
        path: the file it loads (None when there is none).
        available: whether it can run here.
        reason: why not, or why it is not run by default.
        open: builds the engine (None when not available).
        default: run when the user names no precision (FP16 on the CPU provider is opt-in).
    """

    backend: str
    precision: str
    path: Path | None
    available: bool
    reason: str = ""
    open: Callable[[], Any] | None = field(default=None, repr=False)
    default: bool = True

    @property
    def key(self) -> str:
        return f"{self.backend}:{self.precision}"


def matches(candidate: Candidate, backends: list[str] | None, precisions: list[str] | None) -> bool:
    """Whether the user's ``--backends`` / ``--precisions`` select this candidate."""
    if backends is not None and candidate.backend not in backends and not (
            "onnxruntime" in backends and candidate.backend.startswith("onnxruntime-")):
        return False
    return precisions is None or candidate.precision in precisions


def find_checkpoint(model_dir: Path, checkpoint: str | os.PathLike | None) -> tuple[Path | None, str]:
    """The checkpoint for the PyTorch backend and the FLOP count, and where it came from (or why none)."""
    if checkpoint is not None:
        path = Path(checkpoint).expanduser()
        if not path.is_file():
            raise PRNError(f"{path}: no such checkpoint (--checkpoint)")
        return path, "--checkpoint"
    if (model_dir / "checkpoint.pt").is_file():
        return model_dir / "checkpoint.pt", "the model folder"
    report = model_dir / REPORT_FILE
    if not report.is_file():
        return None, f"no checkpoint.pt or {REPORT_FILE} in {model_dir}: pass --checkpoint FILE"
    try:
        recorded = json.loads(report.read_text()).get("checkpoint")
    except (OSError, ValueError, AttributeError) as exc:
        return None, f"{report}: unreadable ({first_line(exc)}); pass --checkpoint FILE"
    if not recorded:
        return None, f"{report} records no checkpoint; pass --checkpoint FILE"
    path = Path(recorded).expanduser()
    path = path if path.is_absolute() else model_dir / path
    if not path.is_file():
        return None, f"the checkpoint {path} recorded in {report.name} is gone; pass --checkpoint FILE"
    return path, report.name


def discover(model_dir: str | os.PathLike, *, checkpoint: str | os.PathLike | None = None, threads: int = 0,
             device: str | None = None) -> tuple[list[Candidate], Path | None]:
    """Every (backend, precision) of ``model_dir``, each available or with the reason it is not.

    Args:
        model_dir: the export folder.
        checkpoint: the PyTorch checkpoint (default: see :func:`find_checkpoint`).
        threads: intra-op threads for torch and ONNX Runtime (0: their default, all cores).
        device: torch device for the torch / CuPy-fused engines (None: cuda if usable, else cpu).

    Returns:
        ``(candidates, checkpoint)``, candidates in the runtime's order of preference.

    Raises:
        PRNError: ``model_dir`` is not a model folder, or ``--checkpoint`` names a missing file.
    """
    from prn_edge.runtime.loader import find_model_files, load_engine, plan_engines

    model_dir = Path(model_dir).expanduser()
    if not model_dir.is_dir():
        raise PRNError(f"{model_dir}: no such model folder (--model); export one with prn-export, "
                       "or run the demo first: python -m prn_edge.demo")
    ckpt, where = find_checkpoint(model_dir, checkpoint)
    files = find_model_files(model_dir)
    if ckpt is not None:
        files = dataclasses.replace(files, checkpoint=ckpt)
    out: list[Candidate] = []
    for c in plan_engines(files, "auto"):
        if c.path is None or not c.available:
            reason = c.reason if c.backend != "torch" or ckpt is not None else f"{c.reason}; {where}"
            out.append(Candidate(c.backend, c.precision, c.path, False, reason))
            continue

        def _open(c=c):
            return load_engine(c.path, c.backend, precision=c.precision, threads=threads, device=device)

        cpu_fp16 = c.backend == "onnxruntime-cpu" and c.precision == "fp16"
        out.append(Candidate(c.backend, c.precision, c.path, True,
                             "not run by default: ONNX Runtime's CPU provider has few FP16 kernels (casts around "
                             "most ops); ask for it with --precisions fp16" if cpu_fp16 else "",
                             open=_open, default=not cpu_fp16))
    return out, ckpt
