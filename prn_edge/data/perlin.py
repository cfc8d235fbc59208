"""Batched 2-D Perlin noise in torch, for the simulated-anomaly masks (docs/model.md, "Anomaly synthesis").

Kornia has no Perlin noise, so it is written here. The formula is the classic gradient noise
used by DRAEM's ``rand_perlin_2d`` (random unit gradients on a lattice, quintic fade,
bilinear blend of the four corner dot products, scaled by sqrt(2) so the range is [-1, 1]).
Unlike that loop-per-image version, every sample of a batch may have its own lattice
resolution and the whole batch is computed with one gather per lattice corner, so the
same code runs on the GPU during training. Every random number comes from an explicit
``torch.Generator``.
"""
from __future__ import annotations

import math

import torch

from prn_edge.errors import PRNError


def _fade(t: torch.Tensor) -> torch.Tensor:
    """Perlin's quintic fade 6t^5 - 15t^4 + 10t^3 (C2-continuous across lattice cells)."""
    return t * t * t * (t * (t * 6.0 - 15.0) + 10.0)


def perlin_noise(shape: tuple[int, int, int], generator: torch.Generator, min_scale: int = 0,
                 max_scale: int = 5, *, exponents: torch.Tensor | None = None,
                 device: torch.device | str | None = None,
                 dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Perlin noise with a random lattice resolution 2^a x 2^b per sample.

    Args:
        shape: ``(B, H, W)`` of the output.
        generator: source of every random number (lattice exponents and gradient angles);
            it may live on another device than ``device``.
        min_scale: smallest lattice exponent per axis (resolution 2^min_scale cells).
        max_scale: largest lattice exponent per axis, inclusive (docs/model.md: 2^0 .. 2^5).
        exponents: optional ``(B, 2)`` integer exponents ``(a_y, a_x)`` to use instead of
            drawing them; the noise then has 2^a_y x 2^a_x lattice cells.
        device: device of the result (default: the generator's device).
        dtype: floating dtype of the result.

    Returns:
        ``(B, H, W)`` noise in [-1, 1] (0 on the lattice points).

    Raises:
        PRNError: invalid shape or scales.
    """
    batch, height, width = (int(s) for s in shape)
    if batch < 0 or height < 1 or width < 1:
        raise PRNError(f"perlin_noise needs a (B, H, W) shape with H, W >= 1, got {tuple(shape)}")
    device = torch.device(device) if device is not None else generator.device
    if exponents is None:
        if not 0 <= min_scale <= max_scale:
            raise PRNError(f"Perlin scales need 0 <= min_scale <= max_scale, got {min_scale}, {max_scale}")
        exponents = torch.randint(min_scale, max_scale + 1, (batch, 2), generator=generator,
                                  device=generator.device)
    exponents = exponents.to(device=device, dtype=torch.long)
    if exponents.shape != (batch, 2) or (exponents.numel() and exponents.min() < 0):
        raise PRNError(f"exponents must be a (B, 2) tensor of non-negative ints, got {tuple(exponents.shape)}")
    # One gradient lattice per sample, sized for the finest resolution in the batch so that
    # all samples share one gather; coarser samples use only its top-left corner.
    top = int(exponents.max()) if exponents.numel() else 0
    lattice = 2 ** top + 1                                            # points per axis
    angles = torch.rand((batch, lattice * lattice), generator=generator, device=generator.device)
    angles = angles.to(device=device, dtype=dtype) * (2.0 * math.pi)  # (B, L*L)
    grad_y, grad_x = torch.sin(angles), torch.cos(angles)             # unit gradients

    res = (2 ** exponents).to(dtype)                                  # (B, 2) cells per axis
    # Lattice coordinate of each pixel row/column: pixel i sits at i * res / size (DRAEM's grid).
    ys = torch.arange(height, device=device, dtype=dtype)[None] * (res[:, 0:1] / height)  # (B, H)
    xs = torch.arange(width, device=device, dtype=dtype)[None] * (res[:, 1:2] / width)    # (B, W)
    iy = ys.floor().long().clamp(max=(2 ** exponents[:, 0:1]) - 1)
    ix = xs.floor().long().clamp(max=(2 ** exponents[:, 1:2]) - 1)
    fy = (ys - iy.to(dtype))[:, :, None]                              # (B, H, 1) in [0, 1)
    fx = (xs - ix.to(dtype))[:, None, :]                              # (B, 1, W)
    iy, ix = iy[:, :, None], ix[:, None, :]

    def corner(dy: int, dx: int) -> torch.Tensor:
        # Dot product of the corner's gradient with the offset from that corner.
        index = ((iy + dy) * lattice + (ix + dx)).reshape(batch, -1)  # (B, H*W)
        gy = torch.gather(grad_y, 1, index).view(batch, height, width)
        gx = torch.gather(grad_x, 1, index).view(batch, height, width)
        return gy * (fy - dy) + gx * (fx - dx)                        # (B, H, W)

    ty, tx = _fade(fy), _fade(fx)
    top_row = torch.lerp(corner(0, 0), corner(0, 1), tx)
    bottom_row = torch.lerp(corner(1, 0), corner(1, 1), tx)
    # sqrt(2) maps the theoretical 2-D range [-sqrt(1/2), sqrt(1/2)] onto [-1, 1].
    return math.sqrt(2.0) * torch.lerp(top_row, bottom_row, ty)

