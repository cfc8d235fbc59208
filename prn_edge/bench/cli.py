"""``prn-bench``: latency, throughput, stages and memory of every available backend, interleaved.

The command is a thin view of :func:`prn_edge.bench.api.bench` (``prn_edge.api.bench``), which does::

    candidates, checkpoint = discover(model_dir, checkpoint=..., threads=...)   # the runtime's loader
    run = run_benchmark([(c.key, c.open) for c in chosen], BenchSettings(batches=..., duration_s=...))
    report = build_report(run, cost=model_cost(checkpoint, weight_files), skipped=..., model=...)
    write_outputs(report, run, json_path=..., md_path=..., plot_path=...)

With no arguments it benchmarks the demo model (``python -m prn_edge.demo`` makes it) on
whatever this machine offers.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from prn_edge.bench.api import DEMO_MODEL, DEMO_ROOT
from prn_edge.cli import ArgumentParser, bounded_float, run_cli, thread_count
from prn_edge.errors import PRNError
from prn_edge.imaging.preprocess import MAX_FRAME_SIDE, check_frame_size

PROG = "prn-bench"

__all__ = ["DEMO_MODEL", "DEMO_ROOT", "build_parser", "main"]


def _csv(kind: str, choices: tuple[str, ...] | None = None, cast=str):
    def parse(text: str):
        items = [t.strip() for t in text.split(",") if t.strip()]
        if not items:
            raise argparse.ArgumentTypeError(f"expected a comma-separated list of {kind}, got {text!r}")
        out = []
        for item in items:
            try:
                value = cast(item)
            except ValueError:
                raise argparse.ArgumentTypeError(f"{item!r} is not a valid {kind}") from None
            if choices is not None and value not in choices:
                raise argparse.ArgumentTypeError(f"unknown {kind} {item!r} (choose from {', '.join(choices)})")
            if cast is int and value < 1:
                raise argparse.ArgumentTypeError(f"{kind} must be >= 1, got {item!r}")
            out.append(value)
        return out
    return parse


_seconds = bounded_float("seconds", 0)


def _frame(text: str) -> tuple[int, int]:
    """``WxH`` -> (width, height), as :func:`prn_edge.bench.api.bench` takes it."""
    try:
        w, h = (int(v) for v in text.lower().split("x"))
        return check_frame_size("--frame", w, h, low=16)
    except (ValueError, PRNError):
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT like 1280x720, each side from 16 to "
                                         f"{MAX_FRAME_SIDE}, got {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``prn-bench``."""
    from prn_edge.bench.engines import BACKENDS, PRECISIONS
    from prn_edge.imaging.preprocess import RESIZE_POLICIES

    p = ArgumentParser(
        prog=PROG,
        description="Benchmark an exported PRN model on every available backend and precision: latency "
                    "(mean, median, p90/p95/p99, min, max) per batch size, throughput, a per-stage breakdown "
                    "(preprocess of a camera frame, compute, postprocess; host<->device where a backend has it), "
                    "memory, FLOPs and bytes moved with the achieved rates. Backends are measured interleaved in "
                    "short rounds, so their ratios hold on a noisy machine; unstable cells are flagged. Prints a "
                    "table and writes JSON, Markdown and a PNG plot.",
        epilog="examples:\n"
               f"  prn-bench                                   # the demo model ({DEMO_MODEL})\n"
               "  prn-bench --model runs/bottle/model --checkpoint runs/bottle/checkpoint.pt --out runs/bench\n"
               "  prn-bench --model DIR --backends onnxruntime --precisions fp32,int8 --batch 1,8 --duration 30\n"
               "  prn-bench --model DIR --json b.json --md b.md --plot b.png --threads 2\n\n"
               "Python: prn_edge.bench.harness.run_benchmark([(key, opener), ...], BenchSettings(...))",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, default=None, metavar="DIR",
                   help="export folder: model.onnx, model.fp16.onnx, model.int8.onnx, model.<precision>.engine, "
                        f"checkpoint.pt (default: the demo's, {DEMO_MODEL}; $PRN_EDGE_DEMO/model when that is set)")
    p.add_argument("--checkpoint", type=Path, default=None, metavar="FILE",
                   help="checkpoint.pt for the PyTorch reference and the FLOP count (default: DIR/checkpoint.pt, "
                        "else the one DIR/export_report.json records under 'checkpoint')")
    p.add_argument("--backends", type=_csv("backend", BACKENDS), default=None, metavar="B,B",
                   help=f"backends to run: {', '.join(BACKENDS)} (onnxruntime = its CPU and CUDA providers; "
                        "default: every one available)")
    p.add_argument("--precisions", type=_csv("precision", PRECISIONS), default=None, metavar="P,P",
                   help=f"precisions to run: {', '.join(PRECISIONS)} (default: every one available, except FP16 on "
                        "ONNX Runtime's CPU provider)")
    p.add_argument("--batch", type=_csv("batch size", cast=int), default=[1, 8, 32], metavar="N,N",
                   help="batch sizes (default 1,8,32)")
    p.add_argument("--warmup", type=_seconds, default=2.0, metavar="S", help="warm-up seconds per engine (default 2)")
    p.add_argument("--duration", type=_seconds, default=20.0, metavar="S",
                   help="measured seconds, all engines and batch sizes together (default 20; every cell gets at "
                        "least 5 iterations, up to 4x this)")
    p.add_argument("--round", type=_seconds, default=0.3, metavar="S",
                   help="seconds per visit to one (engine, batch) cell in a round (default 0.3)")
    p.add_argument("--reference", default="torch:fp32", metavar="BACKEND:PRECISION",
                   help="what ratios refer to (default torch:fp32, PyTorch eager; else the first engine)")
    p.add_argument("--threads", type=thread_count, default=0, metavar="N",
                   help="intra-op threads of PyTorch and ONNX Runtime (default 0: their default, all cores)")
    p.add_argument("--device", default=None, metavar="DEV",
                   help="torch device of the PyTorch / CuPy-fused engines: cpu, cuda, cuda:N (default: cuda if "
                        "usable, else cpu)")
    p.add_argument("--frame", type=_frame, default=(1280, 720), metavar="WxH",
                   help="camera frame size that preprocessing resizes (default 1280x720)")
    p.add_argument("--resize", choices=RESIZE_POLICIES, default="stretch", help="resize policy (default stretch)")
    p.add_argument("--threshold", type=bounded_float("a score threshold", 0, 1), default=None, metavar="FLOAT",
                   help="decision threshold on the image score, for a model without a calibrated one "
                        "(default: the model's calibrated threshold)")
    p.add_argument("--out", type=Path, default=None, metavar="DIR",
                   help="write bench.json, bench.md and bench.png here (default: DIR/bench of the model, unless "
                        "--json/--md/--plot name files)")
    p.add_argument("--json", type=Path, default=None, metavar="FILE", help="write the JSON report here")
    p.add_argument("--md", type=Path, default=None, metavar="FILE", help="write the Markdown report here")
    p.add_argument("--plot", type=Path, default=None, metavar="FILE", help="write the PNG plot here")
    p.add_argument("--profile", action="store_true",
                   help="after the timed rounds, profile every ONNX Runtime engine per operator type (Conv, "
                        "Transpose, ...; ORT's profiler, on separate sessions so it never slows the timings) "
                        "and add the table to the reports")
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    return p


def _run(args: argparse.Namespace) -> int:
    from prn_edge.bench.api import bench, demo_model

    say = (lambda _line: None) if args.quiet else (lambda line: print(f"{PROG}: {line}", file=sys.stderr, flush=True))
    model = demo_model(DEMO_MODEL) if args.model is None else args.model
    result = bench(model, checkpoint=args.checkpoint, backends=args.backends, precisions=args.precisions,
                   batch=args.batch, warmup=args.warmup, duration=args.duration, round=args.round,
                   reference=args.reference, threads=args.threads, device=args.device, frame=args.frame,
                   resize=args.resize, threshold=args.threshold, out=args.out, json=args.json, md=args.md,
                   plot=args.plot, quiet=args.quiet, profile=args.profile, say=say)
    print(result.table())
    if result.report.get("profile"):
        from prn_edge.bench.profile import render_profile

        print(render_profile(result.report["profile"], top=6))
    if result.written:
        print(f"{PROG}: wrote {', '.join(str(p) for p in result.written)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``prn-bench``; returns the exit status (0, or 2 for a user error).

    Args:
        argv: the arguments (default: ``sys.argv[1:]``).
    """
    args = build_parser().parse_args(argv)
    return run_cli(PROG, lambda: _run(args))


if __name__ == "__main__":
    raise SystemExit(main())
