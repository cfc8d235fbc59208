"""Inspection as a function: :func:`inspect` does what ``prn-inspect`` does, without argv.

    from prn_edge.api import inspect
    result = inspect("runs/bottle/export", "video.mp4", out="runs/line1", max_frames=1000)
    result.summary.frames, result.summary.anomalous, result.exit_status
    inspect(source="rtsp://cam/stream", server="grpc://triton:8001")    # the model runs in Triton

It wires the runtime's public pieces together (:func:`~prn_edge.runtime.loader.load_engine`,
:class:`~prn_edge.runtime.pipeline.Pipeline`, :func:`~prn_edge.runtime.sources.open_source`,
:class:`~prn_edge.runtime.loop.InspectionLoop`, the stores and the live view). Everything that
can fail cheaply (the configuration, the output folder, the source, the engine or the server) is
checked before the output folder is created. numpy and OpenCV only: never torch unless the chosen
backend needs it.
"""
from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prn_edge.errors import PRNError
from prn_edge.validate import MAX_THREADS, check_number

__all__ = ["EXIT_SERVER_FAILED", "EXIT_SOURCE_FAILED", "InspectResult", "inspect", "list_backends"]

#: The exit status of a run whose source failed for good (everything inspected until then is stored).
EXIT_SOURCE_FAILED = 1
#: The exit status of a run whose server (``server=``) stayed unavailable for good: the same as a lost source.
EXIT_SERVER_FAILED = 1
STORES = ("sqlite", "jsonl")
DURABILITIES = ("normal", "full")


@dataclass
class InspectResult:
    """What :func:`inspect` did.

    Attributes:
        summary: the loop's :class:`~prn_edge.runtime.loop.Summary` (frames, drops, FPS, latencies, end).
        engine: the engine's name (``onnxruntime-cpu:fp32`` ...).
        out: the output folder.
        results: the results file (``results.db`` or ``results.jsonl``).
        exit_status: 0 done or stopped by a signal, :data:`EXIT_SOURCE_FAILED` the source failed for good,
            :data:`EXIT_SERVER_FAILED` the server stayed unavailable (``server=``).
        server: the Triton server's URL (None: a local engine).
    """

    summary: Any
    engine: str
    out: Path
    results: Path
    exit_status: int = 0
    server: str | None = None

    @property
    def error(self) -> str | None:
        """The one-line reason of a run the server ended (exit status 1), naming it; else None."""
        end = self.summary.end
        if not end.startswith("server failed: "):
            return None
        return (f"{end.removeprefix('server failed: ')}; {self.summary.frames} frame(s) were recorded in "
                f"{self.results}, every one with its result")

    def summary_text(self, prog: str = "prn-inspect") -> str:
        """The lines ``prn-inspect`` prints at exit."""
        s = self.summary
        lines = [(f"{prog}: {s.frames} frames inspected with {self.engine} in {s.seconds:.1f} s ({s.fps:.2f} FPS); "
                  f"{s.read} read, {s.drops} dropped"),
                 (f"  defects: {s.anomalous} anomalous frame(s), {s.regions} region(s); "
                  f"{s.images_written} image(s) written, {s.images_evicted} removed by the size cap, "
                  f"{s.images_skipped} skipped" + (f", {s.images_failed} failed" if s.images_failed else "")),
                 (f"  source: {s.source_errors} failure(s), {s.reconnects} reconnection(s) in "
                  f"{s.reconnect_attempts} attempt(s); ended: {s.end}")]
        if self.server is not None:
            lines.append(f"  server: {self.server}: {s.server_errors} frame(s) met it unavailable, "
                         f"{s.server_retries} retr{'y' if s.server_retries == 1 else 'ies'}")
        if s.latency_ms:
            lines.append("  latency ms      p50      p90      p99      max")
            for stage, q in s.latency_ms.items():
                lines.append(f"  {stage:<11} {q['p50']:8.2f} {q['p90']:8.2f} {q['p99']:8.2f} {q['max']:8.2f}")
        lines.append(f"  results: {self.results}"
                     + (f"; images: {self.out / 'anomalies'}" if s.images_written else ""))
        return "\n".join(lines)


def list_backends(model: str | os.PathLike, backend: str = "auto", precision: str | None = None) -> list:
    """Which engines could run ``model`` here, and why not (``prn-inspect --list-backends``).

    Returns:
        The loader's candidates (``backend``, ``precision``, ``path``, ``available``, ``reason``).
    """
    from prn_edge.runtime.loader import plan_engines

    return list(plan_engines(model, backend, precision))


def _check_choice(flag: str, value, choices) -> None:
    if value is not None and value not in choices:
        raise PRNError(f"{flag} {value!r}: choose from {', '.join(map(str, choices))}")


def inspect(model: str | os.PathLike | None = None, source: str | None = None, *, server: str | None = None,
            server_model: str | None = None, server_attempts: int | None = None, backend: str = "auto",
            precision: str | None = None, threshold: float | None = None, out: str | os.PathLike = "prn-inspect-out",
            max_frames: int | None = None, config: str | os.PathLike | None = None, resize: str | None = None,
            roi: Sequence[int] | None = None, store: str = "sqlite", durability: str = "normal",
            max_image_mb: float = 1024.0, threads: int = 0, device: str | None = None, loop: bool = False,
            reconnect_attempts: int | None = None, view: int | None = None, view_host: str = "127.0.0.1",
            say: Callable[[str], None] | None = None) -> InspectResult:
    """Run an exported PRN over a camera, stream, video or image folder, storing every result (``prn-inspect``).

    The arguments are ``prn-inspect``'s flags with the same defaults (see its ``--help``):
    ``config`` is a JSON file of pipeline settings that the explicit ``resize`` / ``roi`` /
    ``threshold`` override. ``say`` receives status lines (the live view's address). SIGINT
    and SIGTERM stop the run cleanly while it lasts.

    ``server`` (``grpc://HOST:PORT`` or ``http://HOST:PORT``) replaces ``model``: frames are prepared,
    judged and stored here as with a local engine, the network runs in that Triton server (model
    ``server_model``, default ``prn``, whose input size and threshold come from the server). A frame
    that meets the server unavailable is retried with back-off, ``server_attempts`` times (default:
    forever for cameras and streams, 5 for files) before the run ends with exit status 1.

    Returns:
        An :class:`InspectResult`; ``exit_status`` 1 when the source failed for good, or the server did.

    Raises:
        PRNError: a missing model, an unknown backend, a bad server URL or a server that cannot be reached
            or lacks the model, a source that does not open, an unwritable output folder, bad arguments
            (one-line messages), all before the output folder exists.
    """
    from prn_edge.imaging.preprocess import RESIZE_POLICIES
    from prn_edge.io import check_output_dir, make_output_dir
    from prn_edge.runtime.loader import BACKENDS, PRECISIONS, load_engine
    from prn_edge.runtime.loop import Backoff, InspectionLoop, stop_on_signals
    from prn_edge.runtime.pipeline import InspectConfig, Pipeline
    from prn_edge.runtime.sources import open_source
    from prn_edge.runtime.store import AnomalyImageWriter, open_store

    if not source:
        raise PRNError("no source given: a camera, stream, video file or image folder (--source)")
    if (model is None) == (server is None):
        raise PRNError("give the model folder (--model) or a Triton server that serves it (--server), "
                       + ("not both" if server is not None else "neither was given"))
    if server is not None:
        local = [flag for flag, value, default in (("--backend", backend, "auto"), ("--precision", precision, None),
                                                    ("--threads", threads, 0), ("--device", device, None))
                 if value != default]
        if local:
            verb = "chooses" if len(local) == 1 else "choose"
            raise PRNError(f"{', '.join(local)} {verb} a local engine: with --server the server's engine runs the "
                           "model (choose it where prn-serve runs)")
    elif server_model is not None or server_attempts is not None:
        raise PRNError("--server-model and --server-attempts go with --server")
    _check_choice("--backend", backend, BACKENDS)
    _check_choice("--precision", precision, PRECISIONS)
    _check_choice("--resize", resize, RESIZE_POLICIES)
    _check_choice("--store", store, STORES)
    _check_choice("--durability", durability, DURABILITIES)
    if max_frames is not None and (isinstance(max_frames, bool) or not isinstance(max_frames, int) or max_frames < 1):
        raise PRNError(f"--max-frames expects a positive integer, got {max_frames!r}")
    if not (isinstance(max_image_mb, (int, float)) and math.isfinite(max_image_mb) and max_image_mb >= 0):
        raise PRNError(f"--max-image-mb expects a number >= 0, got {max_image_mb!r}")
    if roi is not None:
        roi = tuple(roi)
        if len(roi) != 4:
            raise PRNError(f"--roi expects x,y,w,h in pixels, got {roi!r}")
    say = say or (lambda _line: None)
    model = Path(model) if model is not None else None
    source = str(source)

    # Everything that can fail cheaply, before the output folder exists.
    check_number("--threshold", threshold, low=0, high=1)      # a score is in [0, 1]
    check_number("--threads", threads, low=0, high=MAX_THREADS, integer=True)
    check_number("--max-image-mb", max_image_mb, low=0)
    check_number("--view", view, low=1, high=65535, integer=True)
    check_number("--server-attempts", server_attempts, low=1, integer=True)
    if server is not None:
        from prn_edge.runtime.backends.triton import parse_server_url

        parse_server_url(server)        # a bad URL is named before the source is opened
    overrides = {"resize": resize, "roi": roi, "threshold": threshold}
    settings = (InspectConfig.from_file(config, **overrides) if config is not None
                else InspectConfig(**{k: v for k, v in overrides.items() if v is not None}))
    out = check_output_dir(out)
    src = open_source(source, loop=loop)
    if server is not None:
        from prn_edge.runtime.loader import connect_server

        engine = connect_server(server, server_model)
    else:
        engine = load_engine(model, backend, precision=precision, threads=threads, device=device)
    live = None
    try:
        pipeline = Pipeline(engine, settings)
        src.open()
        if view is not None:
            from prn_edge.runtime.view import LiveView

            live = LiveView(view, view_host)
        make_output_dir(out)
        results = out / ("results.jsonl" if store == "jsonl" else "results.db")
        results_store = open_store(results, durability)
        images = (AnomalyImageWriter(out / "anomalies", int(max_image_mb * 1e6)) if max_image_mb > 0 else None)
        backoff = Backoff(attempts=reconnect_attempts if reconnect_attempts is not None
                          else (None if src.live else 3))
        engine_backoff = Backoff(attempts=server_attempts if server_attempts is not None
                                 else (None if src.live else 5))
        where = str(model) if server is None else f"{engine.url} (model {engine.model_name!r})"
        info = {"model": where, "engine": engine.describe(), "source": source,
                "config": settings.to_dict(), "threshold": pipeline.threshold}
        inspection = InspectionLoop(pipeline, src, results_store, images=images, max_frames=max_frames,
                                    backoff=backoff, engine_backoff=engine_backoff,
                                    info=json.loads(json.dumps(info, default=str)), opened=True)
        if live is not None:
            live.status = lambda: {"frames": inspection.summary.frames, "drops": inspection.queue.dropped,
                                          "anomalous": inspection.summary.anomalous,
                                          "reconnects": inspection.summary.reconnects, "engine": engine.name,
                                          "server_retries": inspection.summary.server_retries}
            inspection.on_result = lambda frame, det, lat: live.update(
                frame.sequence, lambda: pipeline.overlay(frame.image, det))
            say(f"live view on {live.url}")
        try:
            with stop_on_signals(inspection):
                summary = inspection.run()
        except PRNError as exc:              # a full disk, a failing engine: say what is kept
            raise PRNError(f"{exc}; {inspection.summary.frames} frame(s) were recorded in {results} "
                           "before it") from exc
        finally:
            results_store.close()
    finally:
        if live is not None:
            live.close()
        src.close()
        engine.close()
    status = (EXIT_SOURCE_FAILED if summary.end.startswith("source failed")
              else EXIT_SERVER_FAILED if summary.end.startswith("server failed") else 0)
    return InspectResult(summary=summary, engine=engine.name, out=out, results=results, exit_status=status,
                         server=None if server is None else engine.url)
