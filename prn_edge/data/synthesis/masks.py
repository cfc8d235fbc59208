"""Target areas (TA): random circles, rectangles and star polygons inside the foreground."""
from __future__ import annotations

import math

import torch

from prn_edge.data.synthesis.config import (
    CIRCLE_RADIUS,
    POLYGON_RADIUS,
    POLYGON_VERTICES,
    RECT_HALF_SIDE,
)
from prn_edge.data.synthesis.sampling import _rand, _randint, _sample_pixels, _uniform
from prn_edge.errors import DataError


def _foreground_or_all(foreground: torch.Tensor) -> torch.Tensor:
    """Boolean ``(n, 1, H, W)`` foreground; an empty one means the whole image (as for textures)."""
    fg = foreground > 0.5
    empty = ~fg.flatten(1).any(dim=1)
    return fg | empty.view(-1, 1, 1, 1)


def _target_area(n: int, height: int, width: int, foreground: torch.Tensor,
                 generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Random circle / rectangle / polygon around a random foreground pixel, ∩ foreground.

    Centring each shape on a foreground pixel (and always including that pixel) makes every
    target area non-empty without redraws. Returns the boolean ``(n, 1, H, W)`` areas and
    their ``(n,)`` flat centre indices (a pixel known to lie in the area).
    """
    device = foreground.device
    fg = _foreground_or_all(foreground)                              # (n, 1, H, W) bool
    side = float(min(height, width))
    # Every draw happens for every sample whatever its shape, so the random stream
    # consumed per call is fixed (repeatability does not hinge on data-dependent branches).
    shape_kind = _randint(generator, 0, 3, (n,), device)              # 0 circle, 1 rect, 2 polygon
    center = _sample_pixels(fg.flatten(1).float(), _rand(generator, (n,), device))
    cy = (center // width).float().view(n, 1, 1)
    cx = (center % width).float().view(n, 1, 1)
    radius = _uniform(generator, (n, 1, 1), *CIRCLE_RADIUS, device) * side
    half = _uniform(generator, (n, 2, 1, 1), *RECT_HALF_SIDE, device) * side
    theta = _uniform(generator, (n, 1, 1), 0.0, math.pi, device)
    n_vert = _randint(generator, POLYGON_VERTICES[0], POLYGON_VERTICES[1] + 1, (n,), device)
    v_max = POLYGON_VERTICES[1]
    jitter = _uniform(generator, (n, v_max), -0.2, 0.2, device)
    phase = _uniform(generator, (n, 1), 0.0, 2.0 * math.pi, device)
    v_radius = _uniform(generator, (n, v_max), *POLYGON_RADIUS, device) * side

    ys = torch.arange(height, device=device, dtype=torch.float32).view(1, height, 1)
    xs = torch.arange(width, device=device, dtype=torch.float32).view(1, 1, width)
    dy, dx = ys - cy, xs - cx                                        # (n, H, 1), (n, 1, W)

    circle = dy * dy + dx * dx <= radius * radius                    # (n, H, W)
    cos_t, sin_t = torch.cos(theta), torch.sin(theta)
    u = dx * cos_t + dy * sin_t                                      # rotated rectangle frame
    v = -dx * sin_t + dy * cos_t
    rect = (u.abs() <= half[:, 0]) & (v.abs() <= half[:, 1])

    # Star-shaped polygon: vertex k at angle 2*pi*(k + jitter)/V; jitter < 0.5 keeps the
    # angles increasing, so the polygon is simple. Unused vertices repeat the last used one
    # (zero-length edges cross nothing), so one even-odd test serves every vertex count.
    k = torch.arange(v_max, device=device).view(1, v_max)
    used = k < n_vert.view(n, 1)
    last = (n_vert - 1).view(n, 1).expand(n, v_max)
    k_eff = torch.where(used, k.expand(n, v_max), last)
    angle = phase + 2.0 * math.pi * (k_eff + torch.gather(jitter, 1, k_eff)) / n_vert.view(n, 1)
    r_eff = torch.gather(v_radius, 1, k_eff)
    vx = cx.view(n, 1) + r_eff * torch.cos(angle)                    # (n, V)
    vy = cy.view(n, 1) + r_eff * torch.sin(angle)
    inside = torch.zeros((n, height, width), dtype=torch.bool, device=device)
    for i in range(v_max):
        j = (i + 1) % v_max
        xi, yi = vx[:, i].view(n, 1, 1), vy[:, i].view(n, 1, 1)
        xj, yj = vx[:, j].view(n, 1, 1), vy[:, j].view(n, 1, 1)
        straddles = (yi > ys) != (yj > ys)                           # (n, H, 1)
        dy_edge = torch.where(yj == yi, torch.ones_like(yj), yj - yi)
        x_cross = xi + (xj - xi) * (ys - yi) / dy_edge               # (n, H, 1)
        inside ^= straddles & (xs < x_cross)                         # (n, H, W)

    kind = shape_kind.view(n, 1, 1)
    area = torch.where(kind == 0, circle, torch.where(kind == 1, rect, inside))
    area = area.flatten(1)
    area[torch.arange(n, device=device), center] = True             # the centre is always in
    area = area.view(n, 1, height, width) & fg
    return area, center


def target_area(batch: int, height: int, width: int, foreground: torch.Tensor,
                generator: torch.Generator) -> torch.Tensor:
    """Random target areas (TA): a circle, rectangle or polygon, intersected with the foreground.

    Each shape is centred on a random foreground pixel, so no area is ever empty. An empty
    foreground mask means the whole image (docs/model.md's foreground for texture classes).

    Args:
        batch: number of areas B.
        height, width: image size.
        foreground: ``(B, 1, H, W)`` float {0, 1} foreground masks.
        generator: source of every random choice.

    Returns:
        ``(B, 1, H, W)`` float {0, 1} masks, each non-empty and inside its foreground.

    Raises:
        DataError: ``foreground`` does not have shape ``(batch, 1, height, width)``.
    """
    if tuple(foreground.shape) != (batch, 1, height, width):
        raise DataError(f"target_area: foreground must be ({batch}, 1, {height}, {width}), "
                        f"got {tuple(foreground.shape)}")
    area, _ = _target_area(batch, height, width, foreground, generator)
    return area.float()
