"""``prn-inspect``: run a deployed PRN on a camera, stream, video or image folder.

The command is a thin view of the API::

    engine = load_engine(model, backend, precision=..., threads=...)
    pipeline = Pipeline(engine, InspectConfig(resize=..., roi=..., threshold=...))
    loop = InspectionLoop(pipeline, open_source(source), SQLiteStore(out / "results.db"),
                          images=AnomalyImageWriter(out / "anomalies", max_bytes), max_frames=...)
    with stop_on_signals(loop):
        summary = loop.run()

``--view PORT`` adds :class:`~prn_edge.runtime.view.LiveView` (an MJPEG stream of the overlays).

Every user error (a missing model, an unknown backend, a source that does not open, an
unwritable ``--out``) is one line ``prn-inspect: error: ...`` and exit status 2, and is found
before the output folder is created. Exit status 1 means the source failed for good in the
middle of the run (everything inspected until then is stored); SIGINT and SIGTERM end the run
cleanly with status 0.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from prn_edge.cli import ArgumentParser, positive_int, run_cli
from prn_edge.errors import PRNError

PROG = "prn-inspect"
EXIT_SOURCE_FAILED = 1

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
    from prn_edge.runtime.loader import BACKENDS, PRECISIONS
    from prn_edge.imaging.preprocess import RESIZE_POLICIES

    p = ArgumentParser(
        prog=PROG,
        description="Inspect frames from a camera, stream, video file or image folder with an exported PRN "
                    "model. Every frame's result (time, source, sequence, score, decision, defect regions, "
                    "latencies) goes to OUT/results.db (SQLite, WAL) or OUT/results.jsonl; anomalous frames "
                    "and their overlays to OUT/anomalies/ (under a size cap). When inference is slower than "
                    "a camera, only the newest frame is kept (drops are counted). A lost source is reopened "
                    "with back-off. Prints frames, drops, FPS, latency percentiles and defects at exit.",
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
               "  prn-inspect --model DIR --source rtsp://cam/stream --threshold 0.6 --roi 100,50,800,800\n\n"
               "exit status: 0 done or stopped (SIGINT/SIGTERM), 1 the source failed for good, 2 user error\n"
               "Python: prn_edge.runtime: load_engine, Pipeline, open_source, InspectionLoop",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, type=Path, metavar="DIR",
                   help="model folder written by prn-export, or one .onnx / .engine / checkpoint .pt file")
    p.add_argument("--source", metavar="SRC", help="what to inspect (see below); required unless --list-backends")
    p.add_argument("--backend", default="auto", choices=BACKENDS, metavar="B",
                   help=f"engine: {', '.join(BACKENDS)} (default auto: the best that loads here)")
    p.add_argument("--precision", choices=PRECISIONS, default=None,
                   help="model precision (default: FP16 for TensorRT, FP32 otherwise)")
    p.add_argument("--threshold", type=float, default=None, metavar="T",
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
    p.add_argument("--threads", type=int, default=0, metavar="N", help="CPU threads of the engine (0 = default)")
    p.add_argument("--device", default=None, help="torch device for the torch / cupy-fused backends")
    p.add_argument("--loop", action="store_true", help="image folder: start again after the last image")
    p.add_argument("--reconnect-attempts", type=int, default=None, metavar="N",
                   help="failed reopenings in a row before giving up (default: forever for cameras and "
                        "streams, 3 for files)")
    p.add_argument("--view", type=int, default=None, metavar="PORT",
                   help="live view: serve the newest overlay as an MJPEG stream on http://HOST:PORT/ "
                        "(also /latest.jpg and /status)")
    p.add_argument("--view-host", default="127.0.0.1", metavar="HOST",
                   help="address of the live view (default 127.0.0.1; 0.0.0.0 to reach it from the network)")
    p.add_argument("--list-backends", action="store_true",
                   help="print which backends can run the model here, and why not, then exit")
    p.add_argument("-v", "--verbose", action="store_true", help="log reconnections and engine choices")
    return p


def _format_summary(summary, engine_name: str, out: Path, results: Path) -> str:
    s = summary
    lines = [(f"{PROG}: {s.frames} frames inspected with {engine_name} in {s.seconds:.1f} s ({s.fps:.2f} FPS); "
              f"{s.read} read, {s.drops} dropped"),
             (f"  defects: {s.anomalous} anomalous frame(s), {s.regions} region(s); "
              f"{s.images_written} image(s) written, {s.images_evicted} removed by the size cap, "
              f"{s.images_skipped} skipped"),
             (f"  source: {s.source_errors} failure(s), {s.reconnects} reconnection(s) in "
              f"{s.reconnect_attempts} attempt(s); ended: {s.end}")]
    if s.latency_ms:
        lines.append("  latency ms      p50      p90      p99      max")
        for stage, q in s.latency_ms.items():
            lines.append(f"  {stage:<11} {q['p50']:8.2f} {q['p90']:8.2f} {q['p99']:8.2f} {q['max']:8.2f}")
    lines.append(f"  results: {results}" + (f"; images: {out / 'anomalies'}" if s.images_written else ""))
    return "\n".join(lines)


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
    from prn_edge.io import check_output_dir
    from prn_edge.runtime.loader import load_engine, plan_engines
    from prn_edge.runtime.loop import Backoff, InspectionLoop, stop_on_signals
    from prn_edge.runtime.pipeline import InspectConfig, Pipeline
    from prn_edge.runtime.sources import open_source
    from prn_edge.runtime.store import AnomalyImageWriter, open_store
    from prn_edge.runtime.view import LiveView

    if args.verbose:
        logging.basicConfig(level=logging.INFO, format=f"{PROG}: %(message)s")
    else:
        _quiet_opencv()
    if args.list_backends:
        for c in plan_engines(args.model, args.backend, args.precision):
            where = c.path.name if c.path else "-"
            print(f"{c.backend:<22} {c.precision:<5} {where:<24} {'ok' if c.available else c.reason}")
        return 0

    # Everything that can fail cheaply, before the output folder exists.
    overrides = {"resize": args.resize, "roi": args.roi, "threshold": args.threshold}
    config = (InspectConfig.from_file(args.config, **overrides) if args.config is not None
              else InspectConfig(**{k: v for k, v in overrides.items() if v is not None}))
    out = check_output_dir(args.out)
    source = open_source(args.source, loop=args.loop)
    engine = load_engine(args.model, args.backend, precision=args.precision, threads=args.threads,
                         device=args.device)
    view = None
    try:
        pipeline = Pipeline(engine, config)
        source.open()
        if args.view is not None:
            view = LiveView(args.view, args.view_host)
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise PRNError(f"{out}: cannot create the output folder ({exc.strerror}) (--out)") from exc
        results = out / ("results.jsonl" if args.store == "jsonl" else "results.db")
        store = open_store(results, args.durability)
        images = (AnomalyImageWriter(out / "anomalies", int(args.max_image_mb * 1e6))
                  if args.max_image_mb > 0 else None)
        backoff = Backoff(attempts=args.reconnect_attempts if args.reconnect_attempts is not None
                          else (None if source.live else 3))
        info = {"model": str(args.model), "engine": engine.describe(), "source": args.source,
                "config": config.to_dict(), "threshold": pipeline.threshold}
        loop = InspectionLoop(pipeline, source, store, images=images, max_frames=args.max_frames,
                              backoff=backoff, info=json.loads(json.dumps(info, default=str)), opened=True)
        if view is not None:
            view.status = lambda: {"frames": loop.summary.frames, "drops": loop.queue.dropped,
                                   "anomalous": loop.summary.anomalous, "reconnects": loop.summary.reconnects,
                                   "engine": engine.name}
            loop.on_result = lambda frame, det, lat: view.update(
                frame.sequence, lambda: pipeline.overlay(frame.image, det))
            print(f"{PROG}: live view on {view.url}", file=sys.stderr)
        try:
            with stop_on_signals(loop):
                summary = loop.run()
        finally:
            store.close()
    finally:
        if view is not None:
            view.close()
        source.close()
        engine.close()
    print(_format_summary(summary, engine.name, out, results))
    return EXIT_SOURCE_FAILED if summary.end.startswith("source failed") else 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``prn-inspect``; returns the exit status (0; 1 source lost; 2 user error).

    Args:
        argv: the arguments (default: ``sys.argv[1:]``).
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.source is None and not args.list_backends:
        parser.error("the following arguments are required: --source")
    return run_cli(PROG, lambda: _run(args))


if __name__ == "__main__":
    sys.exit(main())
