"""Issue 13, ablation: the paper's image match against the patch match and the residual prior, trained.

Each run trains an edge PRN with ``prn_edge.api.train`` for the same number of steps (batch 8,
seed 0, the CLI's defaults otherwise), evaluates its final checkpoint with its 10 seen anomalies
left out, and scores the same-backbone PatchCore baseline on the same images. Sets: the real ones
and the variation sets of ``benchmarks/variations.py`` (shifted, rotated, rescaled or darker
copies of bottle).

Usage:
    python benchmarks/match_ablation.py --data ../shared/data/magnetic_tile runs/variations/bottle-unaligned \\
        --steps 120 --runs runs/match_ablation --results benchmarks/results
Runs already done (their ``metrics.json`` present) are skipped, so the script can be resumed.
Writes ``match_ablation.md`` / ``.json`` (``--name`` another stem). ``--minutes 20 --seed 0,1`` is the
issue's budget: 20 minutes of wall clock per run, two seeds (each seed draws its own seen anomalies,
and PatchCore is scored on each seed's images).
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from prn_edge.api import evaluate, train  # noqa: E402
from prn_edge.io import write_json_atomic, write_text_atomic  # noqa: E402
from prn_edge.provenance import provenance, provenance_line  # noqa: E402

# name -> prn-train options (on top of --config edge)
VARIANTS = {
    "image": {"match": "image", "prior": False},          # the paper's PRN (the edge preset before issue 13)
    "patch+prior": {"match": "patch", "prior": True},
    "image+prior": {"match": "image", "prior": True},
    "patch": {"match": "patch", "prior": False},
    "patch+prior+pool3-inside": {"match": "patch", "prior": True, "match_pooling": 3, "match_pooling_border": "inside"},
    "patch+prior+pool3": {"match": "patch", "prior": True, "match_pooling": 3, "match_pooling_border": "zeros"},
    "patch+prior+pool3+s23": {"match": "patch", "prior": True, "match_pooling": 3, "match_pooling_border": "zeros",
                              "prior_scales": "2,3"},
    "patch+prior+cosine+select": {"match": "patch", "prior": True, "lr_schedule": "cosine", "select_best": True},
    "patch+prior+pool3+s23+cosine+select": {"match": "patch", "prior": True, "match_pooling": 3,
                                            "match_pooling_border": "zeros", "prior_scales": "2,3",
                                            "lr_schedule": "cosine", "select_best": True},
}
METRICS = ("image_auroc", "pixel_auroc", "pro", "ap")


def run_folder(runs: Path, data: Path, variant: str, seed: int, minutes: float | None) -> Path:
    return runs / (f"{data.name}-{variant}-s{seed}" + (f"-m{minutes:g}" if minutes else ""))


def run(data: Path, variant: str, steps: int, runs: Path, seed: int, threads: int, minutes: float | None = None) -> dict:
    out = run_folder(runs, data, variant, seed, minutes)
    metrics_path = out / "eval" / "metrics.json"
    if not metrics_path.exists():
        if not (out / "checkpoint.pt").exists():
            budget = {"minutes": minutes} if minutes else {"steps": steps}
            train(data, out, config="edge", batch_size=8, seed=seed, threads=threads, quiet=True,
                  resume=(out / "train_state.pt").exists(), **budget, **VARIANTS[variant])
        evaluate(data=data, out=out / "eval", checkpoint=out / "checkpoint.pt", no_progress=True)
    metrics = json.loads(metrics_path.read_text())
    return {m: 100 * metrics[m] for m in METRICS}


def baseline(data: Path, seen_from: Path, runs: Path, seed: int = 0) -> dict:
    out = runs / (f"{data.name}-patchcore" + (f"-s{seed}" if seed else ""))
    if not (out / "metrics.json").exists():
        evaluate(data=data, out=out, baseline="patchcore", seen_from=seen_from, no_progress=True)
    metrics = json.loads((out / "metrics.json").read_text())
    return {m: 100 * metrics[m] for m in METRICS}


def render(rows: list[dict], steps: int, origin: dict, minutes: float | None = None, seed: str = "0") -> str:
    def cell(m: dict | None) -> str:
        return " / ".join(f"{m[k]:.1f}" for k in METRICS) if m else "-"

    variants = [v for v in VARIANTS if any(v in r["runs"] for r in rows)]
    budget = f"--minutes {minutes:g}" if minutes else f"--steps {steps}"
    trained = f"{minutes:g} minutes of wall clock on 2 cores" if minutes else f"{steps} steps"
    lines = ["# Prototype match and residual prior, trained (issue 13)", "",
             f"Produced by `python benchmarks/match_ablation.py {budget} --seed {seed}`. Edge preset "
             f"(EfficientNet-Lite0), {trained} at batch 8, seed {seed} (per row), every other option at prn-train's default (no DTD folder beside "
             "the variation sets). Final checkpoints; each run's 10 seen anomalies left out, PatchCore scored on "
             "the same images. Metrics in percent: image AUROC / pixel AUROC / PRO@0.3 / AP. A run found on disk "
             "(its metrics.json) is reused, so rows may come from earlier commits of the same code path.", "",
             "| set | seed | " + " | ".join(variants) + " | PatchCore |", "|---|---|" + "---|" * (len(variants) + 1)]
    for r in rows:
        lines.append(f"| {r['data']} | {r.get('seed', 0)} | " + " | ".join(cell(r["runs"].get(v)) for v in variants)
                     + f" | {cell(r['patchcore'])} |")
    lines += ["", provenance_line(origin), ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, nargs="+", required=True, help="MVTec-layout categories")
    parser.add_argument("--variants", default="image,patch+prior", help=f"comma-separated, of {', '.join(VARIANTS)}")
    parser.add_argument("--steps", type=int, default=120)
    parser.add_argument("--minutes", type=float, default=None, help="train for M minutes instead of --steps")
    parser.add_argument("--name", default="match_ablation", help="results file stem")
    parser.add_argument("--seed", default="0", help="seed, or seeds separated by commas (0,1)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=Path, default=REPO / "runs" / "match_ablation")
    parser.add_argument("--results", type=Path, default=REPO / "benchmarks" / "results")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    variants = args.variants.split(",")
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        parser.error(f"unknown variant(s) {', '.join(unknown)}: choose of {', '.join(VARIANTS)}")
    try:
        seeds = [int(x) for x in args.seed.split(",")]
    except ValueError:
        parser.error(f"--seed {args.seed!r}: give integers separated by commas")
    rows = []
    for data in args.data:
        for seed in seeds:
            row = {"data": data.name, "seed": seed, "runs": {}}
            for variant in variants:
                row["runs"][variant] = run(data, variant, args.steps, args.runs, seed, args.threads, args.minutes)
                print(f"{data.name} seed {seed} {variant}: {row['runs'][variant]}", flush=True)
            first = run_folder(args.runs, data, variants[0], seed, args.minutes) / "checkpoint.pt"
            row["patchcore"] = baseline(data, first, args.runs, seed)
            print(f"{data.name} seed {seed} patchcore: {row['patchcore']}", flush=True)
            rows.append(row)
    origin = provenance()
    args.results.mkdir(parents=True, exist_ok=True)
    write_json_atomic(args.results / f"{args.name}.json", {"steps": args.steps, "minutes": args.minutes,
                                                            "seed": args.seed, "rows": rows, "provenance": origin})
    write_text_atomic(args.results / f"{args.name}.md", render(rows, args.steps, origin, args.minutes, args.seed))
    print(f"wrote {args.results / (args.name + '.md')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
