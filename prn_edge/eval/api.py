"""Evaluation as a function: :func:`evaluate_checkpoint` does what ``prn-eval`` does, without argv.

    from prn_edge.api import evaluate
    result = evaluate(checkpoint="runs/bottle/checkpoint.pt", data="../shared/data/mvtec_ad/bottle",
                      out="runs/bottle/eval")
    result.metrics["image_auroc"], result.written

The PyTorch model runs as :class:`prn_edge.runtime.backends.torch.TorchEngine` through the shared
evaluation (:func:`prn_edge.eval.evaluate.evaluate`); ``baseline="patchcore"`` fits and scores
the unsupervised baseline instead. Nothing is written unless the evaluation and the figures
succeeded. torch is imported when the function runs, not when this module is imported.
"""
from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prn_edge.errors import PRNError

__all__ = ["BASELINES", "EvaluateResult", "evaluate_checkpoint"]

BASELINES = ("patchcore",)
METRIC_KEYS = ("image_auroc", "pixel_auroc", "pro", "ap")

log = logging.getLogger("prn_edge.eval")


@dataclass
class EvaluateResult:
    """What :func:`evaluate_checkpoint` did.

    Attributes:
        out: the report folder.
        written: the files written into it (``metrics.json``, ``report.md``, the figures).
        metrics: the overall numbers: image / pixel AUROC, PRO, AP (fractions), ``num_images``.
        notes: warnings stated in the report (e.g. no seen-anomaly record).
        evaluation: the full :class:`~prn_edge.eval.evaluate.EvaluationResult` (scores, maps, per type).
    """

    out: Path
    written: list[Path]
    metrics: dict[str, Any]
    notes: list[str] = field(default_factory=list)
    evaluation: Any = None

    def summary_text(self) -> str:
        """The lines ``prn-eval`` prints at the end."""
        from prn_edge.eval.report import summary_text

        return summary_text(self.evaluation, self.written, self.notes)


def _positive_int(name: str, value, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise PRNError(f"{name} expects a positive integer, got {value!r}")


def evaluate_checkpoint(*, data: str | os.PathLike, out: str | os.PathLike,
                        checkpoint: str | os.PathLike | None = None, baseline: str | None = None,
                        seen_from: str | os.PathLike | None = None, device: str = "cpu", batch_size: int = 8,
                        limit: int | None = None, no_progress: bool = False,
                        warn: Callable[[str], None] | None = None) -> EvaluateResult:
    """Score a PRN checkpoint (or a baseline) on one MVTec-layout category and write the report.

    The arguments are ``prn-eval``'s flags, with the same defaults: exactly one of
    ``checkpoint`` and ``baseline``; ``seen_from`` (baseline only) leaves out the seen anomalies
    a PRN checkpoint recorded. ``warn`` receives each warning as soon as it is known (default:
    the ``prn_edge.eval`` logger); the report states them too.

    Returns:
        An :class:`EvaluateResult`.

    Raises:
        PRNError: a missing or unusable checkpoint, a bad data or output folder, bad arguments
            (one-line messages); nothing is written then.
    """
    if (checkpoint is None) == (baseline is None):
        raise PRNError("give exactly one of --checkpoint FILE and --baseline NAME")
    if baseline is not None and baseline not in BASELINES:
        raise PRNError(f"--baseline {baseline!r}: choose from {', '.join(BASELINES)}")
    _positive_int("--batch-size", batch_size)
    _positive_int("--limit", limit, allow_none=True)
    warn = warn or log.warning

    # Imports here keep `prn-eval --help` fast and torch-free.
    from prn_edge.data.mvtec import scan_category
    from prn_edge.eval.evaluate import evaluate, seen_anomalies_from
    from prn_edge.eval.report import metrics_dict, render_report, write_report
    from prn_edge.io import check_output_dir

    out = Path(out).expanduser()
    check_output_dir(out)
    category = scan_category(data)
    predictor, seen_source, notes = _make_predictor(checkpoint, baseline, seen_from, device)

    # Warnings (e.g. no seen-anomaly record) are shown now and stated in the report.
    exclude: set[str] = set()
    if seen_source is not None:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            exclude = seen_anomalies_from(seen_source, category)
        notes += [str(w.message) for w in caught]
    for note in notes:
        warn(note)

    info: dict[str, Any] = {}
    if predictor is None:  # the baseline: fitted only now, once the inputs are known to be good
        predictor, info = _fit_baseline(baseline, category, progress=not no_progress)
    result = evaluate(predictor, category, exclude=exclude, batch_size=batch_size,
                      progress=not no_progress, limit_per_type=limit)
    result.info.update(info)
    if seen_source is not None and baseline is not None and seen_source.sha256:
        result.info["seen_from_sha256"] = seen_source.sha256
    rendered = render_report(result, notes)       # everything in memory first
    written = write_report(result, out, notes, rendered=rendered)
    summary = metrics_dict(result, notes)
    metrics = {k: summary[k] for k in (*METRIC_KEYS, "num_images") if k in summary}
    return EvaluateResult(out=out, written=list(written), metrics=metrics, notes=notes, evaluation=result)


def _make_predictor(checkpoint, baseline, seen_from, device):
    """Load what can be loaded cheaply, before any long computation.

    Returns:
        ``(predictor, seen_source, notes)``: the PRN engine (None for a baseline, which is
        fitted later), the checkpoint whose seen anomalies to leave out (None: nothing to
        leave out), and notes for the report.
    """
    if checkpoint is not None:
        if seen_from is not None:
            raise PRNError("--seen-from is for --baseline only: a checkpoint's own seen anomalies "
                           "are always left out")
        engine = _torch_engine(checkpoint, device)
        return engine, engine.checkpoint, []

    from prn_edge.checkpoint import load_checkpoint

    if device != "cpu":
        raise PRNError(f"--baseline {baseline} runs on the CPU only (PatchCorePredictor has no "
                       "device option); drop --device")
    seen_source = load_checkpoint(seen_from) if seen_from is not None else None
    notes = [] if seen_source is not None else [
        (f"the {baseline} baseline is scored on the whole test split; pass --seen-from CHECKPOINT to "
         "leave out a PRN model's seen anomalies and compare both on the same images")]
    return None, seen_source, notes


def _torch_engine(checkpoint, device):
    """The checkpoint's model behind the engine contract, named ``prn:<preset>/<backbone>`` in reports."""
    from prn_edge.checkpoint import load_model
    from prn_edge.runtime.backends.torch import TorchEngine, resolve_device

    dev = resolve_device(device)      # before loading: a bad --device fails fast
    model, ckpt = load_model(checkpoint, device=dev)
    return TorchEngine(model, device=dev, checkpoint=ckpt)


def _fit_baseline(baseline: str, category, progress: bool):
    """Fit the baseline on ``train/good`` (after every cheap check has passed)."""
    from prn_edge.baseline.patchcore import PatchCorePredictor

    predictor = PatchCorePredictor.fit_category(category, progress=progress)
    info = {"baseline": baseline, "config": predictor.config.to_dict(), "fit": dict(predictor.fit_stats)}
    return predictor, info
