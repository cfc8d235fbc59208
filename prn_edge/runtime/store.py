"""Durable results: one record per frame (SQLite in WAL mode, or JSONL) and anomaly images.

Durability contract: when :meth:`ResultStore.write` returns, the frame's record survives the
process being killed (``kill -9``, a crash, the OOM killer). SQLite commits each record in
WAL mode with ``synchronous=NORMAL``: a commit is one ``write()`` into the WAL, which the OS
keeps whatever happens to the process, and a reader always sees a consistent database. Only
a power loss can take back the last commits; ``durability="full"`` (``synchronous=FULL``,
an fsync per frame, milliseconds on SD cards and eMMC) closes that gap too. JSONL appends
one line per frame with a single ``write()`` and flushes it (fsync per line with ``full``);
:func:`read_jsonl` ignores a torn last line.

Anomalous frames and their overlays are written atomically (a temporary file renamed into
place) under a byte cap; the oldest images are removed to stay under it. Encoding a PNG
takes tens of milliseconds, so the loop hands them to a background thread with a short
backlog (:meth:`AnomalyImageWriter.submit`) instead of stalling inspection.
"""
from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import queue
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from prn_edge.errors import PRNError, first_line, require
from prn_edge.io import atomic_write

log = logging.getLogger(__name__)

__all__ = [
    "DURABILITY",
    "AnomalyImageWriter",
    "JsonlStore",
    "ResultStore",
    "SQLiteStore",
    "open_store",
    "read_jsonl",
]

DURABILITY = ("normal", "full")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    run_id     TEXT PRIMARY KEY,
    started    REAL NOT NULL,
    ended      REAL,
    info       TEXT NOT NULL,      -- JSON: model, backend, source, config
    summary    TEXT                -- JSON, written at a clean exit
);
CREATE TABLE IF NOT EXISTS frames (
    id         INTEGER PRIMARY KEY,
    run_id     TEXT NOT NULL,
    time       REAL NOT NULL,      -- capture time, seconds since the epoch
    source     TEXT NOT NULL,
    sequence   INTEGER NOT NULL,
    score      REAL NOT NULL,
    threshold  REAL NOT NULL,
    anomalous  INTEGER NOT NULL,
    regions    TEXT NOT NULL,      -- JSON list of {x, y, w, h, area, peak} in frame pixels
    latency_ms TEXT NOT NULL,      -- JSON {stage: milliseconds}
    image      TEXT                -- overlay file of an anomalous frame, relative to the output folder
);
CREATE INDEX IF NOT EXISTS frames_anomalous ON frames (run_id, anomalous);
"""


class ResultStore:
    """Where every frame's result goes. ``write`` returns once the record is durable."""

    path: Path

    def start_run(self, run_id: str, info: dict[str, Any]) -> None:
        raise NotImplementedError

    def write(self, record: dict[str, Any]) -> None:
        raise NotImplementedError

    def end_run(self, run_id: str, summary: dict[str, Any]) -> None:
        raise NotImplementedError

    def image_written(self, run_id: str, sequence: int, name: str) -> None:
        """The anomaly image ``name`` of frame ``sequence`` is on disk: its record names it from now on."""
        raise NotImplementedError

    def images_removed(self, names: list[str]) -> None:
        """The anomaly images ``names`` were removed by the cap: their frames' records no longer name them."""
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError


def _check_durability(durability: str) -> None:
    if durability not in DURABILITY:
        raise PRNError(f"unknown durability {durability!r}: {', '.join(DURABILITY)}")


class SQLiteStore(ResultStore):
    """Frame results in a SQLite database (tables ``runs`` and ``frames``), WAL mode.

    Args:
        path: the database file (created if missing; runs accumulate).
        durability: ``normal`` (survives process death) or ``full`` (also power loss).

    Raises:
        PRNError: the file cannot be created or is not a database.
    """

    def __init__(self, path: str | os.PathLike, durability: str = "normal") -> None:
        _check_durability(durability)
        self.path = Path(path)
        try:
            # The loop writes from one thread; check_same_thread off lets it be another than the creator's.
            self.db = sqlite3.connect(str(self.path), timeout=10.0, isolation_level=None, check_same_thread=False)
            mode = self.db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            self.db.execute(f"PRAGMA synchronous={durability.upper()}")
            self.db.executescript(_SCHEMA)
        except sqlite3.Error as exc:
            raise PRNError(f"{self.path}: cannot use it as the results database: {exc}") from exc
        if mode.lower() != "wal":
            raise PRNError(f"{self.path}: SQLite refused WAL mode ({mode}); is it on a network file system?")

    def _run(self, what: str, sql: str, rows: list[tuple]) -> None:
        # Autocommit (isolation_level=None): each statement is its own transaction, durable on return.
        try:
            self.db.executemany(sql, rows)
        except sqlite3.Error as exc:       # a full disk, a vanished or read-only file: one line, not a traceback
            raise PRNError(f"{self.path}: cannot record {what}: {exc}") from exc

    def start_run(self, run_id: str, info: dict[str, Any]) -> None:
        self._run("the run", "INSERT INTO runs (run_id, started, info) VALUES (?, ?, ?)",
                  [(run_id, time.time(), json.dumps(info))])

    def write(self, record: dict[str, Any]) -> None:
        self._run(f"frame {record['sequence']}",
                  "INSERT INTO frames (run_id, time, source, sequence, score, threshold, anomalous, regions, "
                  "latency_ms, image) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                  [(record["run_id"], record["time"], record["source"], record["sequence"], record["score"],
                    record["threshold"], int(record["anomalous"]), json.dumps(record["regions"]),
                    json.dumps(record["latency_ms"]), record.get("image"))])

    def end_run(self, run_id: str, summary: dict[str, Any]) -> None:
        self._run("the run's summary", "UPDATE runs SET ended = ?, summary = ? WHERE run_id = ?",
                  [(time.time(), json.dumps(summary), run_id)])

    def image_written(self, run_id: str, sequence: int, name: str) -> None:
        self._run(f"the image of frame {sequence}", "UPDATE frames SET image = ? WHERE run_id = ? AND sequence = ?",
                  [(name, run_id, sequence)])

    def images_removed(self, names: list[str]) -> None:
        self._run("removed images", "UPDATE frames SET image = NULL WHERE image = ?", [(n,) for n in names])

    def close(self) -> None:
        if self.db is not None:
            with contextlib.suppress(sqlite3.Error):
                self.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")   # fold the WAL back at a clean exit
            self.db.close()
            self.db = None


class JsonlStore(ResultStore):
    """Frame results as JSON lines (``{"type": "run"|"frame"|"summary", ...}``), appended."""

    def __init__(self, path: str | os.PathLike, durability: str = "normal") -> None:
        _check_durability(durability)
        self.path = Path(path)
        self.full = durability == "full"
        try:
            self.fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o666)
        except OSError as exc:
            raise PRNError(f"{self.path}: cannot write the results file ({exc.strerror})") from exc

    def _append(self, obj: dict[str, Any]) -> None:
        data = (json.dumps(obj, separators=(",", ":")) + "\n").encode()
        end = os.lseek(self.fd, 0, os.SEEK_END)
        try:
            written = os.write(self.fd, data)    # one write: a kill leaves whole lines (at worst a torn last one)
            if written != len(data):             # a disk that filled up mid-line
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            if self.full:
                os.fsync(self.fd)
        except OSError as exc:
            with contextlib.suppress(OSError):   # no torn line for later records to follow
                os.ftruncate(self.fd, end)
            what = f"frame {obj['sequence']}" if obj["type"] == "frame" else f"the {obj['type'].replace('_', ' ')}"
            raise PRNError(f"{self.path}: cannot record {what}: {exc.strerror or exc}") from exc

    def start_run(self, run_id: str, info: dict[str, Any]) -> None:
        self._append({"type": "run", "run_id": run_id, "started": time.time(), "info": info})

    def write(self, record: dict[str, Any]) -> None:
        self._append({"type": "frame", **record})

    def end_run(self, run_id: str, summary: dict[str, Any]) -> None:
        self._append({"type": "summary", "run_id": run_id, "ended": time.time(), "summary": summary})

    # Append-only: records that read_jsonl applies to the frames before them.
    def image_written(self, run_id: str, sequence: int, name: str) -> None:
        self._append({"type": "image_written", "run_id": run_id, "sequence": sequence, "image": name})

    def images_removed(self, names: list[str]) -> None:
        self._append({"type": "images_removed", "images": list(names)})

    def close(self) -> None:
        if self.fd is not None:
            with contextlib.suppress(OSError):
                os.fsync(self.fd)
            os.close(self.fd)
            self.fd = None


def read_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Every complete record of a JSONL results file (a torn last line from a kill is skipped).

    ``image_written`` and ``images_removed`` records are applied to the frame records before
    them, as the SQLite store's UPDATEs are, so a frame names its image only while it is on disk.
    """
    out = []
    with open(path, "rb") as handle:
        for line in handle:
            if not line.endswith(b"\n"):
                break
            out.append(json.loads(line))
    frames: dict[tuple[str, int], dict[str, Any]] = {}
    by_image: dict[str, dict[str, Any]] = {}
    for record in out:
        kind = record.get("type")
        if kind == "frame":
            frames[(record["run_id"], record["sequence"])] = record
        elif kind == "image_written" and (record["run_id"], record["sequence"]) in frames:
            frame = frames[(record["run_id"], record["sequence"])]
            frame["image"] = record["image"]
            by_image[record["image"]] = frame
        elif kind == "images_removed":
            for name in record["images"]:
                if name in by_image:
                    by_image.pop(name)["image"] = None
    return out


def open_store(path: str | os.PathLike, durability: str = "normal") -> ResultStore:
    """``*.jsonl`` -> :class:`JsonlStore`; anything else (``*.db``, ``*.sqlite``) -> :class:`SQLiteStore`."""
    return JsonlStore(path, durability) if str(path).endswith(".jsonl") else SQLiteStore(path, durability)


class AnomalyImageWriter:
    """Writes each anomalous frame (PNG, lossless) and its overlay (JPEG) atomically, under a byte cap.

    Files are named ``<run>_<sequence>_frame.png`` / ``_overlay.jpg``. When the folder's images
    (from this and earlier runs) would exceed ``max_bytes``, the oldest are removed first, so a
    long run keeps its newest evidence and never fills the disk.

    Args:
        folder: where the images go (created).
        max_bytes: the cap; 0 writes no images.
        jpeg_quality: of the overlays.
        backlog: anomalies waiting for the background writer at most; more are skipped (counted).

    Attributes:
        written, evicted: pairs of images written, files removed by the cap.
        skipped: anomalies not written (backlog full, or bigger than the cap).
        errors: failed writes (e.g. disk full); the last one's message is in ``last_error``.

    :meth:`take_changes` hands the loop what changed on disk (an image written, images removed by
    the cap), so a record names an image only once it is written and until it is removed: a
    kill, a full disk or the cap never leaves a record naming a missing file.
    """

    def __init__(self, folder: str | os.PathLike, max_bytes: int = 1 << 30, *, jpeg_quality: int = 90,
                 backlog: int = 8) -> None:
        self.folder = Path(folder)
        self.max_bytes = int(max_bytes)
        self.quality = int(jpeg_quality)
        self.written = self.evicted = self.skipped = self.errors = 0
        self.last_error = ""
        self._changes: deque[tuple[str, Any, str]] = deque()   # appended by the writer thread, taken by the loop
        self._queue: queue.Queue = queue.Queue(maxsize=max(1, backlog))
        self._thread: threading.Thread | None = None
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise PRNError(f"{self.folder}: cannot create the image folder ({exc.strerror})") from exc
        # What is there already counts against the cap (oldest first).
        files = sorted((p for p in self.folder.iterdir() if p.is_file() and not p.name.startswith(".")),
                       key=lambda p: p.stat().st_mtime)
        self._files: deque[tuple[Path, int]] = deque((p, p.stat().st_size) for p in files)
        self.bytes = sum(size for _, size in self._files)

    def write(self, stem: str, frame: np.ndarray, overlay: np.ndarray, key: Any = None) -> str | None:
        """Write both images; returns the overlay's file name, or None when the cap allows nothing.

        ``key`` (the frame's sequence number) comes back with the ``written`` change."""
        cv2 = require("cv2", "writing anomaly images")
        ok1, png = cv2.imencode(".png", frame)
        ok2, jpg = cv2.imencode(".jpg", overlay, [cv2.IMWRITE_JPEG_QUALITY, self.quality])
        if not (ok1 and ok2):
            raise PRNError(f"OpenCV could not encode the images of {stem}")
        blobs = [(self.folder / f"{stem}_frame.png", png.tobytes()), (self.folder / f"{stem}_overlay.jpg", jpg.tobytes())]
        need = sum(len(b) for _, b in blobs)
        if need > self.max_bytes:
            self.skipped += 1
            return None
        while self._files and self.bytes + need > self.max_bytes:
            path, size = self._files.popleft()
            self._evict(path, size)
            # A frame and its overlay go together: the record names the overlay, the frame is the evidence.
            overlay = path.name.replace("_frame.png", "_overlay.jpg")
            if overlay != path.name and self._files and self._files[0][0].name == overlay:
                self._evict(*self._files.popleft())
        done = []
        try:
            for path, data in blobs:
                with atomic_write(path) as handle:
                    handle.write(data)
                done.append((path, len(data)))
        except BaseException:
            # Half a pair (a frame without its overlay) is evidence no record points to: remove it.
            for path, _ in done:
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
            raise
        self._files.extend(done)
        self.bytes += need
        self.written += 1
        self._changes.append(("written", key, blobs[1][0].name))
        return blobs[1][0].name

    def _evict(self, path: Path, size: int) -> None:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        self.bytes -= size
        self.evicted += 1
        if path.name.endswith("_overlay.jpg"):
            self._changes.append(("removed", None, path.name))

    def take_changes(self) -> list[tuple[str, Any, str]]:
        """``("written", key, overlay name)`` and ``("removed", None, overlay name)`` since the last call, in order."""
        changes = []
        while self._changes:
            changes.append(self._changes.popleft())
        return changes

    def submit(self, stem: str, frame: np.ndarray, render: Callable[[], np.ndarray], key: Any = None) -> str | None:
        """Queue an anomaly for the background writer; ``render()`` makes its overlay there.

        ``frame`` must not be modified afterwards (sources deliver a new array per frame).

        Returns:
            The overlay's file name it will have, or None when it is skipped (backlog full).
        """
        if self.max_bytes <= 0:
            return None
        if self._thread is None:
            self._thread = threading.Thread(target=self._work, name="prn-images", daemon=True)
            self._thread.start()
        try:
            self._queue.put_nowait((stem, frame, render, key))
        except queue.Full:
            self.skipped += 1
            return None
        return f"{stem}_overlay.jpg"

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            stem, frame, render, key = item
            try:
                self.write(stem, frame, render(), key)
            except Exception as exc:  # noqa: BLE001 - a full disk must not stop the inspection
                self.errors += 1
                message = first_line(exc)
                # One warning per kind of failure, not one per frame of a full disk; the summary counts them.
                (log.debug if message.split(":")[0] == self.last_error.split(":")[0] else log.warning)(
                    "anomaly image %s not written: %s", stem, message)
                self.last_error = message

    def close(self) -> None:
        """Write what is queued, then stop the background writer."""
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join()
            self._thread = None
