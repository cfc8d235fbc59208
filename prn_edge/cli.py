"""What every command-line tool shares: user errors as one line and exit status 2."""
from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from prn_edge.errors import PRNError

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130


def run_cli(prog: str, body: Callable[[], int]) -> int:
    """Run ``body``; a :class:`PRNError` prints ``prog: error: message`` and returns 2.

    Anything else is an internal bug and keeps its traceback.
    """
    try:
        return body()
    except PRNError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


class ArgumentParser(argparse.ArgumentParser):
    """argparse with one-line usage errors and exit status 2, like every other user error."""

    def error(self, message: str):  # noqa: D401 - argparse API
        print(f"{self.prog}: error: {message} (see {self.prog} --help)", file=sys.stderr)
        raise SystemExit(EXIT_USER_ERROR)


def positive_int(text: str) -> int:
    """argparse ``type=`` for counts: a one-line usage error for anything but an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def bounded_float(unit: str, low: float | None = None, high: float | None = None) -> Callable[[str], float]:
    """argparse ``type=`` for a number of ``unit`` within [low, high], with a one-line usage error."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {unit}, got {text!r}") from None
        if (low is not None and value < low) or (high is not None and value > high):
            bounds = f">= {low:g}" if high is None else f"from {low:g} to {high:g}" if low is not None \
                else f"<= {high:g}"
            raise argparse.ArgumentTypeError(f"expected {unit} {bounds}, got {text!r}")
        return value
    return parse
