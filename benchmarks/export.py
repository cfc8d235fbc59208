"""The export benchmark: ``prn-export --fp16 --int8`` on the trained bottle model -> benchmarks/results/export.md.

Needs the checkpoint of the accuracy run ``bottle-edge`` (``make results-export`` makes it first:
``python benchmarks/accuracy.py train --only bottle-edge``, about 20 min on 2 CPU cores) and the
category it trained on. Calls :func:`prn_edge.api.export` in this process; writes the model
folder to ``--out`` and the report, with how it was made and its provenance, to
``RESULTS/export.md`` and ``export.json``.

    python benchmarks/export.py --checkpoint runs/accuracy/bottle-edge/checkpoint.pt \
        [--data ../shared/data/mvtec_ad/bottle] [--out runs/export/bottle-edge] [--threads 2] [--latency-rounds 30]

Run it on a quiet machine: the latency table is interleaved (ratios hold under load) but its
absolute numbers are not.
"""
from __future__ import annotations

import argparse
import platform
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _relative(path) -> str:
    """``path`` relative to the repository when it lies inside it (reports stay machine-independent)."""
    p = Path(path).resolve()
    return str(p.relative_to(REPO)) if p.is_relative_to(REPO) else str(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, required=True,
                        help="the bottle-edge checkpoint of benchmarks/accuracy.py (runs/accuracy/bottle-edge/...)")
    parser.add_argument("--data", type=Path, default=None,
                        help="its MVTec-layout category, for accuracy and INT8 calibration (default: the one the "
                             "checkpoint recorded)")
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "export" / "bottle-edge",
                        help="model folder to write (default runs/export/bottle-edge)")
    parser.add_argument("--results", type=Path, default=REPO / "benchmarks" / "results",
                        help="where export.md and export.json go (default benchmarks/results)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--latency-rounds", type=int, default=30)
    args = parser.parse_args(argv)
    if not args.checkpoint.is_file():
        print(f"{args.checkpoint}: no checkpoint; run 'python benchmarks/accuracy.py train --only bottle-edge' "
              "(or make results-accuracy-train) first", file=sys.stderr)
        return 2

    from prn_edge.export.report import render_markdown

    from prn_edge.api import export
    from prn_edge.errors import PRNError
    from prn_edge.io import write_json_atomic, write_text_atomic
    from prn_edge.provenance import provenance, provenance_line

    flags = ["--fp16", "--int8", "--out", _relative(args.out), "--threads", str(args.threads),
             "--latency-rounds", str(args.latency_rounds), "--no-progress"]
    if args.data is not None:
        flags += ["--data", _relative(args.data)]
    command = " ".join(["prn-export", _relative(args.checkpoint), *flags])
    try:
        result = export(args.checkpoint, out=args.out, fp16=True, int8=True, data=args.data, threads=args.threads,
                        latency_rounds=args.latency_rounds, no_progress=True, command=command)
    except PRNError as exc:
        print(f"export.py: error: {exc}", file=sys.stderr)
        return 2
    report = dict(result.report)
    report["checkpoint"] = _relative(report["checkpoint"])
    report["command"] = command
    origin = provenance()
    report["provenance"] = origin
    data_root = args.data or _recorded_data(args.checkpoint)
    header = [
        "<!-- written by benchmarks/export.py; do not edit by hand -->",
        "# Export: accuracy, size and CPU latency per precision (bottle, PRN edge preset)",
        "",
        f"Reproduce: `make results-export` (runs `python benchmarks/export.py --checkpoint {report['checkpoint']}`, "
        f"that is `{command}` through `prn_edge.api.export`, on the 360-step bottle model of accuracy.md). "
        f"Machine: {platform.machine()}, {report['machine']['cores']} cores, no GPU; ONNX Runtime and PyTorch on "
        f"the CPU with {args.threads} threads.",
        "",
        provenance_line(origin),
        "",
        "## Why INT8 is not faster in ONNX Runtime on this CPU",
        "",
        "The Q/DQ model is quantized for TensorRT (symmetric INT8 activations, zero point 0), and ONNX "
        "Runtime's x86 kernels fuse few of those S8S8 Q/DQ pairs into QLinearConv, so most convolutions run "
        "as dequantize + FP32 Conv. Side by side (same run, interleaved, batch 1, every convolution "
        "quantized, accuracy not gated):",
        "",
        *int8_forms(result.models["fp32"], data_root, args.threads, args.latency_rounds),
        "",
        "The U8 form is what a CPU-only deployment would want; TensorRT 10/11 requires the symmetric form, "
        "which is what prn-export writes and gates. FP16 on a CPU without FP16 arithmetic is likewise for "
        "size (half), not speed.",
        "",
    ]
    body = render_markdown(report).split("\n", 2)[2]   # the report without its own title
    args.results.mkdir(parents=True, exist_ok=True)
    write_text_atomic(args.results / "export.md", "\n".join(header) + "\n## The export report\n\n" + body)
    write_json_atomic(args.results / "export.json", report)
    print(f"wrote {args.results / 'export.md'} (prn-export exit {result.status})")
    return result.status


def _recorded_data(checkpoint: Path) -> Path:
    from prn_edge.checkpoint import load_checkpoint

    return Path(load_checkpoint(checkpoint).metadata["data"]["root"])


def int8_forms(fp32: Path, data: Path, threads: int, rounds: int) -> list[str]:
    """Latency of FP32 vs all-INT8 with symmetric S8 and asymmetric U8 activations, as table lines."""
    import tempfile

    import numpy as np
    from prn_edge.export.int8 import quantize_int8
    from prn_edge.export.pipeline import load_calibration

    from prn_edge.bench.harness import BenchSettings, run_benchmark
    from prn_edge.runtime.backends.onnxruntime import OnnxRuntimeEngine

    images, _ = load_calibration(Path(data) / "train" / "good", 32, 0, 256)
    with tempfile.TemporaryDirectory() as tmp:
        models = {"FP32": fp32}
        for form in ("s8", "u8"):
            models[f"INT8, {form.upper()} activations"] = quantize_int8(fp32, Path(tmp) / f"{form}.onnx", images,
                                                                        activations=form)
        # prn-bench's interleaved rounds on frames already at the model's size: engine.predict alone.
        run = run_benchmark([(name, lambda path=path: OnnxRuntimeEngine(path, threads=threads))
                             for name, path in models.items()], BenchSettings.counted(rounds, 256, "FP32"))
    lines = ["| ONNX Runtime model | median ms | vs FP32 |", "|---|---:|---:|"]
    fp32_ms = float(np.median(run.cell("FP32", 1).samples["compute"])) * 1e3
    for name in models:
        ms = float(np.median(run.cell(name, 1).samples["compute"])) * 1e3
        lines.append(f"| {name} | {ms:.1f} | {fp32_ms / ms:.2f}x |")
    return lines


if __name__ == "__main__":
    sys.exit(main())
