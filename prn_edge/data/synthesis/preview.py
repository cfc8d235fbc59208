"""Contact sheet of a synthesized batch (``prn-train --preview``)."""
from __future__ import annotations

import math

import numpy as np

from prn_edge.data.synthesis.config import (
    KIND_EA,
    KIND_NAMES,
    KIND_NORMAL,
    KIND_SA,
    SynthesizedBatch,
)
from prn_edge.errors import PRNError, require

_KIND_COLOURS = {KIND_NORMAL: (80, 220, 80), KIND_EA: (255, 140, 0), KIND_SA: (80, 160, 255)}


def preview_grid(batch: SynthesizedBatch, columns: int = 8) -> np.ndarray:
    """Contact sheet of a synthesized batch: each sample beside its mask, labelled with its kind.

    Used by ``prn-train --preview`` to check the synthesis by eye before a long run.

    Args:
        batch: the batch to show.
        columns: samples per row (each sample takes two tiles: image, then mask).

    Returns:
        uint8 RGB array of shape ``(rows * H, c * 2 * W, 3)`` with ``c = min(columns, B)``
        and ``rows = ceil(B / c)``; unused tiles are black.

    Raises:
        PRNError: ``columns`` < 1 or an empty batch.
    """
    cv2 = require("cv2", "the synthesis preview")
    b, _, height, width = batch.images.shape
    if columns < 1 or b == 0:
        raise PRNError(f"preview_grid needs columns >= 1 and a non-empty batch, got columns={columns}, B={b}")
    cols = min(columns, b)
    rows = math.ceil(b / cols)
    images = (batch.images.detach().float().clamp(0, 1) * 255).round().byte()
    images = images.permute(0, 2, 3, 1).cpu().numpy()                     # (B, H, W, 3)
    masks = (batch.masks.detach().float()[:, 0] > 0.5).cpu().numpy()      # (B, H, W)
    kinds = batch.kind.tolist()
    betas = batch.beta.tolist()
    het = batch.is_heterologous.tolist()
    grid = np.zeros((rows * height, cols * 2 * width, 3), dtype=np.uint8)
    scale = max(0.35, height / 512)
    for i in range(b):
        r, c = divmod(i, cols)
        y, x = r * height, c * 2 * width
        tile = np.ascontiguousarray(images[i])
        label = KIND_NAMES[kinds[i]]
        if kinds[i] == KIND_SA:
            label += "-HEA" if het[i] else "-HOA"
        if kinds[i] != KIND_NORMAL:
            label += f" b={betas[i]:.2f}"
        origin = (4, int(16 * scale / 0.5))
        cv2.putText(tile, label, origin, cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 3, cv2.LINE_AA)
        cv2.putText(tile, label, origin, cv2.FONT_HERSHEY_SIMPLEX, scale, _KIND_COLOURS[kinds[i]], 1,
                    cv2.LINE_AA)
        grid[y:y + height, x:x + width] = tile
        grid[y:y + height, x + width:x + 2 * width] = masks[i][..., None] * np.uint8(255)
    return grid
