"""One check for the numbers a user gives: finite, of the right kind, within range.

The command-line tools (``prn_edge.cli.bounded_float`` and friends) and the Python API of every
tool use :func:`check_number`, so ``nan``, ``inf``, a negative count or a threshold outside the
score's range is the same one-line error whichever way it comes in. stdlib only.
"""
from __future__ import annotations

import math
import numbers

from prn_edge.errors import PRNError

__all__ = ["MAX_COUNT", "MAX_SEED", "MAX_THREADS", "check_number", "describe_bounds"]

#: Counts (steps, frames, images) beyond this overflow the C ints of the libraries they reach.
MAX_COUNT = 2**31 - 1
#: Seeds: NumPy's and PyTorch's generators both take 0 .. 2**32 - 1.
MAX_SEED = 2**32 - 1
#: Thread counts: more than this is a typo, and PyTorch overflows on far bigger ones.
MAX_THREADS = 1024


def check_number(name: str, value, *, low: float | None = None, high: float | None = None,
                 integer: bool = False, low_open: bool = False, optional: bool = True):
    """``value`` if it is a finite number (an integer with ``integer``) within the bounds, else a PRNError.

    Args:
        name: how the user gave it (``--lr``), for the message.
        value: the number (None passes when ``optional``).
        low, high: inclusive bounds (``low_open``: ``low`` itself is excluded).
        integer: require a whole number (bools are refused either way).
        optional: None is allowed (and returned).

    Raises:
        PRNError: one line naming ``name``, the bounds and the value.
    """
    if value is None and optional:
        return None
    kind = "a whole number" if integer else "a number"
    ok_type = isinstance(value, numbers.Integral) if integer else isinstance(value, numbers.Real)
    if isinstance(value, bool) or not ok_type or not math.isfinite(float(value)):
        raise PRNError(f"{name} expects {kind}{describe_bounds(low, high, low_open)}, got {value!r}")
    if (low is not None and (value < low or (low_open and value == low))) or (high is not None and value > high):
        raise PRNError(f"{name} expects {kind}{describe_bounds(low, high, low_open)}, got {value!r}")
    return value


def describe_bounds(low, high, low_open: bool = False) -> str:
    """" >= 0", " from 0 to 1": the bounds as a message says them."""
    if low is None and high is None:
        return " (finite)"
    if high is None:
        return f" {'>' if low_open else '>='} {low:g}"
    if low is None:
        return f" <= {high:g}"
    return f" from {low:g} to {high:g}" + (f" (not {low:g})" if low_open else "")
