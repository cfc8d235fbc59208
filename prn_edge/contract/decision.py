"""The decision rule: one threshold, one comparison, for every tool that judges a frame.

``prn-inspect``, ``prn-bench``, ``prn-eval`` and ``prn-export``'s decision check all decide
through :class:`prn_edge.runtime.pipeline.Pipeline`, which uses these two functions.
"""
from __future__ import annotations

import math

import numpy as np

from prn_edge.errors import PRNError

__all__ = ["decide", "resolve_threshold"]


def resolve_threshold(override: float | None, model_threshold: float | None, *, required: bool = True) -> float | None:
    """The decision threshold: ``override`` if given, else the model's calibrated one.

    Args:
        override: a threshold the user gave (``--threshold``, ``InspectConfig.threshold``).
        model_threshold: the threshold calibrated on held-out normal images (None if never calibrated).
        required: raise when there is none (a tool that must decide); else return None.

    Raises:
        PRNError: no threshold although one is required, or one that is not finite.
    """
    value = override if override is not None else model_threshold
    if value is None:
        if not required:
            return None
        raise PRNError("the model has no calibrated decision threshold (trained without held-out normal "
                       "images?): pass one with --threshold (API: threshold=)")
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise PRNError(f"decision threshold must be a number, got {value!r}") from None
    if not math.isfinite(value):
        raise PRNError(f"decision threshold must be a finite number, got {value}")
    return value


def decide(scores, threshold: float):
    """Anomalous when the score is strictly above the threshold (a bool, or a bool array for arrays).

    The threshold is calibrated as a quantile (by default the maximum) of held-out normal
    scores, so a normal image scoring exactly the threshold must stay normal.
    """
    if np.ndim(scores) == 0:
        return bool(float(scores) > threshold)
    # float64 holds every float32 score exactly: arrays and single scores decide alike.
    return np.asarray(scores, dtype=np.float64) > float(threshold)
