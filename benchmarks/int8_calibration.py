"""INT8 calibration methods compared -> benchmarks/results/int8_calibration.{md,json}.

``make results-int8-calibration`` runs it. For each model (a checkpoint and its MVTec-layout
category) and each calibration method: what INT8 costs with every convolution quantized (each
gated metric's drop and the worst), then prn-export's gate search with that method: how many
convolutions stay in float, which groups, how many quantization trials, how long. The work is
the export's own INT8 step (:class:`prn_edge.export.pipeline.Int8Study`): the same calibration
draw (``--calib-count`` images of train/good, seed 0), evaluation set (test/ less the seen
anomalies), gate and search as ``prn-export --int8 --calib-method M``.

    python benchmarks/int8_calibration.py --model demo runs/demo/train/checkpoint.pt runs/demo/data/demo_brick \
        [--model bottle CKPT DATA ...] [--methods minmax,percentile:99.99,percentile:99.999,entropy] [--threads 2]
"""
from __future__ import annotations

import argparse
import platform
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
DEFAULT_METHODS = "minmax,percentile:99.99,percentile:99.999,entropy"
LABELS = {"image_auroc": "image AUROC", "pixel_auroc": "pixel AUROC", "pro": "PRO"}


def _relative(path) -> str:
    """``path`` relative to the repository when it lies inside it (results stay machine-independent)."""
    p = Path(path).resolve()
    return str(p.relative_to(REPO)) if p.is_relative_to(REPO) else str(path)


def parse_methods(text: str) -> list[tuple[str, float | None]]:
    """``minmax,percentile:99.99,entropy`` -> ``[("minmax", None), ("percentile", 99.99), ("entropy", None)]``."""
    from prn_edge.errors import PRNError
    from prn_edge.export.int8 import check_calibration_method

    methods = []
    for item in filter(None, (t.strip() for t in text.split(","))):
        name, _, value = item.partition(":")
        try:
            percentile = float(value) if value else None
        except ValueError:
            raise argparse.ArgumentTypeError(f"bad percentile in {item!r}") from None
        try:
            methods.append(check_calibration_method(name, percentile))
        except PRNError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    return methods


def label(method: str, percentile: float | None) -> str:
    return method if percentile is None else f"{method} {percentile:g}"


class PeakRSS:
    """The process's peak resident memory above what it held on entry, sampled every 50 ms."""

    def __enter__(self):
        self.base = self.peak = self._rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    def _poll(self):
        while not self._stop.wait(0.05):
            self.peak = max(self.peak, self._rss())

    @staticmethod
    def _rss() -> int:
        import os

        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    @property
    def added_mb(self) -> float:
        return (self.peak - self.base) / 2**20


def measure(name: str, checkpoint: Path, data: Path, methods, args, say) -> dict:
    """One model: the FP32 reference once, then the export's INT8 step per method.

    Kept in ``WORK/NAME/int8_calibration.json`` with what it was measured from; a later run with the
    same checkpoint, data and settings reuses it (an hour per model on 2 cores): delete WORK to redo.
    """
    import json

    from prn_edge.io import file_sha256, write_json_atomic

    inputs = {"checkpoint_sha256": file_sha256(checkpoint), "data": str(Path(data).resolve()),
              "methods": [list(m) for m in methods], "calib_count": args.calib_count, "tolerance": args.tolerance,
              "threads": args.threads, "search": "own-cost ranking"}   # the search changed: older runs are redone
    kept = args.work / name / "int8_calibration.json"
    if kept.is_file() and (previous := json.loads(kept.read_text())).get("inputs") == inputs:
        say(f"{name}: reusing {kept} (delete it to measure again)")
        return previous["model"]
    model = _measure(name, checkpoint, data, methods, args, say)
    write_json_atomic(kept, {"inputs": inputs, "model": model})
    return model


def _measure(name: str, checkpoint: Path, data: Path, methods, args, say) -> dict:
    from prn_edge.checkpoint import load_checkpoint
    from prn_edge.export.int8 import conv_groups
    from prn_edge.export.pipeline import GATED, ExportOptions, Int8Study

    import onnx

    options = ExportOptions(checkpoint=checkpoint, out=args.work / name, int8=True, data=data,
                            calib_count=args.calib_count, tolerance=args.tolerance, threads=args.threads,
                            progress=False)
    study = Int8Study(options, args.work / name, say=lambda line: say(f"{name}: {line}"))
    total_convs = sum(len(g.nodes) for g in conv_groups(onnx.load(str(study.fp32_path), load_external_data=False)))
    training = load_checkpoint(checkpoint).metadata.get("training", {})
    runs = []
    for method, percentile in methods:
        say(f"{name}: {label(method, percentile)}")
        start = time.perf_counter()
        with PeakRSS() as memory:
            record, passed = study.run(calib_method=method, calib_percentile=percentile)
        kept = record["keep_float"]
        runs.append({
            "method": method, "percentile": percentile,
            "all_int8_delta_points": {k: record["all_int8_delta_points"][k] for k in GATED},
            "all_int8_worst_drop_points": record["all_int8_worst_drop_points"],
            "passed": passed, "worst_drop_points": record["worst_drop_points"],
            "convs_in_float": sum(len(g["nodes"]) for g in kept), "groups_in_float": [g["group"] for g in kept],
            "trials": record["trials"], "seconds": round(time.perf_counter() - start, 1),
            "calibration_seconds": record["calibration"]["seconds"], "peak_added_mb": round(memory.added_mb),
            "sensitivity": record["sensitivity"],
        })
        say(f"{name}: {label(method, percentile)}: all-INT8 {runs[-1]['all_int8_worst_drop_points']} points, "
            f"{runs[-1]['convs_in_float']} convolutions in float, {record['trials']} trials")
    return {"name": name, "checkpoint": _relative(checkpoint), "data": _relative(data),
            "training": {k: training.get(k) for k in ("steps", "seconds", "epochs")},
            "images": study.fp32.get("images"), "total_convs": total_convs,
            "fp32": {k: study.fp32[k] for k in GATED}, "runs": runs}


def verdict(models: list[dict]) -> dict:
    """Which methods are at least as good as MinMax on every model: pass the gate whenever MinMax
    does, with no more convolutions in float; the best of them keeps the fewest in float in all."""
    def key(run):
        return run["method"], run["percentile"]

    baseline = {m["name"]: next(r for r in m["runs"] if r["method"] == "minmax") for m in models}
    candidates = {}
    for run in models[0]["runs"]:
        runs = [next(r for r in m["runs"] if key(r) == key(run)) for m in models]
        ok = all(r["passed"] >= baseline[m["name"]]["passed"]
                 and r["convs_in_float"] <= baseline[m["name"]]["convs_in_float"] for r, m in zip(runs, models))
        if ok:
            candidates[key(run)] = (sum(r["convs_in_float"] for r in runs),
                                    max(r["all_int8_worst_drop_points"] for r in runs))
    best = min(candidates, key=candidates.get)
    return {"at_least_minmax": [label(*k) for k in candidates], "best": label(*best)}


def render(models: list[dict], command: str, args, origin, chosen: dict) -> str:
    from prn_edge.export.int8 import DEFAULT_CALIBRATION_METHOD, DEFAULT_PERCENTILE, HISTOGRAM_BINS
    from prn_edge.provenance import provenance_line

    default = label(DEFAULT_CALIBRATION_METHOD,
                    DEFAULT_PERCENTILE if DEFAULT_CALIBRATION_METHOD == "percentile" else None)
    lines = [
        "<!-- written by benchmarks/int8_calibration.py; do not edit by hand -->",
        "# INT8 calibration: MinMax, percentile and entropy ranges",
        "",
        f"Reproduce: `make results-int8-calibration` (this run: `{command}`). Each row is prn-export's INT8 "
        f"step with `--calib-method`: {args.calib_count} calibration images (train/good, seed 0), symmetric S8 "
        f"activations per tensor and per-channel S8 weights on every Conv (what TensorRT takes), the gate "
        f"{args.tolerance} points on image AUROC, pixel AUROC and PRO against the FP32 ONNX, the same gate "
        "search (input side first, then by each part's own cost). Percentile and entropy use ONNX Runtime's "
        f"calibrators on {HISTOGRAM_BINS}-bin histograms. Machine: {platform.machine()}, ONNX Runtime on the "
        f"CPU with {args.threads} thread(s).",
        "",
        provenance_line(origin),
        "",
        "## Models",
        "",
        "| model | checkpoint | training | evaluation images | convolutions | FP32 image AUROC | pixel AUROC | PRO |",
        "|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for m in models:
        t = m["training"]
        trained = f"{t['steps']} steps, {t['seconds'] / 60:.0f} min" if t.get("steps") else "-"
        f = m["fp32"]
        lines.append(f"| {m['name']} | `{m['checkpoint']}` | {trained} | {m['images']} | {m['total_convs']} | "
                     f"{100 * f['image_auroc']:.1f} | {100 * f['pixel_auroc']:.1f} | {100 * f['pro']:.1f} |")
    lines += ["", "## Every convolution in INT8", "",
              "Drop in points from the FP32 ONNX (positive = INT8 is worse). Calibration s: computing the ranges "
              "once; peak MB: the most resident memory the whole step added, sampled every 50 ms.", "",
              "| model | method | Δ image AUROC | Δ pixel AUROC | Δ PRO | worst drop | calibration s | peak MB |",
              "|---|---|---:|---:|---:|---:|---:|---:|"]
    for m in models:
        for r in m["runs"]:
            d = r["all_int8_delta_points"]
            lines.append(f"| {m['name']} | {label(r['method'], r['percentile'])} | {-d['image_auroc']:+.2f} | "
                         f"{-d['pixel_auroc']:+.2f} | {-d['pro']:+.2f} | **{r['all_int8_worst_drop_points']:.2f}** | "
                         f"{r['calibration_seconds']} | {r['peak_added_mb']} |")
    lines += ["", f"## The gate search ({args.tolerance} points)", "",
              "| model | method | gate | convolutions in float | groups in float | trials | seconds | worst drop then |",
              "|---|---|---|---:|---|---:|---:|---:|"]
    for m in models:
        for r in m["runs"]:
            groups = ", ".join(r["groups_in_float"]) or "none"
            lines.append(f"| {m['name']} | {label(r['method'], r['percentile'])} | "
                         f"{'passed' if r['passed'] else 'FAILED'} | {r['convs_in_float']} of {m['total_convs']} | "
                         f"{groups} | {r['trials']} | {r['seconds']} | {r['worst_drop_points']:.2f} |")
    lines += ["", "## Default", "",
              f"At least as good as MinMax on every model above (passes the gate whenever MinMax does, with no "
              f"more convolutions in float): {', '.join(chosen['at_least_minmax'])}. Fewest convolutions in float "
              f"over all models, then the smallest all-INT8 worst drop: **{chosen['best']}**. prn-export's "
              f"default (`--calib-method`): **{default}**.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", nargs=3, action="append", required=True, metavar=("NAME", "CHECKPOINT", "DATA"),
                        help="a model: its name in the tables, checkpoint.pt, its MVTec-layout category")
    parser.add_argument("--methods", type=parse_methods, default=DEFAULT_METHODS,
                        help=f"comma-separated, percentile:P for a percentile (default {DEFAULT_METHODS}; "
                             "minmax must be one: the others are measured against it)")
    parser.add_argument("--calib-count", type=int, default=32, help="calibration images (default 32)")
    parser.add_argument("--tolerance", type=float, default=0.5, help="the gate in points (default 0.5)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--work", type=Path, default=REPO / "runs" / "int8-calibration",
                        help="where the ONNX files go (default runs/int8-calibration)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="results folder")
    args = parser.parse_args(argv)
    if not any(m == "minmax" for m, _ in args.methods):
        parser.error("--methods must include minmax")
    for name, checkpoint, data in args.model:
        if not Path(checkpoint).is_file() or not Path(data).is_dir():
            parser.error(f"{name}: no checkpoint {checkpoint} or no data folder {data}")

    import torch

    from prn_edge.io import write_json_atomic, write_text_atomic
    from prn_edge.provenance import provenance

    torch.set_num_threads(args.threads)
    origin = provenance()
    command = " ".join(["python benchmarks/int8_calibration.py",
                        *(f"--model {n} {_relative(c)} {_relative(d)}" for n, c, d in args.model),
                        "--methods", ",".join(f"{m}:{p:g}" if p else m for m, p in args.methods),
                        "--calib-count", str(args.calib_count), "--threads", str(args.threads)])

    def say(line: str) -> None:
        print(f"int8_calibration: {line}", file=sys.stderr, flush=True)

    models = [measure(name, Path(c), Path(d), args.methods, args, say) for name, c, d in args.model]
    chosen = verdict(models)
    args.out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(args.out / "int8_calibration.md", render(models, command, args, origin, chosen))
    write_json_atomic(args.out / "int8_calibration.json",
                      {"command": command, "calib_count": args.calib_count, "tolerance_points": args.tolerance,
                       "threads": args.threads, "models": models, "verdict": chosen, "provenance": origin})
    print(f"wrote {args.out / 'int8_calibration.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
