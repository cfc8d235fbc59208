"""Frame sources: image folder, video file, V4L2 device, RTSP/HTTP URL, GStreamer pipeline, synthetic.

Every source delivers :class:`Frame` objects: a BGR uint8 image (OpenCV's channel order), a
sequence number that keeps counting across reconnections, and capture timestamps. A source
that breaks (a vanished device, a truncated file, a dropped stream) raises
:class:`SourceError`; the inspection loop then reconnects with back-off by calling
:meth:`Source.open` again. A clean end of stream is ``read() -> None``.

:func:`open_source` turns the ``--source`` text into a source. numpy + OpenCV only.
"""
from __future__ import annotations

import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from prn_edge.errors import PRNError, require
from prn_edge.imaging.preprocess import check_frame_size
from prn_edge.imaging.read import IMAGE_EXTENSIONS, list_images, read_image
from prn_edge.validate import check_number

__all__ = [
    "CaptureSource",
    "Frame",
    "ImageFolderSource",
    "Source",
    "SourceError",
    "SyntheticSource",
    "gstreamer_available",
    "open_source",
]

URL_SCHEMES = ("rtsp://", "rtsps://", "http://", "https://", "rtmp://", "udp://")


class SourceError(PRNError):
    """A source failed while running (or could not be reopened): the loop may reconnect."""


@dataclass(frozen=True)
class Frame:
    """One captured frame.

    Attributes:
        image: uint8 ``(H, W, 3)`` BGR.
        sequence: 0, 1, 2, ... per source; a file's frame index; never reused after a reconnection.
        timestamp: wall-clock capture time (``time.time()``), for the record.
        captured: monotonic capture time (``time.monotonic()``), for latencies.
        source: the source's name.
    """

    image: np.ndarray
    sequence: int
    timestamp: float
    captured: float
    source: str


class Source:
    """Base of every source: sequence numbering and the open / read / close contract.

    Attributes:
        name: what the results record as the source.
        live: True for cameras and streams (frames keep coming whether or not they are
            consumed, so the loop drops old ones); False for files and folders (the loop takes
            every frame, reading no faster than it infers).
    """

    name: str = "source"
    live: bool = False

    def __init__(self) -> None:
        self._sequence = 0

    def open(self) -> None:
        """(Re)open the source. Raises :class:`SourceError` (or PRNError) if it cannot."""

    def read(self) -> Frame | None:
        """The next frame, or None at the end. Raises :class:`SourceError` on a failure."""
        raise NotImplementedError

    def close(self) -> None:
        """Release the device / file; :meth:`open` may follow."""

    def _frame(self, image: np.ndarray, sequence: int | None = None) -> Frame:
        if sequence is None:
            sequence = self._sequence
        self._sequence = sequence + 1
        return Frame(image, sequence, time.time(), time.monotonic(), self.name)

    def __enter__(self):
        self.open()
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _cv2():
    return require("cv2", "camera and video sources")


class ImageFolderSource(Source):
    """The images of a folder (or one image file), in name order.

    The folder is listed and every image read by :mod:`prn_edge.imaging.read`, the dataset
    loader's reader: the same extensions (hidden files skipped), and the same pixels as
    ``prn-eval`` (16-bit, grey and alpha converted alike, no EXIF rotation), as BGR frames.
    An unreadable image raises :class:`SourceError` after the position has moved past it,
    so a reconnection goes on with the next image.

    Args:
        path: a folder or a single image file.
        loop: start again at the first image after the last (for soak tests).
    """

    def __init__(self, path: str | Path, *, loop: bool = False) -> None:
        super().__init__()
        self.path = Path(path)
        self.name = str(self.path)
        self.loop = loop
        self.files: list[Path] = []
        self._index = 0

    def open(self) -> None:
        if self.path.is_file():
            self.files = [self.path]
        elif self.path.is_dir():
            try:
                self.files = list_images(self.path)
            except PRNError as exc:   # vanished or unreadable between the check and the listing
                raise SourceError(str(exc)) from exc
        else:
            raise SourceError(f"{self.path}: no such image folder or file")
        if not self.files:
            raise PRNError(f"{self.path}: no images ({', '.join(sorted(IMAGE_EXTENSIONS))}) in this folder")

    def read(self) -> Frame | None:
        if self._index >= len(self.files):
            if not self.loop:
                return None
            self._index = 0
        path = self.files[self._index]
        self._index += 1
        try:
            image = read_image(path, order="BGR")
        except PRNError as exc:   # one line naming the file: missing, corrupt or unsupported
            raise SourceError(str(exc)) from exc
        return self._frame(image)


def gstreamer_available() -> bool:
    """Whether this OpenCV build can open GStreamer pipelines."""
    info = _cv2().getBuildInformation()
    return bool(re.search(r"GStreamer:\s*YES", info))


class CaptureSource(Source):
    """An OpenCV ``VideoCapture``: video file, V4L2 device, RTSP/HTTP URL or GStreamer pipeline.

    A video file that ends before its header's frame count (a truncated or damaged file)
    raises :class:`SourceError`; reopening it skips the frames already delivered, so
    sequence numbers stay the frame indices. Live sources raise on any failed read.

    Args:
        spec: the path, device, URL or pipeline.
        kind: ``file``, ``device``, ``url`` or ``gstreamer``.
        timeout_s: open / read timeout for network streams.

    Raises:
        PRNError: a GStreamer pipeline where this OpenCV has no GStreamer.
    """

    KINDS = ("file", "device", "url", "gstreamer")

    def __init__(self, spec: str, kind: str, *, timeout_s: float = 10.0) -> None:
        super().__init__()
        if kind not in self.KINDS:
            raise PRNError(f"unknown capture kind {kind!r}: {', '.join(self.KINDS)}")
        self.spec, self.kind, self.timeout_s = spec, kind, timeout_s
        self.name = spec if kind != "gstreamer" else f"gstreamer:{spec}"
        self.live = kind != "file"
        self.cap = None
        self.frame_count: int | None = None
        if kind == "gstreamer" and not gstreamer_available():
            raise PRNError("this OpenCV build has no GStreamer (pip's opencv-python wheels never do): use the "
                           "OpenCV that JetPack ships (apt python3-opencv) or build OpenCV with "
                           "-DWITH_GSTREAMER=ON; or read the camera as a V4L2 device (/dev/video0)")

    def open(self) -> None:
        cv2 = _cv2()
        self.close()
        if self.kind == "file":
            if not Path(self.spec).is_file():
                raise SourceError(f"{self.spec}: no such video file")
            cap = cv2.VideoCapture(self.spec)
        elif self.kind == "device":
            index = int(self.spec[len("/dev/video"):]) if self.spec.startswith("/dev/video") else int(self.spec)
            cap = cv2.VideoCapture(index, cv2.CAP_V4L2)
            if cap.isOpened():
                cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)   # the newest frame, not a backlog
        elif self.kind == "url":
            ms = int(self.timeout_s * 1000)
            cap = cv2.VideoCapture(self.spec, cv2.CAP_FFMPEG,
                                   [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, ms, cv2.CAP_PROP_READ_TIMEOUT_MSEC, ms])
        else:
            cap = cv2.VideoCapture(self.spec, cv2.CAP_GSTREAMER)
        if not cap.isOpened():
            cap.release()
            raise SourceError(f"{self.name}: cannot open the {self.kind} "
                              f"({'is the camera connected, and is it free?' if self.kind == 'device' else 'check it'})")
        self.cap = cap
        if self.kind == "file":
            count = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
            self.frame_count = count if count > 0 else None
            # Skip what was already delivered before a failure (grab: no decoding).
            for _ in range(self._sequence):
                if not cap.grab():
                    raise SourceError(f"{self.spec}: ends before frame {self._sequence} it delivered before")

    def read(self) -> Frame | None:
        if self.cap is None:
            raise SourceError(f"{self.name}: not open")
        start = time.monotonic()
        ok, image = self.cap.read()
        if self.kind == "url" and time.monotonic() - start >= self.timeout_s:
            # OpenCV's FFmpeg reader hit its read timeout in this call, yet still returns a frame
            # held in the decoder's frame-threading delay (more with more cores): a stalled stream
            # would fail only after several timeouts, delivering stale frames as new ones.
            raise SourceError(f"{self.name}: no frame for {self.timeout_s:g} s (stream stalled)")
        if not ok or image is None:
            if self.kind != "file":
                raise SourceError(f"{self.name}: no frame (device lost or stream interrupted)")
            if self.frame_count is not None and self._sequence < self.frame_count:
                raise SourceError(f"{self.spec}: ended after {self._sequence} of {self.frame_count} frames "
                                  "(truncated or damaged file)")
            return None
        if image.ndim == 2 or image.shape[2] != 3:
            image = _cv2().cvtColor(image, _cv2().COLOR_GRAY2BGR if image.ndim == 2 else _cv2().COLOR_BGRA2BGR)
        return self._frame(image)

    def close(self) -> None:
        if self.cap is not None:
            self.cap.release()
            self.cap = None


class SyntheticSource(Source):
    """Frames made in memory, for tests and soak runs: no camera, no files.

    Args:
        images: BGR frames to cycle through; default a few seeded random images of ``shape``.
        shape: ``(H, W)`` of the generated images when ``images`` is None.
        count: frames before the end (None: endless).
        fps: pace frames like a camera (``live``); None delivers them as fast as asked.
        fail_at: sequence numbers at which the source "vanishes" once (raises
            :class:`SourceError`, then needs :meth:`open`), like an unplugged camera.
        fail_open: how many :meth:`open` calls after each failure fail too (a camera that takes
            a while to come back).
    """

    def __init__(self, images: list[np.ndarray] | None = None, *, shape: tuple[int, int] = (240, 320),
                 count: int | None = None, fps: float | None = None, fail_at=(), fail_open: int = 0,
                 name: str = "synthetic") -> None:
        super().__init__()
        if images is None:
            rng = np.random.default_rng(0)
            images = [rng.integers(0, 256, (*shape, 3), dtype=np.uint8) for _ in range(4)]
        if not images:
            raise PRNError("a synthetic source needs at least one image")
        self.images = [np.ascontiguousarray(i) for i in images]
        self.count, self.fps, self.name = count, fps, name
        self.live = fps is not None
        self.fail_at = set(fail_at)
        self.fail_open = fail_open
        self._failed = False
        self._open_failures = 0
        self._next_tick: float | None = None
        self._lock = threading.Lock()
        self.opens = 0

    def open(self) -> None:
        with self._lock:
            self.opens += 1
            if self._failed and self._open_failures < self.fail_open:
                self._open_failures += 1
                raise SourceError(f"{self.name}: device not there (yet)")
            self._failed, self._open_failures = False, 0
            self._next_tick = None

    def read(self) -> Frame | None:
        if self._failed:
            raise SourceError(f"{self.name}: not open")
        seq = self._sequence
        if self.count is not None and seq >= self.count:
            return None
        if seq in self.fail_at:
            self.fail_at.discard(seq)
            self._failed = True
            raise SourceError(f"{self.name}: device vanished at frame {seq}")
        if self.fps is not None:
            # A camera delivers on its own clock; a late reader gets the frame at once.
            now = time.monotonic()
            if self._next_tick is None:
                self._next_tick = now
            wait = self._next_tick - now
            if wait > 0:
                time.sleep(wait)
            self._next_tick = max(self._next_tick + 1.0 / self.fps, time.monotonic() - 1.0 / self.fps)
        return self._frame(self.images[seq % len(self.images)])


def open_source(spec: str, *, loop: bool = False, timeout_s: float = 10.0) -> Source:
    """The source that ``spec`` names, not yet opened.

    Args:
        spec: ``synthetic`` or ``synthetic:WxH@FPS`` | an image folder or image file | a video
            file | ``/dev/videoN`` or ``N`` (V4L2) | ``rtsp://...``, ``http(s)://...`` | a
            GStreamer pipeline (``gst:...`` or any text with ``!`` between elements, ending in appsink).
        loop: for image folders, start again after the last image.
        timeout_s: network open / read timeout.

    Raises:
        PRNError: nothing usable by that name (a missing file, a bad synthetic spec, a GStreamer
            pipeline without GStreamer in OpenCV).
    """
    spec = str(spec).strip()
    if not spec:
        raise PRNError("empty --source")
    if spec == "synthetic" or spec.startswith("synthetic:"):
        m = re.fullmatch(r"synthetic(?::(\d+)x(\d+))?(?:@(\d+(?:\.\d+)?))?", spec)
        if not m:
            raise PRNError(f"bad synthetic source {spec!r}: synthetic, synthetic:WxH or synthetic:WxH@FPS")
        w, h, fps = m.groups()
        width, height = check_frame_size("--source synthetic:WxH", int(w or 320), int(h or 240))
        rate = check_number("--source synthetic:WxH@FPS", float(fps) if fps else None, low=0, low_open=True)
        return SyntheticSource(shape=(height, width), fps=rate)
    if spec.startswith("gst:"):
        return CaptureSource(spec[4:].strip(), "gstreamer", timeout_s=timeout_s)
    if spec.lower().startswith(URL_SCHEMES):
        return CaptureSource(spec, "url", timeout_s=timeout_s)
    if re.fullmatch(r"/dev/video\d+|\d+", spec):
        return CaptureSource(spec, "device", timeout_s=timeout_s)
    path = Path(spec).expanduser()
    if path.is_dir() or (path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS):
        return ImageFolderSource(path, loop=loop)
    if path.is_file():
        return CaptureSource(str(path), "file", timeout_s=timeout_s)
    if "!" in spec:
        return CaptureSource(spec, "gstreamer", timeout_s=timeout_s)
    raise PRNError(f"{spec}: no such file, folder or device, and not a URL or GStreamer pipeline (--source)")
