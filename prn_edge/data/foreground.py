"""Foreground masks: where target areas for generated anomalies may be placed (docs/model.md, "Anomaly synthesis").

Textures are foreground everywhere. For objects the foreground is the object itself,
found without learning: Otsu threshold of the blurred grey image, morphological open
then close, largest connected component, holes filled. Which side of the threshold is
the object is decided by the image border, which is mostly background (the MVTec bottle
is a dark disc on a white background; other objects are bright on dark).

When the object mask is implausible (under 1% or over 99% of the image) the whole image
is used instead: :func:`compute_foreground` reports this in ``Foreground.fallback`` and
:func:`foreground_mask` logs a warning on the ``prn_edge.data.foreground`` logger.

Masks are cached per image by :class:`ForegroundCache` as PNG files.

This module needs numpy and OpenCV only (no torch).
"""
from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from prn_edge.errors import DataError, PRNError, require
from prn_edge.imaging.read import read_mask

cv2 = require("cv2", "foreground masks")

__all__ = [
    "KINDS",
    "TEXTURE_CATEGORIES",
    "ALGORITHM_VERSION",
    "Foreground",
    "category_kind",
    "compute_foreground",
    "foreground_mask",
    "ForegroundCache",
]

logger = logging.getLogger(__name__)

KINDS = ("object", "texture")

#: Categories whose every pixel is foreground: the five MVTec textures and magnetic tile.
TEXTURE_CATEGORIES: frozenset[str] = frozenset(
    {"carpet", "grid", "leather", "tile", "wood", "magnetic_tile"}
)

#: Bumped whenever the object algorithm or its parameters change: it invalidates cached masks.
ALGORITHM_VERSION = 1

# A mask covering less / more than this fraction of the image is not an object mask.
MIN_FRACTION = 0.01
MAX_FRACTION = 0.99


@dataclass(frozen=True)
class Foreground:
    """The result of :func:`compute_foreground`.

    Attributes:
        mask: bool ``(H, W)``, True on the foreground.
        fallback: True when the object mask was degenerate and ``mask`` is all True instead.
        fraction: The foreground fraction of the object mask before any fallback (1.0 for textures).
    """

    mask: np.ndarray
    fallback: bool
    fraction: float


def category_kind(name: str) -> str:
    """``"texture"`` for the MVTec textures and magnetic tile, else ``"object"``.

    Textures: carpet, grid, leather, tile, wood (:data:`TEXTURE_CATEGORIES`).

    Args:
        name: A category name, or its folder path (its last component is used);
            case, ``-`` and spaces are ignored (``Magnetic-Tile`` is ``magnetic_tile``).

    Returns:
        ``"texture"`` or ``"object"``.
    """
    key = Path(str(name)).name.strip().lower().replace("-", "_").replace(" ", "_")
    return "texture" if key in TEXTURE_CATEGORIES else "object"


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise PRNError(f"foreground kind must be one of {', '.join(KINDS)}, got {kind!r}")


def _grey_uint8(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.dtype != np.uint8:
        if not np.issubdtype(image.dtype, np.floating):
            raise PRNError(f"foreground needs a uint8 or float [0, 1] image, got {image.dtype}")
        image = (np.clip(image, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    if image.ndim == 2:
        return image
    if image.ndim == 3 and image.shape[2] == 1:
        return image[:, :, 0]
    if image.ndim == 3 and image.shape[2] in (3, 4):
        return cv2.cvtColor(np.ascontiguousarray(image[:, :, :3]), cv2.COLOR_RGB2GRAY)
    raise PRNError(f"foreground needs an (H, W) or (H, W, 3) image, got shape {image.shape}")


def _odd(value: float) -> int:
    return max(3, int(round(value)) | 1)


def _object_mask(grey: np.ndarray) -> np.ndarray:
    """The object mask of a grey uint8 image (may be degenerate; the caller checks)."""
    h, w = grey.shape
    side = min(h, w)
    # Blur first so that texture and sensor noise do not split the object (sigma 2 at 256 px).
    blurred = cv2.GaussianBlur(grey, (0, 0), sigmaX=max(1.0, side / 128.0))
    _, above = cv2.threshold(blurred, 0, 1, cv2.THRESH_BINARY + cv2.THRESH_OTSU)

    # The border is mostly background: the object is the side the border mostly is not on.
    border = np.concatenate([above[0, :], above[-1, :], above[1:-1, 0], above[1:-1, -1]])
    fg = (above == 0) if border.mean() > 0.5 else (above == 1)
    fg = fg.astype(np.uint8)

    # Open removes specks and thin bridges to the background; close seals small gaps in the object.
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (_odd(side / 50.0),) * 2)
    fg = cv2.morphologyEx(fg, cv2.MORPH_OPEN, kernel)
    fg = cv2.morphologyEx(fg, cv2.MORPH_CLOSE, kernel)

    count, labels, stats, _ = cv2.connectedComponentsWithStats(fg, connectivity=8)
    if count <= 1:  # no foreground pixel left
        return np.zeros((h, w), dtype=bool)
    largest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    fg = (labels == largest).astype(np.uint8)

    # Fill holes (the dark inside of the bottle is a hole when it falls on the other side of
    # the threshold): paint the component's outer contours filled.
    contours, _ = cv2.findContours(fg, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    cv2.drawContours(fg, contours, -1, 1, thickness=cv2.FILLED)
    return fg.astype(bool)


def compute_foreground(image: np.ndarray, kind: str = "object") -> Foreground:
    """Compute the foreground of one image and say whether it fell back to the whole image.

    Args:
        image: uint8 RGB ``(H, W, 3)`` (or grey ``(H, W)``; float images in [0, 1] are accepted).
        kind: ``"object"`` or ``"texture"`` (see :func:`category_kind`).

    Returns:
        The mask, the fallback flag and the object fraction.

    Raises:
        PRNError: An unknown ``kind`` or an image of unsupported shape or type.
    """
    _check_kind(kind)
    grey = _grey_uint8(image)
    if kind == "texture":
        return Foreground(np.ones(grey.shape, dtype=bool), fallback=False, fraction=1.0)
    mask = _object_mask(grey)
    fraction = float(mask.mean())
    if not MIN_FRACTION <= fraction <= MAX_FRACTION:
        return Foreground(np.ones(grey.shape, dtype=bool), fallback=True, fraction=fraction)
    return Foreground(mask, fallback=False, fraction=fraction)


def foreground_mask(image: np.ndarray, kind: str = "object") -> np.ndarray:
    """The foreground mask of one image: all True for textures, the object for objects.

    For objects: Otsu threshold of the Gaussian-blurred grey image, morphological open then
    close, largest connected component, holes filled; the background side of the threshold
    is the one most border pixels fall on. A degenerate result (under 1% or over 99% of the
    image) falls back to all True and logs a warning; use :func:`compute_foreground` to get
    the flag instead.

    Args:
        image: uint8 RGB ``(H, W, 3)`` (or grey ``(H, W)``).
        kind: ``"object"`` or ``"texture"``.

    Returns:
        bool ``(H, W)``.

    Raises:
        PRNError: An unknown ``kind`` or an unsupported image.
    """
    result = compute_foreground(image, kind)
    if result.fallback:
        logger.warning(
            "foreground mask covers %.1f%% of the image (outside %.0f-%.0f%%): "
            "using the whole image",
            100 * result.fraction, 100 * MIN_FRACTION, 100 * MAX_FRACTION,
        )
    return result.mask


class ForegroundCache:
    """Foreground masks cached on disk, one PNG per (image file, size, version, kind).

    The key hashes the absolute path, the file's size and modification time, the image
    shape, the kind and :data:`ALGORITHM_VERSION`: an edited image, a different resize or a
    new algorithm gets a new entry. Writes go to a temporary file in the cache folder and
    are renamed into place, so concurrent workers never read half a file. Textures are
    never cached (their mask is all True).

    Args:
        cache_dir: The cache folder (created on first write); ``None`` disables caching.
    """

    def __init__(self, cache_dir: str | Path | None):
        self.cache_dir = None if cache_dir is None else Path(cache_dir).expanduser().absolute()

    def key(self, sample_path: str | Path, image: np.ndarray, kind: str) -> str:
        """The hex cache key of a mask (see the class docstring).

        Raises:
            DataError: ``sample_path`` cannot be stat-ed.
        """
        path = Path(sample_path).expanduser().absolute()
        try:
            st = path.stat()
        except OSError as exc:
            reason = exc.strerror or exc
            message = f"{path}: cannot stat image for the foreground cache ({reason})"
            raise DataError(message) from exc
        h, w = np.asarray(image).shape[:2]
        text = f"{path}|{st.st_size}|{st.st_mtime_ns}|{h}x{w}|{kind}|v{ALGORITHM_VERSION}"
        return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]

    def path_for(self, sample_path: str | Path, image: np.ndarray, kind: str) -> Path | None:
        """Where the mask of this image is (or would be) cached; ``None`` without a cache folder."""
        if self.cache_dir is None:
            return None
        return self.cache_dir / f"{self.key(sample_path, image, kind)}.png"

    def get(self, sample_path: str | Path, image: np.ndarray, kind: str) -> np.ndarray:
        """The foreground mask of ``image`` (read from ``sample_path``), from the cache if present.

        Args:
            sample_path: The file the image was read from (identifies the cache entry).
            image: The image as it will be used (its shape is part of the key).
            kind: ``"object"`` or ``"texture"``.

        Returns:
            bool ``(H, W)``, equal to ``foreground_mask(image, kind)``.

        Raises:
            DataError: The image file cannot be stat-ed or the cache folder cannot be written.
            PRNError: An unknown ``kind``.
        """
        _check_kind(kind)
        hw = np.asarray(image).shape[:2]
        if kind == "texture" or self.cache_dir is None:
            return foreground_mask(image, kind)

        target = self.path_for(sample_path, image, kind)
        cached = self._read(target, hw)
        if cached is not None:
            return cached
        mask = foreground_mask(image, kind)
        self._write(target, mask)
        return mask

    @staticmethod
    def _read(target: Path, hw: tuple[int, int]) -> np.ndarray | None:
        # A missing, corrupt or wrong-size entry is a cache miss: it is recomputed and replaced.
        try:
            stored = read_mask(target)
        except DataError:
            return None
        return stored if stored.shape == tuple(hw) else None

    def _write(self, target: Path, mask: np.ndarray) -> None:
        ok, encoded = cv2.imencode(".png", mask.astype(np.uint8) * 255)
        if not ok:  # pragma: no cover - OpenCV always encodes a uint8 grey image
            raise DataError(f"{target}: cannot encode foreground mask")
        tmp = None
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".png", dir=target.parent)
            with os.fdopen(fd, "wb") as f:
                f.write(encoded.tobytes())
            os.replace(tmp, target)  # atomic on POSIX and Windows within one folder
        except OSError as exc:
            if tmp is not None and os.path.exists(tmp):
                os.unlink(tmp)
            raise DataError(
                f"{target.parent}: cannot write the foreground cache ({exc.strerror or exc}); "
                f"choose a writable cache folder or none"
            ) from exc
