"""``prn-eval``: score a checkpoint on an MVTec-layout category and write the report.

The command is a thin view of the API::

    predictor = TorchPRNPredictor.from_checkpoint(checkpoint, device)
    category = scan_category(data)
    result = evaluate(predictor, category, exclude=seen_anomalies_from(predictor.checkpoint, category))
    write_report(result, out)

``--baseline patchcore`` scores the unsupervised PatchCore baseline
(:mod:`prn_edge.baseline.patchcore`, fitted on the category's ``train/good`` images) through
the same evaluation instead; ``--seen-from CHECKPOINT`` then leaves out that PRN
checkpoint's seen anomalies, so that both are scored on the same images.

Every user error (a missing checkpoint, a bad data folder, an unwritable output folder) is
one line ``prn-eval: error: ...`` and exit status 2, and leaves no output behind: the
output folder is created only once the evaluation and the figures have succeeded.
"""
from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

from prn_edge.cli import ArgumentParser, positive_int, run_cli
from prn_edge.errors import PRNError
from prn_edge.io import check_output_dir

PROG = "prn-eval"
BASELINES = ("patchcore",)

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``prn-eval``."""
    p = ArgumentParser(
        prog=PROG,
        description="Evaluate a PRN checkpoint (or the PatchCore baseline) on one MVTec-layout category "
                    "(test/<type>, ground_truth/<type>): image AUROC, pixel AUROC, PRO (FPR up to 0.3) and "
                    "pixel AP, overall and per defect type, at the model's input size. The seen anomalies the "
                    "checkpoint trained on (recorded in its metadata) are left out of the evaluation. Writes "
                    "OUT/metrics.json, report.md, roc.png, pr.png and cases.png.",
        epilog="examples:\n"
               "  prn-eval --checkpoint runs/bottle/checkpoint.pt --data ../shared/data/mvtec_ad/bottle "
               "--out runs/bottle/eval\n"
               "  prn-eval --checkpoint ckpt.pt --data DIR --out /tmp/quick --limit 2   # quick check, "
               "2 images per type\n"
               "  prn-eval --checkpoint ckpt.pt --data DIR --out OUT --device cuda --batch-size 32\n"
               "  prn-eval --baseline patchcore --seen-from ckpt.pt --data DIR --out OUT   # side by side\n\n"
               "Python: prn_edge.eval.evaluate.evaluate(TorchPRNPredictor.from_checkpoint(...), "
               "scan_category(...), exclude=...)",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    model = p.add_mutually_exclusive_group(required=True)
    model.add_argument("--checkpoint", type=Path, metavar="FILE",
                       help="checkpoint.pt written by prn-train (or save_checkpoint)")
    model.add_argument("--baseline", choices=BASELINES,
                       help="instead of a checkpoint, fit and score an unsupervised baseline on the "
                            "category's train/good images (CPU)")
    p.add_argument("--seen-from", type=Path, metavar="FILE",
                   help="with --baseline: leave out the seen anomalies recorded in this PRN checkpoint, "
                        "so the baseline is scored on the same images as that model")
    p.add_argument("--data", required=True, type=Path, metavar="DIR",
                   help="category folder in the MVTec layout, e.g. ../shared/data/mvtec_ad/bottle")
    p.add_argument("--out", required=True, type=Path, metavar="DIR",
                   help="output folder for the report (created after a successful evaluation)")
    p.add_argument("--device", default="cpu", help="torch device: cpu (default), cuda, cuda:N")
    p.add_argument("--batch-size", type=positive_int, default=8, metavar="N",
                   help="images per forward pass (default 8)")
    p.add_argument("--limit", type=positive_int, default=None, metavar="N",
                   help="evaluate only the first N images of each type (good and each defect), for quick "
                        "checks; the numbers are then not comparable with a full run")
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    return p


def _make_predictor(args: argparse.Namespace):
    """Load what can be loaded cheaply, before any long computation.

    Returns:
        ``(predictor, seen_source, notes)``: the PRN predictor (None for a baseline, which is
        fitted later), the checkpoint whose seen anomalies to leave out (None: nothing to
        leave out), and notes for the report.
    """
    from prn_edge.eval.predictors import TorchPRNPredictor

    if args.checkpoint is not None:
        if args.seen_from is not None:
            raise PRNError("--seen-from is for --baseline only: a checkpoint's own seen anomalies "
                           "are always left out")
        predictor = TorchPRNPredictor.from_checkpoint(args.checkpoint, device=args.device)
        return predictor, predictor.checkpoint, []

    from prn_edge.checkpoint import load_checkpoint

    if args.device != "cpu":
        raise PRNError(f"--baseline {args.baseline} runs on the CPU only (PatchCorePredictor has no "
                       "device option); drop --device")
    seen_source = load_checkpoint(args.seen_from) if args.seen_from is not None else None
    notes = [] if seen_source is not None else [
        f"the {args.baseline} baseline is scored on the whole test split; pass --seen-from CHECKPOINT to "
        "leave out a PRN model's seen anomalies and compare both on the same images"]
    return None, seen_source, notes


def _fit_baseline(args: argparse.Namespace, category):
    """Fit the baseline on ``train/good`` (after every cheap check has passed)."""
    from prn_edge.baseline.patchcore import PatchCorePredictor

    predictor = PatchCorePredictor.fit_category(category, progress=not args.no_progress)
    info = {"baseline": args.baseline, "config": predictor.config.to_dict(), "fit": dict(predictor.fit_stats)}
    return predictor, info


def _run(args: argparse.Namespace) -> int:
    # Imports here keep `prn-eval --help` fast and torch-free.
    from prn_edge.data.mvtec import scan_category
    from prn_edge.eval.evaluate import evaluate, seen_anomalies_from
    from prn_edge.eval.report import render_report, summary_text, write_report

    out = args.out.expanduser()
    check_output_dir(out)
    category = scan_category(args.data)
    predictor, seen_source, notes = _make_predictor(args)

    # Warnings (e.g. no seen-anomaly record) are shown now and stated in the report.
    exclude: set[str] = set()
    if seen_source is not None:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            exclude = seen_anomalies_from(seen_source, category)
        notes += [str(w.message) for w in caught]
    for note in notes:
        print(f"{PROG}: warning: {note}", file=sys.stderr)

    info = {}
    if predictor is None:  # the baseline: fitted only now, once the inputs are known to be good
        predictor, info = _fit_baseline(args, category)
    result = evaluate(predictor, category, exclude=exclude, batch_size=args.batch_size,
                      progress=not args.no_progress, limit_per_type=args.limit)
    result.info.update(info)
    if seen_source is not None and args.baseline is not None and seen_source.sha256:
        result.info["seen_from_sha256"] = seen_source.sha256
    rendered = render_report(result, notes)       # everything in memory first
    written = write_report(result, out, notes, rendered=rendered)
    print(summary_text(result, written, notes))
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``prn-eval``; returns the exit status (0, or 2 for a user error).

    Args:
        argv: the arguments (default: ``sys.argv[1:]``).
    """
    args = build_parser().parse_args(argv)
    return run_cli(PROG, lambda: _run(args))


if __name__ == "__main__":
    raise SystemExit(main())
