"""What every command-line tool shares: user errors as one line and exit status 2."""
from __future__ import annotations

import argparse
import signal
import sys
import threading
from collections.abc import Callable

from prn_edge.errors import PRNError
from prn_edge.validate import MAX_COUNT, MAX_SEED, MAX_THREADS, check_number, describe_bounds

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130


def run_cli(prog: str, body: Callable[[], int]) -> int:
    """Run ``body`` as a command: every expected failure is one line on stderr and a documented status.

    * :class:`PRNError` (bad input): ``prog: error: message``, status 2;
    * :class:`OSError` (a full disk, a read-only or vanished output): ``prog: error: <file>: <reason>``,
      status 2: the tools write atomically, so nothing half-written is left;
    * Ctrl-C or SIGTERM (treated alike, so a service manager's stop saves what Ctrl-C saves):
      ``prog: interrupted``, status 130.

    Anything else is an internal bug and keeps its traceback.
    """
    previous = _sigterm_as_interrupt()
    try:
        return body()
    except PRNError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except OSError as exc:
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"{prog}: error: {where}{exc.strerror or exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _sigterm_as_interrupt():
    """SIGTERM raises KeyboardInterrupt in the main thread; returns the handler it replaced (None elsewhere)."""
    if threading.current_thread() is not threading.main_thread():
        return None

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    return signal.signal(signal.SIGTERM, interrupt)


class ArgumentParser(argparse.ArgumentParser):
    """argparse with one-line usage errors and exit status 2, like every other user error."""

    def error(self, message: str):  # noqa: D401 - argparse API
        print(f"{self.prog}: error: {message} (see {self.prog} --help)", file=sys.stderr)
        raise SystemExit(EXIT_USER_ERROR)


def _whole_number(low: int, high: int, words: str) -> Callable[[str], int]:
    """argparse ``type=`` for an integer in [low, high], with a one-line usage error naming ``words``."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or not low <= value <= high:
            raise argparse.ArgumentTypeError(f"expected {words}, got {text!r}")
        return value
    return parse


positive_int = _whole_number(1, MAX_COUNT, "a positive integer")          # counts
non_negative_int = _whole_number(0, MAX_COUNT, "an integer >= 0")
thread_count = _whole_number(0, MAX_THREADS, f"a thread count from 0 (the library's default) to {MAX_THREADS}")
positive_thread_count = _whole_number(1, MAX_THREADS, f"a thread count from 1 to {MAX_THREADS}")
seed_number = _whole_number(0, MAX_SEED, f"a seed from 0 to {MAX_SEED}")
tcp_port = _whole_number(1, 65535, "a TCP port from 1 to 65535")


def bounded_float(unit: str, low: float | None = None, high: float | None = None, *,
                  low_open: bool = False) -> Callable[[str], float]:
    """argparse ``type=`` for a finite number of ``unit`` within [low, high] (``nan``, ``inf`` refused).

    The check is :func:`prn_edge.validate.check_number`, the one the Python API uses.
    """
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {unit}, got {text!r}") from None
        try:
            return check_number(unit, value, low=low, high=high, low_open=low_open, optional=False)
        except PRNError:
            detail = describe_bounds(low, high, low_open)
            raise argparse.ArgumentTypeError(f"expected {unit}{detail}, got {text!r}") from None
    return parse
