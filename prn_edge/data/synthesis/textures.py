"""DTD textures for heterologous simulated anomalies (HEA), loaded once at the training size."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from prn_edge.errors import DataError
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
