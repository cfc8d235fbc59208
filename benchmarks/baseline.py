"""PatchCore baseline on one category: fit on train/good, evaluate like PRN.

    python benchmarks/baseline.py --data ../shared/data/mvtec_ad/bottle --out runs/baseline/bottle
    python benchmarks/baseline.py --data ../shared/data/magnetic_tile --out runs/baseline/magnetic_tile

Fits :class:`prn_edge.baseline.patchcore.PatchCorePredictor` on every ``train/good`` image
(same frozen backbone as PRN), then scores the test split with the shared evaluation
(:func:`prn_edge.eval.evaluate.evaluate`) minus the same seen anomalies PRN training removes
(``split_seen_anomalies(test, n=10, seed=0)``), so both are measured on the same images.
Writes the evaluation report (``metrics.json``, ``report.md``, curves, cases) into ``--out``,
with the baseline's settings, fit statistics and timings under ``predictor_info`` and where it
ran (:func:`prn_edge.provenance.provenance`) under ``provenance``.

It calls the library directly rather than :func:`prn_edge.api.evaluate`: the API's
``baseline="patchcore"`` fits the default configuration and leaves out a *checkpoint's* seen
anomalies, while this script sweeps the coreset settings and draws the seen anomalies itself
(the same draw as training), so that it needs no PRN run.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="an MVTec-layout category folder")
    parser.add_argument("--out", type=Path, required=True, help="report folder (created)")
    parser.add_argument("--coreset", choices=("random", "greedy"), default="random",
                        help="coreset method (random: the default, see prn_edge/baseline/patchcore.py)")
    parser.add_argument("--fraction", type=float, default=0.1, help="coreset fraction of the patches (0.1)")
    parser.add_argument("--projection-dim", type=int, default=128,
                        help="random-projection dims for the greedy selection; 0 = full features (128)")
    parser.add_argument("--seed", type=int, default=0, help="coreset / projection seed (0)")
    parser.add_argument("--seen", type=int, default=10, help="seen anomalies left out, as PRN training (10)")
    parser.add_argument("--seen-seed", type=int, default=0, help="seed of that draw, as PRN training (0)")
    parser.add_argument("--batch-size", type=int, default=8, help="images per predict call (8)")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads (2)")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)

    import torch

    from prn_edge.baseline.patchcore import PatchCoreConfig, PatchCorePredictor
    from prn_edge.data.mvtec import scan_category, split_seen_anomalies
    from prn_edge.errors import PRNError
    from prn_edge.eval.evaluate import evaluate, relative_path
    from prn_edge.eval.report import summary_text, write_report
    from prn_edge.io import write_json_atomic, write_text_atomic
    from prn_edge.provenance import provenance, provenance_line

    torch.set_num_threads(args.threads)
    try:
        category = scan_category(args.data)
        seen, _ = split_seen_anomalies(category.test, n=args.seen, seed=args.seen_seed)
        exclude = [relative_path(s, category.root) for s in seen]
        config = PatchCoreConfig(coreset=args.coreset, coreset_fraction=args.fraction, seed=args.seed,
                                 projection_dim=args.projection_dim or None)
        t0 = time.perf_counter()
        predictor = PatchCorePredictor.fit_category(category, config, progress=not args.no_progress)
        fit_seconds = time.perf_counter() - t0
        result = evaluate(predictor, category, exclude=exclude, batch_size=args.batch_size,
                          progress=not args.no_progress)
        result.info.update({
            "baseline": "patchcore",
            "config": config.to_dict(),
            "fit": dict(predictor.fit_stats),
            # Fitted on every train/good image; the seen anomalies PRN trains on are left out.
            "train_images": len(category.train),
            "seen_anomalies": {"n": args.seen, "seed": args.seen_seed, "excluded": exclude},
            "seconds_fit": fit_seconds,
            "seconds_evaluate": result.seconds_total,
            "seconds_total": time.perf_counter() - t0,
            "torch_threads": torch.get_num_threads(),
        })
        written = write_report(result, args.out)
        origin = provenance()
        metrics = json.loads((args.out / "metrics.json").read_text())
        write_json_atomic(args.out / "metrics.json", {**metrics, "provenance": origin})
        report = (args.out / "report.md").read_text()
        write_text_atomic(args.out / "report.md", report.rstrip("\n") + "\n\n" + provenance_line(origin) + "\n")
    except PRNError as exc:
        print(f"baseline: error: {exc}", file=sys.stderr)
        return 2
    print(summary_text(result, written))
    fit = predictor.fit_stats
    print(f"fit {fit_seconds:.1f} s (features {fit['seconds_features']:.1f} s, {fit['coreset']} coreset "
          f"{fit['seconds_coreset']:.1f} s, bank {fit['bank_size']} of {fit['patches']}), "
          f"evaluation {result.seconds_total:.1f} s ({result.images_per_second:.1f} img/s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
