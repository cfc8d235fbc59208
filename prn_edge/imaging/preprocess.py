"""Frame preprocessing shared by training data, evaluation, export checks and the camera loop.

The deployable model takes uint8 RGB NHWC at its input size and normalises inside the
graph, so this is the only image work a caller does: colour conversion (:func:`to_rgb`, which
lives in :mod:`prn_edge.imaging.read` with the file reader so files and frames convert alike),
an optional region of interest, and one resize policy. numpy + OpenCV only (no torch).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from prn_edge.errors import PRNError, require
from prn_edge.imaging.read import to_rgb, to_uint8  # noqa: F401  (the one pixel conversion; re-exported)
from prn_edge.validate import check_number

RESIZE_POLICIES = ("stretch", "center-crop", "letterbox")
#: The largest frame side a tool accepts (a 16K sensor); larger is a typo, not a camera.
MAX_FRAME_SIDE = 16384


def check_frame_size(flag: str, width, height, *, low: int = 1) -> tuple[int, int]:
    """``(width, height)`` if both are whole numbers from ``low`` to :data:`MAX_FRAME_SIDE`, else a PRNError."""
    for what, value in (("width", width), ("height", height)):
        check_number(f"{flag} {what}", value, low=low, high=MAX_FRAME_SIDE, integer=True, optional=False)
    return int(width), int(height)


def _cv2():
    return require("cv2", "image preprocessing")


def resize_image(image: np.ndarray, size: int, policy: str = "stretch", *,
                 interpolation: str = "auto") -> np.ndarray:
    """Resize an HxWxC (or HxW) image to ``size`` x ``size``.

    Args:
        image: uint8 or float image.
        size: output side.
        policy: ``stretch`` (ignore aspect), ``center-crop`` (crop the largest centred
            square, then resize) or ``letterbox`` (fit inside, pad with black).
        interpolation: ``auto`` (area when shrinking, linear when enlarging: area avoids
            aliasing on downscale), ``nearest`` (masks), ``linear`` or ``area``.

    Returns:
        The resized image, same dtype and channel count.
    """
    cv2 = _cv2()
    if image.ndim not in (2, 3) or image.shape[0] == 0 or image.shape[1] == 0:
        raise PRNError(f"expected an HxW or HxWxC image, got shape {image.shape}")
    if policy not in RESIZE_POLICIES:
        raise PRNError(f"unknown resize policy {policy!r}: choose one of {', '.join(RESIZE_POLICIES)}")
    h, w = image.shape[:2]
    if policy == "center-crop":
        side = min(h, w)
        top, left = (h - side) // 2, (w - side) // 2
        image = image[top:top + side, left:left + side]
        h = w = side
    if policy == "letterbox":
        scale = size / max(h, w)
        nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
        inner = _resize(cv2, image, nw, nh, interpolation, shrinking=scale < 1)
        out = np.zeros((size, size) + image.shape[2:], dtype=image.dtype)
        top, left = (size - nh) // 2, (size - nw) // 2
        out[top:top + nh, left:left + nw] = inner
        return out
    if (h, w) == (size, size):
        return image
    return _resize(cv2, image, size, size, interpolation, shrinking=size < max(h, w))


def _resize(cv2, image: np.ndarray, width: int, height: int, interpolation: str, shrinking: bool) -> np.ndarray:
    modes = {"nearest": cv2.INTER_NEAREST, "linear": cv2.INTER_LINEAR, "area": cv2.INTER_AREA}
    if interpolation != "auto" and interpolation not in modes:
        raise PRNError(f"unknown interpolation {interpolation!r}: choose auto, nearest, linear or area")
    h, w = image.shape[:2]
    if interpolation == "auto":
        # Area averaging avoids aliasing when shrinking but is blocky when enlarging, so a
        # crop that shrinks along one axis and grows along the other is resized per axis.
        def method(native: int, target: int) -> int:
            return cv2.INTER_AREA if native > target else cv2.INTER_LINEAR

        if method(w, width) != method(h, height):
            image = cv2.resize(image, (width, h), interpolation=method(w, width))
        out = cv2.resize(image, (width, height), interpolation=method(h, height))
    else:
        out = cv2.resize(image, (width, height), interpolation=modes[interpolation])
    return out if out.ndim == image.ndim else out[..., None]  # cv2 drops a single channel


def crop_roi(image: np.ndarray, roi: tuple[int, int, int, int] | None) -> np.ndarray:
    """Crop ``roi`` = (x, y, width, height) in pixels; None keeps the whole frame."""
    if roi is None:
        return image
    x, y, w, h = roi
    if w <= 0 or h <= 0 or x < 0 or y < 0 or x + w > image.shape[1] or y + h > image.shape[0]:
        raise PRNError(f"region of interest {roi} (x, y, w, h) does not fit a "
                       f"{image.shape[1]}x{image.shape[0]} frame")
    return image[y:y + h, x:x + w]


def prepare_frame(frame: np.ndarray, size: int, *, policy: str = "stretch", order: str = "BGR",
                  roi: tuple[int, int, int, int] | None = None) -> np.ndarray:
    """Camera/OpenCV frame -> the model's input: uint8 (size, size, 3) RGB.

    Raises:
        PRNError: anything but a non-empty HxW or HxWxC image array, unusable pixels
            (:func:`~prn_edge.imaging.read.to_uint8`), or a region of interest outside the frame.
    """
    if not isinstance(frame, np.ndarray) or frame.ndim not in (2, 3) or 0 in frame.shape:
        got = f"{frame.dtype} {frame.shape}" if isinstance(frame, np.ndarray) else type(frame).__name__
        raise PRNError(f"a frame must be a non-empty HxW or HxWxC image array, got {got}")
    return resize_image(to_rgb(crop_roi(frame, roi), order), size, policy)


@dataclass(frozen=True)
class FrameGeometry:
    """Where the model's ``size`` x ``size`` input lies in the original frame.

    Every resize policy is an axis-aligned affine map: the model pixel edge ``u`` lies at frame
    pixel edge ``x = scale_x * u + offset_x`` (likewise for y). Post-processing uses it to
    report defect boxes and to draw overlays in the frame's own pixels.

    Attributes:
        frame_width, frame_height: the original frame.
        roi: the region of interest (x, y, w, h) the model saw, the whole frame if none.
        size: the model's input side.
        scale_x, scale_y: frame pixels per model pixel.
        offset_x, offset_y: frame position of the model input's top-left corner (negative for
            a letterbox's padding, which lies outside the region of interest).
    """

    frame_width: int
    frame_height: int
    roi: tuple[int, int, int, int]
    size: int
    scale_x: float
    scale_y: float
    offset_x: float
    offset_y: float

    def box_to_frame(self, x: int, y: int, w: int, h: int) -> tuple[int, int, int, int]:
        """A box in model pixels -> the covering box in frame pixels, clipped to the region of interest."""
        rx, ry, rw, rh = self.roi
        x0 = max(rx, math.floor(self.offset_x + x * self.scale_x))
        y0 = max(ry, math.floor(self.offset_y + y * self.scale_y))
        x1 = min(rx + rw, math.ceil(self.offset_x + (x + w) * self.scale_x))
        y1 = min(ry + rh, math.ceil(self.offset_y + (y + h) * self.scale_y))
        return x0, y0, max(0, x1 - x0), max(0, y1 - y0)

    def map_to_frame(self, amap: np.ndarray) -> np.ndarray:
        """A ``(size, size)`` float map -> ``(frame_height, frame_width)`` float32, 0 outside the region of interest."""
        cv2 = _cv2()
        # Inverse map, pixel centres: u = (x + 0.5 - offset) / scale - 0.5.
        inverse = np.array([[1.0 / self.scale_x, 0.0, (0.5 - self.offset_x) / self.scale_x - 0.5],
                            [0.0, 1.0 / self.scale_y, (0.5 - self.offset_y) / self.scale_y - 0.5]])
        out = cv2.warpAffine(np.ascontiguousarray(amap, dtype=np.float32), inverse,
                             (self.frame_width, self.frame_height),
                             flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                             borderMode=cv2.BORDER_CONSTANT, borderValue=0.0)
        rx, ry, rw, rh = self.roi
        if (rx, ry, rw, rh) != (0, 0, self.frame_width, self.frame_height):
            inside = np.zeros_like(out)
            inside[ry:ry + rh, rx:rx + rw] = out[ry:ry + rh, rx:rx + rw]
            out = inside
        return out


def frame_geometry(height: int, width: int, size: int, *, policy: str = "stretch",
                   roi: tuple[int, int, int, int] | None = None) -> FrameGeometry:
    """The :class:`FrameGeometry` of :func:`prepare_frame` on a ``height`` x ``width`` frame.

    Raises:
        PRNError: an unknown policy, or a region of interest outside the frame.
    """
    if policy not in RESIZE_POLICIES:
        raise PRNError(f"unknown resize policy {policy!r}: choose one of {', '.join(RESIZE_POLICIES)}")
    if roi is not None:
        crop_roi(np.empty((height, width, 0), np.uint8), roi)   # the same check, no pixels touched
    rx, ry, rw, rh = roi if roi is not None else (0, 0, width, height)
    if policy == "stretch":
        sx, sy, ox, oy = rw / size, rh / size, 0.0, 0.0
    elif policy == "center-crop":
        side = min(rw, rh)
        sx = sy = side / size
        ox, oy = float((rw - side) // 2), float((rh - side) // 2)
    else:  # letterbox: the same rounding as resize_image
        scale = size / max(rw, rh)
        nh, nw = max(1, round(rh * scale)), max(1, round(rw * scale))
        sx, sy = rw / nw, rh / nh
        ox, oy = -((size - nw) // 2) * sx, -((size - nh) // 2) * sy
    return FrameGeometry(width, height, (rx, ry, rw, rh), size, sx, sy, rx + ox, ry + oy)
