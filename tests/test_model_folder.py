"""The exported model folder as one versioned unit (issue 14, item 1).

Unit tests of :mod:`prn_edge.contract.model_folder` on small files, then the real ``prn-export``
killed (SIGKILL) at 22 seeded points of its file-system work, publishing included, and at two
seeded moments in time: after every kill the folder is wholly the previous export or wholly
the new one, as the manifest-verifying reader sees it.
"""
from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from conftest import REPO, record_outcome, small_checkpoint

from prn_edge.contract.model_folder import (
    MANIFEST,
    ModelFolder,
    find_model_files,
    publish,
    read_manifest,
    recorded_checkpoint,
    resolve_model_folder,
)
from prn_edge.errors import PRNError
from prn_edge.io import file_sha256


def _export(root: Path, files: dict[str, bytes], checkpoint: Path | None = None) -> Path:
    """Publish ``files`` into ``root`` as prn-export does: staging, then :func:`publish`."""
    from prn_edge.contract.model_folder import new_staging

    staging = new_staging(root)
    for name, data in files.items():
        (staging / name).write_bytes(data)
    return publish(root, staging, checkpoint=None if checkpoint is None else str(checkpoint),
                   checkpoint_sha256=None if checkpoint is None else file_sha256(checkpoint))


def test_publish_versions_and_a_reexport_removes_what_it_does_not_contain(tmp_path):
    root = tmp_path / "model"
    first = _export(root, {"model.onnx": b"A32", "model.fp16.onnx": b"A16", "export_report.json": b"{}"})
    assert first.name == "v000001" and read_manifest(root)["version"] == "v000001"
    assert resolve_model_folder(root).onnx("fp16").read_bytes() == b"A16"
    # Defect D2: a second export without --fp16 must not leave the first one's FP16 model behind.
    second = _export(root, {"model.onnx": b"B32", "export_report.json": b"{}"})
    assert second.name == "v000002" and not first.exists()
    files = find_model_files(root)
    assert files.onnx == {"fp32": second / "model.onnx"}
    assert sorted(p.name for p in root.iterdir()) == [MANIFEST, "versions"]


def test_flat_layout_files_and_killed_staging_are_cleaned_on_publish(tmp_path):
    root = tmp_path / "model"
    root.mkdir()
    (root / "model.onnx").write_bytes(b"old flat")             # an export of the flat layout
    (root / "model.fp16.engine").write_bytes(b"old engine")
    (root / "notes.txt").write_text("mine")                    # not an export file: kept
    (root / ".prn-export-abc").mkdir()                         # staging of a killed flat export
    (root / "versions" / ".staging-xyz").mkdir(parents=True)   # staging of a killed export
    _export(root, {"model.onnx": b"new"})
    assert sorted(p.name for p in root.iterdir()) == [MANIFEST, "notes.txt", "versions"]
    assert [p.name for p in (root / "versions").iterdir()] == ["v000001"]


def test_a_folder_without_manifest_is_read_as_it_is(tmp_path):
    (tmp_path / "model.onnx").write_bytes(b"x")
    (tmp_path / "model.int8.onnx").write_bytes(b"y")
    files = find_model_files(tmp_path)
    assert files.onnx == {"fp32": tmp_path / "model.onnx", "int8": tmp_path / "model.int8.onnx"}


@pytest.mark.parametrize("damage, needle", [
    ("modify", "model.onnx: modified since it was exported"),
    ("truncate", "model.onnx: modified since it was exported"),
    ("delete", "model.onnx: listed in manifest.json but missing"),
    ("foreign", "model.int8.onnx: not part of this export"),
    ("version", "the version manifest.json names is missing"),
    ("manifest", "unreadable manifest"),
])
def test_a_damaged_folder_is_a_one_line_error_naming_the_file(tmp_path, damage, needle):
    root = tmp_path / "model"
    version = _export(root, {"model.onnx": b"0123456789", "model.trt.onnx": b"trt"})
    if damage == "modify":
        (version / "model.onnx").write_bytes(b"0123456780")             # same size, other bytes
    elif damage == "truncate":
        (version / "model.onnx").write_bytes(b"01234")
    elif damage == "delete":
        (version / "model.onnx").unlink()
    elif damage == "foreign":
        (version / "model.int8.onnx").write_bytes(b"from another export")
    elif damage == "version":
        os.rename(version, version.with_name("v000009"))
    else:
        (root / MANIFEST).write_text("{not json")
    with pytest.raises(PRNError, match=needle) as info:
        find_model_files(root)
    assert "\n" not in str(info.value)
    # Defect D3: the runtime never falls back to another engine (or another model) than the manifest's.
    from prn_edge.runtime.loader import load_engine

    with pytest.raises(PRNError, match=needle):
        load_engine(root)


def test_the_checkpoint_must_be_the_one_the_export_came_from(tmp_path):
    """Defect D3: a different file at the recorded checkpoint path is never run."""
    ckpt = tmp_path / "train" / "checkpoint.pt"
    ckpt.parent.mkdir()
    ckpt.write_bytes(b"checkpoint A")
    root = tmp_path / "model"
    _export(root, {"model.onnx": b"A"}, checkpoint=ckpt)
    assert recorded_checkpoint(root) == (ckpt, "the export's record")
    ckpt.write_bytes(b"checkpoint B")                       # retrained in place
    path, why = recorded_checkpoint(root)
    assert path is None and "is not the checkpoint this model was exported from" in why
    files = find_model_files(root)
    assert files.checkpoint is None
    from prn_edge.runtime.loader import plan_engines

    torch_candidate = next(c for c in plan_engines(files, "torch"))
    assert not torch_candidate.available and "not the checkpoint this model was exported from" in torch_candidate.reason


def test_layout_names_live_in_one_place(tmp_path):
    layout = ModelFolder(tmp_path)
    assert layout.trt_onnx("fp16").name == "model.fp16.trt.onnx" and layout.engine("int8").name == "model.int8.engine"
    assert ModelFolder.sidecar(layout.engine("fp16")).name == "model.fp16.engine.json"


# --------------------------------------------------------------------------- kill -9 during prn-export
DRIVER = textwrap.dedent("""
    import os, shutil, signal, sys
    kill_at, calls = int(os.environ.get("PRN_TEST_KILL_AT", "0")), [0]

    def counted(fn):
        def wrapper(*args, **kwargs):
            calls[0] += 1
            if calls[0] == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)
            return fn(*args, **kwargs)
        return wrapper

    # Every step that changes the file system: create, write-back, rename, remove.
    for name in ("mkdir", "rename", "replace", "unlink", "rmdir", "fsync"):
        setattr(os, name, counted(getattr(os, name)))
    shutil.rmtree = counted(shutil.rmtree)
    from prn_edge.export.cli import main
    status = main(sys.argv[1:])
    print(f"CALLS {calls[0]}", flush=True)
    sys.exit(status)
""")


def _run_export(checkpoint: Path, out: Path, kill_at: int = 0, kill_after: float | None = None):
    env = {**os.environ, "PRN_TEST_KILL_AT": str(kill_at)}
    args = [sys.executable, "-c", DRIVER, str(checkpoint), "--out", str(out), "--threads", "1",
            "--latency-rounds", "1", "--no-progress"]
    proc = subprocess.Popen(args, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if kill_after is not None:
        try:
            proc.wait(timeout=kill_after)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
    out_text, err_text = proc.communicate(timeout=300)
    return proc.returncode, out_text, err_text


def _state(out: Path) -> str | None:
    """The checkpoint sha256 of the folder's export, as a reader that verifies everything sees it."""
    folder = resolve_model_folder(out)                               # raises on anything mixed or damaged
    report = json.loads(folder.report_json.read_text())
    onnx_sha = {p: file_sha256(path) for p, path in find_model_files(out).onnx.items()}
    assert onnx_sha, "a published export without its ONNX"
    return report["checkpoint_sha256"]


@pytest.fixture(scope="module")
def two_checkpoints(tmp_path_factory):
    pytest.importorskip("torch")
    pytest.importorskip("onnxscript")
    pytest.importorskip("onnx_graphsurgeon")
    root = tmp_path_factory.mktemp("ckpts")
    return [small_checkpoint(root / f"checkpoint_{seed}.pt", seed) for seed in (1, 2)]


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_kill_9_anywhere_in_prn_export_leaves_the_old_or_the_new_export(two_checkpoints, tmp_path):
    a, b = two_checkpoints
    sha_a, sha_b = file_sha256(a), file_sha256(b)
    out = tmp_path / "model"
    code, stdout, err = _run_export(a, out)
    assert code == 0, err
    assert _state(out) == sha_a
    saved = tmp_path / "saved_a"
    shutil.copytree(out, saved, symlinks=True)

    def back_to_a():                       # the starting point of every kill: A published
        shutil.rmtree(out)
        shutil.copytree(saved, out, symlinks=True)
    # A full run of B over A counts the file-system steps; kill points are drawn from them.
    start = time.perf_counter()
    code, stdout, err = _run_export(b, out)
    duration = time.perf_counter() - start
    assert code == 0, err
    assert _state(out) == sha_b
    back_to_a()
    total = int(stdout.split("CALLS")[-1])
    rng = random.Random(14)
    points = sorted(set(rng.sample(range(1, total - 10), 12)) | set(range(total - 9, total + 1)))  # the tail: publishing
    assert len(points) >= 20
    outcomes = []
    for k in points:
        code, _, err = _run_export(b, out, kill_at=k)
        state = _state(out)
        assert state in (sha_a, sha_b), f"kill at step {k}: a mixed export"
        assert code in (-signal.SIGKILL, 0), err
        outcomes.append((k, code, "new" if state == sha_b else "old"))
        record_outcome("kill -9", f"prn-export B over A, killed at file-system step {k} of {total}", "prn-export",
                       code, f"the folder holds wholly the {'new' if state == sha_b else 'old'} export")
        if state == sha_b:
            back_to_a()
    for fraction in (rng.uniform(0.2, 0.95), rng.uniform(0.2, 0.95)):  # and at moments in time
        back_to_a()
        code, _, err = _run_export(b, out, kill_after=fraction * duration)
        state = _state(out)
        assert state in (sha_a, sha_b)
        record_outcome("kill -9", f"prn-export B over A, killed after {fraction:.0%} of its run time", "prn-export",
                       code, f"the folder holds wholly the {'new' if state == sha_b else 'old'} export")
    killed = [o for o in outcomes if o[1] == -signal.SIGKILL]
    assert len(killed) >= 20, outcomes
    assert {"old", "new"} <= {o[2] for o in killed}, outcomes     # kills landed before and after the switch
    # What killed exports left behind is removed by the next one.
    assert _run_export(b, out)[0] == 0 and _state(out) == sha_b
    assert sorted(p.name for p in (out / "versions").iterdir()) == [read_manifest(out)["version"]]
