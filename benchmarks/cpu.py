"""Issue 16, item 5: the CPU deployment measured end to end, per model, against its own FP32 ONNX.

For each ``--model LABEL=CHECKPOINT``:

1. ``prn-export --cpu-int8`` (the export's gate and search, bounded by ``--int8-budget``): the FP32
   ONNX, the CPU flavour ``model.int8.cpu.onnx`` if it holds the gate and is faster, and the
   accuracy of each on the checkpoint's evaluation set;
2. ``prn-bench`` on the CPU rows (PyTorch eager as the reference row, ONNX Runtime FP32, the CPU flavour),
   batch 1, end to end from a 1280x720 frame, interleaved rounds, with a per-operator profile.

Then the models' FP32 ONNX files are timed against each other (model compute only, interleaved
rounds), so an architecture change is compared side by side in one run too.

    python benchmarks/cpu.py --model conv3x3=runs/.../checkpoint.pt --model separable=runs/.../checkpoint.pt

Writes ``RESULTS/<name>.md`` and ``.json``. Ratios are medians over interleaved rounds, which hold
under load; absolute images per second do not, so run it on a quiet machine.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))
from cpu_profile import latency  # noqa: E402

from prn_edge.export.pipeline import CPU_INT8_KEY, METRICS  # noqa: E402
from prn_edge.io import write_json_atomic, write_text_atomic  # noqa: E402
from prn_edge.provenance import provenance, provenance_line  # noqa: E402

GOAL_IPS = 30.0           # issue 16: images per second end to end, batch 1, 2 cores
GOAL_VS_FP32 = 1.5        # and this much faster than the FP32 ONNX of the same model
GOAL_POINTS = 0.5         # on every metric
CPU_FLAVOUR = "onnxruntime-cpu:int8"
FP32_ONNX = "onnxruntime-cpu:fp32"


def _label_and_path(value: str) -> tuple[str, Path]:
    label, sep, path = value.partition("=")
    if not sep or not label or not path:
        raise argparse.ArgumentTypeError(f"{value!r}: give LABEL=CHECKPOINT")
    return label, Path(path)


def measure(label: str, checkpoint: Path, args, say) -> dict:
    from prn_edge.api import bench
    from prn_edge.export.api import export

    out = args.runs / label
    say(f"{label}: exporting {checkpoint} (FP32 + CPU flavour)")
    exported = export(checkpoint, out=out, cpu_int8=True, int8_budget=args.int8_budget, threads=args.threads,
                      latency_rounds=args.export_rounds, no_progress=True, say=say)
    report = exported.report
    accuracy = {"torch:fp32": {m: report["reference"][m] for m in METRICS},
                FP32_ONNX: {m: report["precisions"]["fp32"][m] for m in METRICS}}
    flavour = report.get("cpu_int8", {})
    if flavour.get("metrics"):
        accuracy[CPU_FLAVOUR] = {m: flavour["metrics"][m] for m in METRICS}
    say(f"{label}: benchmarking (batch 1, {args.duration:g} s)")
    # Ratios against the FP32 ONNX of the same model (median of per-round ratios); eager is the reference row.
    result = bench(out, backends=["onnxruntime-cpu", "torch"], precisions=["fp32", "int8"], batch=1,
                   duration=args.duration, threads=args.threads, frame="1280x720", out=out / "bench",
                   reference=FP32_ONNX, profile=True, quiet=True)
    rows = {r["engine"]: r for r in result.report["results"]}
    return {"checkpoint": str(checkpoint), "export": str(out), "fp32_onnx": str(exported.models["fp32"]),
            "cpu_flavour": {k: flavour.get(k) for k in ("written", "speedup_vs_fp32", "worst_drop_points",
                                                        "trials", "stopped_by_budget")}
            | {"keep_float": [g["group"] for g in flavour.get("keep_float", [])],
               "gated": flavour.get("gated"), "delta_points": (flavour.get("metrics") or {}).get("delta_points")},
            "export_latency": report.get("latency", {}),
            "accuracy": accuracy, "bench": rows, "profile": result.report.get("profile", {}),
            "bench_notes": result.report.get("notes", []), "export_notes": report.get("notes", [])}


def verdict(model: dict) -> dict:
    """The goals of issue 16 for one model's CPU flavour (or its FP32 ONNX when none was written)."""
    rows, acc = model["bench"], model["accuracy"]
    engine = CPU_FLAVOUR if CPU_FLAVOUR in rows else FP32_ONNX
    ips = rows[engine]["throughput_ips"]
    if engine == FP32_ONNX:      # no CPU flavour: only the speed goal can be judged, on the FP32 ONNX itself
        return {"engine": engine, "images_per_s": ips, "ips_met": ips >= GOAL_IPS, "vs_fp32_onnx": None,
                "ratio_met": False, "delta_points": {}, "accuracy_met": None}
    vs_fp32 = rows[engine].get("speedup_vs_reference")
    drops = {m: 100 * (acc[engine][m] - acc[FP32_ONNX][m]) for m in METRICS} if engine in acc else {}
    return {"engine": engine, "images_per_s": ips, "vs_fp32_onnx": vs_fp32, "delta_points": drops,
            "ips_met": ips >= GOAL_IPS, "ratio_met": vs_fp32 is not None and vs_fp32 >= GOAL_VS_FP32,
            "accuracy_met": bool(drops) and all(d >= -GOAL_POINTS for d in drops.values())}


def _goals(v: dict) -> str:
    speed = f"{v['images_per_s']:.1f} images/s ({'met' if v['ips_met'] else 'not met'})"
    if v["engine"] != CPU_FLAVOUR:
        return (f"Goals: no CPU flavour was written, so the FP32 ONNX is the CPU model: {speed}; the 1.5x and "
                "accuracy goals have no flavour to judge (not met).")
    ratio = f"{v['vs_fp32_onnx']:.2f}x" if v["vs_fp32_onnx"] is not None else "an unmeasured ratio to"
    deltas = " / ".join(f"{d:+.2f}" for d in v["delta_points"].values()) or "not scored"
    return (f"Goals for `{v['engine']}`: {speed}, {ratio} the FP32 ONNX ({'met' if v['ratio_met'] else 'not met'}), "
            f"accuracy {'within' if v['accuracy_met'] else 'not within'} {GOAL_POINTS} points on every metric "
            f"({deltas}).")


def render(report: dict, command: str) -> str:
    lines = ["# CPU deployment, end to end (issue 16)", "",
             f"Produced by `{command}`: {report['threads']} threads, batch 1, a 1280x720 frame resized to the model's "
             "input (stretch), preprocessing, compute and postprocessing all counted; prn-bench's interleaved "
             f"rounds ({report['duration']:g} s measured per model); x FP32 ONNX = median of per-round ratios to the "
             "same model's FP32 ONNX, PyTorch eager the reference row. Accuracy on each checkpoint's evaluation set, "
             "from its export report. Goals: the CPU flavour at "
             f">= {GOAL_IPS:g} images/s and >= {GOAL_VS_FP32:g}x the FP32 ONNX of the same model, every metric within "
             f"{GOAL_POINTS} points of it.", ""]
    for label, model in report["models"].items():
        v = model["verdict"]
        lines += [f"## {label}", "", f"Checkpoint `{model['checkpoint']}`.", "",
                  "| engine | images/s | ms/image | preprocess | compute | postprocess | x FP32 ONNX | "
                  "image / pixel / PRO / AP | delta vs FP32 ONNX |", "|---|---:|---:|---:|---:|---:|---:|---|---|"]
        fp32 = model["accuracy"].get(FP32_ONNX)
        for engine, r in model["bench"].items():
            stages = r.get("stages_ms", {})
            acc = model["accuracy"].get(engine)
            cells = " / ".join(f"{100 * acc[m]:.1f}" for m in METRICS) if acc else "-"
            delta = (" / ".join(f"{100 * (acc[m] - fp32[m]):+.2f}" for m in METRICS)
                     if acc and fp32 and engine != "torch:fp32" else "-")
            lines.append(f"| {engine} | {r['throughput_ips']:.1f} | {r['per_image_ms']:.1f} | "
                         + " | ".join(f"{stages[s]['median']:.1f}" if s in stages else "-"
                                      for s in ("preprocess", "compute", "postprocess"))
                         + f" | {r.get('speedup_vs_reference', float('nan')):.2f}x | {cells} | {delta} |")
        flavour = model["cpu_flavour"]
        kept = ", ".join(flavour["keep_float"]) or "nothing"
        timing = model["export_latency"].get("median_ms", {})
        flavour_key = f"onnxruntime-cpu:{CPU_INT8_KEY}"
        compute = (f", compute {timing[flavour_key]:.1f} against FP32's {timing[FP32_ONNX]:.1f} ms in "
                   f"{model['export_latency']['rounds']} interleaved rounds" if flavour_key in timing else "")
        deltas = flavour.get("delta_points") or {}
        lines += ["", f"CPU flavour (U8, gated on {', '.join(flavour.get('gated') or [])}): "
                      f"{'written' if flavour['written'] else 'not written'}: it held the gate "
                      f"({' / '.join(f'{deltas[m]:+.2f}' for m in METRICS if m in deltas)} points) after "
                      f"{flavour['trials']} trials with {kept} in float, and the export's own timing put it at "
                      f"{flavour['speedup_vs_fp32'] or 0:.2f}x the FP32 ONNX{compute}."
                  if flavour.get("speedup_vs_fp32") is not None else
                  f"CPU flavour: failed its gate (worst drop {flavour['worst_drop_points']} points after "
                  f"{flavour['trials']} trials; kept in float: {kept}).",
                  "", _goals(v), ""]
        for engine, prof in model["profile"].items():
            lines += [f"Profile of `{engine}`: {prof['ms_per_image']:.1f} ms of kernels per image", "",
                      "| operator | share | ms |", "|---|---:|---:|"]
            lines += [f"| {o['op']} | {100 * o['share']:.1f} % | {o['ms_per_image']:.2f} |" for o in prof["ops"][:8]]
            lines.append("")
    side = report["fp32_side_by_side"]
    if len(side) > 1:
        first = next(iter(side))
        lines += ["## The models' FP32 ONNX side by side", "",
                  f"Model compute only (a 256x256 uint8 input, no frame resize), {report['rounds']} interleaved rounds; speed-up = median of "
                  f"per-round ratios to `{first}`.", "", "| model | median ms | speed-up |", "|---|---:|---:|"]
        lines += [f"| {k} | {r['median_ms']:.1f} | {r['speedup']:.2f}x |" for k, r in side.items()]
        lines.append("")
    lines += [provenance_line(report["provenance"]), ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=_label_and_path, action="append", required=True, metavar="LABEL=CHECKPOINT",
                        help="a trained checkpoint and the label its rows get (repeat; the first is the baseline "
                             "of the side-by-side FP32 comparison)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--duration", type=float, default=30.0, help="prn-bench seconds measured per model")
    parser.add_argument("--int8-budget", type=float, default=10.0, help="minutes the INT8 gate search may take")
    parser.add_argument("--export-rounds", type=int, default=15, help="the export's own interleaved latency rounds")
    parser.add_argument("--rounds", type=int, default=20, help="interleaved rounds of the FP32 side-by-side")
    parser.add_argument("--runs", type=Path, default=REPO / "runs" / "cpu", help="where the exports go")
    parser.add_argument("--results", type=Path, default=REPO / "benchmarks" / "results")
    parser.add_argument("--name", default="cpu", help="results file stem")
    args = parser.parse_args(argv)
    labels = [label for label, _ in args.model]
    if len(set(labels)) != len(labels):
        parser.error("each --model needs its own label")
    missing = [str(p) for _, p in args.model if not p.is_file()]
    if missing:
        parser.error(f"no checkpoint at {', '.join(missing)}")

    def say(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    models = {label: measure(label, path, args, say) for label, path in args.model}
    for model in models.values():
        model["verdict"] = verdict(model)
    say("timing the FP32 ONNX files side by side")
    image = np.random.default_rng(0).integers(0, 256, (1, 256, 256, 3), dtype=np.uint8)
    side = latency({label: Path(m["fp32_onnx"]) for label, m in models.items()}, image, args.threads, args.rounds,
                   base=labels[0])
    report = {"threads": args.threads, "duration": args.duration, "rounds": args.rounds, "models": models,
              "fp32_side_by_side": side, "provenance": provenance()}
    command = "python benchmarks/cpu.py " + " ".join(f"--model {label}={path}" for label, path in args.model)
    args.results.mkdir(parents=True, exist_ok=True)
    write_text_atomic(args.results / f"{args.name}.md", render(report, command))
    write_json_atomic(args.results / f"{args.name}.json", json.loads(json.dumps(report, default=str)))
    print(f"wrote {args.results / (args.name + '.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
