"""Accuracy table: PRN (edge and paper configs), ablations and the PatchCore baseline.

    python benchmarks/accuracy.py train      # the training runs (CPU: about an hour)
    python benchmarks/accuracy.py eval       # evaluation of every final checkpoint and snapshot
    python benchmarks/accuracy.py report     # RESULTS/accuracy.{md,json} + accuracy_curves.png

``make results-accuracy`` runs the three phases. Every input path is an argument: ``--data-root``
(the folder holding ``mvtec_ad/bottle``, ``magnetic_tile``, ``dtd``; default ``../shared/data``,
read in place, never copied), ``--runs`` (the runs of the train phase, read by the later phases;
default ``runs/accuracy``, git-ignored) and ``--results``. A phase skips what is already done, so
an interrupted phase can simply be started again.

Training and evaluation call :func:`prn_edge.api.train` and :func:`prn_edge.api.evaluate` in this
process, one run after the other: every run seeds its own generators and sets the same thread
count, so nothing one run leaves in the process changes the next, and no process isolation is needed.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
RUNS = REPO / "runs" / "accuracy"
RESULTS = REPO / "benchmarks" / "results"



@dataclass
class Experiment:
    name: str
    data: str            # folder under --data-root
    steps: int
    options: dict[str, Any] = field(default_factory=dict)   # prn_edge.api.train keyword arguments
    snapshots: tuple[int, ...] = ()
    note: str = ""


# CPU budgets: batch 8 (4 normal + 2 EA + 2 SA), 2 threads. The paper trains 700 epochs at batch 64 on a
# GPU (about 2,300 steps of 64 images on bottle); these are a few epochs. PRN as published (--defaults
# paper), as accuracy.md shows it; issue 13's measured defaults are in match_ablation_20min.md.
EXPERIMENTS = [
    Experiment("bottle-edge", "mvtec_ad/bottle", 360, {"defaults": "paper", "config": "edge"}, (60, 120, 240),
               "edge preset (Lite0, 1 MSA layer, decoder at 64x64), residual abs"),
    Experiment("bottle-paper-lite0", "mvtec_ad/bottle", 60, {"defaults": "paper", "config": "paper", "backbone": "efficientnet_lite0"},
               (30,), "paper preset (3 MSA layers, full-size decoder) on the offline Lite0 backbone"),
    Experiment("bottle-edge-square", "mvtec_ad/bottle", 120, {"defaults": "paper", "config": "edge", "residual": "square"}, (),
               "ablation: residual square instead of abs (compare with bottle-edge at step 120)"),
    Experiment("bottle-edge-no-ea", "mvtec_ad/bottle", 120, {"defaults": "paper", "config": "edge", "no_ea": True}, (),
               "ablation: without extended anomalies (compare with bottle-edge at step 120)"),
    Experiment("bottle-edge-no-sa", "mvtec_ad/bottle", 120, {"defaults": "paper", "config": "edge", "no_sa": True}, (),
               "ablation: without simulated anomalies (compare with bottle-edge at step 120)"),
    Experiment("tile-edge", "magnetic_tile", 240, {"defaults": "paper", "config": "edge"}, (120,),
               "edge preset on magnetic tile (texture: foreground = whole image)"),
    Experiment("tile-paper-lite0", "magnetic_tile", 60, {"defaults": "paper", "config": "paper", "backbone": "efficientnet_lite0"},
               (), "paper preset on magnetic tile, offline Lite0 backbone"),
]


def _command(exp: Experiment, data: Path, out: Path, threads: int, resume: bool) -> str:
    """The prn-train command line equivalent to a run (recorded in its checkpoint)."""
    flags = []
    for key, value in exp.options.items():
        flag = "--" + key.replace("_", "-")
        flags += [flag] if value is True else [flag, str(value)]
    return " ".join(["prn-train", "--data", str(data), "--out", str(out), "--steps", str(exp.steps),
                     "--batch-size", "8", "--threads", str(threads), "--seed", "0",
                     "--snapshot-steps", ",".join(map(str, exp.snapshots)), *flags,
                     *(["--resume"] if resume else [])])


def train(selected: list[Experiment], threads: int, data_root: Path = DATA, runs: Path = RUNS) -> None:
    import logging

    from prn_edge.api import train as train_run

    logging.basicConfig(level=logging.INFO, format="[train] %(message)s")
    for exp in selected:
        out = runs / exp.name
        if (out / "checkpoint.pt").exists():
            print(f"[train] {exp.name}: done already", flush=True)
            continue
        resume = (out / "train_state.pt").exists()
        command = _command(exp, data_root / exp.data, out, threads, resume)
        print(f"[train] {exp.name}: {command}", flush=True)
        result = train_run(data_root / exp.data, out, steps=exp.steps, batch_size=8, threads=threads, seed=0,
                           snapshot_steps=exp.snapshots, resume=resume, command=command, **exp.options)
        print(f"[train] {result.summary_text()}", flush=True)


def _checkpoints(exp: Experiment, runs: Path = RUNS) -> list[tuple[str, Path]]:
    """(label, checkpoint) of a run: its snapshots, then the final checkpoint."""
    out = runs / exp.name
    found = [(f"step{p.stem.rsplit('step', 1)[1].lstrip('0')}", p)
             for p in sorted((out / "snapshots").glob("checkpoint_step*.pt"))]
    if (out / "checkpoint.pt").exists():
        found.append(("final", out / "checkpoint.pt"))
    return found


def _eval(out: Path, **kwargs) -> None:
    from prn_edge.api import evaluate

    if (out / "metrics.json").exists():
        print(f"[eval] {out}: done already", flush=True)
        return
    print(f"[eval] {out}: " + ", ".join(f"{k}={v}" for k, v in kwargs.items()), flush=True)
    result = evaluate(out=out, no_progress=True, warn=lambda note: print(f"[eval] warning: {note}"), **kwargs)
    print(result.summary_text(), flush=True)


def evaluate_runs(selected: list[Experiment], data_root: Path = DATA, runs: Path = RUNS) -> None:
    for exp in selected:
        for label, ckpt in _checkpoints(exp, runs):
            _eval(runs / exp.name / f"eval_{label}", checkpoint=ckpt, data=data_root / exp.data)
    # The unsupervised baseline on the same evaluation images (the same seen anomalies left out).
    for data, reference in BASELINES.items():
        ckpt = runs / reference / "checkpoint.pt"
        if not ckpt.exists():
            continue
        _eval(runs / f"baseline-{data.replace('/', '-')}", baseline="patchcore", seen_from=ckpt,
              data=data_root / data)


# Category -> the PRN run whose seen anomalies the baseline leaves out as well.
BASELINES = {"mvtec_ad/bottle": "bottle-edge", "magnetic_tile": "tile-edge"}
PAPER_BOTTLE = {"image_auroc": 1.0, "pixel_auroc": 0.994, "pro": 0.970, "ap": 0.923}
METRICS = ("image_auroc", "pixel_auroc", "pro", "ap")


def _load(path: Path) -> dict | None:
    import json
    return json.loads(path.read_text()) if path.exists() else None


def report(selected: list[Experiment], runs: Path = RUNS, results: Path = RESULTS) -> None:
    import platform

    import torch

    from prn_edge.checkpoint import load_checkpoint
    from prn_edge.io import write_json_atomic, write_text_atomic
    from prn_edge.provenance import provenance, provenance_line

    origin = provenance()
    rows, curves, records = [], {}, []
    for exp in selected:
        for label, ckpt_path in _checkpoints(exp, runs):
            metrics = _load(runs / exp.name / f"eval_{label}" / "metrics.json")
            if metrics is None:
                continue
            training = load_checkpoint(ckpt_path).metadata["training"]
            record = {"run": exp.name, "checkpoint": label, "data": exp.data, "steps": training["steps"],
                      "epochs": training["epochs"], "train_minutes": round(training["seconds"] / 60, 1),
                      "batch_size": training["batch_size"], "device": training["device"],
                      **{m: metrics[m] for m in METRICS}, "note": exp.note}
            records.append(record)
            curves.setdefault(exp.name, []).append(record)
            if label == "final":
                rows.append(record)
    for data in BASELINES:
        metrics = _load(runs / f"baseline-{data.replace('/', '-')}" / "metrics.json")
        if metrics is not None:
            record = {"run": "patchcore baseline", "checkpoint": "-", "data": data, "steps": 0, "epochs": 0,
                      "train_minutes": 0, "batch_size": 0, "device": "cpu",
                      **{m: metrics[m] for m in METRICS},
                      "note": _baseline_note(metrics.get("predictor_info", {}))}
            rows.append(record)
            records.append(record)

    def pct(v: float) -> str:
        return f"{100 * v:.1f}"

    lines = ["# Accuracy", "",
             "Produced by `make results-accuracy` (`python benchmarks/accuracy.py train`, `... eval`, `... report`) on "
             f"{platform.machine()} CPU (2 cores, torch {torch.__version__}), no GPU. Metrics at 256x256 in percent; "
             "PRO integrates the per-region overlap for false-positive rates 0 to 0.3, normalised by 0.3. "
             "Every PRN run leaves its 10 seen anomalies (drawn with seed 0 from test/) out of the evaluation; "
             "the baseline is scored on the same images. Final checkpoints only (never the best snapshot). "
             "Training minutes are wall clock on a machine shared with other jobs, so they overstate the cost.",
             "", provenance_line(origin), "", *_summary(rows),
             "| run | data | steps (batch 8) | epochs | train min | image AUROC | pixel AUROC | PRO@0.3 | AP | what |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['run']} | {r['data']} | {r['steps']} | {r['epochs']} | {r['train_minutes']} | "
                     + " | ".join(pct(r[m]) for m in METRICS) + f" | {r['note']} |")
    lines.append("| paper (CVPR 2023) | mvtec_ad/bottle | 700 epochs, batch 64, GPU | 700 | - | "
                 + " | ".join(pct(PAPER_BOTTLE[m]) for m in METRICS) + " | reference numbers |")
    by_key = {(r["run"], r["checkpoint"]): r for r in records}
    ablations = [("bottle-edge", "step120", "edge, residual abs, EA + SA (the defaults)"),
                 ("bottle-edge-square", "final", "residual square"),
                 ("bottle-edge-no-ea", "final", "without extended anomalies"),
                 ("bottle-edge-no-sa", "final", "without simulated anomalies")]
    present = [(by_key[(run, ck)], what) for run, ck, what in ablations if (run, ck) in by_key]
    if present:
        lines += ["", "## Ablations (bottle, edge preset, 120 steps of batch 8 each, seed 0)", "",
                  "| variant | image AUROC | pixel AUROC | PRO@0.3 | AP |", "|---|---|---|---|---|"]
        for r, what in present:
            lines.append(f"| {what} | " + " | ".join(pct(r[m]) for m in METRICS) + " |")
        lines += ["", "One seed and a short budget: differences of a point or two are within run-to-run noise. "
                  "Defaults chosen from this table: residual `abs` (square loses PRO and AP) and extended anomalies "
                  "on (removing them costs most, above all AP). Removing the simulated anomalies *helped* at this "
                  "budget: with EA alone the model learns bottle's three defect types faster, since EA is built from "
                  "seen defects of exactly those types. SA stays on by default for now: it is the only source of "
                  "defects unlike the ten seen ones, which this test set (the same three types) cannot reward, and "
                  "120 steps measure learning speed rather than the end point; the paper-schedule run on a GPU "
                  "should settle it (`prn-train --no-sa`)."]
    lines += ["", "## Learning curves", "", "Metrics of the snapshots against training time (`accuracy_curves.png`):", "",
              "| run | checkpoint | steps | train min | image AUROC | pixel AUROC | PRO@0.3 | AP |",
              "|---|---|---|---|---|---|---|---|"]
    for name, points in curves.items():
        for r in points:
            lines.append(f"| {name} | {r['checkpoint']} | {r['steps']} | {r['train_minutes']} | "
                         + " | ".join(pct(r[m]) for m in METRICS) + " |")
    lines.append("")
    results.mkdir(parents=True, exist_ok=True)
    write_text_atomic(results / "accuracy.md", "\n".join(lines))
    write_json_atomic(results / "accuracy.json", {"rows": records, "provenance": origin})
    _plot_curves(curves, results / "accuracy_curves.png")
    print(f"wrote {results / 'accuracy.md'}")


def _baseline_note(info: dict) -> str:
    cfg, fit = info.get("config", {}), info.get("fit", {})
    return (f"unsupervised PatchCore-style memory bank over the same frozen {cfg.get('backbone', '?')} (no training): "
            f"{cfg.get('coreset', '?')} coreset {fit.get('bank_size', '?'):,} of {fit.get('patches', '?'):,} patches, "
            f"fit {fit.get('seconds_total', 0):.0f} s")


def _summary(rows: list[dict]) -> list[str]:
    """One paragraph comparing PRN, the baseline and the paper on bottle, from the rows."""
    prn = next((r for r in rows if r["run"] == "bottle-edge"), None)
    base = next((r for r in rows if r["run"] == "patchcore baseline" and r["data"] == "mvtec_ad/bottle"), None)
    if prn is None:
        return []
    def fmt(r):
        return " / ".join(f"{100 * r[m]:.1f}" for m in METRICS)
    text = (f"**Bottle:** PRN (edge preset) after {prn['train_minutes']} CPU minutes ({prn['epochs']} epochs of the "
            f"paper's 700) reaches {fmt(prn)} (image AUROC / pixel AUROC / PRO / AP) against the paper's "
            f"{fmt(PAPER_BOTTLE)}")
    if base is not None:
        text += f" and the PatchCore baseline's {fmt(base)}"
    lines = [text + ". The learning curve below is still rising at the end of the CPU budget.", ""]
    tile = next((r for r in rows if r["run"] == "tile-edge"), None)
    tile_base = next((r for r in rows if r["run"] == "patchcore baseline" and r["data"] == "magnetic_tile"), None)
    if tile is not None and tile_base is not None:
        lines += [f"**Magnetic tile:** PRN (edge preset) after {tile['train_minutes']} CPU minutes reaches {fmt(tile)}, "
                  f"below the PatchCore baseline's {fmt(tile_base)}: on this harder texture set (grey crops of varying "
                  "size, 378 defects of 5 types, 10 seen) the short CPU budget is not enough, and the final checkpoint "
                  "scores lower than the one at step 120 (see the curve), so training is not yet stable there.", ""]
    return lines


def _plot_curves(curves: dict[str, list[dict]], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from prn_edge.io import atomic_write

    fig, axes = plt.subplots(1, 4, figsize=(16, 3.6))
    for name, points in curves.items():
        if len(points) < 2:
            continue
        minutes = [p["train_minutes"] for p in points]
        for ax, metric in zip(axes, METRICS):
            ax.plot(minutes, [100 * p[metric] for p in points], marker="o", label=name)
    for ax, metric in zip(axes, METRICS):
        ax.set_title(metric.replace("_", " "))
        ax.set_xlabel("training minutes (CPU)")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("percent")
    axes[-1].legend(fontsize=7)
    fig.tight_layout()
    with atomic_write(path) as handle:
        fig.savefig(handle, format="png", dpi=90)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("phase", choices=["train", "eval", "report"])
    parser.add_argument("--only", nargs="*", default=None, help="experiment names (default: all)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--data-root", type=Path, default=DATA,
                        help="folder holding mvtec_ad/bottle and magnetic_tile (default ../shared/data)")
    parser.add_argument("--runs", type=Path, default=RUNS,
                        help="runs folder: written by train, read by eval and report (default runs/accuracy)")
    parser.add_argument("--results", type=Path, default=RESULTS,
                        help="where report writes accuracy.md/.json and the curves (default benchmarks/results)")
    args = parser.parse_args(argv)
    selected = [e for e in EXPERIMENTS if args.only is None or e.name in args.only]
    unknown = set(args.only or ()) - {e.name for e in EXPERIMENTS}
    if unknown:
        parser.error(f"unknown experiment(s): {', '.join(sorted(unknown))}")

    from prn_edge.errors import PRNError

    try:
        if args.phase == "train":
            train(selected, args.threads, args.data_root, args.runs)
        elif args.phase == "eval":
            evaluate_runs(selected, args.data_root, args.runs)
        else:
            report(selected, args.runs, args.results)
    except PRNError as exc:
        print(f"accuracy.py: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
