"""MVTec-layout datasets: scanning a category, loading images and masks, the seen-anomaly split.

Layout (MVTec AD, and every dataset under ``shared/data``)::

    <root>/train/good/*.png
    <root>/test/good/*.png
    <root>/test/<defect>/*.png
    <root>/ground_truth/<defect>/<stem>_mask.png

Any common image extension is accepted, case-insensitively (:data:`IMAGE_EXTENSIONS`).
Scanning only lists files; pixels are read by :func:`load_image` / :func:`load_mask`
(or :func:`load_sample`, which reads the image once for both). Listing, decoding and pixel
conversion are :mod:`prn_edge.imaging.read`'s, so the inspection loop sees the same pixels.
Every problem with the data is a one-line :class:`~prn_edge.errors.DataError` that names
the file or folder.

This module needs numpy and OpenCV only (no torch), so the edge runtime can use it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from prn_edge.errors import DataError, PRNError
from prn_edge.imaging.preprocess import resize_image
from prn_edge.imaging.read import IMAGE_EXTENSIONS, list_images, read_image, read_mask

__all__ = [
    "IMAGE_EXTENSIONS",
    "Sample",
    "MVTecCategory",
    "scan_category",
    "load_image",
    "load_mask",
    "load_sample",
    "split_seen_anomalies",
]

GOOD = "good"


@dataclass(frozen=True)
class Sample:
    """One image of a category.

    Attributes:
        path: The image file.
        label: 0 for good, 1 for defective.
        defect_type: ``"good"`` or the name of the ``test/`` sub-folder.
        mask_path: ``ground_truth/<type>/<stem>_mask.*`` for defective samples; ``None`` for good.
    """

    path: Path
    label: int
    defect_type: str
    mask_path: Path | None = None


@dataclass
class MVTecCategory:
    """A scanned category: its folder, name and the train / test samples in sorted order."""

    root: Path
    name: str
    train: list[Sample] = field(default_factory=list)
    test: list[Sample] = field(default_factory=list)

    @property
    def defect_types(self) -> list[str]:
        """Sorted names of the defect types that have at least one test image."""
        return sorted({s.defect_type for s in self.test if s.label == 1})


# --------------------------------------------------------------------------------------
# Scanning



def _require_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        problem = "is not a folder" if path.exists() else "does not exist"
        raise DataError(
            f"{path}: {what} {problem} (expected the MVTec layout: train/good, test/<type>)"
        )
    return path


def _mask_index(gt_dir: Path) -> dict[str, list[Path]]:
    """One defect type's masks keyed by file stem (``000_mask``); empty if the folder is missing."""
    index: dict[str, list[Path]] = {}
    if gt_dir.is_dir():
        for p in list_images(gt_dir):
            index.setdefault(p.stem, []).append(p)
    return index


def _find_mask(index: dict[str, list[Path]], gt_dir: Path, image: Path) -> Path:
    """The mask of a defective test image: ``gt_dir/<stem>_mask.<any image extension>``."""
    want = f"{image.stem}_mask"
    found = index.get(want, [])
    if not found:
        raise DataError(f"{image}: defect image has no mask (expected {gt_dir / want}.png)")
    if len(found) > 1:
        # Two masks for one image would make the label depend on which one we picked.
        names = ", ".join(p.name for p in found)
        raise DataError(f"{image}: several masks in {gt_dir} ({names}); keep one")
    return found[0]


def scan_category(root: str | Path) -> MVTecCategory:
    """List the train and test images of one MVTec-layout category.

    Only file names are read (no pixels). Samples are sorted by defect type, then by
    file name, so the result is the same on every filesystem. ``test/good`` may be absent
    (then the test split holds defects only); ``ground_truth/good`` is never read.

    Args:
        root: The category folder (e.g. ``mvtec_ad/bottle``).

    Returns:
        The category; ``name`` is the folder name.

    Raises:
        DataError: ``root``, ``train/good`` or ``test`` missing; no image in ``train/good``;
            a defect image without ``ground_truth/<type>/<stem>_mask.*`` (or with several).
    """
    root = Path(root).expanduser().absolute()
    _require_dir(root, "category folder")
    train_dir = _require_dir(root / "train" / GOOD, "training folder")
    test_dir = _require_dir(root / "test", "test folder")

    train = [Sample(p, 0, GOOD) for p in list_images(train_dir)]
    if not train:
        exts = " ".join(sorted(IMAGE_EXTENSIONS))
        raise DataError(f"{train_dir}: no training image ({exts})")

    test: list[Sample] = []
    for type_dir in sorted((d for d in test_dir.iterdir() if d.is_dir()), key=lambda d: d.name):
        if type_dir.name.startswith("."):
            continue
        kind = type_dir.name
        if kind == GOOD:
            test.extend(Sample(path, 0, GOOD) for path in list_images(type_dir))
            continue
        gt_dir = root / "ground_truth" / kind
        masks = _mask_index(gt_dir)
        for path in list_images(type_dir):
            test.append(Sample(path, 1, kind, _find_mask(masks, gt_dir, path)))
    return MVTecCategory(root=root, name=root.name, train=train, test=test)


# --------------------------------------------------------------------------------------
# Loading


def _resize(array: np.ndarray, size: int | None, interpolation: str = "auto") -> np.ndarray:
    """Resize to ``size x size`` with the runtime's policy (one home for resizing)."""
    return array if size is None else resize_image(array, size, "stretch", interpolation=interpolation)


def _check_size(size: int | None) -> None:
    if size is not None and (not isinstance(size, (int, np.integer)) or size < 1):
        raise PRNError(f"image size must be a positive integer or None, got {size!r}")


def load_image(path: str | Path, size: int | None = 256) -> np.ndarray:
    """Read an image as RGB uint8, resized to ``size x size``.

    Grey images are replicated to three channels, the alpha of RGBA is dropped and
    16-bit images keep their top 8 bits. Shrinking uses ``INTER_AREA`` and enlarging
    ``INTER_LINEAR`` (per axis when one axis shrinks and the other grows).

    Args:
        path: The image file.
        size: The output side in pixels; ``None`` keeps the native size.

    Returns:
        ``(size, size, 3)`` uint8 RGB (``(H, W, 3)`` when ``size`` is ``None``).

    Raises:
        DataError: The file is missing, unreadable, corrupt or of an unsupported type.
    """
    _check_size(size)
    return np.ascontiguousarray(_resize(read_image(Path(path), order="RGB"), size))


def _resize_mask(mask: np.ndarray, size: int | None) -> np.ndarray:
    """Nearest-neighbour resize that never erases a whole defect.

    A defect of a few native pixels can fall between the nearest-neighbour samples when
    shrinking (two magnetic-tile "uneven" masks of 1 and 3 pixels do at 256): the sample
    would then be labelled defective with an empty mask. In that case each output pixel
    that covers any defect pixel is marked instead.
    """
    out = _resize(mask.astype(np.uint8), size, "nearest").astype(bool)
    if mask.any() and not out.any():
        out = _resize(mask.astype(np.float32), size, "area") > 0
    return out


def load_mask(path: str | Path, image_hw: tuple[int, int], size: int | None = 256) -> np.ndarray:
    """Read a ground-truth mask as a boolean array, resized to ``size x size``.

    The native mask is binarised (``> 127``) before resizing with ``INTER_NEAREST``; if that
    would erase every defect pixel of a non-empty mask, the covering pixels are kept
    instead (see :func:`_resize_mask`).

    Args:
        path: The mask file (0 / 255; any depth, grey or colour).
        image_hw: The native ``(height, width)`` of the mask's image; the mask must match it.
        size: The output side in pixels; ``None`` keeps the native size.

    Returns:
        ``(size, size)`` bool (``(H, W)`` when ``size`` is ``None``).

    Raises:
        DataError: The file is missing or corrupt, or its size differs from ``image_hw``.
    """
    _check_size(size)
    path = Path(path)
    native = read_mask(path)
    hw = tuple(int(v) for v in native.shape[:2])
    if hw != tuple(int(v) for v in image_hw):
        raise DataError(
            f"{path}: mask is {hw[1]}x{hw[0]} (WxH) but its image is "
            f"{int(image_hw[1])}x{int(image_hw[0])}; masks must have the native image size"
        )
    return np.ascontiguousarray(_resize_mask(native, size))


def load_sample(sample: Sample, size: int | None = 256) -> tuple[np.ndarray, np.ndarray]:
    """Read a sample's image and mask (decoding the image once).

    Args:
        sample: A sample from :func:`scan_category`.
        size: The output side in pixels; ``None`` keeps the native size.

    Returns:
        ``(image, mask)``: uint8 RGB ``(size, size, 3)`` and bool ``(size, size)``; the mask is
        all False for good samples.

    Raises:
        DataError: As :func:`load_image` and :func:`load_mask`.
    """
    _check_size(size)
    native = read_image(Path(sample.path), order="RGB")
    image = np.ascontiguousarray(_resize(native, size))
    if sample.mask_path is None:
        mask = np.zeros(image.shape[:2], dtype=bool)
    else:
        mask = load_mask(sample.mask_path, native.shape[:2], size)
    return image, mask


# --------------------------------------------------------------------------------------
# Seen anomalies


def split_seen_anomalies(
    test: list[Sample], n: int = 10, seed: int = 0
) -> tuple[list[Sample], list[Sample]]:
    """Draw the ``n`` seen anomalies from the test split and remove them from evaluation.

    The DRA "general" protocol (docs/model.md, "Anomaly synthesis"): the seen defects train the model, so
    they must never be scored. The draw is spread across defect types: the types are
    shuffled, each type's images are shuffled, and images are taken round-robin over the
    types (a type that runs out is skipped), so every type is represented as evenly as
    ``n`` allows. Inputs are sorted by (type, file name) first: the result depends on the
    seed and the file names only, not on the filesystem or the dataset's location.

    Args:
        test: The test samples (e.g. ``scan_category(root).test``).
        n: How many defective samples to draw (0 draws none).
        seed: The seed of the draw.

    Returns:
        ``(seen, evaluation)``: ``seen`` in draw order; ``evaluation`` is ``test`` in its
        original order without the seen samples (all good samples stay).

    Raises:
        DataError: ``n`` is negative or larger than the number of defective samples.
    """
    defects = sorted(
        (s for s in test if s.label == 1), key=lambda s: (s.defect_type, s.path.name, str(s.path))
    )
    # The test folder, for the error messages.
    where = (defects or test)[0].path.parent.parent if test else "test split"
    if not isinstance(n, (int, np.integer)) or n < 0:
        raise DataError(f"{where}: the number of seen anomalies must be an integer >= 0, got {n!r}")
    if n > len(defects):
        raise DataError(
            f"{where}: cannot draw {n} seen anomalies, only {len(defects)} defective images "
            f"(lower the number of seen anomalies)"
        )

    rng = np.random.default_rng(seed)
    types = sorted({s.defect_type for s in defects})
    types = [types[i] for i in rng.permutation(len(types))]
    queues = {}
    for t in types:
        members = [s for s in defects if s.defect_type == t]
        queues[t] = [members[i] for i in rng.permutation(len(members))]

    seen: list[Sample] = []
    while len(seen) < n:
        for t in types:
            if len(seen) == n:
                break
            if queues[t]:
                seen.append(queues[t].pop(0))

    chosen = set(seen)
    evaluation = [s for s in test if s not in chosen]
    return seen, evaluation
