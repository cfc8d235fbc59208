"""``prn-export``: a trained checkpoint -> deployable ONNX (FP32, FP16, INT8), TensorRT variants, engines.

A thin view of :func:`prn_edge.export.api.export` (``prn_edge.api.export``): parse, call, print.
"""
from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from prn_edge.cli import ArgumentParser, bounded_float, positive_int, positive_thread_count, run_cli, seed_number
from prn_edge.export.int8 import CALIBRATION_METHODS, DEFAULT_CALIBRATION_METHOD, DEFAULT_PERCENTILE

PROG = "prn-export"


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(
        prog=PROG,
        description="Export a PRN checkpoint for deployment. Always writes OUT/model.onnx (FP32: uint8 NHWC "
                    "RGB in, anomaly_map and score out, dynamic batch, the nearest-prototype residual and the "
                    "multi-size attention as prn-domain functions), its TensorRT variant model.trt.onnx (those "
                    "calls as plugin nodes) and export_report.json/.md: accuracy of every precision against the "
                    "PyTorch model on the evaluation set, file sizes, CPU latency in ONNX Runtime next to "
                    "PyTorch eager. Precision lives in the ONNX (TensorRT 11 is strongly typed): --fp16 and "
                    "--int8 add mixed-precision and Q/DQ models, checked with ONNX Runtime before any engine "
                    "exists. Nothing is written unless every step succeeds (except: an INT8 model that misses "
                    "its accuracy gate is left out, the report says why, and the exit status is 1).",
        epilog="examples:\n"
               "  prn-export --fp16 runs/bottle/checkpoint.pt                 # -> runs/bottle/export/\n"
               "  prn-export --fp16 --int8 --out models/bottle runs/bottle/checkpoint.pt\n"
               "  prn-export --int8 --calib images/normal --data datasets/bottle ckpt.pt\n"
               "  prn-export --fp16 --engine ckpt.pt    # on the Jetson / GPU machine that will run it\n\n"
               "exit status: 0 ok, 1 INT8 accuracy gate failed (everything else written), 2 bad input "
               "(nothing written)",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", type=Path, help="checkpoint.pt written by prn-train")
    p.add_argument("--out", type=Path, metavar="DIR",
                   help="output folder (default: 'export' beside the checkpoint); existing files of the same "
                        "names are replaced")
    p.add_argument("--fp16", action="store_true",
                   help="also write model.fp16.onnx: FP16 convolutions, FP32 input normalisation, score, "
                        "distance reduction and softmax")
    p.add_argument("--int8", action="store_true",
                   help="also write model.int8.onnx (static Q/DQ, per-channel weights) if it keeps image AUROC, "
                        "pixel AUROC and PRO within --tolerance points of FP32; otherwise the most sensitive "
                        "parts are kept in float, and if that fails too the report names them")
    p.add_argument("--cpu-int8", action="store_true",
                   help="also write the CPU flavour model.int8.cpu.onnx: INT8 with U8 activations, the form ONNX "
                        "Runtime's x86 kernels run fast (TensorRT cannot use it), under the --int8 gate with AP gated too "
                        "(every metric within --tolerance); "
                        "kept only if the export's own timing shows it at least 1.15x faster than the FP32 ONNX "
                        "on this CPU, and then what --backend auto runs on a CPU")
    p.add_argument("--engine", action="store_true",
                   help="also build a TensorRT engine per precision (needs TensorRT >= 10, a GPU and the plugin "
                        "library; without TensorRT the ONNX files are still written and the report says so)")
    p.add_argument("--calib", type=Path, metavar="DIR",
                   help="folder of normal images for INT8 calibration (searched recursively; default: the "
                        "checkpoint's train/good)")
    p.add_argument("--calib-count", type=positive_int, default=32, metavar="N",
                   help="calibration images drawn from --calib (default 32, seeded by --seed)")
    p.add_argument("--calib-method", choices=CALIBRATION_METHODS, default=DEFAULT_CALIBRATION_METHOD,
                   help="how INT8 activation ranges are set from the calibration images: minmax (largest "
                        "magnitude seen), percentile (--calib-percentile of |x|) or entropy (least KL "
                        f"divergence); symmetric either way (default {DEFAULT_CALIBRATION_METHOD}; "
                        "benchmarks/results/int8_calibration.md compares them)")
    p.add_argument("--calib-percentile", type=bounded_float("a percentile", 0, 100, low_open=True), metavar="P",
                   help=f"the percentile of --calib-method percentile (default {DEFAULT_PERCENTILE})")
    p.add_argument("--data", type=Path, metavar="DIR",
                   help="MVTec-layout category to measure accuracy on (default: the one the checkpoint "
                        "trained on; its seen anomalies are left out)")
    p.add_argument("--tolerance", type=bounded_float("points", 0, 100), default=0.5, metavar="POINTS",
                   help="INT8 accuracy gate in percentage points (default 0.5)")
    p.add_argument("--int8-budget", type=bounded_float("minutes", 0, 1440, low_open=True), default=None,
                   metavar="MIN",
                   help="minutes the INT8 gate search may take: no new quantization trial starts after that, and "
                        "an INT8 model that has not met the gate by then is left out, as when the search fails "
                        "(default: no limit; each trial re-quantizes and re-scores the evaluation set)")
    p.add_argument("--seed", type=seed_number, default=0, help="seed of the calibration draw (default 0)")
    p.add_argument("--threads", type=positive_thread_count, default=2, metavar="N",
                   help="CPU threads for PyTorch and ONNX Runtime (default 2)")
    p.add_argument("--latency-rounds", type=positive_int, default=15, metavar="N",
                   help="interleaved latency rounds (default 15)")
    p.add_argument("--max-batch", type=positive_int, default=8, metavar="N",
                   help="largest batch of the TensorRT optimisation profile (default 8)")
    p.add_argument("--plugin-lib", type=Path, metavar="FILE",
                   help="libprn_edge_plugins.so for --engine (default: $PRN_EDGE_PLUGIN_LIB or build/)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def body() -> int:
        from prn_edge.export.api import export

        result = export(
            args.checkpoint, out=args.out, fp16=args.fp16, int8=args.int8, cpu_int8=args.cpu_int8,
            engine=args.engine, calib=args.calib,
            calib_count=args.calib_count, calib_method=args.calib_method, calib_percentile=args.calib_percentile,
            data=args.data, tolerance=args.tolerance, int8_budget=args.int8_budget, seed=args.seed,
            threads=args.threads, latency_rounds=args.latency_rounds, max_batch=args.max_batch,
            plugin_lib=args.plugin_lib, no_progress=args.no_progress,
            command=" ".join([PROG] + [shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv)]))
        print(result.summary_text())
        return result.status

    return run_cli(PROG, body)


def summary(report: dict) -> str:
    """A few lines for the terminal (:func:`prn_edge.export.api.summary_text`)."""
    from prn_edge.export.api import summary_text

    return summary_text(report)


if __name__ == "__main__":
    sys.exit(main())
