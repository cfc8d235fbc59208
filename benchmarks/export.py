"""The export benchmark: ``prn-export --fp16 --int8`` on the trained bottle model -> benchmarks/results/export.md.

Needs the checkpoint of ``python benchmarks/accuracy.py train --only bottle-edge`` (about 20 min
on 2 CPU cores) and ``../shared/data`` beside the clone. Writes the model folder to the
git-ignored ``runs/export/bottle-edge/`` and the report, with how it was made, to
``benchmarks/results/export.md`` and ``export.json``.

    python benchmarks/export.py [--checkpoint FILE] [--threads 2] [--latency-rounds 30]

Run it on a quiet machine: the latency table is interleaved (ratios hold under load) but its
absolute numbers are not.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
DEFAULT_CHECKPOINT = REPO / "runs" / "accuracy" / "bottle-edge" / "checkpoint.pt"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, default=DEFAULT_CHECKPOINT)
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "export" / "bottle-edge")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--latency-rounds", type=int, default=30)
    args = parser.parse_args(argv)
    if not args.checkpoint.is_file():
        print(f"{args.checkpoint}: no checkpoint; run 'python benchmarks/accuracy.py train --only bottle-edge' first",
              file=sys.stderr)
        return 2

    from prn_edge.export.cli import main as export_main
    from prn_edge.export.report import render_markdown
    from prn_edge.io import write_json_atomic, write_text_atomic

    command = [str(args.checkpoint), "--fp16", "--int8", "--out", str(args.out), "--threads", str(args.threads),
               "--latency-rounds", str(args.latency_rounds), "--no-progress"]
    status = export_main(command)
    report = json.loads((args.out / "export_report.json").read_text())
    report["checkpoint"] = str(Path(report["checkpoint"]).relative_to(REPO)) \
        if Path(report["checkpoint"]).is_relative_to(REPO) else report["checkpoint"]
    header = [
        "<!-- written by benchmarks/export.py; do not edit by hand -->",
        "# Export: accuracy, size and CPU latency per precision (bottle, PRN edge preset)",
        "",
        f"Reproduce: `python benchmarks/export.py` (runs `prn-export {' '.join(command[1:]).replace(str(REPO) + '/', '')}` on "
        f"`{report['checkpoint']}`, the 360-step bottle model of accuracy.md). "
        f"Machine: {platform.machine()}, {report['machine']['cores']} cores, no GPU; ONNX Runtime and PyTorch on "
        f"the CPU with {args.threads} threads.",
        "",
        "## Why INT8 is not faster in ONNX Runtime on this CPU",
        "",
        "The Q/DQ model is quantized for TensorRT (symmetric INT8 activations, zero point 0), and ONNX "
        "Runtime's x86 kernels fuse few of those S8S8 Q/DQ pairs into QLinearConv, so most convolutions run "
        "as dequantize + FP32 Conv. Side by side (same run, interleaved, batch 1, every convolution "
        "quantized, accuracy not gated):",
        "",
        *int8_forms(args.out / "model.onnx", args.checkpoint, args.threads, args.latency_rounds),
        "",
        "The U8 form is what a CPU-only deployment would want; TensorRT 10/11 requires the symmetric form, "
        "which is what prn-export writes and gates. FP16 on a CPU without FP16 arithmetic is likewise for "
        "size (half), not speed.",
        "",
    ]
    report["command"] = report["command"].replace(str(REPO) + "/", "")
    body = render_markdown(report).split("\n", 2)[2]   # the report without its own title
    write_text_atomic(RESULTS / "export.md", "\n".join(header) + "\n## The export report\n\n" + body)
    write_json_atomic(RESULTS / "export.json", report)
    print(f"wrote {RESULTS / 'export.md'} (prn-export exit {status})")
    return status


def int8_forms(fp32: Path, checkpoint: Path, threads: int, rounds: int) -> list[str]:
    """Latency of FP32 vs all-INT8 with symmetric S8 and asymmetric U8 activations, as table lines."""
    import tempfile

    import numpy as np

    from prn_edge.checkpoint import load_checkpoint
    from prn_edge.export.int8 import quantize_int8
    from prn_edge.export.pipeline import interleaved_times, load_calibration
    from prn_edge.runtime.engine import OnnxRuntimeEngine

    root = Path(load_checkpoint(checkpoint).metadata["data"]["root"])
    images, _ = load_calibration(root / "train" / "good", 32, 0, 256)
    with tempfile.TemporaryDirectory() as tmp:
        engines = {"FP32": OnnxRuntimeEngine(fp32, threads=threads)}
        for form in ("s8", "u8"):
            path = quantize_int8(fp32, Path(tmp) / f"{form}.onnx", images, activations=form)
            engines[f"INT8, {form.upper()} activations"] = OnnxRuntimeEngine(path, threads=threads)
        times = interleaved_times({name: e.predict for name, e in engines.items()}, images[:1], rounds)
    lines = ["| ONNX Runtime model | median ms | vs FP32 |", "|---|---:|---:|"]
    fp32_ms = float(np.median(times["FP32"])) * 1e3
    for name, t in times.items():
        ms = float(np.median(t)) * 1e3
        lines.append(f"| {name} | {ms:.1f} | {fp32_ms / ms:.2f}x |")
    return lines


if __name__ == "__main__":
    sys.exit(main())
