"""The inspection loop: drops and bounded latency, flat memory, reconnection, durability under kill -9.

Fake engines (no model) keep these fast and their timing known; the real model runs through
the same loop in test_runtime_model.py.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
import tracemalloc

import numpy as np
import pytest
from conftest import REPO

from prn_edge.contract.engine import Engine  # noqa: E402
from prn_edge.errors import PRNError
from prn_edge.runtime import (
    AnomalyImageWriter,
    Backoff,
    InspectConfig,
    InspectionLoop,
    JsonlStore,
    LatestQueue,
    Pipeline,
    SQLiteStore,
    SyntheticSource,
    open_source,
    open_store,
    read_jsonl,
)
from prn_edge.runtime.sources import (
    CaptureSource,
    ImageFolderSource,
    SourceError,
    gstreamer_available,
)

cv2 = pytest.importorskip("cv2")


class FakeEngine(Engine):
    """Scores a frame by its mean brightness; optionally slow (a fixed inference time)."""

    name = "fake"

    def __init__(self, size=32, delay=0.0, threshold=0.5):
        self.image_size, self.delay, self.threshold = size, delay, threshold
        self.metadata = {}

    def _predict(self, images):
        if self.delay:
            time.sleep(self.delay)
        b = images.shape[0]
        level = images.reshape(b, -1).mean(1).astype(np.float32) / 255.0
        maps = np.broadcast_to(level[:, None, None], (b, self.image_size, self.image_size)).astype(np.float32)
        return maps, level

    def describe(self):
        return {"backend": "fake"}

    def close(self):
        pass


def frames(levels, shape=(48, 64)):
    return [np.full((*shape, 3), v, np.uint8) for v in levels]


def rss_kib() -> int:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


# --------------------------------------------------------------------------------------
def test_latest_queue_keeps_the_newest_and_counts_drops():
    q = LatestQueue(2)
    for i in range(5):
        assert q.put(i)
    assert q.dropped == 3 and q.get() == 3 and q.get() == 4 and q.get(timeout=0.01) is None
    q.put(7)
    got = []
    t = threading.Thread(target=lambda: got.append(q.put(8, drop=False)) or got.append(q.put(9, drop=False)))
    t.start()
    time.sleep(0.1)
    assert q.get() == 7            # the waiting writer gets room only now: nothing dropped
    t.join(2)
    assert q.dropped == 3 and got == [True, True] and [q.get(), q.get()] == [8, 9]
    q.close()
    assert q.finished and not q.put(1)


def test_slow_engine_drops_frames_with_bounded_latency(tmp_path):
    """A 40 ms engine on a 200 FPS camera: most frames dropped, none older than about two inferences."""
    infer_s = 0.04
    pipe = Pipeline(FakeEngine(delay=infer_s), InspectConfig())
    ages = []
    loop = InspectionLoop(pipe, SyntheticSource(frames([10, 200, 30]), fps=200), SQLiteStore(tmp_path / "r.db"),
                          max_frames=40, on_result=lambda f, d, lat: ages.append(lat["total"]))
    s = loop.run()
    assert s.frames == 40 and s.end == "max frames"
    assert s.drops > 4 * s.frames, s                   # ~8 frames arrive per inference
    ages_ms = np.array(ages[3:])                      # after warm-up
    period_ms = infer_s * 1e3
    print(f"\nage of inspected frames: median {np.median(ages_ms):.1f} ms, p95 {np.percentile(ages_ms, 95):.1f} ms, "
          f"max {ages_ms.max():.1f} ms for a {period_ms:.0f} ms inference")
    # Queue wait < one inference (the frame was captured while the previous one ran) + the
    # inference itself; the margin absorbs sleep overshoot and scheduling on a shared 2-core box.
    assert np.percentile(ages_ms, 95) < 2 * period_ms + 15
    assert ages_ms.max() < 4 * period_ms
    assert s.fps < 1.1 / infer_s
    db = sqlite3.connect(tmp_path / "r.db")
    seqs = [r[0] for r in db.execute("SELECT sequence FROM frames ORDER BY id")]
    assert len(seqs) == 40 and seqs == sorted(set(seqs)) and seqs[-1] > 4 * 40   # increasing, gaps = drops


def test_memory_stays_flat_over_thousands_of_frames(tmp_path):
    """4000 inspected frames from a camera faster than the engine: nothing is kept per frame.

    The source delivers a frame every 0.2 ms, the engine takes 0.5 ms, so most frames are
    dropped (tens of thousands of Frame objects made and released) while every inspected one
    goes through the pipeline, SQLite and, one in twenty, the image writer. Anything kept per
    frame (results, latencies, maps, frames) would grow by at least ~1 KiB a frame, 3 MiB over
    the 3000 measured frames. Python's own heap (objects and NumPy buffers) is measured with
    tracemalloc, which counts exactly what is still allocated, so its bound can sit far below
    that leak (512 KiB). RSS only gets a loose bound (12 MiB, still under one kept 64x64 float
    map or 120x160 frame per frame: 48 MiB or more): in the full suite the process holds
    gigabytes of freed arenas that malloc reuses unevenly, and SQLite's page cache (capped at
    2 MiB) fills as it likes; a 3 MiB RSS bound failed on CI by 16 KiB with no leak.
    """
    levels = [20] * 19 + [250]                            # one anomalous image in 20
    source = SyntheticSource(frames(levels, (120, 160)), fps=5000)
    images = AnomalyImageWriter(tmp_path / "img", max_bytes=60_000)
    samples = {}

    def probe(frame, det, lat):
        if loop.summary.frames + 1 in (1000, 4000):       # this frame is the 1000th / 4000th
            samples[loop.summary.frames + 1] = (rss_kib(), tracemalloc.get_traced_memory()[0] // 1024)

    loop = InspectionLoop(Pipeline(FakeEngine(size=64, delay=0.0005)), source, SQLiteStore(tmp_path / "r.db"),
                          images=images, max_frames=4000, on_result=probe)
    start = time.perf_counter()
    tracemalloc.start()
    try:
        s = loop.run()
    finally:
        tracemalloc.stop()
    rss_growth = samples[4000][0] - samples[1000][0]
    heap_growth = samples[4000][1] - samples[1000][1]
    print(f"\n4000 frames inspected, {s.drops} dropped, in {time.perf_counter() - start:.1f} s; Python heap "
          f"{samples[1000][1]} -> {samples[4000][1]} KiB ({heap_growth:+d} KiB), RSS {samples[1000][0]} -> "
          f"{samples[4000][0]} KiB ({rss_growth:+d} KiB); {s.images_written} anomalies written, "
          f"{s.images_evicted} files evicted; total latency p99 {s.latency_ms['total']['p99']} ms")
    assert s.frames == 4000 and s.drops > 4000 and s.anomalous > 20
    assert heap_growth < 512
    assert rss_growth < 12 * 1024
    # The image cap held, and nothing half-written is left.
    files = list((tmp_path / "img").iterdir())
    assert sum(f.stat().st_size for f in files) <= 60_000 and s.images_evicted > 0
    assert not [f for f in files if f.name.startswith(".")]


@pytest.mark.parametrize("store_name", ["r.db", "r.jsonl"])
def test_records_never_name_an_image_the_cap_removed(tmp_path, store_name):
    """Issue 14, D10: 35 of 39 records named images the size cap had deleted. Now a record's image
    is on disk, or the record says none (SQLite: UPDATE; JSONL: an ``images_removed`` record)."""
    source = SyntheticSource(frames([250] * 40, (120, 160)), count=40)      # every frame anomalous
    images = AnomalyImageWriter(tmp_path / "img", max_bytes=30_000, backlog=64)
    loop = InspectionLoop(Pipeline(FakeEngine(size=64)), source, open_store(tmp_path / store_name),
                          images=images)
    s = loop.run()
    loop.store.close()
    if store_name.endswith(".db"):
        rows = [r[0] for r in sqlite3.connect(tmp_path / store_name).execute("SELECT image FROM frames")]
    else:
        rows = [r["image"] for r in read_jsonl(tmp_path / store_name) if r["type"] == "frame"]
    named = [r for r in rows if r is not None]
    on_disk = {p.name for p in (tmp_path / "img").iterdir()}
    assert len(rows) == 40 and s.images_evicted > 0
    assert named and set(named) <= on_disk, sorted(set(named) - on_disk)
    # Every pair on disk is named by its record: the cap removes frame and overlay together.
    assert {n for n in on_disk if n.endswith("_overlay.jpg")} == set(named)
    assert {n.replace("_frame.png", "_overlay.jpg") for n in on_disk if n.endswith("_frame.png")} == set(named)


def test_a_failed_image_write_is_not_named_by_its_record(tmp_path, monkeypatch):
    """A full disk for the images: the frames are recorded, without an image, and half a pair never stays."""
    import errno

    import prn_edge.runtime.store as store_module

    real_atomic_write = store_module.atomic_write

    def full_on_odd_overlays(path, mode="wb"):          # the overlay of every odd frame hits ENOSPC
        if path.name.endswith("_overlay.jpg") and int(path.name.split("_")[-2]) % 2:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real_atomic_write(path, mode)

    monkeypatch.setattr(store_module, "atomic_write", full_on_odd_overlays)
    source = SyntheticSource(frames([250] * 6, (120, 160)), count=6)
    images = AnomalyImageWriter(tmp_path / "img", backlog=64)
    loop = InspectionLoop(Pipeline(FakeEngine(size=64)), source, SQLiteStore(tmp_path / "r.db"), images=images)
    loop.run()
    loop.store.close()
    rows = list(sqlite3.connect(tmp_path / "r.db").execute("SELECT sequence, image FROM frames ORDER BY sequence"))
    assert [seq for seq, _ in rows] == list(range(6)) and images.errors == 3
    assert [img is None for _, img in rows] == [False, True] * 3
    on_disk = {p.name for p in (tmp_path / "img").iterdir()}
    assert on_disk == {img for _, img in rows if img} | {img.replace("_overlay.jpg", "_frame.png")
                                                            for _, img in rows if img}


def test_a_store_failing_after_the_insert_still_counts_the_stored_frame(tmp_path):
    """CI, stop 20: the disk filled between a frame's INSERT and the UPDATE naming its image;
    the error said 3 frames were recorded while the database held 4. The count follows the inserts."""

    class FullAfterThreeImages(SQLiteStore):
        named = 0

        def image_written(self, run_id, sequence, name):
            if self.named == 3:
                raise PRNError("database or disk is full")
            self.named += 1
            super().image_written(run_id, sequence, name)

    class WritesAtOnce(AnomalyImageWriter):     # no writer thread: the image is written before the UPDATE
        def submit(self, stem, frame, render, key=None):
            return self.write(stem, frame, render(), key)

    source = SyntheticSource(frames([250] * 20, (120, 160)), count=20)      # every frame anomalous
    images = WritesAtOnce(tmp_path / "img")
    loop = InspectionLoop(Pipeline(FakeEngine(size=64)), source, FullAfterThreeImages(tmp_path / "r.db"),
                          images=images)
    with pytest.raises(PRNError, match="disk is full"):
        loop.run()
    loop.store.close()
    stored = sqlite3.connect(tmp_path / "r.db").execute("SELECT COUNT(*) FROM frames").fetchone()[0]
    assert loop.summary.frames == stored == 4


def test_vanishing_device_is_reconnected_and_counted(tmp_path):
    source = SyntheticSource(frames(range(0, 200, 10)), count=20, fail_at={5, 12}, fail_open=2)
    seen = []
    loop = InspectionLoop(Pipeline(FakeEngine()), source, SQLiteStore(tmp_path / "r.db"),
                          backoff=Backoff(initial=0.01, maximum=0.05, attempts=5),
                          on_result=lambda f, d, lat: seen.append(f.sequence))
    s = loop.run()
    assert seen == list(range(20)), "every frame once, in order, across both reconnections"
    assert (s.source_errors, s.reconnects, s.reconnect_attempts) == (2, 2, 6)   # 2 failed opens each time
    assert s.end == "end of source"


def test_a_source_that_never_comes_back_ends_the_run_cleanly(tmp_path):
    source = SyntheticSource(frames([10, 20]), count=100, fail_at={7}, fail_open=1000)
    db = tmp_path / "r.db"
    loop = InspectionLoop(Pipeline(FakeEngine()), source, SQLiteStore(db), backoff=Backoff(initial=0.01, attempts=3))
    s = loop.run()
    assert s.frames == 7 and s.source_errors == 1 and s.reconnect_attempts == 3 and s.reconnects == 0
    assert s.end.startswith("source failed: synthetic: device not there")
    summary = json.loads(sqlite3.connect(db).execute("SELECT summary FROM runs").fetchone()[0])
    assert summary["frames"] == 7


def write_video(path, images, fps=10):
    h, w = images[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"FFV1"), fps, (w, h))
    if not writer.isOpened():
        pytest.skip("this OpenCV cannot write FFV1 video (no FFMPEG)")
    for image in images:
        writer.write(image)
    writer.release()


def test_truncated_video_is_detected_reopened_and_resumed(tmp_path):
    """A video cut short fails (not a silent end); once the file is whole again the run resumes."""
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (48, 64, 3), dtype=np.uint8) for _ in range(8)]
    full = tmp_path / "full.avi"
    write_video(full, images)
    data = full.read_bytes()
    video = tmp_path / "v.avi"
    video.write_bytes(data[: len(data) // 2])

    # Stays truncated: the frames before the cut are inspected, then the run gives up.
    s = InspectionLoop(Pipeline(FakeEngine()), CaptureSource(str(video), "file"), SQLiteStore(tmp_path / "a.db"),
                       backoff=Backoff(initial=0.01, attempts=2)).run()
    assert 0 < s.frames < 8 and s.end.startswith("source failed") and "truncated" in s.end
    assert s.reconnect_attempts == 2 and s.source_errors == 1

    # Repaired while the loop backs off: every frame exactly once, with its file index.
    seen = []
    loop = InspectionLoop(Pipeline(FakeEngine()), CaptureSource(str(video), "file"), SQLiteStore(tmp_path / "b.db"),
                          backoff=Backoff(initial=0.3, attempts=5), on_result=lambda f, d, lat: seen.append(f.sequence))
    runner = threading.Thread(target=loop.run)
    runner.start()
    deadline = time.monotonic() + 10
    while loop.summary.source_errors == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    video.write_bytes(data)
    runner.join(20)
    assert seen == list(range(8)), seen
    assert loop.summary.reconnects == 1 and loop.summary.end == "end of source"


def test_http_stream_that_ends_and_vanishes_is_reconnected_then_given_up(tmp_path):
    """A network source (FFMPEG over HTTP): its end is an interruption, the server going away a failure."""
    import functools
    import http.server

    rng = np.random.default_rng(1)
    write_video(tmp_path / "cam.avi", [rng.integers(0, 256, (48, 64, 3), dtype=np.uint8) for _ in range(8)])

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(tmp_path)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/cam.avi"
    seen = []

    def on_result(frame, det, lat):
        seen.append(frame.sequence)
        if frame.sequence == 10:          # during the second pass: the server goes away
            server.shutdown()
            server.server_close()

    source = open_source(url, timeout_s=2.0)
    assert source.live
    s = InspectionLoop(Pipeline(FakeEngine()), source, drop=False, backoff=Backoff(initial=0.01, attempts=2),
                       on_result=on_result).run()
    assert seen == list(range(16)), seen         # two passes, numbered on across the reconnection
    assert (s.source_errors, s.reconnects, s.reconnect_attempts) == (2, 1, 3)
    assert s.end.startswith(f"source failed: {url}: cannot open the url")


@pytest.mark.parametrize("store", ["sqlite", "jsonl"])
def test_kill_9_keeps_every_decided_frame(tmp_path, store):
    """The child prints each sequence number after its result is stored; kill -9 it mid-run."""
    path = tmp_path / ("r.db" if store == "sqlite" else "r.jsonl")
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(path), "run"], cwd=REPO,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    decided = []
    try:
        for line in child.stdout:
            decided.append(int(line))
            if len(decided) == 150:
                break
        child.send_signal(signal.SIGKILL)
    finally:
        child.wait(10)
    assert child.returncode == -signal.SIGKILL, child.stderr.read()
    assert len(decided) == 150
    if store == "sqlite":
        db = sqlite3.connect(path)
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        stored = {r[0] for r in db.execute("SELECT sequence FROM frames")}
        assert db.execute("SELECT ended FROM runs").fetchone()[0] is None       # the run was cut short
    else:
        stored = {r["sequence"] for r in read_jsonl(path) if r["type"] == "frame"}
    assert set(decided) <= stored
    print(f"\n{store}: {len(decided)} decided before kill -9, {len(stored)} stored")


def test_sigterm_stops_cleanly(tmp_path):
    path = tmp_path / "r.db"
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(path), "run"], cwd=REPO,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for _ in range(20):
        child.stdout.readline()
    child.send_signal(signal.SIGTERM)
    out, err = child.communicate(timeout=20)
    assert child.returncode == 0, err
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["end"] == "signal SIGTERM"
    db = sqlite3.connect(path)
    n = db.execute("SELECT COUNT(*) FROM frames").fetchone()[0]
    ended, stored_summary = db.execute("SELECT ended, summary FROM runs").fetchone()
    assert ended is not None and json.loads(stored_summary)["frames"] == n == summary["frames"]
    assert not (tmp_path / "r.db-wal").exists() or (tmp_path / "r.db-wal").stat().st_size == 0


CHILD = textwrap.dedent("""
    import json, sys, numpy as np
    sys.path.insert(0, "tests")
    from test_runtime_loop import FakeEngine, frames
    from prn_edge.runtime import InspectionLoop, Pipeline, SyntheticSource, open_store, stop_on_signals

    def report(frame, det, lat):
        print(frame.sequence, flush=True)

    source = SyntheticSource(frames([10, 250, 30]), fps=500)
    loop = InspectionLoop(Pipeline(FakeEngine(delay=0.002)), source, open_store(sys.argv[1]), on_result=report)
    with stop_on_signals(loop):
        summary = loop.run()
    loop.store.close()
    print(json.dumps(summary.to_dict()), flush=True)
""")


# --------------------------------------------------------------------------------------
def test_open_source_names(tmp_path):
    assert open_source("synthetic:64x32@15").images[0].shape == (32, 64, 3)
    assert open_source("synthetic").live is False
    with pytest.raises(PRNError, match="bad synthetic source"):
        open_source("synthetic:64")
    (tmp_path / "a.png").write_bytes(cv2.imencode(".png", np.zeros((4, 4, 3), np.uint8))[1].tobytes())
    assert isinstance(open_source(str(tmp_path)), ImageFolderSource)
    assert isinstance(open_source(str(tmp_path / "a.png")), ImageFolderSource)
    assert open_source("rtsp://cam/1").kind == "url" and open_source("/dev/video3").kind == "device"
    with pytest.raises(PRNError, match="no such file, folder or device"):
        open_source(str(tmp_path / "missing.avi"))
    with pytest.raises(SourceError, match="cannot open the device"):
        open_source("/dev/video97").open()


def test_gstreamer_without_gstreamer_says_which_opencv():
    if gstreamer_available():
        pytest.skip("this OpenCV has GStreamer")
    with pytest.raises(PRNError, match="no GStreamer.*JetPack"):
        open_source("videotestsrc ! videoconvert ! appsink")


def test_image_folder_source_skips_a_broken_image(tmp_path, bottle_dir):
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(3):
        src = bottle_dir / "test" / "good" / f"{i:03d}.png"
        (folder / f"{i}.png").write_bytes(src.read_bytes())
    (folder / "1b.png").write_bytes(b"not a png")
    s = InspectionLoop(Pipeline(FakeEngine()), open_source(str(folder)), JsonlStore(tmp_path / "r.jsonl"),
                       backoff=Backoff(initial=0.0, attempts=1)).run()
    assert s.frames == 3 and s.source_errors == 1 and s.reconnects == 1
    records = [r for r in read_jsonl(tmp_path / "r.jsonl") if r["type"] == "frame"]
    assert [r["sequence"] for r in records] == [0, 1, 2] and all(os.sep in r["source"] for r in records)


@contextlib.contextmanager
def live_view_running():
    """A loop on a fast synthetic camera whose overlays feed a LiveView; yields it after 3 frames."""
    from prn_edge.runtime.view import LiveView

    view = LiveView(0, max_fps=50)
    pipe = Pipeline(FakeEngine())
    loop = InspectionLoop(pipe, SyntheticSource(frames([10, 250, 30], (96, 128)), fps=100),
                          on_result=lambda f, d, lat: view.update(f.sequence, lambda: pipe.overlay(f.image, d)))
    view.status = lambda: {"frames": loop.summary.frames}
    runner = threading.Thread(target=loop.run)
    runner.start()
    try:
        deadline = time.monotonic() + 10
        while loop.summary.frames < 3 and time.monotonic() < deadline:
            time.sleep(0.02)
        yield view
    finally:
        loop.stop()
        runner.join(10)
        view.close()


def _chromium() -> str | None:
    import shutil

    return next((p for p in (shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome")) if p), None)


@pytest.mark.skipif(_chromium() is None, reason="no Chromium here (Debian: apt install chromium); the live "
                                                "view's page is tested in a real headless browser where it is")
def test_live_view_page_in_a_real_headless_browser(tmp_path):
    """Chromium loads the page, its script fetches /status and the newest overlay, and it renders."""
    import subprocess

    with live_view_running() as view:
        common = [_chromium(), "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
                  f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=4000"]
        dom = subprocess.run(common + ["--dump-dom", view.url], capture_output=True, text=True, timeout=90).stdout
        shot = tmp_path / "page.png"
        subprocess.run(common + ["--window-size=400,300", f"--screenshot={shot}", view.url],
                       capture_output=True, timeout=90)
    # The script ran: the counts came from /status and the overlay loaded at its real width.
    assert 'data-width="128"' in dom, dom[-500:]
    assert re.search(r'data-frames="([3-9]|\d\d+)"', dom), dom[-500:]
    assert re.search(r"frames: \d+", dom)
    # And it was drawn: the screenshot holds the overlay, not just the dark page.
    page = cv2.imread(str(shot)).astype(int)
    assert page.shape[:2] == (300, 400)
    # The page itself is grey on black; only the overlay is coloured (its decision label, green
    # "ok" or red "ANOMALY", and the heat map).
    coloured = (page.max(axis=2) - page.min(axis=2)) > 80
    assert coloured.sum() > 50, f"the overlay was not drawn on the rendered page ({shot})"


def test_live_view_serves_the_newest_overlay_as_a_stream_opencv_can_read():
    import urllib.request

    from prn_edge.runtime.view import LiveView

    with live_view_running() as view:
        jpeg = urllib.request.urlopen(view.url + "latest.jpg", timeout=5).read()
        assert cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR).shape == (96, 128, 3)
        assert json.loads(urllib.request.urlopen(view.url + "status", timeout=5).read())["frames"] >= 3
        # The MJPEG stream is itself a valid --source (FFMPEG over HTTP): one station can watch another.
        with open_source(view.url + "stream.mjpg", timeout_s=5) as watcher:
            got = [watcher.read() for _ in range(3)]
        assert [g.image.shape for g in got] == [(96, 128, 3)] * 3
    with pytest.raises(PRNError, match="cannot serve the live view"):
        busy = LiveView(0)
        try:
            LiveView(busy.port)
        finally:
            busy.close()
