"""Where the CPU time goes, per part of the network, and what INT8 forms buy on it (issue 16, items 1-2).

For one checkpoint: exports the FP32 ONNX, profiles it with ONNX Runtime (batch 1, ``--threads``)
and sums the kernels' time per *part* of the network (the INT8 gate's groups: the encoder's stem
and block thirds, each fusion, the attention, the decoder stages, the head; a convolution fused
with its activation counts for its part; everything else per operator type). Then quantizes the
convolutions three ways and scores each on the checkpoint's evaluation set next to FP32, with
batch-1 latency in interleaved rounds:

* ``S8, all convolutions``: the TensorRT form prn-export writes (symmetric activations);
* ``U8, all convolutions``: ONNX Runtime's fast x86 form (asymmetric activations);
* ``U8, matched features in float``: the same, less the convolutions that compute the features
  matched against the prototypes (the encoder up to scale 3): with a residual prior, noise in
  those features reads as distance to every prototype.

    python benchmarks/cpu_profile.py --checkpoint runs/.../checkpoint.pt [--name cpu_profile] [--threads 2]

Writes ``RESULTS/<name>.md`` and ``.json``. Run it on a quiet machine; ratios are medians of
per-round ratios, which hold under load, absolute milliseconds do not.
"""
from __future__ import annotations

import argparse
import collections
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from prn_edge.export.int8 import calibrate, conv_groups, matched_feature_convs, quantize_int8  # noqa: E402
from prn_edge.export.pipeline import ExportOptions, Int8Study  # noqa: E402
from prn_edge.io import write_json_atomic, write_text_atomic  # noqa: E402
from prn_edge.provenance import provenance, provenance_line  # noqa: E402

METRICS = ("image_auroc", "pixel_auroc", "pro", "ap")


def part_of_output(model) -> dict[str, str]:
    """ONNX tensor name -> network part, for every Conv output and the activation fused onto it.

    ORT names a fused node after its output tensor (``relu_4`` -> ``relu_4_nchwc``), so kernels
    are attributed through their output names.
    """
    part_of_node = {node: g.name for g in conv_groups(model) for node in g.nodes}     # the INT8 gate's parts
    parts = {n.output[0]: part_of_node[n.name] for n in model.graph.node if n.name in part_of_node}
    for n in model.graph.node:          # Conv -> Relu/Clip: ORT fuses them into one kernel
        if n.op_type in ("Relu", "Clip") and n.input[0] in parts:
            parts[n.output[0]] = parts[n.input[0]]
    return parts


def profile(path: Path, image: np.ndarray, threads: int, runs: int, parts: dict[str, str] | None) -> dict:
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as tmp:
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.enable_profiling = True
        options.profile_file_prefix = str(Path(tmp) / "profile")
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        for _ in range(runs):
            session.run(None, {name: image})
        events = json.loads(Path(session.end_profiling()).read_text())
    totals: collections.Counter = collections.Counter()
    for e in events:
        if e.get("cat") != "Node" or not e["name"].endswith("_kernel_time"):
            continue
        node = e["name"].removesuffix("_kernel_time").removesuffix("_nchwc")
        op = e["args"]["op_name"]
        if parts is None:
            key = op
        else:
            key = (parts.get(node) if op in ("Conv", "FusedConv") else None) or f"{op} (other)"
        totals[key] += e["dur"]
    total = sum(totals.values())
    return {"ms_per_image": total / runs / 1e3,
            "parts": [{"part": k, "share": v / total, "ms": v / runs / 1e3} for k, v in totals.most_common()]}


def latency(paths: dict[str, Path], image: np.ndarray, threads: int, rounds: int,
            base: str = "FP32") -> dict[str, dict]:
    """Batch-1 latency of each ONNX file, interleaved; speed-up = median of per-round ratios to ``base``."""
    import onnxruntime as ort

    sessions = {}
    for key, path in paths.items():
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        sessions[key] = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    name = next(iter(sessions.values())).get_inputs()[0].name
    for s in sessions.values():
        s.run(None, {name: image})
    samples = {k: [] for k in sessions}
    for _ in range(rounds):                        # interleaved: every model in every round
        for key, s in sessions.items():
            start = time.perf_counter()
            for _ in range(3):
                s.run(None, {name: image})
            samples[key].append((time.perf_counter() - start) / 3 * 1e3)
    reference = np.array(samples[base])
    return {k: {"median_ms": float(np.median(v)), "speedup": float(np.median(reference / np.array(v)))}
            for k, v in samples.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--data", type=Path, default=None, help="evaluation category (default: the checkpoint's)")
    parser.add_argument("--name", default="cpu_profile", help="results file stem")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=20, help="interleaved latency rounds")
    parser.add_argument("--runs", type=int, default=30, help="profiled batch-1 runs")
    parser.add_argument("--results", type=Path, default=REPO / "benchmarks" / "results")
    args = parser.parse_args(argv)
    import onnx

    with tempfile.TemporaryDirectory(prefix="cpu-profile-") as tmp:
        work = Path(tmp)
        say = lambda line: print(line, file=sys.stderr, flush=True)  # noqa: E731
        study = Int8Study(ExportOptions(checkpoint=args.checkpoint, out=work / "unused", int8=True, data=args.data,
                                        threads=args.threads, progress=False), work, say)
        fp32_path = study.fp32_path
        model = onnx.load(str(fp32_path))
        image = study.prep.calibration[:1]
        say("profiling FP32")
        fp32_profile = profile(fp32_path, image, args.threads, args.runs, part_of_output(model))
        calibration = {a: calibrate(fp32_path, study.prep.calibration, activations=a, threads=args.threads)
                       for a in ("s8", "u8")}
        matched = matched_feature_convs(model)
        forms = {"S8, all convolutions": ("s8", set()), "U8, all convolutions": ("u8", set()),
                 "U8, matched features in float": ("u8", matched)}
        paths = {"FP32": fp32_path}
        rows = {"FP32": study.fp32}
        for i, (form, (activations, keep)) in enumerate(forms.items()):
            paths[form] = quantize_int8(fp32_path, work / f"form{i}.onnx", calibration[activations],
                                        keep_float=keep, activations=activations)
            say(f"scoring {form}")
            rows[form] = study.evaluation.onnx(form, paths[form], quiet=True)
        say("timing")
        times = latency(paths, image, args.threads, args.rounds)
        u8_profile = profile(paths["U8, matched features in float"], image, args.threads, args.runs, None)
    report = {"checkpoint": str(args.checkpoint), "threads": args.threads, "rounds": args.rounds,
              "matched_feature_convs": len(matched), "fp32_profile": fp32_profile,
              "u8_matched_float_profile": u8_profile,
              "forms": {k: {**{m: rows[k].get(m) for m in METRICS}, "delta_points": rows[k].get("delta_points"),
                            **times[k]} for k in paths},
              "provenance": provenance()}
    lines = ["# CPU time per part of the network, and INT8 forms (issue 16)", "",
             f"Produced by `python benchmarks/cpu_profile.py --checkpoint {args.checkpoint}` ({args.threads} threads, "
             f"batch 1, 256x256 input, model compute only: no frame decoding or resizing).", "",
             f"## FP32 ONNX Runtime: {fp32_profile['ms_per_image']:.1f} ms of kernels per image (profiled, "
             f"{args.runs} runs)", "", "| part | share | ms |", "|---|---:|---:|"]
    lines += [f"| {p['part']} | {100 * p['share']:.1f} % | {p['ms']:.2f} |" for p in fp32_profile["parts"][:18]]
    lines += ["", "## INT8 forms (convolutions only, 7-bit weights, MinMax ranges of 32 normal images)", "",
              f"Accuracy on the checkpoint's evaluation set, deltas in points against the FP32 ONNX; latency: "
              f"medians of {args.rounds} interleaved rounds, speed-up = median of per-round ratios to FP32. "
              f"\"Matched features in float\" keeps the {len(matched)} convolutions upstream of the prototype matches.",
              "", "| form | image / pixel / PRO / AP | delta | median ms | speed-up |", "|---|---|---|---:|---:|"]
    for key, r in report["forms"].items():
        d = r["delta_points"] or {}
        lines.append(f"| {key} | {' / '.join(f'{100 * r[m]:.1f}' for m in METRICS)} | "
                     f"{' / '.join(f'{d.get(m, 0):+.2f}' for m in METRICS)} | {r['median_ms']:.1f} | "
                     f"{r['speedup']:.2f}x |")
    lines += ["", f"## U8, matched features in float: {u8_profile['ms_per_image']:.1f} ms of kernels per image, "
                  "per operator", "", "| operator | share | ms |", "|---|---:|---:|"]
    lines += [f"| {p['part']} | {100 * p['share']:.1f} % | {p['ms']:.2f} |" for p in u8_profile["parts"][:12]]
    lines += ["", provenance_line(report["provenance"]), ""]
    args.results.mkdir(parents=True, exist_ok=True)
    write_text_atomic(args.results / f"{args.name}.md", "\n".join(lines))
    write_json_atomic(args.results / f"{args.name}.json", report)
    print(f"wrote {args.results / (args.name + '.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
