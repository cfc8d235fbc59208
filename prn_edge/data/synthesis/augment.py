"""Image augmentations of the synthesis: photometric ops (Kornia), the affine warp, grid shuffle.

* Aug1 of docs/model.md (``EA_OPS``) and the colour ops of the SA source (``COLOUR_OPS``): each
  maps ``(n, 3, H, W)`` and a per-sample ``u (n,)`` in [0, 1) to the op's parameter range,
  so one uniform per op slot keeps the random stream fixed.
* Aug2 (:func:`_warp`): images and masks warped together by pixel-space affine matrices.
* HOA grid shuffle (:func:`_grid_shuffle`), which Kornia does not have.
"""
from __future__ import annotations

import math
from collections.abc import Callable

import torch

from prn_edge.data.synthesis.sampling import _rand, _random_op_order
from prn_edge.errors import require

kornia = require("kornia", "anomaly synthesis")


def _v(u: torch.Tensor, low: float, high: float) -> torch.Tensor:
    return low + (high - low) * u


def _autocontrast(x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    # Per image and channel min-max stretch (what kornia's RandomAutoContrast applies).
    return kornia.enhance.normalize_min_max(x).clamp(0.0, 1.0)


_EA_OP_FNS: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "equalize": lambda x, u: kornia.enhance.equalize(x),
    # PIL-style threshold in [32, 128] / 255: pixels at or above it are inverted.
    "solarize": lambda x, u: kornia.enhance.solarize(x, _v(u, 32 / 255, 128 / 255)),
    "posterize": lambda x, u: kornia.enhance.posterize(x, (2 + (u * 5).long()).clamp(max=6)),  # 2..6 bits
    "sharpness": lambda x, u: kornia.enhance.sharpness(x, _v(u, 0.5, 3.0)),
    "autocontrast": _autocontrast,
    "invert": lambda x, u: kornia.enhance.invert(x),
    "gamma": lambda x, u: kornia.enhance.adjust_gamma(x, torch.exp2(_v(u, -1.0, 1.0))),  # 0.5..2
}

_COLOUR_OP_FNS: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "brightness": lambda x, u: kornia.enhance.adjust_brightness(x, _v(u, -0.3, 0.3)),
    "contrast": lambda x, u: kornia.enhance.adjust_contrast(x, _v(u, 0.5, 1.5)),
    "saturation": lambda x, u: kornia.enhance.adjust_saturation(x, _v(u, 0.0, 2.0)),
    "hue": lambda x, u: kornia.enhance.adjust_hue(x, _v(u, -math.pi, math.pi)),
    "gamma": lambda x, u: kornia.enhance.adjust_gamma(x, torch.exp2(_v(u, -1.0, 1.0))),
}


def _apply_random_ops(images: torch.Tensor, names: tuple[str, ...],
                      fns: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]],
                      per_sample: int, generator: torch.Generator) -> torch.Tensor:
    """Apply ``per_sample`` distinct random ops of ``names`` to each image, in random order.

    Each op runs once per slot on the sub-batch that chose it (a batched Kornia call), so
    every image costs ``per_sample`` ops, not ``len(names)``.
    """
    n, device = images.shape[0], images.device
    order = _random_op_order(generator, n, len(names), per_sample, device)   # (n, k)
    params = _rand(generator, (n, per_sample), device, images.dtype)         # (n, k)
    out = images.clone()
    for slot in range(per_sample):
        for op_id, name in enumerate(names):
            sel = (order[:, slot] == op_id).nonzero().squeeze(1)
            if sel.numel():
                result = fns[name](out.index_select(0, sel), params[sel, slot])
                out.index_copy_(0, sel, result.clamp(0.0, 1.0))
    return out


# --------------------------------------------------------------------------------------
# Geometry


def _warp(images: torch.Tensor, masks: torch.Tensor, matrix: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Warp images and masks together with ``(n, 3, 3)`` pixel-space affine matrices (zeros outside)."""
    height, width = images.shape[-2:]
    both = torch.cat([images, masks], dim=1)                              # (n, 4, H, W)
    warped = kornia.geometry.transform.warp_affine(both, matrix[:, :2].to(both.dtype), (height, width),
                                                   mode="bilinear", padding_mode="zeros",
                                                   align_corners=True)
    return warped[:, :3], warped[:, 3:]


def _grid_shuffle(images: torch.Tensor, grid: torch.Tensor, keys: torch.Tensor,
                  enabled: torch.Tensor) -> torch.Tensor:
    """Permute the cells of a g x g grid per image (g per sample; disabled rows unchanged).

    Args:
        images: ``(n, 3, H, W)``.
        grid: ``(n,)`` cells per side.
        keys: ``(n, G*G)`` random sort keys, G = max grid size; the first g*g define the permutation.
        enabled: ``(n,)`` bool.
    """
    n, channels, height, width = images.shape
    device = images.device
    g = grid.view(n, 1, 1)
    cell_h, cell_w = height // g, width // g                              # (n, 1, 1)
    ys = torch.arange(height, device=device).view(1, height, 1)
    xs = torch.arange(width, device=device).view(1, 1, width)
    row, col = ys // cell_h, xs // cell_w                                 # (n, H, 1), (n, 1, W)
    in_grid = (row < g) & (col < g)               # pixels beyond g * cell (H % g) stay put
    cells = keys.shape[1]
    valid = torch.arange(cells, device=device).view(1, cells) < (grid * grid).view(n, 1)
    perm = torch.where(valid, keys, torch.full_like(keys, 2.0)).argsort(dim=1)  # (n, G*G)
    cell = (row * g + col).clamp(max=cells - 1)                           # (n, H, W)
    src_cell = torch.gather(perm, 1, cell.reshape(n, -1)).view(n, height, width)
    src_y = (src_cell // g) * cell_h + (ys - row * cell_h)
    src_x = (src_cell % g) * cell_w + (xs - col * cell_w)
    identity = (ys * width + xs).expand(n, height, width)
    index = torch.where(in_grid & enabled.view(n, 1, 1), src_y * width + src_x, identity)
    flat = images.flatten(2)                                              # (n, 3, HW)
    return torch.gather(flat, 2, index.reshape(n, 1, -1).expand(n, channels, -1)).view_as(images)
