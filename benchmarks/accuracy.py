"""Accuracy table: PRN (edge and paper configs), ablations and the PatchCore baseline.

    python benchmarks/accuracy.py train      # the training runs (CPU: about an hour)
    python benchmarks/accuracy.py eval       # prn-eval on every final checkpoint and snapshot
    python benchmarks/accuracy.py report     # benchmarks/results/accuracy.{md,json} + curves.png

Runs live in runs/accuracy/<name>/ (git-ignored); a phase skips what is already done, so
an interrupted phase can simply be started again. Data: ../shared/data (never copied).
"""
from __future__ import annotations

import argparse
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
RUNS = REPO / "runs" / "accuracy"
RESULTS = REPO / "benchmarks" / "results"


@dataclass
class Experiment:
    name: str
    data: str            # folder under ../shared/data
    steps: int
    args: list[str] = field(default_factory=list)
    snapshots: tuple[int, ...] = ()
    note: str = ""


# CPU budgets: batch 8 (4 normal + 2 EA + 2 SA), 2 threads. The paper trains 700 epochs at
# batch 64 on a GPU (about 2,300 steps of 64 images on bottle); these are a few epochs.
EXPERIMENTS = [
    Experiment("bottle-edge", "mvtec_ad/bottle", 360, ["--config", "edge"], (60, 120, 240),
               "edge preset (Lite0, 1 MSA layer, decoder at 64x64), residual abs"),
    Experiment("bottle-paper-lite0", "mvtec_ad/bottle", 150, ["--config", "paper", "--backbone", "efficientnet_lite0"],
               (50, 100), "paper preset (3 MSA layers, full-size decoder) on the offline Lite0 backbone"),
    Experiment("bottle-edge-square", "mvtec_ad/bottle", 120, ["--config", "edge", "--residual", "square"], (),
               "ablation: residual square instead of abs (compare with bottle-edge at step 120)"),
    Experiment("bottle-edge-no-ea", "mvtec_ad/bottle", 120, ["--config", "edge", "--no-ea"], (),
               "ablation: without extended anomalies (compare with bottle-edge at step 120)"),
    Experiment("bottle-edge-no-sa", "mvtec_ad/bottle", 120, ["--config", "edge", "--no-sa"], (),
               "ablation: without simulated anomalies (compare with bottle-edge at step 120)"),
    Experiment("tile-edge", "magnetic_tile", 360, ["--config", "edge"], (120, 240),
               "edge preset on magnetic tile (texture: foreground = whole image)"),
]


def train(selected: list[Experiment], threads: int) -> None:
    for exp in selected:
        out = RUNS / exp.name
        if (out / "checkpoint.pt").exists():
            print(f"[train] {exp.name}: done already", flush=True)
            continue
        resume = ["--resume"] if (out / "train_state.pt").exists() else []
        cmd = [sys.executable, "-m", "prn_edge.train.cli", "--data", str(DATA / exp.data), "--out", str(out),
               "--steps", str(exp.steps), "--batch-size", "8", "--threads", str(threads), "--seed", "0",
               "--snapshot-steps", ",".join(map(str, exp.snapshots)), *exp.args, *resume]
        print(f"[train] {exp.name}: {' '.join(cmd[1:])}", flush=True)
        subprocess.run(cmd, cwd=REPO, check=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("phase", choices=["train", "eval", "report"])
    parser.add_argument("--only", nargs="*", default=None, help="experiment names (default: all)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    selected = [e for e in EXPERIMENTS if args.only is None or e.name in args.only]
    if args.phase == "train":
        train(selected, args.threads)
    return 0


if __name__ == "__main__":
    sys.exit(main())
