"""The inspection loop: a reader thread, a newest-frame queue, the pipeline, durable sinks.

::

    reader thread:  source.read() --> LatestQueue (capacity 1 by default) ------+
                      | SourceError: close, back off, reopen (counted)           |
    calling thread: <-----------------------------------------------------------+
                    Pipeline (preprocess -> engine -> postprocess) -> ResultStore
                      | EngineUnavailable (a server down): back off, the same frame again (counted)
                      + anomalous frames -> AnomalyImageWriter (background thread, bounded backlog)

For a live source (camera, stream) the queue keeps only the newest frames: when inference
is slower than the camera the oldest waiting frame is dropped (and counted), so a frame is
never older than about two inference periods when its result is written. For files and
folders the reader waits instead, so every frame is inspected. Memory stays flat: the
queue is bounded, latencies go into fixed ring buffers, nothing is kept per frame.

An engine that cannot answer for a while (a Triton server that went away, :class:`EngineUnavailable`)
is retried on the same frame with back-off; a frame is stored only once its result has arrived, so
no frame is ever recorded as decided when it was not. When the retries are used up the run ends
("server failed: ..."), everything decided until then stored.

:meth:`InspectionLoop.stop` (called by the SIGINT/SIGTERM handlers of
:func:`stop_on_signals`) finishes the frame in hand, writes it, and returns.
"""
from __future__ import annotations

import contextlib
import logging
import signal
import threading
import time
import uuid
from collections import deque
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from prn_edge.contract.engine import EngineUnavailable
from prn_edge.errors import PRNError, first_line
from prn_edge.runtime.pipeline import Detection, Pipeline
from prn_edge.runtime.sources import Frame, Source, SourceError
from prn_edge.runtime.store import AnomalyImageWriter, ResultStore

__all__ = ["Backoff", "InspectionLoop", "LatencyStats", "LatestQueue", "Summary", "stop_on_signals"]

log = logging.getLogger(__name__)

STAGES = ("queue", "preprocess", "infer", "postprocess", "output", "total")


class LatestQueue:
    """A bounded frame queue that, when full, drops its oldest item (live) or makes the writer wait.

    Args:
        capacity: items held (1 = only the newest frame).
    """

    def __init__(self, capacity: int = 1) -> None:
        if capacity < 1:
            raise PRNError(f"queue capacity must be >= 1, got {capacity}")
        self._items: deque = deque()
        self.capacity = capacity
        self._cond = threading.Condition()
        self._closed = False
        self.dropped = 0

    def put(self, item, *, drop: bool = True, stop: threading.Event | None = None) -> bool:
        """Add ``item``; returns False if the queue was closed (or ``stop`` set) instead.

        With ``drop`` a full queue loses its oldest item (counted in :attr:`dropped`);
        without, the call waits for room.
        """
        with self._cond:
            while not drop and len(self._items) >= self.capacity and not self._closed:
                if stop is not None and stop.is_set():
                    return False
                self._cond.wait(0.05)
            if self._closed:
                return False
            if len(self._items) >= self.capacity:
                self._items.popleft()
                self.dropped += 1
            self._items.append(item)
            self._cond.notify_all()
            return True

    def get(self, timeout: float = 0.1):
        """The oldest item; None after ``timeout`` or when closed and empty."""
        with self._cond:
            if not self._items and not self._closed:
                self._cond.wait(timeout)
            if self._items:
                item = self._items.popleft()
                self._cond.notify_all()
                return item
            return None

    @property
    def finished(self) -> bool:
        """Closed and empty: nothing more will come."""
        with self._cond:
            return self._closed and not self._items

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def clear(self) -> int:
        with self._cond:
            n = len(self._items)
            self._items.clear()
            self._cond.notify_all()
            return n


class LatencyStats:
    """Per-stage latencies in fixed ring buffers (the last ``window`` frames): flat memory."""

    def __init__(self, stages=STAGES, window: int = 8192) -> None:
        self.window = window
        self._data = {s: np.zeros(window, np.float64) for s in stages}
        self.count = 0

    def add(self, latency_ms: dict[str, float]) -> None:
        i = self.count % self.window
        for stage, buf in self._data.items():
            buf[i] = latency_ms.get(stage, 0.0)
        self.count += 1

    def percentiles(self, qs=(50, 90, 99)) -> dict[str, dict[str, float]]:
        """``{stage: {"p50": ms, "p90": ms, "p99": ms, "max": ms}}`` over the window."""
        n = min(self.count, self.window)
        if n == 0:
            return {}
        out = {}
        for stage, buf in self._data.items():
            values = np.percentile(buf[:n], qs)
            out[stage] = {f"p{q}": round(float(v), 3) for q, v in zip(qs, values)}
            out[stage]["max"] = round(float(buf[:n].max()), 3)
        return out


@dataclass(frozen=True)
class Backoff:
    """Reconnection policy: waits ``initial``, ``initial*factor``, ... up to ``maximum`` seconds.

    Attributes:
        attempts: consecutive failed attempts (without a frame in between) before giving up;
            None = never give up (the default for cameras and streams).
    """

    initial: float = 0.5
    factor: float = 2.0
    maximum: float = 10.0
    attempts: int | None = None

    def delays(self) -> Iterator[float]:
        delay, n = self.initial, 0
        while self.attempts is None or n < self.attempts:
            yield delay
            delay = min(self.maximum, delay * self.factor)
            n += 1


@dataclass
class Summary:
    """What a run did (printed at exit, stored with the run)."""

    run_id: str
    frames: int = 0              # frames inspected (results written)
    read: int = 0                # frames delivered by the source
    drops: int = 0               # frames replaced in the queue by newer ones
    anomalous: int = 0           # frames decided anomalous
    regions: int = 0             # defect regions found in anomalous frames
    source_errors: int = 0       # failures of the source (each followed by reconnection attempts)
    reconnects: int = 0          # successful reopenings (the source delivered again)
    reconnect_attempts: int = 0  # reopenings tried (failed ones included)
    images_written: int = 0      # anomalies written (frame + overlay)
    images_evicted: int = 0      # files removed to stay under the size cap
    images_skipped: int = 0      # anomalies not written (writer backlog full, or over the cap)
    images_failed: int = 0       # anomaly images whose write failed (a full disk): the record names none
    server_errors: int = 0       # frames whose engine call failed with a server unavailable (then retried)
    server_retries: int = 0      # retries of such frames (failed ones included)
    seconds: float = 0.0
    fps: float = 0.0
    end: str = ""                # why the run ended
    latency_ms: dict[str, dict[str, float]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class InspectionLoop:
    """Run a :class:`Pipeline` over a :class:`Source` into a :class:`ResultStore`.

    Args:
        pipeline: the pipeline (engine + pre/post-processing).
        source: an opened or unopened source (opened here if needed; closed at the end).
        store: where each frame's record goes (None: nowhere, e.g. for benchmarks).
        images: writer of anomalous frames and overlays (None: no images).
        max_frames: stop after this many inspected frames.
        drop: keep only the newest frames (default: the source's ``live``).
        queue_size: frames waiting at most.
        backoff: the reconnection policy (default: forever for live sources, 3 attempts otherwise).
        engine_backoff: how a frame is retried while its engine is unavailable (a remote server): the
            same frame again after each delay (default: forever for live sources, 5 retries otherwise).
        run_id: the run's id in the store (default: random).
        info: run metadata for the store (model, backend, ...).
        opened: the caller has opened ``source`` already (e.g. to fail early on a bad one).
        on_result: optional ``callable(frame, detection, latency_ms)`` after each stored frame.
    """

    def __init__(self, pipeline: Pipeline, source: Source, store: ResultStore | None = None, *,
                 images: AnomalyImageWriter | None = None, max_frames: int | None = None,
                 drop: bool | None = None, queue_size: int = 1, backoff: Backoff | None = None,
                 engine_backoff: Backoff | None = None, run_id: str | None = None,
                 info: dict[str, Any] | None = None, opened: bool = False, on_result=None) -> None:
        self.pipeline, self.source, self.store, self.images = pipeline, source, store, images
        self.max_frames = max_frames
        self.drop = source.live if drop is None else drop
        self.queue = LatestQueue(queue_size)
        self.backoff = backoff or Backoff(attempts=None if source.live else 3)
        self.engine_backoff = engine_backoff or Backoff(attempts=None if source.live else 5)
        self.run_id = run_id or time.strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:6]
        self.info = info or {}
        self.summary = Summary(self.run_id)
        self.latency = LatencyStats()
        self._stop = threading.Event()
        self._end_reason = ""
        self._reader: threading.Thread | None = None
        self._reader_error: BaseException | None = None
        self._opened = opened
        self.on_result = on_result

    # -- control ------------------------------------------------------------------------
    def stop(self, reason: str = "stopped") -> None:
        """Ask the loop to finish the frame in hand and return (safe from a signal handler)."""
        if not self._end_reason:
            self._end_reason = reason
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    # -- reader thread --------------------------------------------------------------------
    def _read_loop(self) -> None:
        try:
            while not self._stop.is_set():
                try:
                    frame = self.source.read()
                except SourceError as exc:
                    self.summary.source_errors += 1
                    log.warning("source failed: %s; reconnecting", first_line(exc))
                    if not self._reconnect(exc):
                        return
                    continue
                if frame is None:
                    self._end("end of source")
                    return
                self.summary.read += 1
                if not self.queue.put(frame, drop=self.drop, stop=self._stop):
                    return
        except Exception as exc:  # noqa: BLE001 - reported as the run's end, re-raised by run()
            self._reader_error = exc
            self._end(f"source error: {first_line(exc)}")
        finally:
            self.queue.close()

    def _end(self, reason: str) -> None:
        if not self._end_reason:
            self._end_reason = reason

    def _reconnect(self, cause: Exception) -> bool:
        last = cause
        for delay in self.backoff.delays():
            with contextlib.suppress(Exception):
                self.source.close()
            if self._stop.wait(delay):      # interruptible back-off
                return False
            self.summary.reconnect_attempts += 1
            try:
                self.source.open()
                # A reopened source that fails again before any frame counts as the same failure.
                frame = self.source.read()
            except SourceError as exc:
                last = exc
                log.warning("reconnection failed: %s", first_line(exc))
                continue
            self.summary.reconnects += 1
            log.warning("source reconnected")
            if frame is None:
                self._end("end of source")
                return False
            self.summary.read += 1
            return self.queue.put(frame, drop=self.drop, stop=self._stop)
        self._end(f"source failed: {first_line(last)}")
        return False

    # -- the loop ------------------------------------------------------------------------
    def run(self) -> Summary:
        """Inspect frames until the source ends, ``max_frames`` is reached, or :meth:`stop`.

        Returns:
            The :class:`Summary` (also stored with the run).

        Raises:
            PRNError: the source cannot be opened at the start, or the engine fails on a frame
                (the frames before it are stored, and the run is closed in the store).
        """
        if not self._opened:
            self.source.open()
        if self.store is not None:
            self.store.start_run(self.run_id, self.info)
        self._reader = threading.Thread(target=self._read_loop, name="prn-source", daemon=True)
        start = time.monotonic()
        self._reader.start()
        error: BaseException | None = None
        try:
            while not self._stop.is_set():
                frame = self.queue.get(timeout=0.1)
                if frame is None:
                    if self.queue.finished:
                        break
                    continue
                self._inspect(frame)
                if self.max_frames is not None and self.summary.frames >= self.max_frames:
                    self.stop("max frames")
        except BaseException as exc:
            error = exc
            self.stop(f"error: {first_line(exc)}")
            raise
        finally:
            self._stop.set()
            self.queue.close()
            self._reader.join(timeout=5.0)
            if not self._reader.is_alive():  # a reader stuck in a driver call keeps its device (daemon thread)
                with contextlib.suppress(Exception):
                    self.source.close()
            seconds = time.monotonic() - start
            if self.images is not None:
                self.images.close()          # the queued anomalies are written before the summary
                self._record_image_changes()
            self._finish(seconds)
            if self.store is not None:
                try:
                    self.store.end_run(self.run_id, self.summary.to_dict())
                except PRNError:
                    if error is None:
                        raise
                    # The first failure (often the same full disk) is the one to report.
            if error is None and self._reader_error is not None:
                raise self._reader_error
        return self.summary

    def _judge(self, frame: Frame) -> Detection | None:
        """The frame's detection; an unavailable engine is retried on this frame with back-off.

        Returns None, the frame undecided (and never stored), when :meth:`stop` came during the
        back-off or the retries were used up (the run then ends: "server failed: ...").
        """
        try:
            return self.pipeline(frame.image)
        except EngineUnavailable as exc:
            last = exc
        self.summary.server_errors += 1
        log.warning("%s; retrying frame %d", first_line(last, 300), frame.sequence)
        retries = 0
        for delay in self.engine_backoff.delays():
            if self._stop.wait(delay):          # interruptible back-off
                return None
            retries += 1
            self.summary.server_retries += 1
            try:
                detection = self.pipeline(frame.image)
            except EngineUnavailable as exc:
                last = exc
                log.warning("retry %d of frame %d failed: %s", retries, frame.sequence, first_line(exc, 300))
                continue
            log.warning("engine back after %d retr%s", retries, "y" if retries == 1 else "ies")
            return detection
        self.stop(f"server failed: {first_line(last, 300)}; gave up on frame {frame.sequence} after "
                  f"{retries} retr{'y' if retries == 1 else 'ies'}")
        return None

    def _inspect(self, frame: Frame) -> None:
        picked = time.monotonic()
        detection = self._judge(frame)
        if detection is None:
            return
        t0 = time.perf_counter()
        if detection.anomalous:
            self.summary.anomalous += 1
            self.summary.regions += len(detection.regions)
            if self.images is not None:
                self.images.submit(f"{self.run_id}_{frame.sequence:08d}", frame.image,
                                   lambda: self.pipeline.overlay(frame.image, detection), key=frame.sequence)
        latency = dict(detection.latency_ms)
        latency["queue"] = (picked - frame.captured) * 1e3
        latency["output"] = (time.perf_counter() - t0) * 1e3
        latency["total"] = (time.monotonic() - frame.captured) * 1e3
        latency = {k: round(v, 3) for k, v in latency.items()}
        if self.store is not None:
            self.store.write({"run_id": self.run_id, "time": frame.timestamp, "source": frame.source,
                              "sequence": frame.sequence, "score": detection.score,
                              "threshold": detection.threshold, "anomalous": detection.anomalous,
                              "regions": [r.to_dict() for r in detection.regions],
                              "latency_ms": latency, "image": None})   # named once it is on disk
        # Counted once stored: naming an image below can fail (a full disk) after the insert held.
        self.summary.frames += 1
        self.latency.add(latency)
        self._record_image_changes()         # after the insert: this frame's image may be among them
        if self.on_result is not None:
            self.on_result(frame, detection, latency)

    def _record_image_changes(self) -> None:
        """A record names its image only while it is on disk: not before the background writer has
        written it (a kill or a full disk loses queued images), not after the cap removed it."""
        if self.images is None or self.store is None:
            return
        for change, sequence, name in self.images.take_changes():   # in order: written, then maybe removed
            if change == "written":
                self.store.image_written(self.run_id, sequence, name)
            else:
                self.store.images_removed([name])

    def _finish(self, seconds: float) -> None:
        s = self.summary
        s.drops = self.queue.dropped
        s.seconds = round(seconds, 3)
        s.fps = round(s.frames / seconds, 3) if seconds > 0 else 0.0
        s.end = self._end_reason or "stopped"
        s.latency_ms = self.latency.percentiles()
        if self.images is not None:
            s.images_written, s.images_evicted = self.images.written, self.images.evicted
            s.images_skipped, s.images_failed = self.images.skipped, self.images.errors


@contextlib.contextmanager
def stop_on_signals(loop: InspectionLoop, signals=(signal.SIGINT, signal.SIGTERM)) -> Iterator[None]:
    """While inside, SIGINT and SIGTERM ask ``loop`` to stop cleanly (main thread only).

    A second signal while the loop is stopping (a hung camera driver, an impatient operator)
    raises KeyboardInterrupt in the main thread instead.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {}

    def handler(signum, _frame):
        if loop.stopping:
            raise KeyboardInterrupt
        loop.stop(f"signal {signal.Signals(signum).name}")

    for sig in signals:
        previous[sig] = signal.signal(sig, handler)
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
