"""Online anomaly synthesis for PRN training (PRN_SPEC section 7), batched torch.

Each training batch of normal images is turned into an exact mix of normal samples,
extended anomalies (EA: a seen defect, augmented, moved and cropped by a target area) and
simulated anomalies (SA: Perlin blobs filled from a DTD texture or from the image itself).
Everything is a batched tensor operation on the device of the input batch (so the paper's
schedule can synthesize on the GPU), and every random choice comes from an explicit
``torch.Generator``: the same seed and inputs give bit-identical batches (on one device).

Conventions: images are float ``(B, 3, H, W)`` RGB in [0, 1]; masks are float {0, 1}
``(B, 1, H, W)``. The mask returned for a synthesized sample is exactly the set of pixels
that the blend altered (``M`` in the spec's formulas): pixels outside it are bit-identical
to the input normal image. Synthesized masks are never empty (an empty one would be a
mislabelled normal): redraws are bounded and end in a deterministic fallback.

Photometric and geometric ops are Kornia's (``kornia.enhance``, ``kornia.geometry``);
only Perlin noise (:mod:`prn_edge.data.perlin`), target-area shapes and grid shuffling are
written here, because Kornia has no equivalent.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from prn_edge.data.perlin import perlin_noise
from prn_edge.data.mvtec import load_image
from prn_edge.errors import DataError, PRNError, require
from prn_edge.imaging.preprocess import resize_image

kornia = require("kornia", "anomaly synthesis")

# Aug1 of the spec: two distinct ops of these seven, in random order, per EA sample.
EA_OPS = ("equalize", "solarize", "posterize", "sharpness", "autocontrast", "invert", "gamma")
# "Three random colour ops" applied to the SA source (DTD texture or the image itself).
COLOUR_OPS = ("brightness", "contrast", "saturation", "hue", "gamma")
EA_OPS_PER_SAMPLE = 2
COLOUR_OPS_PER_SAMPLE = 3

# Aug2 of the spec (rotate, shear, shift of the defect region and its mask).
ROTATE_DEGREES = 90.0        # angle ~ U(-90, 90) degrees about the defect's centroid
SHEAR_DEGREES = 20.0         # shear angles ~ U(-20, 20) degrees along x and y
# Bounded redraws: Aug2 until the moved defect overlaps its target area (EA), Perlin blobs
# and target area until their intersection is non-empty (SA). Then a deterministic fallback.
MAX_TRIES = 10

# Target areas: sizes as fractions of min(H, W).
CIRCLE_RADIUS = (0.08, 0.30)
RECT_HALF_SIDE = (0.05, 0.30)
POLYGON_RADIUS = (0.08, 0.35)
POLYGON_VERTICES = (3, 8)    # inclusive
GRID_SIZES = (2, 4, 8)       # HOA grid shuffle: 2x2, 4x4 or 8x8 cells

KIND_NORMAL, KIND_EA, KIND_SA = 0, 1, 2
KIND_NAMES = ("normal", "EA", "SA")


@dataclass
class SynthesisConfig:
    """How the online anomaly generation of PRN_SPEC section 7 mixes each batch.

    Attributes:
        ea_fraction: share of each batch turned into extended anomalies (paper: 16 of 64).
        sa_fraction: share of each batch turned into simulated anomalies (paper: 16 of 64).
        beta_max: blend weight beta ~ U(0, beta_max) per synthesized image (paper: 0.8).
        hea_probability: probability that an SA source is a DTD texture (heterologous, HEA)
            rather than an augmented copy of the normal image (homologous, HOA).
        perlin_min_scale: smallest Perlin lattice exponent per axis (2^0 cells).
        perlin_max_scale: largest Perlin lattice exponent per axis, inclusive (2^5 cells).
        perlin_threshold: Perlin noise level above which a pixel is anomalous (0.5).
        grid_shuffle_probability: probability that an HOA source is also grid-shuffled.
        use_ea: synthesize extended anomalies. Ablation "without EA": False gives the EA
            share to SA, so a batch keeps the same number of synthesized samples.
        use_sa: synthesize simulated anomalies. Ablation "without SA": False gives the SA
            share to EA. ``use_ea`` and ``use_sa`` cannot both be False.
    """

    ea_fraction: float = 0.25
    sa_fraction: float = 0.25
    beta_max: float = 0.8
    hea_probability: float = 0.5
    perlin_min_scale: int = 0
    perlin_max_scale: int = 5
    perlin_threshold: float = 0.5
    grid_shuffle_probability: float = 0.5
    use_ea: bool = True
    use_sa: bool = True

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise :class:`PRNError` naming the first invalid field."""
        for name in ("ea_fraction", "sa_fraction", "beta_max", "hea_probability",
                     "grid_shuffle_probability"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise PRNError(f"SynthesisConfig.{name} must be in [0, 1], got {value}")
        if self.ea_fraction + self.sa_fraction > 1.0:
            raise PRNError(f"SynthesisConfig: ea_fraction + sa_fraction must be <= 1, got "
                           f"{self.ea_fraction} + {self.sa_fraction}")
        if not self.use_ea and not self.use_sa:
            raise PRNError("SynthesisConfig: use_ea and use_sa are both False, so nothing would be "
                           "synthesized; enable at least one")
        if self.synthesized_fraction <= 0.0:
            raise PRNError("SynthesisConfig: ea_fraction + sa_fraction is 0, so nothing would be "
                           "synthesized; the paper uses 0.25 + 0.25")
        if not 0 <= self.perlin_min_scale <= self.perlin_max_scale:
            raise PRNError(f"SynthesisConfig: need 0 <= perlin_min_scale <= perlin_max_scale, got "
                           f"{self.perlin_min_scale}, {self.perlin_max_scale}")
        if not -1.0 <= self.perlin_threshold < 1.0:
            raise PRNError(f"SynthesisConfig.perlin_threshold must be in [-1, 1) (Perlin noise "
                           f"lies in [-1, 1]), got {self.perlin_threshold}")

    @property
    def synthesized_fraction(self) -> float:
        """Share of a batch that is synthesized (EA + SA)."""
        return self.ea_fraction + self.sa_fraction

    def fractions(self) -> tuple[Fraction, Fraction]:
        """Effective (EA, SA) shares as exact fractions, after the ablation switches."""
        ea = Fraction(self.ea_fraction).limit_denominator(1024)
        sa = Fraction(self.sa_fraction).limit_denominator(1024)
        if not self.use_ea:
            ea, sa = Fraction(0), ea + sa
        elif not self.use_sa:
            ea, sa = ea + sa, Fraction(0)
        return ea, sa


def batch_composition(batch_size: int, cfg: SynthesisConfig | None = None) -> tuple[int, int, int]:
    """Exact numbers of normal, EA and SA samples in a batch (PRN_SPEC: 32 + 16 + 16 of 64).

    The ratio is exact in every batch, not only in expectation, so ``batch_size`` must make
    each share a whole number: with the default 2:1:1 mix, a multiple of 4.

    Args:
        batch_size: images per batch.
        cfg: synthesis config (None: defaults).

    Returns:
        ``(n_normal, n_ea, n_sa)`` summing to ``batch_size``.

    Raises:
        DataError: ``batch_size`` cannot hold the ratio exactly; the message names the sizes that can.
    """
    cfg = cfg if cfg is not None else SynthesisConfig()
    ea, sa = cfg.fractions()
    # Smallest batch in which every share is a whole number.
    step = math.lcm(ea.denominator, sa.denominator, (1 - ea - sa).denominator)
    if batch_size < 1 or batch_size % step:
        raise DataError(
            f"batch size {batch_size} cannot hold the normal:EA:SA mix "
            f"{float(1 - ea - sa):g}:{float(ea):g}:{float(sa):g} exactly: use a multiple of {step} "
            f"(e.g. {step}, {2 * step}, {16 * step}) (CLI: --batch-size; API: batch_size)")
    n_ea, n_sa = int(batch_size * ea), int(batch_size * sa)
    return batch_size - n_ea - n_sa, n_ea, n_sa


@dataclass
class SynthesizedBatch:
    """One training batch after synthesis; row i was made from input normal image i.

    Attributes:
        images: ``(B, 3, H, W)`` float in [0, 1].
        masks: ``(B, 1, H, W)`` float {0, 1}: exactly the altered pixels (all 0 for normals).
        kind: ``(B,)`` int64: 0 normal, 1 EA, 2 SA (see ``KIND_NAMES``).
        beta: ``(B,)`` blend weight of each synthesized image (0 for normal samples, unused).
        is_heterologous: ``(B,)`` bool: SA whose source was a DTD texture (HEA).
        sources: ``(B, 3, H, W)`` the image blended in (EA: the moved, augmented seen anomaly
            ``C`` inside the mask; SA: ``S``; normal: the input), only when asked for with
            ``return_sources=True`` (debugging and tests), else None.
    """

    images: torch.Tensor
    masks: torch.Tensor
    kind: torch.Tensor
    beta: torch.Tensor
    is_heterologous: torch.Tensor
    sources: torch.Tensor | None = None

    @property
    def kind_names(self) -> list[str]:
        """``kind`` as strings ("normal", "EA", "SA")."""
        return [KIND_NAMES[k] for k in self.kind.tolist()]


# --------------------------------------------------------------------------------------
# Random numbers: drawn on the generator's device, then moved to the data's device, so a
# CPU generator can drive GPU synthesis (and a CUDA generator works as well).


def _rand(generator: torch.Generator, shape: tuple[int, ...], device: torch.device,
          dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.rand(shape, generator=generator, device=generator.device).to(device=device, dtype=dtype)


def _uniform(generator: torch.Generator, shape: tuple[int, ...], low: float, high: float,
             device: torch.device, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return low + (high - low) * _rand(generator, shape, device, dtype)


def _randint(generator: torch.Generator, low: int, high: int, shape: tuple[int, ...],
             device: torch.device) -> torch.Tensor:
    """Integers in [low, high) (high exclusive, as torch.randint)."""
    return torch.randint(low, high, shape, generator=generator, device=generator.device).to(device)


def _random_op_order(generator: torch.Generator, n: int, n_ops: int, k: int,
                     device: torch.device) -> torch.Tensor:
    """``(n, k)`` indices of k distinct ops out of n_ops per sample, in random order."""
    return _rand(generator, (n, n_ops), device).argsort(dim=1)[:, :k]


def _sample_pixels(weights: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Inverse-CDF sampling of one pixel per row: ``weights (n, H*W)`` >= 0, ``u (n,)`` in [0, 1).

    torch.multinomial would need a generator on the data's device; this needs only ``u``.
    Rows must have a positive sum. Returns ``(n,)`` flat indices of pixels with weight > 0.
    """
    cdf = weights.cumsum(dim=1)                                      # (n, HW)
    target = (u * cdf[:, -1]).unsqueeze(1)                           # (n, 1)
    index = torch.searchsorted(cdf, target, right=True).squeeze(1)
    return index.clamp(max=weights.shape[1] - 1)


# --------------------------------------------------------------------------------------
# Target areas


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
    foreground mask means the whole image (the spec's foreground for texture classes).

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


# --------------------------------------------------------------------------------------
# Photometric ops (Kornia). Each maps (n, 3, H, W) and a per-sample u (n,) in [0, 1) to
# the op's parameter range, so one uniform per op slot keeps the random stream fixed.


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


# --------------------------------------------------------------------------------------


class AnomalySynthesizer:
    """Turns batches of normal images into PRN training batches (PRN_SPEC section 7).

    Args:
        seen_images: ``(S, 3, H, W)`` float [0, 1] seen anomalous images (removed from the
            evaluation set by the caller); required when ``cfg.use_ea``.
        seen_masks: ``(S, 1, H, W)`` their defect masks (> 0.5 is defect), each non-empty.
        textures: ``(T, 3, H, W)`` DTD textures, uint8 (as :func:`load_textures` returns,
            4x smaller) or float [0, 1]; required when SA may draw a heterologous source.
        cfg: synthesis config (None: defaults).

    Raises:
        DataError: missing, empty or mis-shaped seen anomalies or textures.
    """

    def __init__(self, seen_images: torch.Tensor | None, seen_masks: torch.Tensor | None,
                 textures: torch.Tensor | None, cfg: SynthesisConfig | None = None) -> None:
        self.cfg = cfg if cfg is not None else SynthesisConfig()
        self.cfg.validate()
        ea_share, sa_share = self.cfg.fractions()
        self.seen_images = self.seen_masks = self.textures = None
        self._anchor = self._centroid = None
        if ea_share > 0:
            self._set_seen(seen_images, seen_masks)
        if sa_share > 0 and self.cfg.hea_probability > 0:
            if textures is None or textures.shape[0] == 0:
                raise DataError("no DTD textures for heterologous simulated anomalies: pass textures "
                                "(load_textures(<dtd folder>); CLI: --textures) or set "
                                "SynthesisConfig.hea_probability=0")
            if textures.dim() != 4 or textures.shape[1] != 3:
                raise DataError(f"textures must be (T, 3, H, W), got {tuple(textures.shape)}")
            self.textures = textures

    def _set_seen(self, images: torch.Tensor | None, masks: torch.Tensor | None) -> None:
        if images is None or masks is None or images.shape[0] == 0:
            raise DataError("extended anomalies need seen anomalies: pass seen_images and seen_masks "
                            "or set SynthesisConfig.use_ea=False (the 'without EA' ablation)")
        if images.dim() != 4 or images.shape[1] != 3 or tuple(masks.shape) != (
                images.shape[0], 1, *images.shape[2:]):
            raise DataError(f"seen_images must be (S, 3, H, W) and seen_masks (S, 1, H, W), got "
                            f"{tuple(images.shape)} and {tuple(masks.shape)}")
        binary = masks > 0.5
        empty = (~binary.flatten(1).any(dim=1)).nonzero().flatten().tolist()
        if empty:
            raise DataError(f"seen anomaly masks {empty} are empty: every seen anomaly needs its "
                            "defect mask (MVTec ground_truth/<type>/<stem>_mask.png)")
        self.seen_images = images.float()
        self.seen_masks = binary.float()
        # Defect centroid (the point Aug2 rotates about and moves) and, for the fallback,
        # the defect pixel nearest to it (a centroid may fall outside a ring-shaped defect).
        s, _, height, width = masks.shape
        ys = torch.arange(height, device=masks.device, dtype=torch.float32).view(1, height, 1)
        xs = torch.arange(width, device=masks.device, dtype=torch.float32).view(1, 1, width)
        m = self.seen_masks[:, 0]
        count = m.flatten(1).sum(1)
        cy = (m * ys).flatten(1).sum(1) / count
        cx = (m * xs).flatten(1).sum(1) / count
        self._centroid = torch.stack([cx, cy], dim=1)                     # (S, 2) as (x, y)
        dist = (ys - cy.view(s, 1, 1)) ** 2 + (xs - cx.view(s, 1, 1)) ** 2
        nearest = torch.where(m > 0, dist, torch.full_like(dist, float("inf"))).flatten(1).argmin(1)
        self._anchor = torch.stack([nearest % width, nearest // width], dim=1).float()  # (S, 2)

    def to(self, device: torch.device | str) -> "AnomalySynthesizer":
        """Move the seen anomalies and textures to ``device`` (e.g. the training GPU); returns self."""
        for name in ("seen_images", "seen_masks", "textures", "_centroid", "_anchor"):
            value = getattr(self, name)
            if value is not None:
                setattr(self, name, value.to(device))
        return self

    # ---------------------------------------------------------------- checks

    def _check_batch(self, normal: torch.Tensor, foreground: torch.Tensor) -> None:
        if normal.dim() != 4 or normal.shape[1] != 3 or not normal.is_floating_point():
            raise DataError(f"normal images must be a float (B, 3, H, W) tensor in [0, 1], got "
                            f"{normal.dtype} {tuple(normal.shape)}")
        if tuple(foreground.shape) != (normal.shape[0], 1, *normal.shape[2:]):
            raise DataError(f"foreground must be (B, 1, H, W) = ({normal.shape[0]}, 1, "
                            f"{normal.shape[2]}, {normal.shape[3]}), got {tuple(foreground.shape)}")
        for name in ("seen_images", "textures"):
            ref = getattr(self, name)
            if ref is not None and tuple(ref.shape[-2:]) != tuple(normal.shape[-2:]):
                raise DataError(f"{name} are {ref.shape[-2]}x{ref.shape[-1]} but the batch is "
                                f"{normal.shape[2]}x{normal.shape[3]}: load them at the training size")

    def _draw_beta(self, n: int, device: torch.device, generator: torch.Generator) -> torch.Tensor:
        return _uniform(generator, (n,), 0.0, self.cfg.beta_max, device)

    # ---------------------------------------------------------------- EA

    def extended_anomaly(self, normal: torch.Tensor, foreground: torch.Tensor,
                         generator: torch.Generator, beta: torch.Tensor | None = None
                         ) -> tuple[torch.Tensor, torch.Tensor]:
        """Extended anomalies (EA): a seen defect, augmented, moved and cropped by a target area.

        Per sample: a random seen anomaly; Aug1 = two distinct random ops of ``EA_OPS`` on
        its image; Aug2 = random rotation (about the defect centroid), shear and shift
        (the centroid moves to a random pixel of the target area) of image and mask
        together, redrawn up to ``MAX_TRIES`` times until the defect overlaps the target
        area, then a deterministic pure shift that puts the defect pixel nearest its
        centroid on the target area's centre; ``M`` = binarised defect mask ∩ target area,
        ``C = M * Aug2(Aug1(image))`` and ``E = (1 - M) N + (1 - beta) C + beta (M N)``.

        Args:
            normal: ``(n, 3, H, W)`` float [0, 1] normal images N.
            foreground: ``(n, 1, H, W)`` their foreground masks (empty: whole image).
            generator: source of every random choice.
            beta: ``(n,)`` blend weights (None: drawn from U(0, beta_max)).

        Returns:
            ``(images, masks)``: ``(n, 3, H, W)`` in [0, 1] and ``(n, 1, H, W)`` non-empty {0, 1}.

        Raises:
            DataError: mis-shaped inputs, or the synthesizer has no seen anomalies.
        """
        images, masks, _ = self._extended(normal, foreground, generator, beta)
        return images, masks

    def _extended(self, normal: torch.Tensor, foreground: torch.Tensor, generator: torch.Generator,
                  beta: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if self.seen_images is None:
            raise DataError("this synthesizer has no seen anomalies (built with use_ea=False)")
        self._check_batch(normal, foreground)
        n, _, height, width = normal.shape
        device, dtype = normal.device, normal.dtype
        if beta is None:
            beta = self._draw_beta(n, device, generator)
        pick = _randint(generator, 0, self.seen_images.shape[0], (n,), self.seen_images.device)
        seen = self.seen_images[pick].to(device=device, dtype=dtype)       # (n, 3, H, W)
        seen_mask = self.seen_masks[pick].to(device=device, dtype=dtype)   # (n, 1, H, W)
        centroid = self._centroid[pick].to(device)                          # (n, 2) (x, y)
        anchor = self._anchor[pick].to(device)
        seen = _apply_random_ops(seen, EA_OPS, _EA_OP_FNS, EA_OPS_PER_SAMPLE, generator)  # Aug1
        area, area_center = _target_area(n, height, width, foreground, generator)

        moved = torch.zeros_like(seen)
        mask = torch.zeros((n, 1, height, width), dtype=torch.bool, device=device)
        pending = torch.arange(n, device=device)
        for _ in range(MAX_TRIES):                                          # Aug2, redrawn
            k = pending.numel()
            angle = _uniform(generator, (k,), -ROTATE_DEGREES, ROTATE_DEGREES, device)
            shear = _uniform(generator, (k, 2), -SHEAR_DEGREES, SHEAR_DEGREES, device).deg2rad()
            dest = _sample_pixels(area[pending].flatten(1).float(), _rand(generator, (k,), device))
            dest_xy = torch.stack([dest % width, dest // width], dim=1).float()
            matrix = kornia.geometry.transform.get_affine_matrix2d(
                dest_xy - centroid[pending], centroid[pending], torch.ones((k, 2), device=device),
                angle, shear[:, 0], shear[:, 1])
            img_w, mask_w = _warp(seen[pending], seen_mask[pending], matrix)
            crop = (mask_w > 0.5) & area[pending]
            ok = crop.flatten(1).any(dim=1)
            done = pending[ok]
            moved[done], mask[done] = img_w[ok], crop[ok]
            pending = pending[~ok]
            if pending.numel() == 0:
                break
        if pending.numel():
            # Fallback: an integer shift (no rotation/shear) putting the anchor defect pixel
            # exactly on the area's centre pixel, so the overlap cannot be empty.
            k = pending.numel()
            center = area_center[pending]
            center_xy = torch.stack([center % width, center // width], dim=1).float()
            matrix = torch.eye(3, device=device).repeat(k, 1, 1)
            matrix[:, :2, 2] = center_xy - anchor[pending]
            img_w, mask_w = _warp(seen[pending], seen_mask[pending], matrix)
            moved[pending], mask[pending] = img_w, (mask_w > 0.5) & area[pending]

        m = mask.to(dtype)                                                  # (n, 1, H, W)
        b = beta.to(device=device, dtype=dtype).view(n, 1, 1, 1)
        crop_image = m * moved                                              # C
        blended = (1 - m) * normal + (1 - b) * crop_image + b * (m * normal)
        # Outside M the formula already returns N exactly; the where makes it explicit and
        # clamps rounding (1 + 1 ulp) only where pixels were altered.
        images = torch.where(mask, blended.clamp(0.0, 1.0), normal)
        return images, m, moved.clamp(0.0, 1.0)

    # ---------------------------------------------------------------- SA

    def simulated_anomaly(self, normal: torch.Tensor, foreground: torch.Tensor,
                          generator: torch.Generator, beta: torch.Tensor | None = None
                          ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Simulated anomalies (SA): Perlin blobs ∩ a target area, filled from a source S.

        ``M`` = (Perlin noise > threshold) ∩ target area, both redrawn up to ``MAX_TRIES``
        times while empty, then the target area itself (never empty). ``S`` = a DTD texture
        (HEA, probability ``hea_probability``) or the normal image (HOA, grid-shuffled with
        probability ``grid_shuffle_probability``), after three distinct random ops of
        ``COLOUR_OPS``. ``I = (1 - M) N + (1 - beta) (M S) + beta (M N)``.

        Args:
            normal: ``(n, 3, H, W)`` float [0, 1] normal images N.
            foreground: ``(n, 1, H, W)`` their foreground masks (empty: whole image).
            generator: source of every random choice.
            beta: ``(n,)`` blend weights (None: drawn from U(0, beta_max)).

        Returns:
            ``(images, masks, is_heterologous)``: ``(n, 3, H, W)`` in [0, 1], ``(n, 1, H, W)``
            non-empty {0, 1}, and ``(n,)`` bool (True: DTD source).

        Raises:
            DataError: mis-shaped inputs.
        """
        images, masks, is_het, _ = self._simulated(normal, foreground, generator, beta)
        return images, masks, is_het

    def _simulated(self, normal: torch.Tensor, foreground: torch.Tensor, generator: torch.Generator,
                   beta: torch.Tensor | None
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        self._check_batch(normal, foreground)
        cfg = self.cfg
        n, _, height, width = normal.shape
        device, dtype = normal.device, normal.dtype
        if beta is None:
            beta = self._draw_beta(n, device, generator)

        # Source S. Draws are made for every sample, used or not, to keep the stream fixed.
        is_het = _rand(generator, (n,), device) < cfg.hea_probability
        if self.textures is None:
            is_het = torch.zeros_like(is_het)
            source = normal
        else:
            tex_id = _randint(generator, 0, self.textures.shape[0], (n,), self.textures.device)
            tex = self.textures[tex_id].to(device)
            tex = tex.to(dtype) / 255.0 if not tex.is_floating_point() else tex.to(dtype)
            source = torch.where(is_het.view(n, 1, 1, 1), tex, normal)
        source = _apply_random_ops(source, COLOUR_OPS, _COLOUR_OP_FNS, COLOUR_OPS_PER_SAMPLE, generator)
        shuffle = (_rand(generator, (n,), device) < cfg.grid_shuffle_probability) & ~is_het
        grid = torch.tensor(GRID_SIZES, device=device)[_randint(generator, 0, len(GRID_SIZES), (n,), device)]
        keys = _rand(generator, (n, max(GRID_SIZES) ** 2), device)
        source = _grid_shuffle(source, grid, keys, shuffle)

        # Mask M: Perlin blobs ∩ target area, redrawn while empty.
        mask = torch.zeros((n, 1, height, width), dtype=torch.bool, device=device)
        pending = torch.arange(n, device=device)
        for _ in range(MAX_TRIES):
            k = pending.numel()
            noise = perlin_noise((k, height, width), generator, cfg.perlin_min_scale,
                                 cfg.perlin_max_scale, device=device)
            area, _ = _target_area(k, height, width, foreground[pending], generator)
            m = (noise.unsqueeze(1) > cfg.perlin_threshold) & area
            ok = m.flatten(1).any(dim=1)
            mask[pending[ok]] = m[ok]
            pending = pending[~ok]
            if pending.numel() == 0:
                break
        if pending.numel():
            # Fallback: the target area alone (centred on a foreground pixel, never empty).
            area, _ = _target_area(pending.numel(), height, width, foreground[pending], generator)
            mask[pending] = area

        m = mask.to(dtype)
        b = beta.to(device=device, dtype=dtype).view(n, 1, 1, 1)
        blended = (1 - m) * normal + (1 - b) * (m * source) + b * (m * normal)
        images = torch.where(mask, blended.clamp(0.0, 1.0), normal)
        return images, m, is_het, source

    # ---------------------------------------------------------------- batch

    def __call__(self, normal: torch.Tensor, foreground: torch.Tensor, generator: torch.Generator,
                 *, return_sources: bool = False) -> SynthesizedBatch:
        """Synthesize one training batch with the exact normal:EA:SA mix of :func:`batch_composition`.

        Which rows become EA or SA is a random permutation; row i of the result is always
        made from ``normal[i]``.

        Args:
            normal: ``(B, 3, H, W)`` float [0, 1] normal images.
            foreground: ``(B, 1, H, W)`` their foreground masks (empty: whole image).
            generator: source of every random choice (same seed and inputs: same batch).
            return_sources: also return the blended-in images (for tests and debugging).

        Returns:
            :class:`SynthesizedBatch` on ``normal.device``.

        Raises:
            DataError: mis-shaped inputs or a batch size that cannot hold the mix exactly.
        """
        self._check_batch(normal, foreground)
        b, _, height, width = normal.shape
        device, dtype = normal.device, normal.dtype
        n_normal, n_ea, n_sa = batch_composition(b, self.cfg)
        perm = torch.randperm(b, generator=generator, device=generator.device).to(device)
        ea_rows, sa_rows = perm[n_normal:n_normal + n_ea], perm[n_normal + n_ea:]
        kind = torch.full((b,), KIND_NORMAL, dtype=torch.long, device=device)
        kind[ea_rows], kind[sa_rows] = KIND_EA, KIND_SA
        beta = self._draw_beta(b, device, generator)
        beta = torch.where(kind == KIND_NORMAL, torch.zeros_like(beta), beta)

        images = normal.clone()
        masks = torch.zeros((b, 1, height, width), dtype=dtype, device=device)
        is_het = torch.zeros((b,), dtype=torch.bool, device=device)
        sources = normal.clone() if return_sources else None
        if n_ea:
            img, m, src = self._extended(normal[ea_rows], foreground[ea_rows], generator, beta[ea_rows])
            images[ea_rows], masks[ea_rows] = img, m
            if sources is not None:
                sources[ea_rows] = src
        if n_sa:
            img, m, het, src = self._simulated(normal[sa_rows], foreground[sa_rows], generator,
                                               beta[sa_rows])
            images[sa_rows], masks[sa_rows], is_het[sa_rows] = img, m, het
            if sources is not None:
                sources[sa_rows] = src
        return SynthesizedBatch(images=images, masks=masks, kind=kind, beta=beta,
                                is_heterologous=is_het, sources=sources)


# --------------------------------------------------------------------------------------
# Textures and preview

_TEXTURE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")


def load_textures(folder: str | Path, size: int = 256, limit: int | None = None,
                  dtype: torch.dtype = torch.uint8) -> torch.Tensor:
    """Load DTD textures from a folder tree, resized (shorter side) and centre-cropped to ``size``.

    Files are sorted by path, so the result is the same on every machine. With ``limit``,
    an evenly spaced subset of the sorted list is kept, which spans the DTD categories
    (DTD sorts by category) instead of taking the first few.

    Args:
        folder: root of the texture images (searched recursively for jpg/jpeg/png/bmp).
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
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in _TEXTURE_SUFFIXES and p.is_file())
    if not files:
        raise DataError(f"no texture images (jpg/png) under {root}: point --textures at the DTD "
                        "'images' folder")
    if limit is not None:
        if limit < 1:
            raise DataError(f"load_textures: limit must be >= 1, got {limit}")
        if limit < len(files):
            keep = np.linspace(0, len(files) - 1, limit).round().astype(int)
            files = [files[i] for i in keep]
    out = np.empty((len(files), size, size, 3), dtype=np.uint8)
    for i, path in enumerate(files):
        # The shared reader and resize policy: shorter side to ``size``, centre square.
        out[i] = resize_image(load_image(path, size=None), size, "center-crop")
    textures = torch.from_numpy(out).permute(0, 3, 1, 2).contiguous()    # (T, 3, size, size)
    if dtype == torch.uint8:
        return textures
    return textures.to(dtype) / 255.0


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
