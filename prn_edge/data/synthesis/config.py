"""Every setting of the anomaly synthesis: the op lists, the shape ranges, the batch mix.

:class:`SynthesisConfig` (the knobs a run sets), :func:`batch_composition` (the exact
normal:EA:SA mix of a batch), :class:`SynthesizedBatch` (what the synthesizer returns) and
the fixed constants of docs/model.md, "Anomaly synthesis" that the other modules of the package read.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction

import torch

from prn_edge.errors import DataError, PRNError

# Aug1 of docs/model.md: two distinct ops of these seven, in random order, per EA sample.
EA_OPS = ("equalize", "solarize", "posterize", "sharpness", "autocontrast", "invert", "gamma")
# "Three random colour ops" applied to the SA source (DTD texture or the image itself).
COLOUR_OPS = ("brightness", "contrast", "saturation", "hue", "gamma")
EA_OPS_PER_SAMPLE = 2
COLOUR_OPS_PER_SAMPLE = 3

# Aug2 of docs/model.md (rotate, shear, shift of the defect region and its mask).
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
    """How the online anomaly generation of docs/model.md, "Anomaly synthesis" mixes each batch.

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
    """Exact numbers of normal, EA and SA samples in a batch (docs/model.md, "Anomaly synthesis": 32 + 16 + 16 of 64).

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
