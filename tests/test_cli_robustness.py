"""Issue 14, item 2: the common causes of tracebacks and hangs, fixed once for every tool.

* one validator for the numbers a user gives (:func:`prn_edge.validate.check_number`, used by
  the argparse types of every CLI and by the Python API): ``nan``, ``inf``, negative and zero
  where they make no sense are one-line errors with exit status 2;
* :func:`prn_edge.cli.run_cli` turns an OSError (a full disk, a read-only output) into one line
  naming the file, and SIGTERM into what Ctrl-C does.
"""
from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import textwrap

import pytest
from conftest import REPO

from prn_edge.cli import EXIT_INTERRUPTED, EXIT_USER_ERROR, run_cli
from prn_edge.errors import PRNError
from prn_edge.validate import check_number


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf"), True, "3", None])
def test_check_number_refuses_what_is_not_a_finite_number(value):
    with pytest.raises(PRNError, match="--x expects a number"):
        check_number("--x", value, optional=False)


def test_check_number_bounds_and_integers():
    assert check_number("--n", 3, low=1, integer=True) == 3
    assert check_number("--f", 0.0, low=0, high=1) == 0.0
    assert check_number("--opt", None) is None
    for value, kwargs in ((0, {"low": 1, "integer": True}), (2.5, {"integer": True}), (0.0, {"low": 0, "low_open": True}),
                          (1.5, {"low": 0, "high": 1})):
        with pytest.raises(PRNError):
            check_number("--v", value, **kwargs)


# (tool module, argv, the text the one-line error must contain). The defects of the issue.
CASES = [
    ("prn_edge.train.cli", ["--data", "d", "--out", "o", "--lr", "nan"], "--lr"),
    ("prn_edge.train.cli", ["--data", "d", "--out", "o", "--minutes", "nan"], "--minutes"),
    ("prn_edge.train.cli", ["--data", "d", "--out", "o", "--threads", "-1"], "--threads"),
    ("prn_edge.train.cli", ["--data", "d", "--out", "o", "--batch-size", "0"], "--batch-size"),
    ("prn_edge.bench.cli", ["--duration", "nan"], "--duration"),
    ("prn_edge.bench.cli", ["--duration", "inf"], "--duration"),
    ("prn_edge.bench.cli", ["--warmup", "nan"], "--warmup"),
    ("prn_edge.bench.cli", ["--threshold", "2"], "--threshold"),
    ("prn_edge.export.cli", ["checkpoint.pt", "--tolerance", "nan"], "--tolerance"),
    ("prn_edge.runtime.cli", ["--model", "m", "--source", "s", "--threshold", "-1"], "--threshold"),
    ("prn_edge.runtime.cli", ["--model", "m", "--source", "s", "--threads", "-1"], "--threads"),
    ("prn_edge.runtime.cli", ["--model", "m", "--source", "s", "--view", "99999"], "--view"),
    ("prn_edge.bench.cli", ["--frame", "100000x100000"], "--frame"),
]


@pytest.mark.parametrize("module, argv, flag", CASES, ids=[" ".join(c[1][-2:]) for c in CASES])
def test_bad_numbers_are_one_line_usage_errors(module, argv, flag, capsys):
    import importlib

    main = importlib.import_module(module).main
    with pytest.raises(SystemExit) as info:
        main(argv)
    err = capsys.readouterr().err.strip()
    assert info.value.code == EXIT_USER_ERROR
    assert len(err.splitlines()) == 1 and flag in err, err


def test_an_os_error_is_one_line_naming_the_file(capsys):
    def full_disk():
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "/data/out/checkpoint.pt")

    assert run_cli("prn-x", full_disk) == EXIT_USER_ERROR
    assert capsys.readouterr().err == "prn-x: error: /data/out/checkpoint.pt: No space left on device\n"


def test_sigterm_is_treated_like_ctrl_c():
    code = textwrap.dedent("""
        import os, signal, sys, time
        from prn_edge.cli import run_cli
        def body():
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)
            return 0
        sys.exit(run_cli("prn-x", body))
    """)
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == EXIT_INTERRUPTED and proc.stderr == "prn-x: interrupted\n"
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL      # this process's handler is untouched


@pytest.mark.parametrize("spec, needle", [
    ("synthetic:0x0", "width expects a whole number from 1 to 16384"),
    ("synthetic:100000x100000", "from 1 to 16384, got 100000"),
    ("synthetic:64x64@0", "FPS expects a number > 0"),
])
def test_bad_synthetic_sources_fail_before_anything_runs(spec, needle):
    """Issue 14, D6: these raised ZeroDivisionError / MemoryError, and @0 left an empty run behind."""
    from prn_edge.runtime.sources import open_source

    with pytest.raises(PRNError, match=needle):
        open_source(spec)
