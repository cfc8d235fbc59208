"""``prn-inspect``: run a deployed PRN on a camera, stream, video or image folder.

The command is a thin view of :func:`prn_edge.runtime.api.inspect` (``prn_edge.api.inspect``), which does::

    engine = load_engine(model, backend, precision=..., threads=...)
    pipeline = Pipeline(engine, InspectConfig(resize=..., roi=..., threshold=...))
    loop = InspectionLoop(pipeline, open_source(source), SQLiteStore(out / "results.db"),
                          images=AnomalyImageWriter(out / "anomalies", max_bytes), max_frames=...)
    with stop_on_signals(loop):
        summary = loop.run()

``--view PORT`` adds :class:`~prn_edge.runtime.view.LiveView` (an MJPEG stream of the overlays).
``--server grpc://HOST:PORT`` replaces ``--model``: the engine is
:class:`~prn_edge.runtime.backends.triton.TritonEngine` (the model runs in Triton Inference Server).

Every user error (a missing model, an unknown backend, a source that does not open, an
unwritable ``--out``) is one line ``prn-inspect: error: ...`` and exit status 2, and is found
before the output folder is created. Exit status 1 means the source failed for good in the
middle of the run, or the server stayed unavailable through its retries (one line on stderr naming
it); everything inspected until then is stored. SIGINT and SIGTERM end the run cleanly with status 0.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from prn_edge.cli import (
    ArgumentParser,
    bounded_float,
    positive_int,
    run_cli,
    tcp_port,
    thread_count,
)
from prn_edge.runtime.api import EXIT_SERVER_FAILED, EXIT_SOURCE_FAILED  # noqa: F401 - documented here too

PROG = "prn-inspect"

__all__ = ["build_parser", "main"]


def _non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}")
    return value


def _roi(text: str) -> tuple[int, int, int, int]:
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 4:
        raise argparse.ArgumentTypeError(f"expected x,y,w,h in pixels, got {text!r}")
    return values  # type: ignore[return-value]



def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``prn-inspect``."""
    from prn_edge.imaging.preprocess import RESIZE_POLICIES
    from prn_edge.runtime.loader import BACKENDS, PRECISIONS

    p = ArgumentParser(
        prog=PROG,
        description="Inspect frames from a camera, stream, video file or image folder with an exported PRN "
                    "model. Every frame's result (time, source, sequence, score, decision, defect regions, "
                    "latencies) goes to OUT/results.db (SQLite, WAL) or OUT/results.jsonl; anomalous frames "
                    "and their overlays to OUT/anomalies/ (under a size cap). When inference is slower than "
                    "a camera, only the newest frame is kept (drops are counted). A lost source is reopened "
                    "with back-off. With --server the model runs in a Triton Inference Server (prn-serve) "
                    "instead of here: same preprocessing, decisions and outputs; a frame that meets the server "
                    "unavailable is retried with back-off and stored only once decided. Prints frames, drops, "
                    "FPS, latency percentiles and defects at exit.",
        epilog="sources:\n"
               "  DIR or IMAGE                 image folder (name order) or one image\n"
               "  VIDEO                        video file (every frame is inspected)\n"
               "  /dev/video0 or 0             V4L2 camera\n"
               "  rtsp://... http(s)://...     network stream (FFMPEG)\n"
               "  gst:PIPELINE ! appsink       GStreamer (needs an OpenCV built with it, e.g. JetPack's)\n"
               "  synthetic[:WxH[@FPS]]        generated frames, for trials\n\n"
               "examples:\n"
               "  prn-inspect --model runs/bottle/export --source /dev/video0 --out runs/line1\n"
               "  prn-inspect --model model.onnx --source test.avi --backend onnxruntime-cpu --max-frames 100\n"
               "  prn-inspect --model DIR --source rtsp://cam/stream --threshold 0.6 --roi 100,50,800,800\n"
               "  prn-inspect --server grpc://triton:8001 --source /dev/video0 --out runs/line1\n\n"
               "exit status: 0 done or stopped (SIGINT/SIGTERM), 1 the source failed for good or the server\n"
               "stayed unavailable (--server-attempts used up), 2 user error\n"
               "Python: prn_edge.runtime: load_engine, Pipeline, open_source, InspectionLoop",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, default=None, metavar="DIR",
                   help="model folder written by prn-export, or one .onnx / .engine / checkpoint .pt file "
                        "(or --server)")
    p.add_argument("--server", default=None, metavar="URL",
                   help="instead of --model: a Triton Inference Server that serves it (prn-serve, or NVIDIA's "
                        "container with a prn-serve repo repository), grpc://HOST:PORT or http://HOST:PORT; "
                        "input size and threshold come from the server")
    p.add_argument("--server-model", default=None, metavar="NAME",
                   help="the model's name on the server (default prn, prn-serve's; a prn-serve repo "
                        "repository has prn_onnxruntime and prn_tensorrt)")
    p.add_argument("--server-attempts", type=positive_int, default=None, metavar="N",
                   help="retries of a frame while the server is unavailable, with back-off (0.5 s doubling to "
                        "10 s), before giving up (default: forever for cameras and streams, 5 for files)")
    p.add_argument("--source", metavar="SRC", help="what to inspect (see below); required unless --list-backends")
    p.add_argument("--backend", default="auto", choices=BACKENDS, metavar="B",
                   help=f"engine: {', '.join(BACKENDS)} (default auto: the best that loads here)")
    p.add_argument("--precision", choices=PRECISIONS, default=None,
                   help="model precision (default: FP16 for TensorRT, FP32 otherwise)")
    p.add_argument("--threshold", type=bounded_float("a score threshold", 0, 1), default=None, metavar="T",
                   help="decision threshold on the image score (default: the model's calibrated one)")
    p.add_argument("--out", type=Path, default=Path("prn-inspect-out"), metavar="DIR",
                   help="output folder (default ./prn-inspect-out; results accumulate across runs)")
    p.add_argument("--max-frames", type=positive_int, default=None, metavar="N", help="stop after N frames")
    p.add_argument("--config", type=Path, default=None, metavar="FILE",
                   help="JSON with resize, roi, threshold, pixel_threshold, min_region_area; flags win")
    p.add_argument("--resize", choices=RESIZE_POLICIES, default=None, help="resize policy (default stretch)")
    p.add_argument("--roi", type=_roi, default=None, metavar="X,Y,W,H", help="region of interest in frame pixels")
    p.add_argument("--store", choices=("sqlite", "jsonl"), default="sqlite",
                   help="results format (default sqlite: OUT/results.db)")
    p.add_argument("--durability", choices=("normal", "full"), default="normal",
                   help="normal: every result survives a crash or kill; full: also a power loss (an fsync "
                        "per frame)")
    p.add_argument("--max-image-mb", type=_non_negative_float, default=1024.0, metavar="MB",
                   help="cap on OUT/anomalies (oldest images removed first; 0 = no images; default 1024)")
    p.add_argument("--threads", type=thread_count, default=0, metavar="N", help="CPU threads of the engine (0 = default)")
    p.add_argument("--device", default=None, help="torch device for the torch / cupy-fused backends")
    p.add_argument("--loop", action="store_true", help="image folder: start again after the last image")
    p.add_argument("--reconnect-attempts", type=int, default=None, metavar="N",
                   help="failed reopenings in a row before giving up (default: forever for cameras and "
                        "streams, 3 for files)")
    p.add_argument("--view", type=tcp_port, default=None, metavar="PORT",
                   help="live view: serve the newest overlay as an MJPEG stream on http://HOST:PORT/ "
                        "(also /latest.jpg and /status)")
    p.add_argument("--view-host", default="127.0.0.1", metavar="HOST",
                   help="address of the live view (default 127.0.0.1; 0.0.0.0 to reach it from the network)")
    p.add_argument("--list-backends", action="store_true",
                   help="print which backends can run the model here, and why not, then exit")
    p.add_argument("-v", "--verbose", action="store_true", help="log reconnections and engine choices")
    return p


def _quiet_opencv() -> None:
    # OpenCV prints its own warnings for a missing camera or a broken file; our one-line
    # errors and the reconnection counts say it better (-v keeps them).
    try:
        import cv2
        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)
    except (ImportError, AttributeError):
        pass


def _run(args: argparse.Namespace) -> int:
    # Imports here keep `prn-inspect --help` fast.
    from prn_edge.runtime.api import inspect, list_backends

    if args.verbose:
        logging.basicConfig(level=logging.INFO, format=f"{PROG}: %(message)s")
    else:
        _quiet_opencv()
    if args.list_backends:
        for c in list_backends(args.model, args.backend, args.precision):
            where = c.path.name if c.path else "-"
            print(f"{c.backend:<22} {c.precision:<5} {where:<24} {'ok' if c.available else c.reason}")
        return 0

    result = inspect(args.model, args.source, server=args.server, server_model=args.server_model,
                     server_attempts=args.server_attempts, backend=args.backend, precision=args.precision,
                     threshold=args.threshold, out=args.out, max_frames=args.max_frames, config=args.config,
                     resize=args.resize, roi=args.roi, store=args.store, durability=args.durability,
                     max_image_mb=args.max_image_mb, threads=args.threads, device=args.device, loop=args.loop,
                     reconnect_attempts=args.reconnect_attempts, view=args.view, view_host=args.view_host,
                     say=lambda line: print(f"{PROG}: {line}", file=sys.stderr))
    print(result.summary_text(PROG))
    if result.error:
        print(f"{PROG}: error: {result.error}", file=sys.stderr)
    return result.exit_status


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``prn-inspect``; returns the exit status (0; 1 source or server lost; 2 user error).

    Args:
        argv: the arguments (default: ``sys.argv[1:]``).
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.server is not None and (args.model is not None or args.list_backends):
        parser.error("--server replaces --model" + (" and --list-backends (the server's engine runs the model)"
                                                     if args.list_backends else ""))
    if args.model is None and args.server is None:
        parser.error("the following arguments are required: --model (or --server)")
    if args.source is None and not args.list_backends:
        parser.error("the following arguments are required: --source")
    return run_cli(PROG, lambda: _run(args))


if __name__ == "__main__":
    sys.exit(main())
