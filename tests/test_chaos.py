"""Issue 14, item 3: the chaos suite. Every tool, run as a user runs it, against what goes wrong
on a production line: a full disk, a read-only output, kill -9 at random moments, truncated and
foreign files, and nonsense numbers in every option.

What each case asserts, whatever the tool:

* the documented exit status (``docs/contract.md``: 0 done, 1 the source failed for good or the
  INT8 gate failed, 2 bad input or an unusable file or folder, 130 interrupted; -9 for a kill);
* exactly one ``<tool>: error: ...`` line, the last one on stderr, naming what is wrong, and no
  traceback;
* no partial or mixed output: what a reader of the output finds is the previous complete state
  or the new complete one (a model folder that verifies, a database that passes SQLite's
  integrity check, records that name only images on disk, a training state that loads);
* nothing lost: what was done before the failure is kept and a rerun (``--resume``) goes on.

The full-disk and read-only cases mount small tmpfs file systems (root with CAP_SYS_ADMIN, as on
these machines and in CI); where that is refused they skip with the reason. Each outcome is also
recorded for ``benchmarks/results/reliability.md`` (:func:`conftest.record_outcome`).
"""
from __future__ import annotations

import contextlib
import importlib
import json
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import REPO, record_outcome, small_checkpoint
from test_train import FAST, tiny_category  # noqa: F401  (fixture: links to real bottle images)

from prn_edge.cli import EXIT_INTERRUPTED, EXIT_USER_ERROR
from prn_edge.io import file_sha256

pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

TOOLS = {"prn-train": "prn_edge.train.cli", "prn-eval": "prn_edge.eval.cli", "prn-export": "prn_edge.export.cli",
         "prn-inspect": "prn_edge.runtime.cli", "prn-bench": "prn_edge.bench.cli"}
KILLED = -signal.SIGKILL
EXPORT_FAST = ["--threads", "1", "--latency-rounds", "1", "--no-progress"]


@dataclass
class Outcome:
    status: int
    stdout: str
    stderr: str


def run_tool(tool: str, args: list[str], *, cwd: Path | None = None, timeout: float = 300) -> Outcome:
    proc = subprocess.run([sys.executable, "-m", TOOLS[tool], *map(str, args)], cwd=cwd or REPO,
                          capture_output=True, text=True, timeout=timeout)
    return Outcome(proc.returncode, proc.stdout, proc.stderr)


def assert_one_line_error(outcome: Outcome, tool: str, *needles: str, status: int = EXIT_USER_ERROR,
                          category: str = "", case: str = "") -> str:
    """The documented status, one ``tool: error:`` line (the last), naming ``needles``, no traceback."""
    lines = outcome.stderr.strip().splitlines()
    assert "Traceback" not in outcome.stderr, outcome.stderr
    assert outcome.status == status, (outcome.status, outcome.stderr)
    errors = [line for line in lines if line.startswith(f"{tool}: error:")]
    assert len(errors) == 1 and lines[-1] == errors[0], outcome.stderr
    for needle in needles:
        assert needle in errors[0], (needle, errors[0])
    if category:
        record_outcome(category, case, tool, outcome.status, errors[0])
    return errors[0]


# -- file systems ---------------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def can_mount(tmp_path_factory) -> None:
    """Skip unless a tmpfs can be mounted here (root with CAP_SYS_ADMIN)."""
    where = tmp_path_factory.mktemp("probe-mount")
    if shutil.which("mount") is None:
        pytest.skip("no mount command here: the full-disk and read-only cases need a small tmpfs")
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(where)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({proc.stderr.strip() or 'mount refused'}): the full-disk and "
                    "read-only cases need root with CAP_SYS_ADMIN")
    subprocess.run(["umount", str(where)], check=True)


@contextlib.contextmanager
def tmpfs(where: Path, size: str, *, readonly: bool = False):
    """A tmpfs of ``size`` mounted at ``where`` for the duration (a small disk that fills up)."""
    where.mkdir(parents=True, exist_ok=True)
    options = f"size={size}" + (",ro" if readonly else "")
    subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)], check=True)
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def grow(where: Path, size: str) -> None:
    """Make room on a tmpfs (what a user does after the full-disk error)."""
    subprocess.run(["mount", "-o", f"remount,size={size}", str(where)], check=True)


def fill(where: Path) -> None:
    """Fill the file system at ``where`` to the last byte."""
    with open(where / "filler", "wb") as handle, contextlib.suppress(OSError):
        while True:
            handle.write(b"\0" * 65536)
            handle.flush()


def temporaries(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.name.endswith(".tmp") or p.name.startswith(".staging-")]


# -- shared models ----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> tuple[Path, Path]:
    """Two different small checkpoints, A and B."""
    pytest.importorskip("onnxscript")
    root = tmp_path_factory.mktemp("chaos-ckpt")
    return small_checkpoint(root / "a.pt", 1), small_checkpoint(root / "b.pt", 2)


@pytest.fixture(scope="module")
def export_a(checkpoints, tmp_path_factory) -> Path:
    """An FP32 export of A (model.onnx + model.trt.onnx, about 60 MB)."""
    out = tmp_path_factory.mktemp("chaos-export") / "model"
    outcome = run_tool("prn-export", [checkpoints[0], "--out", out, *EXPORT_FAST])
    assert outcome.status == 0, outcome.stderr
    return out


def exported_checkpoint(model_dir: Path) -> str:
    """The checkpoint sha256 of the export a verifying reader sees (raises on anything mixed)."""
    from prn_edge.contract.model_folder import resolve_model_folder

    folder = resolve_model_folder(model_dir)
    return json.loads(folder.report_json.read_text())["checkpoint_sha256"]


def check_results(out: Path) -> int:
    """A results folder a reader can trust; returns the number of frame records.

    The database passes SQLite's integrity check, sequence numbers run 0, 1, 2, ... within each
    run, and every image a record names is on disk with its frame.
    """
    db = sqlite3.connect(out / "results.db")
    try:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        rows = db.execute("SELECT run_id, sequence, image FROM frames ORDER BY id").fetchall()
    finally:
        db.close()
    runs: dict[str, list[int]] = {}
    for run_id, sequence, image in rows:
        runs.setdefault(run_id, []).append(sequence)
        if image is not None:
            assert (out / "anomalies" / image).is_file(), image
            assert (out / "anomalies" / image.replace("_overlay.jpg", "_frame.png")).is_file(), image
    for sequences in runs.values():
        assert sequences == list(range(len(sequences))), sequences[:20]
    return len(rows)


# -- full disk --------------------------------------------------------------------------------------------

def test_full_disk_during_training_keeps_the_state_and_resumes(can_mount, tiny_category, tmp_path):  # noqa: F811
    """The disk fills when the checkpoint is written: the state is kept, the error says how to go on."""
    fast = [a if a != "none-cache" else str(tmp_path / "cache") for a in FAST]
    # A run on a roomy disk gives the sizes; the small disk holds the training state (weights and
    # Adam moments), and half the checkpoint written after it.
    roomy = tmp_path / "roomy"
    assert run_tool("prn-train", ["--data", tiny_category, "--out", roomy, "--steps", "2", *fast]).status == 0
    size = (roomy / "train_state.pt").stat().st_size + (roomy / "checkpoint.pt").stat().st_size // 2
    with tmpfs(tmp_path / "disk", f"{size // 1024}k") as disk:
        out = disk / "run"
        outcome = run_tool("prn-train", ["--data", tiny_category, "--out", out, "--steps", "2", *fast])
        assert_one_line_error(outcome, "prn-train", "No space left on device", "last saved state is step 2",
                              "--resume", category="full disk",
                              case="prn-train: the disk fills while the final checkpoint is written")
        assert not (out / "checkpoint.pt").exists() and not temporaries(out)
        grow(disk, "300m")
        outcome = run_tool("prn-train", ["--data", tiny_category, "--out", out, "--steps", "2", "--resume", *fast])
        assert outcome.status == 0, outcome.stderr
        from prn_edge.checkpoint import load_checkpoint
        assert load_checkpoint(out / "checkpoint.pt").metadata["training"]["steps"] == 2
        record_outcome("full disk", "prn-train --resume after making room", "prn-train", outcome.status,
                       "checkpoint written at step 2")


def test_full_disk_during_export_keeps_the_previous_export(can_mount, checkpoints, export_a, tmp_path):
    """Re-exporting B onto a disk with room for one export: the folder stays wholly A."""
    a, b = checkpoints
    with tmpfs(tmp_path / "disk", "100m") as disk:
        out = disk / "model"
        shutil.copytree(export_a, out, symlinks=True)
        outcome = run_tool("prn-export", [b, "--out", out, *EXPORT_FAST])
        assert_one_line_error(outcome, "prn-export", "No space left on device", "model", category="full disk",
                              case="prn-export of B over an export of A, room for one export only")
        assert exported_checkpoint(out) == file_sha256(a)
        assert not temporaries(out)
    with tmpfs(tmp_path / "small", "20m") as disk:     # a first export that cannot fit: no model at all
        outcome = run_tool("prn-export", [a, "--out", disk / "model", *EXPORT_FAST])
        assert_one_line_error(outcome, "prn-export", "No space left on device", category="full disk",
                              case="prn-export into a 20 MB disk (no previous export)")
        assert not (disk / "model" / "manifest.json").exists() and not temporaries(disk)


@pytest.mark.parametrize("store", ["sqlite", "jsonl"])
def test_full_disk_during_inspection_keeps_every_recorded_frame(can_mount, export_a, tmp_path, store):
    """Results and anomaly images fill a 400 kB disk: the frames recorded before stay readable."""
    with tmpfs(tmp_path / "disk", "400k") as disk:
        out = disk / "inspect"
        outcome = run_tool("prn-inspect", ["--model", export_a, "--source", "synthetic:320x240", "--threshold", "0",
                                           "--max-frames", "100000", "--store", store, "--out", out])
        line = assert_one_line_error(outcome, "prn-inspect", "No space left on device" if store == "jsonl"
                                     else "database or disk is full", "frame(s) were recorded",
                                     category="full disk", case=f"prn-inspect ({store}) on a 400 kB disk, "
                                     "every frame anomalous")
        recorded = int(line.split("; ")[-1].split(" frame(s)")[0])
        if store == "sqlite":
            assert check_results(out) == recorded > 0
        else:
            from prn_edge.runtime.store import read_jsonl
            frames = [r for r in read_jsonl(out / "results.jsonl") if r["type"] == "frame"]
            assert len(frames) == recorded > 0 and [f["sequence"] for f in frames] == list(range(recorded))
            assert all((out / "anomalies" / f["image"]).is_file() for f in frames if f["image"])
        assert not temporaries(out)


def test_full_disk_for_reports_leaves_no_partial_file(can_mount, checkpoints, export_a, tiny_category,  # noqa: F811
                                                      tmp_path):
    with tmpfs(tmp_path / "disk", "1m") as disk:
        fill(disk)
        outcome = run_tool("prn-bench", ["--model", export_a, "--backends", "onnxruntime", "--batch", "1",
                                         "--warmup", "0", "--duration", "0.5", "--json", disk / "bench.json",
                                         "--quiet"])
        assert_one_line_error(outcome, "prn-bench", "bench.json", "No space left on device", category="full disk",
                              case="prn-bench --json onto a full disk")
        outcome = run_tool("prn-eval", ["--checkpoint", checkpoints[0], "--data", tiny_category, "--limit", "1",
                                        "--out", disk / "eval", "--no-progress"])
        assert_one_line_error(outcome, "prn-eval", "No space left on device", category="full disk",
                              case="prn-eval --out onto a full disk")
        assert sorted(p.name for p in disk.rglob("*") if p.is_file()) == ["filler"]


# -- read-only outputs ------------------------------------------------------------------------------------

READ_ONLY = [
    ("prn-train", lambda c, m, d, ro: ["--data", d, "--out", ro / "run", *FAST[:-3], "--quiet", "--steps", "1"]),
    ("prn-eval", lambda c, m, d, ro: ["--checkpoint", c, "--data", d, "--out", ro / "eval", "--no-progress"]),
    ("prn-export", lambda c, m, d, ro: [c, "--out", ro / "model", *EXPORT_FAST]),
    ("prn-inspect", lambda c, m, d, ro: ["--model", m, "--source", "synthetic:64x64", "--out", ro / "inspect"]),
    ("prn-bench", lambda c, m, d, ro: ["--model", m, "--backends", "onnxruntime", "--json", ro / "bench.json"]),
]


@pytest.mark.parametrize("tool, argv", READ_ONLY, ids=[t for t, _ in READ_ONLY])
def test_a_read_only_output_fails_before_any_work(can_mount, checkpoints, export_a, tiny_category,  # noqa: F811
                                                   tmp_path, tool, argv):
    with tmpfs(tmp_path / "ro", "1m", readonly=True) as ro:
        outcome = run_tool(tool, argv(checkpoints[0], export_a, tiny_category, ro))
        assert_one_line_error(outcome, tool, "Read-only file system", category="read-only output",
                              case=f"{tool} writing into a read-only file system")
        # Before any work: no progress line about the job itself precedes the error.
        work = [line for line in outcome.stderr.splitlines()
                if any(w in line for w in ("exporting", "training", "inspected", "measuring", "evaluating"))]
        assert not work, outcome.stderr


# -- kill -9 ----------------------------------------------------------------------------------------------

def kill_once_ready(tool: str, args: list, ready, delay: float, wait_s: float = 240) -> None:
    """Start ``tool``, wait until ``ready()`` (it is doing the work under test), ``delay`` more
    seconds, then kill -9 it."""
    proc = subprocess.Popen([sys.executable, "-m", TOOLS[tool], *map(str, args)], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + wait_s
        while not ready():
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()
            time.sleep(0.05)
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=60) == KILLED
    finally:
        proc.kill()
        proc.stderr.close()


@pytest.mark.slow
def test_kill_9_during_training_loses_nothing_saved(tiny_category, tmp_path):  # noqa: F811
    """Killed at seeded random moments while it saves its state every few steps: the state on disk
    always loads, and --resume goes on from it to a checkpoint."""
    import torch

    fast = [a if a != "none-cache" else str(tmp_path / "cache") for a in FAST]
    out = tmp_path / "run"
    rng = random.Random(1414)
    steps_seen = []
    for kill in range(2):
        args = ["--data", tiny_category, "--out", out, "--steps", "100000", "--save-every", "0.001", *fast]
        if kill:
            args.append("--resume")
        state_file = out / "train_state.pt"
        before = state_file.stat().st_mtime_ns if kill else 0      # ready: a new state was saved
        kill_once_ready("prn-train", args, lambda: state_file.exists() and state_file.stat().st_mtime_ns != before,
                        rng.uniform(0.0, 3.0))
        state = torch.load(out / "train_state.pt", map_location="cpu", weights_only=True)   # never torn
        steps_seen.append(state["step"])
        record_outcome("kill -9", f"prn-train killed {kill + 1} time(s) at a random moment", "prn-train", KILLED,
                       f"train_state.pt loads (step {state['step']})")
    assert steps_seen[1] >= steps_seen[0] >= 1
    outcome = run_tool("prn-train", ["--data", tiny_category, "--out", out, "--steps", str(steps_seen[-1] + 1),
                                     "--resume", *fast])
    assert outcome.status == 0, outcome.stderr
    assert not temporaries(out) and (out / "checkpoint.pt").is_file()
    record_outcome("kill -9", "prn-train --resume after the kills", "prn-train", 0,
                   f"went on from step {steps_seen[-1]} to a checkpoint; no temporaries left")


@pytest.mark.slow
def test_kill_9_during_inspection_keeps_a_consistent_record(export_a, tmp_path):
    """Killed at seeded random moments while every frame is anomalous (images queued for the
    background writer): the database is intact, and no record names an image that is not on disk."""
    out = tmp_path / "inspect"
    rng = random.Random(99)
    for kill in range(3):
        kill_once_ready("prn-inspect", ["--model", export_a, "--source", "synthetic:320x240", "--threshold", "0",
                                        "--out", out], (out / "results.db").exists, rng.uniform(0.5, 2.5))
        frames = check_results(out)
        record_outcome("kill -9", f"prn-inspect killed at a random moment (run {kill + 1})", "prn-inspect", KILLED,
                       f"database intact, {frames} frame records, every named image on disk")
    outcome = run_tool("prn-inspect", ["--model", export_a, "--source", "synthetic:320x240", "--max-frames", "3",
                                       "--out", out])
    assert outcome.status == 0, outcome.stderr
    assert check_results(out) > frames


# -- truncated and foreign files -------------------------------------------------------------------------

def _truncated(src: Path, dst: Path) -> Path:
    data = src.read_bytes()
    dst.write_bytes(data[: len(data) // 2])
    return dst


def _pickle_bomb(dst: Path, marker: Path) -> Path:
    """A torch.save-style zip whose pickle calls os.system: it must never run."""
    import pickle

    class Bomb:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    with zipfile.ZipFile(dst, "w") as archive:
        archive.writestr("archive/data.pkl", pickle.dumps({"model": Bomb()}, protocol=2))
        archive.writestr("archive/version", "3\n")
    return dst


def _file(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


BAD_CHECKPOINTS = {
    "truncated": lambda a, tmp: _truncated(a, tmp / "truncated.pt"),
    "empty": lambda a, tmp: _file(tmp / "empty.pt", b""),
    "random bytes": lambda a, tmp: _file(tmp / "noise.pt", random.Random(7).randbytes(4096)),
    "code in the pickle": lambda a, tmp: _pickle_bomb(tmp / "bomb.pt", tmp / "BOOM"),
}
CHECKPOINT_USERS = {
    "prn-export": lambda ckpt, model, data, tmp: [ckpt, "--out", tmp / "model", *EXPORT_FAST],
    "prn-eval": lambda ckpt, model, data, tmp: ["--checkpoint", ckpt, "--data", data, "--limit", "1",
                                                "--out", tmp / "eval", "--no-progress"],
    "prn-bench": lambda ckpt, model, data, tmp: ["--model", model, "--checkpoint", ckpt, "--backends", "torch",
                                                 "--quiet"],
}


@pytest.mark.parametrize("tool", CHECKPOINT_USERS)
@pytest.mark.parametrize("kind", BAD_CHECKPOINTS)
def test_a_bad_checkpoint_is_one_line_and_never_runs_code(checkpoints, export_a, tiny_category, tmp_path,  # noqa: F811
                                                          tool, kind):
    bad = BAD_CHECKPOINTS[kind](checkpoints[0], tmp_path)
    outcome = run_tool(tool, CHECKPOINT_USERS[tool](bad, export_a, tiny_category, tmp_path))
    assert_one_line_error(outcome, tool, bad.name, category="truncated or foreign file",
                          case=f"{tool} given a checkpoint that is {kind}")
    assert not (tmp_path / "BOOM").exists()
    assert not (tmp_path / "model" / "manifest.json").exists() and not (tmp_path / "eval").exists()


def test_resume_from_a_truncated_training_state_is_one_line(tiny_category, tmp_path):  # noqa: F811
    fast = [a if a != "none-cache" else str(tmp_path / "cache") for a in FAST]
    out = tmp_path / "run"
    assert run_tool("prn-train", ["--data", tiny_category, "--out", out, "--steps", "1", *fast]).status == 0
    _truncated(out / "train_state.pt", out / "train_state.pt")
    outcome = run_tool("prn-train", ["--data", tiny_category, "--out", out, "--steps", "2", "--resume", *fast])
    assert_one_line_error(outcome, "prn-train", "train_state.pt", "cannot resume", category="truncated or foreign file",
                          case="prn-train --resume from a truncated train_state.pt")


def _damage_model(kind: str, model: Path, other: Path) -> str:
    """Damage a copy of an export the way a bad copy, a half-finished sync or a mix-up would; returns
    what the error must name."""
    from prn_edge.contract.model_folder import resolve_model_folder

    folder = resolve_model_folder(model)
    onnx = folder.root / "model.onnx"
    if kind == "truncated model.onnx":
        _truncated(onnx, onnx)
        return "model.onnx"
    if kind == "model.onnx of another export":
        shutil.copyfile(resolve_model_folder(other).root / "model.onnx", onnx)
        return "model.onnx"
    if kind == "missing model.onnx":
        onnx.unlink()
        return "model.onnx"
    if kind == "truncated manifest":
        _truncated(model / "manifest.json", model / "manifest.json")
        return "manifest.json"
    if kind == "a foreign ONNX":
        import onnx as onnx_lib
        from onnx import helper

        graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                                  [helper.make_tensor_value_info("x", 1, [1, 3, 8, 8])],
                                  [helper.make_tensor_value_info("y", 1, [1, 3, 8, 8])])
        shutil.rmtree(model)
        model.mkdir()
        onnx_lib.save(helper.make_model(graph), model / "model.onnx")
        return "not a PRN Edge ONNX export"
    raise AssertionError(kind)


DAMAGED_MODELS = ["truncated model.onnx", "model.onnx of another export", "missing model.onnx",
                  "truncated manifest", "a foreign ONNX"]


@pytest.fixture(scope="module")
def export_b(checkpoints, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("chaos-export-b") / "model"
    assert run_tool("prn-export", [checkpoints[1], "--out", out, *EXPORT_FAST]).status == 0
    return out


@pytest.mark.parametrize("kind", DAMAGED_MODELS)
def test_a_damaged_model_folder_is_one_line_naming_the_file(export_a, export_b, tmp_path, kind):
    model = tmp_path / "model"
    shutil.copytree(export_a, model, symlinks=True)
    needle = _damage_model(kind, model, export_b)
    for tool, args in (("prn-inspect", ["--model", model, "--source", "synthetic:64x64", "--max-frames", "2",
                                        "--out", tmp_path / "inspect"]),
                       ("prn-bench", ["--model", model, "--duration", "0.5", "--warmup", "0", "--batch", "1",
                                      "--out", tmp_path / "bench", "--quiet"])):
        outcome = run_tool(tool, args)
        assert_one_line_error(outcome, tool, needle, category="truncated or foreign file",
                              case=f"{tool} on a model folder with {kind.replace('a foreign', 'only a foreign')}")
        assert not (tmp_path / "inspect").exists() and not (tmp_path / "bench").exists()


# -- argument fuzzing -------------------------------------------------------------------------------------

FUZZ = ["nan", "inf", "-inf", "-1", "0", "1e308", "99999999999999999999", "", "x"]
MISSING = "/nonexistent/prn-chaos"
# Arguments that name nothing usable, so a value the option accepts still ends in a quick, clean error.
BASE = {
    "prn-train": ["--data", MISSING, "--out", "run"],
    "prn-eval": ["--checkpoint", MISSING, "--data", MISSING],
    "prn-export": [MISSING],
    "prn-inspect": ["--model", MISSING, "--source", "synthetic:64x64"],
    "prn-bench": ["--model", MISSING],
}


def _value_options(tool: str) -> list[str]:
    """Every option of ``tool`` that takes a free-form value (not a flag, not a fixed choice)."""
    parser = importlib.import_module(TOOLS[tool]).build_parser()
    return [a.option_strings[-1] for a in parser._actions
            if a.option_strings and a.nargs != 0 and not a.choices and a.dest != "help"]


FUZZ_CASES = [(tool, option) for tool in TOOLS for option in _value_options(tool)]


@pytest.mark.parametrize("tool, option", FUZZ_CASES, ids=[f"{t} {o}" for t, o in FUZZ_CASES])
def test_every_option_refuses_nonsense_with_one_line(tool, option, tmp_path, monkeypatch, capsys):
    """NaN, inf, negative, zero, huge, empty and non-numbers in every option: exit 2, one line, no
    traceback (an unexpected exception fails the test with its own), nothing written."""
    monkeypatch.chdir(tmp_path)
    main = importlib.import_module(TOOLS[tool]).main
    messages = []
    for value in FUZZ:
        argv = list(BASE[tool])
        if option in argv:
            argv[argv.index(option) + 1] = value
        else:
            argv += [option, value]
        try:
            status = main(argv)
        except SystemExit as exc:
            status = exc.code
        err = capsys.readouterr().err.strip()
        assert status == EXIT_USER_ERROR, (argv, status, err)
        assert len(err.splitlines()) == 1 and err.startswith(f"{tool}: error:"), (argv, err)
        messages.append(f"`{value or repr(value)}`: {err.split('error: ', 1)[1][:90]}")
    assert not list(tmp_path.iterdir()), f"{tool} {option}: left {list(tmp_path.iterdir())}"
    record_outcome("argument fuzzing", f"{tool} {option} with {len(FUZZ)} values (nan, inf, -inf, -1, 0, 1e308, "
                   "1e20, empty, text)", tool, EXIT_USER_ERROR, "; ".join(messages[:2]) + " ...")


def test_interrupt_status_is_documented():
    """The statuses the suite asserts are the ones the CLIs define (and docs/contract.md states)."""
    assert (EXIT_USER_ERROR, EXIT_INTERRUPTED) == (2, 130)
    text = (REPO / "docs" / "contract.md").read_text()
    for status in ("| 0 |", "| 1 |", "| 2 |", "| 130 |"):
        assert status in text, status
