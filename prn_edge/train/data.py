"""Everything a training run reads from disk, loaded once into memory.

A category's normal training images are split (seeded) into the images PRN trains on
(prototypes and gradient steps) and a few held-out images that calibrate the decision
threshold; the seen anomalies are drawn from the test split and recorded so evaluation
can leave them out.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from prn_edge.data.foreground import KINDS, ForegroundCache, category_kind
from prn_edge.data.mvtec import MVTecCategory, Sample, load_sample, scan_category, split_seen_anomalies
from prn_edge.data.synthesis import load_textures
from prn_edge.data.synthesis.textures import BUILTIN_TEXTURES, DEFAULT_BUILTIN_COUNT, builtin_textures
from prn_edge.errors import DataError
from prn_edge.model.deployable import to_unit_float

log = logging.getLogger(__name__)


@dataclass
class TrainingData:
    """Tensors on the CPU; uint8 images (N, 3, S, S) keep memory 4x below float."""

    category: MVTecCategory
    kind: str                      # "object" or "texture" (foreground rule)
    train_names: list[str]         # relative paths of the training normals
    calibration_names: list[str]   # held-out normals for the threshold
    seen_names: list[str]          # seen anomalies (removed from evaluation)
    normal: torch.Tensor           # (N, 3, S, S) uint8
    foreground: torch.Tensor       # (N, 1, S, S) bool
    calibration: torch.Tensor      # (M, 3, S, S) uint8
    calibration_foreground: torch.Tensor  # (M, 1, S, S) bool: where validation anomalies may go
    seen_images: torch.Tensor      # (A, 3, S, S) float [0, 1]
    seen_masks: torch.Tensor       # (A, 1, S, S) float {0, 1}
    textures: torch.Tensor | None  # (T, 3, S, S) uint8: DTD or the built-in photos
    texture_dir: Path | str | None  # the DTD folder, or BUILTIN_TEXTURES

    def record(self) -> dict:
        """Plain-data provenance for the checkpoint."""
        return {
            "root": str(self.category.root), "category": self.category.name, "kind": self.kind,
            "num_train_normal": len(self.train_names), "calibration_images": self.calibration_names,
            "seen_anomalies": self.seen_names,
            "textures": None if self.texture_dir is None else str(self.texture_dir),
            "num_textures": 0 if self.textures is None else int(self.textures.shape[0]),
        }


def relative_name(sample: Sample, root: Path) -> str:
    """``train/good/000.png``-style name: how checkpoints refer to samples."""
    return sample.path.relative_to(root).as_posix()


def find_textures(data_dir: Path) -> Path | None:
    """A ``dtd`` folder beside the data folder or one or two levels up (``../shared/data`` layout)."""
    for parent in (data_dir.parent, data_dir.parent.parent, data_dir.parent.parent.parent):
        candidate = parent / "dtd"
        if candidate.is_dir():
            return candidate
    return None


def _stack_images(images: list[np.ndarray]) -> torch.Tensor:
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()  # (N, 3, S, S)


def load_training_data(data_dir: str | Path, *, image_size: int = 256, num_seen: int = 10, seed: int = 0,
                       calibration_fraction: float = 0.1, textures: str | Path | None = None,
                       texture_limit: int | None = None, cache_dir: str | Path | None = None,
                       progress=None, kind: str | None = None) -> TrainingData:
    """Read a category for training.

    Args:
        data_dir: MVTec-layout category folder.
        image_size: training resolution.
        num_seen: seen anomalies drawn (seeded) from the test split; 0 disables EA.
        seed: seed of the seen split and the calibration split.
        calibration_fraction: share of train/good held out for the threshold (at least 1 image).
        textures: DTD folder, or ``"builtin"`` (crops of scikit-image's CC0 photos,
            :func:`~prn_edge.data.synthesis.textures.builtin_textures`); None: a ``dtd`` folder
            beside the data, and if there is none no heterologous SA.
        texture_limit: keep at most this many textures.
        cache_dir: foreground mask cache folder (None: compute every time, write nothing).
        progress: optional callable wrapping an iterable (a progress bar).
        kind: foreground rule, ``"object"`` or ``"texture"`` (None: from the category name,
            :func:`~prn_edge.data.foreground.category_kind`; a texture is foreground everywhere).

    Raises:
        DataError: a missing folder, an unreadable image, a wrong-size mask, an empty split.
    """
    root = Path(data_dir).expanduser().absolute()   # sample paths are absolute: names are taken relative to it
    category = scan_category(root)
    kind = category_kind(category.name) if kind is None else kind
    if kind not in KINDS:
        raise DataError(f"foreground kind must be one of {', '.join(KINDS)}, got {kind!r}")
    wrap = progress or (lambda it, **_: it)

    normals = list(category.train)
    if not 0 <= calibration_fraction < 1:
        raise DataError(f"calibration fraction must be in [0, 1), got {calibration_fraction}")
    n_cal = max(1, round(calibration_fraction * len(normals))) if calibration_fraction > 0 else 0
    if len(normals) - n_cal < 1:
        raise DataError(f"{root / 'train' / 'good'}: {len(normals)} normal image(s) is too few to hold out "
                        f"{n_cal} for calibration and still train")
    order = torch.randperm(len(normals), generator=torch.Generator().manual_seed(seed)).tolist()
    cal_samples = sorted((normals[i] for i in order[:n_cal]), key=lambda s: s.path)
    train_samples = sorted((normals[i] for i in order[n_cal:]), key=lambda s: s.path)

    seen, _ = split_seen_anomalies(category.test, n=num_seen, seed=seed)

    cache = ForegroundCache(cache_dir)  # None: computes without writing
    images, masks = [], []
    for sample in wrap(train_samples, desc="loading normal images"):
        image, _ = load_sample(sample, image_size)
        images.append(image)
        masks.append(cache.get(sample.path, image, kind))
    cal_images = [load_sample(s, image_size)[0] for s in cal_samples]
    cal_masks = [cache.get(s.path, image, kind) for s, image in zip(cal_samples, cal_images)]
    seen_pairs = [load_sample(s, image_size) for s in seen]

    texture_tensor = None
    if textures == BUILTIN_TEXTURES:
        texture_dir = BUILTIN_TEXTURES
        texture_tensor = builtin_textures(size=image_size, count=texture_limit or DEFAULT_BUILTIN_COUNT, seed=seed)
    else:
        texture_dir = Path(textures) if textures is not None else find_textures(root)
        if texture_dir is not None:
            texture_tensor = load_textures(texture_dir, size=image_size, limit=texture_limit)
        else:
            log.warning("no DTD texture folder found beside %s: simulated anomalies will all be homologous "
                        "(pass --textures DIR, or --textures builtin for crops of scikit-image's photos)", root)

    return TrainingData(
        category=category, kind=kind,
        train_names=[relative_name(s, root) for s in train_samples],
        calibration_names=[relative_name(s, root) for s in cal_samples],
        seen_names=[relative_name(s, root) for s in seen],
        normal=_stack_images(images),
        foreground=torch.from_numpy(np.stack(masks))[:, None],
        calibration=_stack_images(cal_images) if cal_images else torch.empty(0, 3, image_size, image_size,
                                                                               dtype=torch.uint8),
        calibration_foreground=(torch.from_numpy(np.stack(cal_masks))[:, None] if cal_masks
                                else torch.empty(0, 1, image_size, image_size, dtype=torch.bool)),
        seen_images=to_unit_float(_stack_images([i for i, _ in seen_pairs])) if seen_pairs
        else torch.empty(0, 3, image_size, image_size),
        seen_masks=(torch.from_numpy(np.stack([m for _, m in seen_pairs]))[:, None].float()) if seen_pairs
        else torch.empty(0, 1, image_size, image_size),
        textures=texture_tensor, texture_dir=texture_dir)
