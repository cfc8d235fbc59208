"""Textures for heterologous simulated anomalies (HEA), loaded once at the training size.

Two sources: a DTD folder (:func:`load_textures`), or, for a user who has none, crops of the
CC0 / public-domain photos that scikit-image ships in its wheel (:func:`builtin_textures`:
gravel, grass, coffee beans, a cat, a camera man, a rocket; no download).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from prn_edge.errors import DataError, require
from prn_edge.imaging.preprocess import resize_image
from prn_edge.imaging.read import IMAGE_EXTENSIONS, list_images, read_image
from prn_edge.model.deployable import to_unit_float


def load_textures(folder: str | Path, size: int = 256, limit: int | None = None,
                  dtype: torch.dtype = torch.uint8) -> torch.Tensor:
    """Load DTD textures from a folder tree, resized (shorter side) and centre-cropped to ``size``.

    Files are sorted by path, so the result is the same on every machine. With ``limit``,
    an evenly spaced subset of the sorted list is kept, which spans the DTD categories
    (DTD sorts by category) instead of taking the first few.

    Args:
        folder: root of the texture images (searched recursively; the image extensions of
            :data:`prn_edge.imaging.read.IMAGE_EXTENSIONS`, hidden files skipped).
        size: output side in pixels (the training image size).
        limit: keep at most this many textures (None: all).
        dtype: ``torch.uint8`` (default, values 0..255: the full DTD is 1.1 GB at 256x256
            instead of 4.4 GB as float32) or a float dtype (values in [0, 1]).

    Returns:
        ``(T, 3, size, size)`` RGB tensor.

    Raises:
        DataError: no readable images under ``folder``, or an unreadable file.
    """
    root = Path(folder)
    if not root.is_dir():
        raise DataError(f"texture folder {root} does not exist (CLI: --textures; API: load_textures(folder))")
    files = list_images(root, recursive=True)
    if not files:
        raise DataError(f"no texture images ({' '.join(sorted(IMAGE_EXTENSIONS))}) under {root}: point "
                        "--textures at the DTD 'images' folder")
    if limit is not None:
        if limit < 1:
            raise DataError(f"load_textures: limit must be >= 1, got {limit}")
        if limit < len(files):
            keep = np.linspace(0, len(files) - 1, limit).round().astype(int)
            files = [files[i] for i in keep]
    out = np.empty((len(files), size, size, 3), dtype=np.uint8)
    for i, path in enumerate(files):
        # The shared reader (imdecode, as every image file) and resize policy: shorter side
        # to ``size``, centre square.
        out[i] = resize_image(read_image(path, order="RGB"), size, "center-crop")
    textures = torch.from_numpy(out).permute(0, 3, 1, 2).contiguous()    # (T, 3, size, size)
    if dtype == torch.uint8:
        return textures
    return to_unit_float(textures).to(dtype)


#: The photos of scikit-image cut into built-in textures, with their licence (docstrings of skimage.data).
BUILTIN_TEXTURE_SOURCES = {
    "gravel": "CC0", "grass": "CC0", "coffee": "CC0 (Rachel Michetti)", "chelsea": "CC0 (Stefan van der Walt)",
    "camera": "CC0 (Lav Varshney)", "rocket": "public domain (SpaceX)",
}
BUILTIN_TEXTURES = "builtin"        # what --textures takes for them
DEFAULT_BUILTIN_COUNT = 48


def sample_photo(name: str) -> np.ndarray:
    """A scikit-image sample photo as uint8 RGB (bundled with its wheel: no network)."""
    data = require("skimage.data", "the built-in photos (pip install scikit-image)")
    image = np.asarray(getattr(data, name)())
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    return np.ascontiguousarray(image[:, :, :3].astype(np.uint8))


def texture_crop(photo: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """A random square crop of ``photo`` (a third of its shorter side or more), resized to ``size``."""
    h, w = photo.shape[:2]
    side = int(rng.integers(min(h, w) // 3, min(h, w) + 1))
    top, left = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
    return resize_image(np.ascontiguousarray(photo[top:top + side, left:left + side]), size, "stretch",
                        interpolation="area")


def builtin_textures(size: int = 256, count: int = DEFAULT_BUILTIN_COUNT, seed: int | np.random.SeedSequence = 0,
                     exclude: tuple[str, ...] = ()) -> torch.Tensor:
    """``count`` seeded crops of :data:`BUILTIN_TEXTURE_SOURCES` (in turn), ``(T, 3, size, size)`` uint8.

    Raises:
        DataError: ``count`` below 1 or every source excluded.
        PRNError: scikit-image missing (one line naming the package).
    """
    names = [n for n in BUILTIN_TEXTURE_SOURCES if n not in exclude]
    if count < 1 or not names:
        raise DataError(f"builtin_textures needs count >= 1 and a source left, got count={count}, exclude={exclude}")
    photos = {n: sample_photo(n) for n in names}
    rng = np.random.default_rng(seed)
    crops = np.stack([texture_crop(photos[names[i % len(names)]], size, rng) for i in range(count)])
    return torch.from_numpy(crops).permute(0, 3, 1, 2).contiguous()
