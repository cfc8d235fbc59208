"""``prn-eval``: score a checkpoint on an MVTec-layout category and write the report.

The command is a thin view of :func:`prn_edge.eval.api.evaluate_checkpoint` (``prn_edge.api.evaluate``),
which does::

    engine = TorchEngine(model, device=device, checkpoint=ckpt)     # model, ckpt = load_model(checkpoint)
    category = scan_category(data)
    result = evaluate(engine, category, exclude=seen_anomalies_from(engine.checkpoint, category))
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
from pathlib import Path

from prn_edge.cli import ArgumentParser, positive_int, run_cli
from prn_edge.eval.api import BASELINES

PROG = "prn-eval"

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
               "Python: prn_edge.api.evaluate(checkpoint=..., data=..., out=...)",
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


def _run(args: argparse.Namespace) -> int:
    from prn_edge.eval.api import evaluate_checkpoint

    result = evaluate_checkpoint(data=args.data, out=args.out, checkpoint=args.checkpoint, baseline=args.baseline,
                                 seen_from=args.seen_from, device=args.device, batch_size=args.batch_size,
                                 limit=args.limit, no_progress=args.no_progress,
                                 warn=lambda note: print(f"{PROG}: warning: {note}", file=sys.stderr))
    print(result.summary_text())
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
