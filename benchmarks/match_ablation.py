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

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from prn_edge.api import evaluate, train  # noqa: E402
from prn_edge.io import write_json_atomic, write_text_atomic  # noqa: E402
from prn_edge.provenance import provenance, provenance_line  # noqa: E402

# name -> prn-train options (on top of --config edge --defaults paper: each variant names all it changes)
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
    # the simulated anomalies' texture source every user has (no DTD folder): crops of the bundled photos
    "patch+prior+pool3+s23+cosine+select+builtin": {"match": "patch", "prior": True, "match_pooling": 3,
                                                    "match_pooling_border": "zeros", "prior_scales": "2,3",
                                                    "lr_schedule": "cosine", "select_best": True,
                                                    "textures": "builtin"},
    # a fifth of the learning rate: the decoder starts at zero and, at 1e-4, drifts from the prior
    # within a few hundred steps (magnetic tile's pixel AUROC 79.0 at 120 steps, 75.0 at 20 minutes)
    "patch+prior+pool3+s23+cosine+select+builtin+lr2e-5": {"match": "patch", "prior": True, "match_pooling": 3,
                                                           "match_pooling_border": "zeros", "prior_scales": "2,3",
                                                           "lr_schedule": "cosine", "select_best": True,
                                                           "textures": "builtin", "lr": 2e-5},
    # prn-train's own defaults (prn_edge/defaults.py): the variant above with the map blurred at sigma 4
    "measured": {"defaults": "measured"},
    # the same with depthwise-separable MSA blocks (issue 16: the edge model's heaviest convolutions on a CPU)
    "measured+separable": {"defaults": "measured", "msa_block": "separable"},
}
METRICS = ("image_auroc", "pixel_auroc", "pro", "ap")


def run_folder(runs: Path, data: Path, variant: str, seed: int, minutes: float | None) -> Path:
    return runs / (f"{data.name}-{variant}-s{seed}" + (f"-m{minutes:g}" if minutes else ""))


def add_checkpoint_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of a script that re-scores this ablation's checkpoints post hoc (map_smoothing.py,
    decoder_map_weight.py): the sets, the budget naming the run folders, and where PatchCore's cells are."""
    parser.add_argument("--data", type=Path, nargs="+", required=True, help="MVTec-layout categories")
    parser.add_argument("--minutes", type=float, default=20.0, help="the match ablation's budget (its run folders)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=Path, default=REPO / "runs" / "match_ablation")
    parser.add_argument("--ablation", type=Path, nargs="+",
                        default=[REPO / "benchmarks" / "results" / "match_ablation_20min.json"],
                        help="results files of the match ablation (PatchCore's cells; a later file's cell wins)")
    parser.add_argument("--results", type=Path, default=REPO / "benchmarks" / "results")


def parse_checkpoint_arguments(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """Parse the options of :func:`add_checkpoint_arguments`, set up logging and torch's threads, and refuse
    data folders that do not exist."""
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    missing = [str(d) for d in args.data if not d.is_dir()]
    if missing:
        parser.error(f"no such data folder: {', '.join(missing)}")
    return args


def patchcore_cells(paths: list[Path]) -> dict[tuple[str, int], dict | None]:
    """``{(set, seed): PatchCore's metrics}`` from results files of this ablation (files that do not exist add
    nothing)."""
    rows = [r for path in paths if path.exists() for r in json.loads(path.read_text())["rows"]]
    return {(r["data"], r.get("seed", 0)): r["patchcore"] for r in rows if r.get("patchcore")}


def run(data: Path, variant: str, steps: int, runs: Path, seed: int, threads: int, minutes: float | None = None) -> dict:
    out = run_folder(runs, data, variant, seed, minutes)
    metrics_path = out / "eval" / "metrics.json"
    if not metrics_path.exists():
        if not (out / "checkpoint.pt").exists():
            budget = {"minutes": minutes} if minutes else {"steps": steps}
            options = {"defaults": "paper", **VARIANTS[variant]}
            train(data, out, config="edge", batch_size=8, seed=seed, threads=threads, quiet=True,
                  resume=(out / "train_state.pt").exists(), **budget, **options)
        evaluate(data=data, out=out / "eval", checkpoint=out / "checkpoint.pt", no_progress=True)
    metrics = json.loads(metrics_path.read_text())
    cell = {m: 100 * metrics[m] for m in METRICS}
    # A budget in minutes reaches a machine-dependent number of steps: the table says how many.
    checkpoint = torch.load(out / "checkpoint.pt", map_location="cpu", weights_only=True)
    training = checkpoint["metadata"]["training"]
    cell["steps"] = training["steps"]
    cell["selected_step"] = training.get("selection", {}).get("selected_step")
    cell["score_prior_share"] = checkpoint["config"].get("score_prior_share", 0.0)   # the image score it trained with
    # The learning curve on held-out data (never the test set): [step, validation score] at each validation.
    if training.get("selection", {}).get("scores"):
        cell["validation"] = training["selection"]["scores"]
        cell["minutes"] = round(training["seconds"] / 60, 2)
    return cell


def baseline(data: Path, seen_from: Path, runs: Path, seed: int = 0) -> dict:
    out = runs / (f"{data.name}-patchcore" + (f"-s{seed}" if seed else ""))
    if not (out / "metrics.json").exists():
        evaluate(data=data, out=out, baseline="patchcore", seen_from=seen_from, no_progress=True)
    metrics = json.loads((out / "metrics.json").read_text())
    return {m: 100 * metrics[m] for m in METRICS}


def render(rows: list[dict], steps: int, origin: dict, minutes: float | None = None, seed: str = "0",
           reused_from: str | None = None) -> str:
    def cell(m: dict | None, kept: bool = False) -> str:
        return " / ".join(f"{m[k]:.1f}" for k in METRICS) + (" *" if kept else "") if m else "-"

    variants = [v for v in VARIANTS if any(v in r["runs"] for r in rows)]
    budget = f"--minutes {minutes:g}" if minutes else f"--steps {steps}"
    trained = f"{minutes:g} minutes of wall clock on 2 cores" if minutes else f"{steps} steps"
    lines = ["# Prototype match and residual prior, trained (issue 13)", "",
             f"Produced by `python benchmarks/match_ablation.py {budget} --seed {seed}`. Edge preset "
             f"(EfficientNet-Lite0), {trained} at batch 8, seed {seed} (per row), every other option as PRN was published "
             "(`--defaults paper`: Adam at a constant 1e-4, no DTD folder beside the variation sets), except `measured`: "
             "prn-train's own defaults (`--defaults measured`) at the run's commit: the `...+lr2e-5` variant with the map blurred "
             "at sigma 4 (`map_smoothing.md` adds that blur to the seed-0 checkpoints) and, in runs from commit edc0193 on, the "
             "decoder's correction at 0.75 in the map (`decoder_map_weight.md`; each checkpoint records its config), and "
             "`measured+separable`: the same "
             "with depthwise-separable MSA blocks (`--msa-block separable`, issue 16). Final checkpoints (`select`: the step that scored best on the held-out normal images and "
             "their synthesized anomalies; `builtin`: `--textures builtin`, crops of the bundled photos as the simulated "
             "anomalies' textures; `lr2e-5`: Adam at 2e-5 instead of 1e-4); each run's 10 seen anomalies left out, PatchCore scored on "
             "the same images. Metrics in percent: image AUROC / pixel AUROC / PRO@0.3 / AP. A run found on disk "
             "(its metrics.json) is reused, so rows may come from earlier commits of the same code path."
             + (f" `*`: a cell kept from the results file written at commit `{reused_from}` (`--reuse`; same "
                "budget, same code path), as is PatchCore on its row." if reused_from else ""), "",
             "| set | seed | " + " | ".join(variants) + " | PatchCore |", "|---|---|" + "---|" * (len(variants) + 1)]
    for r in rows:
        kept = set(r.get("reused", []))
        lines.append(f"| {r['data']} | {r.get('seed', 0)} | "
                     + " | ".join(cell(r["runs"].get(v), v in kept) for v in variants)
                     + f" | {cell(r['patchcore'])} |")
    steps = [f"{r['data']} seed {r.get('seed', 0)} {v}: {m['steps']}"
             + (f" (kept step {m['selected_step']})" if m.get("selected_step") is not None else "")
             for r in rows for v, m in r["runs"].items() if m.get("steps") is not None]
    if steps:
        lines += ["", "Steps trained (not recorded for cells from before this was): " + "; ".join(steps) + "."]
    lines += ["", provenance_line(origin), ""]
    return "\n".join(lines)


def _earlier(path: Path, steps: int, minutes: float | None) -> tuple[dict, str | None]:
    """``{(set, seed): row}`` of an earlier results file with the same budget, and the commit it was written at."""
    if not path.exists():
        return {}, None
    old = json.loads(path.read_text())
    if (old.get("minutes"), old.get("steps") if not minutes else None) != (minutes, None if minutes else steps):
        return {}, None
    commit = old.get("reused_from") or old["provenance"]["git"]["commit"][:12]
    return {(r["data"], r.get("seed", 0)): r for r in old["rows"]}, commit


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
    parser.add_argument("--reuse", action="store_true",
                        help="keep every cell (and PatchCore) already in the results' JSON when its budget is the "
                             "same, other sets and variants included; only the missing ones are run (the runs "
                             "folder may be gone)")
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
    earlier, reused_from = _earlier(args.results / f"{args.name}.json", args.steps, args.minutes) if args.reuse else ({}, None)
    rows = []
    for data in args.data:
        for seed in seeds:
            known = earlier.pop((data.name, seed), {"runs": {}})
            row = {"data": data.name, "seed": seed, "runs": {}}
            for variant in [v for v in VARIANTS if v in known["runs"] and v not in variants] + variants:
                on_disk = (run_folder(args.runs, data, variant, seed, args.minutes) / "eval" / "metrics.json").exists()
                if variant in known["runs"] and not on_disk:      # a run still on disk is read from there
                    row["runs"][variant] = known["runs"][variant]
                    row.setdefault("reused", []).append(variant)
                else:
                    row["runs"][variant] = run(data, variant, args.steps, args.runs, seed, args.threads, args.minutes)
                print(f"{data.name} seed {seed} {variant}: {row['runs'][variant]}", flush=True)
            if "patchcore" in known:      # the same seed draws the same seen anomalies: the same images
                row["patchcore"] = known["patchcore"]
            else:
                trained = [run_folder(args.runs, data, v, seed, args.minutes) / "checkpoint.pt" for v in variants]
                row["patchcore"] = baseline(data, next((c for c in trained if c.exists()), trained[0]), args.runs, seed)
            print(f"{data.name} seed {seed} patchcore: {row['patchcore']}", flush=True)
            rows.append(row)
    rows += earlier.values()     # --reuse: the sets and seeds not asked for this time stay as they were
    for row in rows:
        row["runs"] = {v: row["runs"][v] for v in VARIANTS if v in row["runs"]}
    origin = provenance()
    seeds_shown = ",".join(str(s) for s in sorted({r.get("seed", 0) for r in rows}))   # reused rows included
    args.results.mkdir(parents=True, exist_ok=True)
    if not any(r.get("reused") for r in rows):
        reused_from = None
    write_json_atomic(args.results / f"{args.name}.json", {"steps": args.steps, "minutes": args.minutes,
                                                            "seed": seeds_shown, "rows": rows, "reused_from": reused_from,
                                                            "provenance": origin})
    write_text_atomic(args.results / f"{args.name}.md",
                      render(rows, args.steps, origin, args.minutes, seeds_shown, reused_from))
    print(f"wrote {args.results / (args.name + '.md')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
