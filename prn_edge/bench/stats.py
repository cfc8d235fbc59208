"""Summary statistics of timing samples, the instability rule and paired ratios (numpy only)."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["CV_LIMIT", "MIN_SAMPLES", "REL_IQR_LIMIT", "instability", "latency_stats", "paired_ratio"]

#: A cell is flagged unstable when its coefficient of variation (std / mean) exceeds this...
CV_LIMIT = 0.25
#: ...or when its interquartile range exceeds this fraction of the median (robust to single stalls)...
REL_IQR_LIMIT = 0.15
#: ...or when it has fewer samples than this (too few to tell).
MIN_SAMPLES = 5

PERCENTILES = (90, 95, 99)


@dataclass(frozen=True)
class Instability:
    unstable: bool
    reasons: tuple[str, ...]


def latency_stats(samples: Sequence[float]) -> dict[str, float]:
    """Summary of timing samples (any unit; the result keeps it).

    Returns:
        ``n``, ``mean``, ``median``, ``p90``, ``p95``, ``p99``, ``min``, ``max``, ``std``
        (population), ``cv`` (std / mean), ``iqr`` (p75 - p25) and ``rel_iqr`` (iqr / median).
        Percentiles use numpy's default linear interpolation. An empty input gives ``n = 0``
        and NaN elsewhere.
    """
    x = np.asarray(samples, dtype=np.float64)
    keys = ("mean", "median", *(f"p{p}" for p in PERCENTILES), "min", "max", "std", "cv", "iqr", "rel_iqr")
    if x.size == 0:
        return {"n": 0, **{k: float("nan") for k in keys}}
    q25, median, q75, *tail = np.percentile(x, [25, 50, 75, *PERCENTILES])
    mean, std = float(x.mean()), float(x.std())
    out = {"n": int(x.size), "mean": mean, "median": float(median)}
    out.update({f"p{p}": float(v) for p, v in zip(PERCENTILES, tail)})
    out.update({"min": float(x.min()), "max": float(x.max()), "std": std,
                "cv": std / mean if mean > 0 else float("nan"), "iqr": float(q75 - q25),
                "rel_iqr": float(q75 - q25) / float(median) if median > 0 else float("nan")})
    return out


def instability(stats: dict[str, float], *, cv_limit: float = CV_LIMIT, rel_iqr_limit: float = REL_IQR_LIMIT,
                min_samples: int = MIN_SAMPLES) -> Instability:
    """Whether a cell's samples are too spread (or too few) to quote one number for it."""
    reasons = []
    if stats["n"] < min_samples:
        reasons.append(f"only {stats['n']} sample(s) (< {min_samples}): raise --duration")
    if stats["n"] and stats["cv"] > cv_limit:
        reasons.append(f"coefficient of variation {stats['cv']:.2f} > {cv_limit:.2f}")
    if stats["n"] and stats["rel_iqr"] > rel_iqr_limit:
        reasons.append(f"IQR {100 * stats['rel_iqr']:.0f}% of the median > {100 * rel_iqr_limit:.0f}%")
    return Instability(bool(reasons), tuple(reasons))


def paired_ratio(reference: Sequence[float], other: Sequence[float]) -> float:
    """Median over rounds of ``reference[r] / other[r]`` (a speed-up: > 1 means ``other`` is faster).

    Both sequences hold one value per round (each cell's median in that round), measured
    interleaved, so a machine that slows down for a while slows both sides of a ratio alike.
    Rounds where either side is missing (NaN) are skipped; no common round gives NaN.
    """
    ref = np.asarray(reference, dtype=np.float64)
    oth = np.asarray(other, dtype=np.float64)
    if ref.shape != oth.shape:
        raise ValueError(f"paired_ratio needs one value per round on both sides, got {ref.shape} and {oth.shape}")
    ok = np.isfinite(ref) & np.isfinite(oth) & (oth > 0)
    return float(np.median(ref[ok] / oth[ok])) if ok.any() else float("nan")
