"""Reading image files: the one extension list, folder listing, and decoding to uint8 pixels.

Every image file the toolkit reads goes through here: the dataset loader (training and
evaluation), the export calibration set, the inspection loop's folder source and the demo.
So a file gives the same pixels whether it is evaluated or inspected: one decoder (Python
reads the bytes, ``cv2.imdecode`` decodes them as stored, so non-ASCII paths work and a
missing file is told from a corrupt one; no EXIF rotation, so masks stay aligned) and one
conversion (:func:`to_rgb`: 16-bit, float, grey, grey+alpha, BGR and BGRA to uint8 RGB).

Every problem is a one-line :class:`~prn_edge.errors.DataError` that names the file.
numpy + OpenCV only (no torch).
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from prn_edge.errors import DataError, PRNError, require

__all__ = [
    "CHANNEL_ORDERS",
    "IMAGE_EXTENSIONS",
    "decode_image",
    "is_image",
    "list_images",
    "read_image",
    "read_mask",
    "to_rgb",
    "to_uint8",
]

#: Image file extensions the toolkit reads (compared lower-case: ``.PNG`` is an image).
IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}
)

#: Channel orders :func:`read_image` and :func:`to_rgb` understand.
CHANNEL_ORDERS = ("RGB", "BGR")


def _cv2():
    return require("cv2", "reading images")


# --------------------------------------------------------------------------------------
# Finding image files


def _hidden(name: str) -> bool:
    # .DS_Store, macOS "._x.png" resource forks, .ipynb_checkpoints, .git: never data.
    return name.startswith(".")


def is_image(path: str | Path) -> bool:
    """Whether ``path`` is an image file the toolkit reads: an existing file, not hidden
    (no leading dot), with an extension in :data:`IMAGE_EXTENSIONS` (any case)."""
    path = Path(path)
    return path.suffix.lower() in IMAGE_EXTENSIONS and not _hidden(path.name) and path.is_file()


def list_images(folder: str | Path, *, recursive: bool = False) -> list[Path]:
    """The image files of ``folder`` (see :func:`is_image`), sorted so the order never
    depends on the filesystem.

    Args:
        folder: The folder to list.
        recursive: Also list sub-folders (following links, each real folder once); hidden
            sub-folders (``.git``, ``.ipynb_checkpoints``) are skipped. ``folder`` itself may
            lie under a hidden folder (``~/.cache/...``).

    Returns:
        Sorted by name (``recursive=False``) or by path below ``folder`` (``recursive=True``).

    Raises:
        DataError: ``folder`` is missing, is not a folder, or cannot be listed.
    """
    folder = Path(folder)
    if not folder.is_dir():
        problem = "is not a folder" if folder.exists() else "does not exist"
        raise DataError(f"{folder}: image folder {problem}")
    try:
        if not recursive:
            return sorted((p for p in folder.iterdir() if is_image(p)), key=lambda p: p.name)
        found: list[Path] = []
        seen: set[str] = set()
        for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
            real = os.path.realpath(dirpath)
            if real in seen:   # a link back up the tree: list each real folder once
                dirnames[:] = []
                continue
            seen.add(real)
            dirnames[:] = [d for d in dirnames if not _hidden(d)]
            base = Path(dirpath)
            found.extend(p for p in (base / f for f in filenames) if is_image(p))
    except OSError as exc:
        raise DataError(f"{folder}: cannot list images ({exc.strerror or exc})") from exc
    return sorted(found, key=lambda p: p.relative_to(folder).parts)


# --------------------------------------------------------------------------------------
# Pixel conversion (shared with camera frames: prn_edge.imaging.preprocess.prepare_frame)


def to_uint8(image: np.ndarray) -> np.ndarray:
    """8-bit pixels: 16-bit keeps its top 8 bits (rounded), float must lie in [0, 1].

    Raises:
        PRNError: another pixel type, or a float image with non-finite values or values outside [0, 1].
    """
    if image.dtype == np.uint8:
        return image
    if image.dtype == np.uint16:
        return ((image.astype(np.uint32) + 128) // 257).astype(np.uint8)
    if image.dtype in (np.float32, np.float64):
        # Refused rather than repaired: a NaN frame is a broken camera, and a float frame in
        # 0..255 would be clipped to white without a word.
        if not np.isfinite(image).all():
            raise PRNError("the image has NaN or infinite pixel values")
        low, high = float(image.min()), float(image.max())
        if low < 0.0 or high > 1.0:
            raise PRNError(f"float images must hold values in [0, 1], this one spans {low:g}..{high:g} "
                           "(give 0..255 pixels as uint8)")
        return (image * 255.0 + 0.5).astype(np.uint8)
    raise PRNError(f"unsupported pixel type {image.dtype} (use 8- or 16-bit images)")


def to_rgb(image: np.ndarray, order: str = "BGR") -> np.ndarray:
    """Any OpenCV image (grey, grey+alpha, BGR, BGRA; 8/16-bit or float) as uint8 HxWx3 RGB.

    ``order`` is the channel order of a 3- or 4-channel ``image`` (OpenCV decodes and
    captures BGR). An alpha channel is dropped, not composited: cameras and datasets store
    opaque pixels. This is the only pixel-format conversion of files and frames.
    """
    cv2 = _cv2()
    image = to_uint8(image)
    if image.ndim == 3 and image.shape[2] in (1, 2):
        image = image[:, :, 0]
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
    if image.ndim != 3 or image.shape[2] not in (3, 4):
        raise PRNError(f"expected a grey, 3- or 4-channel image, got shape {image.shape}")
    if order == "RGB":
        return np.ascontiguousarray(image[..., :3])
    if order != "BGR":
        raise PRNError(f"unknown channel order {order!r}: BGR or RGB")
    code = cv2.COLOR_BGRA2RGB if image.shape[2] == 4 else cv2.COLOR_BGR2RGB
    return cv2.cvtColor(image, code)


# --------------------------------------------------------------------------------------
# Reading files


def decode_image(path: str | Path) -> np.ndarray:
    """Decode a file as stored (depth, channels; OpenCV's BGR order), without EXIF rotation.

    Reads the bytes with Python and decodes them with ``cv2.imdecode``: unlike
    ``cv2.imread`` this tells a missing file from a corrupt one and accepts non-ASCII paths.

    Raises:
        DataError: ``cannot read image (...)`` for a missing or unreadable file (or a
            folder); ``cannot decode image (...)`` for an empty, truncated or non-image file.
    """
    cv2 = _cv2()
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except OSError as exc:  # missing, a folder, no permission
        raise DataError(f"{path}: cannot read image ({exc.strerror or exc})") from exc
    array = cv2.imdecode(data, cv2.IMREAD_UNCHANGED) if data.size else None
    if array is None:
        raise DataError(f"{path}: cannot decode image (empty, truncated or not an image)")
    return array


def read_image(path: str | Path, order: str = "RGB") -> np.ndarray:
    """Read an image file as uint8 ``(H, W, 3)`` at its native size.

    Grey is replicated to three channels, alpha is dropped, 16-bit keeps its top 8 bits
    (rounded), all through :func:`to_rgb`. ``order="BGR"`` gives exactly the same pixels
    with the channels swapped (an OpenCV frame, as the inspection loop's sources deliver).

    Raises:
        DataError: The file is missing, unreadable, corrupt or of an unsupported pixel type.
        PRNError: An unknown ``order``.
    """
    if order not in CHANNEL_ORDERS:
        raise PRNError(f"unknown channel order {order!r}: RGB or BGR")
    native = decode_image(path)
    try:
        rgb = to_rgb(native, order="BGR")
    except PRNError as exc:
        raise DataError(f"{path}: {exc}") from exc
    return rgb if order == "RGB" else np.ascontiguousarray(rgb[..., ::-1])


def read_mask(path: str | Path) -> np.ndarray:
    """Read a mask file as bool ``(H, W)`` at its native size: a pixel is set where it is > 127.

    The stored values are compared (a 16-bit 0 / 65535 mask and an 8-bit 0 / 255 mask both
    work); a colour-saved mask is set where any colour channel is, and alpha is ignored.

    Raises:
        DataError: The file is missing, unreadable or corrupt.
    """
    array = decode_image(path)
    if array.ndim == 3:
        colour = array[:, :, :3] if array.shape[2] >= 3 else array[:, :, :1]   # drop alpha
        array = colour.max(axis=2)
    return np.ascontiguousarray(array > 127)
