"""Real streams, no mocks: an RTSP server on loopback serving bottle images, and GStreamer pipelines.

* RTSP: GStreamer's RTSP server (the distribution's Python and GObject introspection,
  tests/support/rtsp_server.py) serves real MVTec bottle images as H.264; the venv's OpenCV
  reads them through FFmpeg, as ``prn-inspect --source rtsp://...`` does. The server is
  stopped, restarted and frozen under the inspection loop's real reconnection path.
* GStreamer pipelines: ``gst:...`` and bare ``... ! appsink`` specs need an OpenCV built with
  GStreamer, which pip's is not; they run under ``/usr/bin/python3`` with Debian's
  python3-opencv (built with GStreamer, as JetPack's is), tests/support/gst_sources_check.py.

``.ci/run`` installs the Debian packages; without them these tests skip, naming what is missing
(docs/platform.md, "Stream tests").
"""
from __future__ import annotations

import contextlib
import itertools
import json
import logging
import os
import select
import signal
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO

from prn_edge.contract.engine import Engine
from prn_edge.errors import PRNError
from prn_edge.runtime.api import InspectResult
from prn_edge.runtime.loop import Backoff, InspectionLoop
from prn_edge.runtime.pipeline import Pipeline
from prn_edge.runtime.sources import (
    CaptureSource,
    SourceError,
    gstreamer_available,
    open_source,
)

cv2 = pytest.importorskip("cv2")

SYSTEM_PYTHON = Path("/usr/bin/python3")
SUPPORT = REPO / "tests" / "support"
# Six distinct bottles (normal and defective) so that every decoded frame can be told apart.
BOTTLES = ("train/good/000", "train/good/001", "test/broken_large/000", "test/contamination/000",
           "test/broken_small/000", "train/good/002")
SIDE = 256        # a multiple of 16: H.264 codes it without padding or cropping
FPS = 25          # FFmpeg probes about a second of stream when opening: faster frames, faster opens
# Mean absolute difference (0-255 per channel) between a decoded frame and the served image.
# Measured here at 2 Mbit/s: x264 loses about 1.4, openh264 up to 2.0; two different served
# bottles differ by 6.3 or more, and the same bottle with red and blue swapped by 4.2 or more.
# 3.0 accepts the codecs' loss yet rejects a wrong image, a wrong channel order or a corrupt frame.
MATCH_TOL = 3.0
# The first frames decoded after a reconnection: once in four fresh-clone CI runs one of them differed by 5.5
# (a fresh encoder session's first frames, decoded before rate control settles or with a concealed reference).
# They must still be a bottle, not garbage (a black frame differs by 137, a flat grey one by 84); every later
# frame is held to MATCH_TOL.
RECONNECT_FRAMES, RECONNECT_TOL = 3, 8.0
TIMEOUT_S = 2.0   # the source's open / read timeout: short, so failures show quickly


# --------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------
def _system_python_check(script: str, *args: str) -> str | None:
    """None if ``script --check`` says all is there, else why not (for a skip)."""
    if not SYSTEM_PYTHON.is_file():
        return f"{SYSTEM_PYTHON} not found (the distribution's Python, with GStreamer's bindings)"
    done = subprocess.run([str(SYSTEM_PYTHON), str(SUPPORT / script), "--check", *args], check=False,
                          capture_output=True, text=True, timeout=60, env=_system_env())
    if done.returncode == 0:
        return None
    lines = [line for line in done.stdout.splitlines() if line.startswith("missing:")]
    return "; ".join(lines) or f"{script} --check failed: {(done.stderr or done.stdout).strip()[-300:]}"


def _system_env(pythonpath: str | None = None) -> dict[str, str]:
    # The venv's variables must not leak into the distribution's Python.
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    return env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RtspServer:
    """tests/support/rtsp_server.py in a child process: start, stop, restart on the same port, freeze."""

    def __init__(self, frames: Path, port: int, encoder: str | None = None) -> None:
        self.frames, self.port, self.encoder = frames, port, encoder
        self.url = f"rtsp://127.0.0.1:{port}/bottles"
        self.proc: subprocess.Popen | None = None
        self._err = None

    def start(self, timeout: float = 20.0) -> None:
        # stderr to a file: GStreamer's warnings must never fill a pipe nobody reads and block it.
        self._err = tempfile.TemporaryFile("w+")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [str(SYSTEM_PYTHON), str(SUPPORT / "rtsp_server.py"), "--frames", str(self.frames),
             "--port", str(self.port), "--fps", str(FPS), *(["--encoder", self.encoder] if self.encoder else [])],
            stdout=subprocess.PIPE, stderr=self._err, text=True, env=_system_env())
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ready, _, _ = select.select([self.proc.stdout], [], [], 0.1)
            if ready:
                line = self.proc.stdout.readline()
                if line.startswith("READY"):
                    return
                if not line:                     # exited
                    break
        err = self.stop()
        raise AssertionError(f"the RTSP server did not start on port {self.port}: {err.strip()[-500:]}")

    def stop(self) -> str:
        """Stop the server (SIGTERM, then SIGKILL); returns its stderr."""
        proc, self.proc = self.proc, None
        if proc is None:
            return ""
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGCONT)      # a frozen server must wake up to die of SIGTERM
            proc.terminate()
        try:
            proc.communicate(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
        self._err.seek(0)
        err = self._err.read()
        self._err.close()
        return err

    def freeze(self) -> None:
        self.proc.send_signal(signal.SIGSTOP)    # sockets stay open, nothing is sent: a hung camera

    def thaw(self) -> None:
        self.proc.send_signal(signal.SIGCONT)


_checked: dict[str | None, str | None] = {}


def require_rtsp_server(encoder: str | None = None) -> None:
    """Skip, naming what is missing, unless the RTSP server can run here (with ``encoder``)."""
    if encoder not in _checked:
        _checked[encoder] = _system_python_check("rtsp_server.py", *(["--encoder", encoder] if encoder else []))
    if _checked[encoder]:
        pytest.skip(f"no RTSP server here: {_checked[encoder]}")


@pytest.fixture(scope="module")
def bottle_frames(tmp_path_factory, bottle_dir) -> tuple[Path, list[np.ndarray]]:
    """The served video: six bottle images as 000.png ... 005.png in a temporary folder (BGR)."""
    folder = tmp_path_factory.mktemp("rtsp_frames")
    images = []
    for i, name in enumerate(BOTTLES):
        image = cv2.resize(cv2.imread(str(bottle_dir / f"{name}.png")), (SIDE, SIDE), interpolation=cv2.INTER_AREA)
        assert cv2.imwrite(str(folder / f"{i:03d}.png"), image)
        images.append(image)
    return folder, images


@pytest.fixture
def rtsp_server(request, bottle_frames):
    """A running server on a free port (``encoder`` by indirect parametrization; default the first
    present); always stopped at the end."""
    encoder = getattr(request, "param", None)
    require_rtsp_server(encoder)
    server = RtspServer(bottle_frames[0], free_port(), encoder)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def identify(image: np.ndarray, served: list[np.ndarray]) -> tuple[int, float]:
    """(index of the nearest served image, its mean absolute difference)."""
    assert image.shape == served[0].shape and image.dtype == np.uint8, (image.shape, image.dtype)
    diffs = [float(np.abs(image.astype(np.int16) - s.astype(np.int16)).mean()) for s in served]
    best = int(np.argmin(diffs))
    return best, diffs[best]


class Brightness(Engine):
    """A stand-in engine (mean brightness as the score): the loop and the source are under test, not a model."""

    name, image_size, threshold = "brightness", 32, 0.5

    def _predict(self, images):
        level = images.reshape(images.shape[0], -1).mean(1).astype(np.float32) / 255.0
        return np.broadcast_to(level[:, None, None], (len(level), 32, 32)).astype(np.float32), level


def wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)


# --------------------------------------------------------------------------------------
# RTSP
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("rtsp_server", ["x264enc", "openh264enc"], indirect=True)
def test_rtsp_source_delivers_the_served_bottle_images(rtsp_server, bottle_frames):
    _, served = bottle_frames
    source = open_source(rtsp_server.url, timeout_s=TIMEOUT_S)
    assert isinstance(source, CaptureSource) and source.kind == "url" and source.live
    with source:
        frames = [source.read() for _ in range(3 * len(served))]
    assert [f.sequence for f in frames] == list(range(3 * len(served)))
    matches = [identify(f.image, served) for f in frames]
    assert max(d for _, d in matches) <= MATCH_TOL, matches
    # A frame is one served image, in the served order (the server loops over them).
    order = [i for i, _ in matches]
    assert all(b == (a + 1) % len(served) for a, b in itertools.pairwise(order)), order
    assert set(order) == set(range(len(served)))


def test_rtsp_server_restart_is_reconnected_by_the_inspection_loop(rtsp_server, bottle_frames, caplog):
    """Stop the server mid-stream, restart it on the same port: the loop reconnects and frames come again."""
    _, served = bottle_frames
    seen: list[tuple[int, int, float, int]] = []          # (sequence, bottle, difference, reconnects so far)
    loop = InspectionLoop(Pipeline(Brightness()), open_source(rtsp_server.url, timeout_s=TIMEOUT_S),
                          backoff=Backoff(initial=0.2, maximum=0.5),
                          on_result=lambda frame, det, lat: seen.append(
                              (frame.sequence, *identify(frame.image, served), loop.summary.reconnects)))
    runner = threading.Thread(target=loop.run, daemon=True)
    caplog.set_level(logging.WARNING, logger="prn_edge.runtime.loop")
    runner.start()
    try:
        wait_for(lambda: len(seen) >= 15, 20, "15 frames from the first server")
        rtsp_server.stop()
        wait_for(lambda: loop.summary.reconnect_attempts >= 1, 15, "a reconnection attempt while the server is down")
        rtsp_server.start()
        wait_for(lambda: sum(r > 0 for *_, r in seen) >= 15, 30, "15 frames after the restart")
    finally:
        loop.stop()
        runner.join(15)
    assert not runner.is_alive()
    s = loop.summary
    before = [x for x in seen if x[3] == 0]
    after = [x for x in seen if x[3] > 0]
    assert len(before) >= 15 and len(after) >= 15
    settled = before + after[RECONNECT_FRAMES:]
    assert max(d for _, _, d, _ in settled) <= MATCH_TOL, seen
    assert max(d for _, _, d, _ in after[:RECONNECT_FRAMES]) <= RECONNECT_TOL, seen
    sequences = [x[0] for x in seen]
    assert sequences == sorted(set(sequences)), "sequence numbers go on across the reconnection, never reused"
    # At least one reopening failed while the server was down, then one succeeded.
    assert s.source_errors >= 1 and s.reconnects >= 1 and s.reconnect_attempts > s.reconnects, s
    messages = [r.getMessage() for r in caplog.records if r.name == "prn_edge.runtime.loop"]
    assert any(m.startswith("source failed") for m in messages), messages
    assert "source reconnected" in messages
    # What prn-inspect prints at exit says so too.
    text = InspectResult(summary=s, engine="brightness", out=Path("."), results=Path("r.db")).summary_text()
    assert (f"source: {s.source_errors} failure(s), {s.reconnects} reconnection(s) in "
            f"{s.reconnect_attempts} attempt(s)") in text


def test_frozen_rtsp_server_fails_within_the_read_timeout_and_comes_back(rtsp_server, bottle_frames):
    """A server that stops sending (process stopped, sockets open) fails one read timeout later, not several."""
    _, served = bottle_frames
    timeout = 1.0
    source = open_source(rtsp_server.url, timeout_s=timeout)
    source.open()
    try:
        for _ in range(5):
            source.read()
        rtsp_server.freeze()
        frozen = time.monotonic()
        late = []
        with pytest.raises(SourceError, match="stalled"):
            for _ in range(200):       # the frames already buffered come at once, then the stall
                t0 = time.monotonic()
                source.read()
                late.append(time.monotonic() - t0)
        failed_after = time.monotonic() - frozen
        # No frame from a read that waited out the timeout (a stale frame passed off as new),
        # and the failure within one timeout (plus scheduling) of the last buffered frame.
        assert max(late, default=0.0) < timeout, late
        assert failed_after < timeout + 0.5, failed_after
        # Frozen, it cannot be reopened; thawed, it can, and serves the bottles again.
        with pytest.raises(SourceError, match="cannot open the url"):
            source.open()
        rtsp_server.thaw()
        source.open()
        frame = source.read()
        assert identify(frame.image, served)[1] <= MATCH_TOL
    finally:
        source.close()


# --------------------------------------------------------------------------------------
# GStreamer pipelines
# --------------------------------------------------------------------------------------
def test_gstreamer_pipelines_under_an_opencv_with_gstreamer():
    """Jetson-shaped pipelines (videotestsrc for nvarguscamerasrc) through open_source, under Debian's OpenCV."""
    if not SYSTEM_PYTHON.is_file():
        pytest.skip(f"{SYSTEM_PYTHON} not found (the distribution's Python with python3-opencv)")
    done = subprocess.run([str(SYSTEM_PYTHON), str(SUPPORT / "gst_sources_check.py")], check=False,
                          capture_output=True, text=True, timeout=120, cwd=REPO, env=_system_env(str(REPO)))
    if done.returncode == 3:
        pytest.skip("no OpenCV with GStreamer here: " + "; ".join(done.stdout.strip().splitlines()))
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["gstreamer_available"] is True
    # Importing prn_edge.runtime.sources needs nothing beyond numpy and OpenCV (no torch, no venv).
    assert report["pulled"] == [], report["pulled"]
    sources = report["sources"]
    assert set(sources) == {"gst_prefix_bgr", "bare_bgr", "bare_bgrx", "gst_prefix_gray"}
    for name, r in sources.items():
        assert r["kind"] == "gstreamer" and r["live"] and r["name"].startswith("gstreamer:videotestsrc"), name
        assert "gst:" not in r["name"], r["name"]            # the prefix is not part of the pipeline
        # Exactly the pipeline's buffers (num-buffers=6), numbered 0..5, then the end of a live
        # source is a failure (a camera that stops), which the loop answers by reopening.
        assert r["sequences"] == list(range(6)), (name, r["sequences"])
        assert r["end"].startswith("SourceError:") and "no frame" in r["end"], (name, r["end"])
        assert r["shapes"] == [[240, 320, 3]] and r["dtypes"] == ["uint8"] and r["contiguous"], (name, r)
    # pattern=red: BGR order whatever appsink was given (BGR, or BGRx made BGR by the source).
    for name in ("gst_prefix_bgr", "bare_bgr", "bare_bgrx"):
        assert sources[name]["mean_bgr"] == [0.0, 0.0, 255.0], (name, sources[name]["mean_bgr"])
    b, g, r = sources["gst_prefix_gray"]["mean_bgr"]
    assert b == g == r and 50 < b < 120, (b, g, r)                 # grey made BGR, red's luma
    # The loop over a pipeline that ends: reopened twice, 14 frames numbered on without a gap.
    loop = report["loop"]
    assert loop["sequences"] == list(range(14)), loop
    assert loop["source_errors"] == 2 and loop["reconnects"] == 2 and loop["end"] == "max frames", loop


def test_gstreamer_pipeline_in_this_venv_is_a_one_line_error():
    """pip's OpenCV has no GStreamer: both spellings of a pipeline fail at once with one line saying which OpenCV."""
    if gstreamer_available():
        pytest.skip(f"this venv's OpenCV {cv2.__version__} has GStreamer")
    for spec in ("gst:videotestsrc ! videoconvert ! appsink", "videotestsrc ! videoconvert ! appsink"):
        with pytest.raises(PRNError) as info:
            open_source(spec)
        message = str(info.value)
        assert "\n" not in message and "no GStreamer" in message and "python3-opencv" in message, message
        assert not isinstance(info.value, SourceError)     # not retried: reconnecting cannot fix it
