"""Which backends a model offers, as the runtime's loader sees them.

The loader (:func:`prn_edge.runtime.loader.plan_engines`) decides what a model folder holds and
how each engine is built; the benchmark only asks it for *every* candidate instead of the best
one, so ``prn-bench`` and ``prn-inspect`` run exactly the same engines. Candidates that cannot
run here are kept with the loader's reason, so a report says what was not measured and why.

The PyTorch reference needs the training checkpoint: ``--checkpoint FILE``, else the one the
model folder offers (:func:`prn_edge.contract.model_folder.recorded_checkpoint`).
"""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from prn_edge.contract.model_folder import find_model_files
from prn_edge.errors import PRNError
from prn_edge.runtime.loader import Candidate, plan_engines

__all__ = ["BACKENDS", "PRECISIONS", "discover", "matches"]

#: Backend names of the runtime's loader, plus ``onnxruntime`` for both of its providers here.
BACKENDS = ("torch", "onnxruntime", "onnxruntime-cpu", "onnxruntime-cuda", "tensorrt", "cupy-fused")
PRECISIONS = ("fp32", "fp16", "int8")


def matches(candidate: Candidate, backends: list[str] | None, precisions: list[str] | None) -> bool:
    """Whether the user's ``--backends`` / ``--precisions`` select this candidate."""
    if backends is not None and candidate.backend not in backends and not (
            "onnxruntime" in backends and candidate.backend.startswith("onnxruntime-")):
        return False
    return precisions is None or candidate.precision in precisions


def discover(model_dir: str | os.PathLike, *, checkpoint: str | os.PathLike | None = None, threads: int = 0,
             device: str | None = None) -> tuple[list[Candidate], Path | None]:
    """Every (backend, precision) of ``model_dir``, each available or with the reason it is not.

    Args:
        model_dir: the export folder.
        checkpoint: the PyTorch checkpoint (default: the one the folder offers).
        threads: intra-op threads for torch and ONNX Runtime (0: their default, all cores).
        device: torch device for the torch / CuPy-fused engines (None: cuda if usable, else cpu).

    Returns:
        ``(candidates, checkpoint)``, candidates in the runtime's order of preference; each
        available one opens with :meth:`Candidate.open`.

    Raises:
        PRNError: ``model_dir`` is not a model folder, or ``--checkpoint`` names a missing or
            unreadable file.
    """
    model_dir = Path(model_dir).expanduser()
    if not model_dir.is_dir():
        raise PRNError(f"{model_dir}: no such model folder (--model); export one with prn-export, "
                       "or run the demo first: python -m prn_edge.demo")
    files = find_model_files(model_dir)
    if checkpoint is not None:
        path = Path(checkpoint).expanduser()
        if not path.is_file():
            raise PRNError(f"{path}: no such checkpoint (--checkpoint)")
        # Asked for by name, so an unreadable one is an error now, not a missing row after the run.
        from prn_edge.checkpoint import load_checkpoint
        load_checkpoint(path)
        files = dataclasses.replace(files, checkpoint=path, checkpoint_note="--checkpoint")
    elif files.checkpoint is None:
        files = dataclasses.replace(files, checkpoint_note=f"{files.checkpoint_note}: pass --checkpoint FILE")
    return plan_engines(files, "auto", threads=threads, device=device), files.checkpoint
