"""Export as a function: :func:`export` does what ``prn-export`` does, without argv.

    from prn_edge.api import export
    result = export("runs/bottle/checkpoint.pt", fp16=True, int8=True)
    result.status          # 0 ok, 1 INT8 accuracy gate failed (everything else written)
    result.models          # {"fp32": .../model.onnx, "fp16": ..., "int8": ...}

A keyword-argument front of :func:`prn_edge.export.pipeline.run_export` (:class:`ExportOptions`)
with ``prn-export``'s flag names and defaults. torch and onnx are imported when it runs.
"""
from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prn_edge.contract.model_folder import resolve_model_folder
from prn_edge.errors import PRNError
from prn_edge.export.int8 import DEFAULT_CALIBRATION_METHOD, check_calibration_method
from prn_edge.validate import MAX_SEED, MAX_THREADS, check_number

__all__ = ["EXIT_INT8_GATE", "ExportResult", "export", "summary_text"]

PROG = "prn-export"
#: The exit status of an export whose INT8 model missed its accuracy gate (the rest was written).
EXIT_INT8_GATE = 1


@dataclass
class ExportResult:
    """What :func:`export` did.

    Attributes:
        out: the output folder.
        status: 0 ok, :data:`EXIT_INT8_GATE` when the INT8 model missed its gate and was left out.
        report: the export report (as written to the published version's ``export_report.json``).
        models: the ONNX file written per precision (``fp32``, ``fp16``, ``int8``).
        files: every file of the published version (``OUT/versions/vNNNNNN/``).
    """

    out: Path
    status: int
    report: dict[str, Any]
    models: dict[str, Path] = field(default_factory=dict)
    files: list[Path] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.status == 0

    def summary_text(self) -> str:
        """The lines ``prn-export`` prints at the end."""
        return summary_text(self.report)


def summary_text(report: dict) -> str:
    """A few lines for the terminal."""
    lines = [f"{PROG}: {report['status']}"]
    for r in report["precisions"].values():
        acc = ""
        if "image_auroc" in r:
            acc = (f" image AUROC {100 * r['image_auroc']:.1f}, pixel AUROC {100 * r['pixel_auroc']:.1f}, "
                   f"PRO {100 * r['pro']:.1f} (worst Δ {min(r['delta_points'][k] for k in ('image_auroc', 'pixel_auroc', 'pro')):+.2f})")
        lines.append(f"  {r['file']}: {r.get('bytes', 0) / 1e6:.1f} MB{acc}")
    latency = report.get("latency")
    if latency:
        lines.append("  latency (ms, batch 1): " + ", ".join(f"{k} {v}" for k, v in latency["median_ms"].items()))
    return "\n".join(lines)


def _positive_int(flag: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise PRNError(f"{flag} expects a positive integer, got {value!r}")
    return value


def export(checkpoint: str | os.PathLike, *, out: str | os.PathLike | None = None, fp16: bool = False,
           int8: bool = False, cpu_int8: bool = False, engine: bool = False,
           calib: str | os.PathLike | None = None, calib_count: int = 32,
           calib_method: str = DEFAULT_CALIBRATION_METHOD, calib_percentile: float | None = None,
           data: str | os.PathLike | None = None, tolerance: float = 0.5, int8_budget: float | None = None,
           seed: int = 0, threads: int = 2,
           latency_rounds: int = 15, max_batch: int = 8, plugin_lib: str | os.PathLike | None = None,
           no_progress: bool = False, command: str | None = None,
           say: Callable[[str], None] | None = None) -> ExportResult:
    """Export a PRN checkpoint for deployment (``prn-export``).

    Always writes ``OUT/model.onnx`` (FP32), its TensorRT variant and ``export_report.json/.md``;
    ``fp16`` / ``int8`` add those precisions (INT8 only if it keeps image AUROC, pixel AUROC and
    PRO within ``tolerance`` points of FP32), ``cpu_int8`` the CPU flavour ``model.int8.cpu.onnx``
    (U8 activations; the same gate with AP gated too, kept only if measured at least
    :data:`~prn_edge.export.pipeline.CPU_INT8_MIN_SPEEDUP` x faster than FP32), ``engine`` a
    TensorRT engine per precision. The
    arguments are ``prn-export``'s flags, same defaults (``out`` defaults to ``export`` beside
    the checkpoint; ``calib_method`` is minmax, percentile or entropy, ``calib_percentile`` the percentile
    method's); ``say`` receives progress lines (default: stderr, ``prn-export: ...``),
    ``command`` is what the report records as the command (default: this call).

    Returns:
        An :class:`ExportResult`; ``status`` 1 when an INT8 gate failed (everything else written).

    Raises:
        PRNError: bad input (nothing written), or a failing step (the output folder as before).
    """
    _positive_int("--calib-count", calib_count)
    check_calibration_method(calib_method, calib_percentile)
    check_number("--threads", threads, low=1, high=MAX_THREADS, integer=True, optional=False)
    check_number("--seed", seed, low=0, high=MAX_SEED, integer=True, optional=False)
    _positive_int("--latency-rounds", latency_rounds)
    _positive_int("--max-batch", max_batch)
    if isinstance(tolerance, bool) or not isinstance(tolerance, (int, float)) or not math.isfinite(tolerance) \
            or not 0 <= tolerance <= 100:
        raise PRNError(f"--tolerance expects points from 0 to 100, got {tolerance!r}")
    check_number("--int8-budget", int8_budget, low=0, high=1440, low_open=True)
    checkpoint = Path(checkpoint)
    out = Path(out) if out is not None else checkpoint.expanduser().parent / "export"

    from prn_edge.export.pipeline import ExportOptions, run_export

    if command is None:
        command = f"prn_edge.api.export({str(checkpoint)!r}, out={str(out)!r}, fp16={fp16}, int8={int8}, " \
                  f"engine={engine})"
    options = ExportOptions(
        checkpoint=checkpoint, out=out, fp16=fp16, int8=int8, cpu_int8=cpu_int8, engine=engine,
        calib=None if calib is None else Path(calib), calib_count=calib_count, calib_method=calib_method,
        calib_percentile=None if calib_percentile is None else float(calib_percentile),
        data=None if data is None else Path(data), tolerance=float(tolerance),
        int8_budget=None if int8_budget is None else float(int8_budget), seed=seed, threads=threads,
        latency_rounds=latency_rounds, max_batch=max_batch,
        plugin_library=None if plugin_lib is None else Path(plugin_lib), progress=not no_progress,
        command=command)
    report, status = run_export(options, say)   # say None: run_export's own "prn-export: ..." lines on stderr
    folder = out.expanduser()
    published = resolve_model_folder(folder, verify=False).root           # the version just published
    models = {p: published / r["file"] for p, r in report.get("precisions", {}).items() if "file" in r}
    files = sorted(p for p in published.iterdir() if p.is_file())
    return ExportResult(out=folder, status=status, report=report, models=models, files=files)
