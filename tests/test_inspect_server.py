"""prn-inspect --server: the camera loop with its model in a Triton server, and a server that goes away.

The first tests need no server: the loop's retry of the same frame while its engine is unavailable
(fake engines), and the Triton engine against a stand-in client (what it reads from the model's
config, how it sorts failures, the model it checks after an outage). The rest run ``prn-serve`` from
the environment ``make serve-env`` builds, on loopback ports (``tests/test_serve.py``'s fixtures):
``prn-inspect --server`` on real bottle images records the local engine's scores and decisions;
killing the server (``kill -9`` of prn-serve, its tritonserver and stubs) mid-stream loses no decided
frame, and a server that stays away ends the run with status 1 and one line naming it.
"""
from __future__ import annotations

import json
import os
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO

from prn_edge.contract.engine import Engine, EngineUnavailable
from prn_edge.errors import PRNError
from prn_edge.runtime import Backoff, InspectionLoop, Pipeline, SQLiteStore, read_jsonl
from prn_edge.runtime.sources import Source

cv2 = pytest.importorskip("cv2")

try:   # the server tests' fixtures; without torch, onnx or tritonclient only the first tests run
    from test_serve import NO_SERVE_ENV, SERVE_ENV, Server, bottle_batch, exported  # noqa: F401
except pytest.skip.Exception as missing:
    SERVE_TESTS_MISSING = f"the Triton server tests need what tests/test_serve.py needs: {missing}"
else:
    SERVE_TESTS_MISSING = ""


# --------------------------------------------------------------------------- the loop, fake engines
class Frames(Source):
    """``n`` frames of brightness 0, 1, 2, ... (a file-like source: every frame is inspected)."""

    name = "frames"

    def __init__(self, n: int) -> None:
        super().__init__()
        self.n = n

    def read(self):
        if self._sequence >= self.n:
            return None
        return self._frame(np.full((24, 32, 3), self._sequence, np.uint8))


class FlakyEngine(Engine):
    """Scores a frame by its brightness; unavailable while ``down(call)`` says so (``calls`` counts them)."""

    name = "flaky"

    def __init__(self, down) -> None:
        self.image_size, self.threshold, self.metadata = 16, 0.5, {}
        self.down, self.calls, self.answered = down, 0, []

    def _predict(self, images):
        self.calls += 1
        if self.down(self.calls):
            raise EngineUnavailable(f"Triton server grpc://test:1 (model 'prn') unavailable: call {self.calls}")
        level = images.reshape(images.shape[0], -1).mean(1).astype(np.float32)
        self.answered.append(int(level[0]))
        return np.zeros((images.shape[0], 16, 16), np.float32), level / 255.0


def _stored(db: Path) -> list[tuple[int, float]]:
    with sqlite3.connect(db) as connection:
        return connection.execute("SELECT sequence, score FROM frames ORDER BY id").fetchall()


def test_an_unavailable_engine_is_retried_on_the_same_frame(tmp_path):
    engine = FlakyEngine(lambda call: call in (4, 5, 6))       # frame 3 fails, then twice more; the 3rd retry answers
    store = SQLiteStore(tmp_path / "r.db")
    loop = InspectionLoop(Pipeline(engine), Frames(8), store, engine_backoff=Backoff(initial=0.01, attempts=5))
    s = loop.run()
    store.close()
    assert s.end == "end of source" and s.frames == s.read == 8
    assert (s.server_errors, s.server_retries) == (1, 3)
    assert engine.answered == list(range(8))                  # the same frame again, none skipped
    stored = _stored(tmp_path / "r.db")
    assert [seq for seq, _ in stored] == list(range(8))
    np.testing.assert_allclose([score for _, score in stored], np.arange(8) / 255.0, rtol=0, atol=1e-7)


def test_a_server_that_stays_away_ends_the_run_with_every_stored_frame_decided(tmp_path):
    engine = FlakyEngine(lambda call: call >= 4)
    store = SQLiteStore(tmp_path / "r.db")
    loop = InspectionLoop(Pipeline(engine), Frames(8), store, engine_backoff=Backoff(initial=0.01, attempts=3))
    s = loop.run()
    store.close()
    assert s.end.startswith("server failed: Triton server grpc://test:1 (model 'prn') unavailable: call 7")
    assert s.end.endswith("gave up on frame 3 after 3 retries") and "\n" not in s.end
    assert s.frames == 3 and (s.server_errors, s.server_retries) == (1, 3)
    assert [seq for seq, _ in _stored(tmp_path / "r.db")] == [0, 1, 2]
    with sqlite3.connect(tmp_path / "r.db") as connection:
        summary = json.loads(connection.execute("SELECT summary FROM runs").fetchone()[0])
    assert (summary["server_errors"], summary["server_retries"], summary["frames"]) == (1, 3, 3)


def test_a_stop_during_the_back_off_leaves_the_frame_undecided(tmp_path):
    engine = FlakyEngine(lambda call: call >= 3)
    store = SQLiteStore(tmp_path / "r.db")
    loop = InspectionLoop(Pipeline(engine), Frames(8), store, engine_backoff=Backoff(initial=0.05, maximum=0.05))
    threading.Timer(0.5, lambda: loop.stop("signal SIGTERM")).start()
    s = loop.run()                                              # retried without end (attempts None) until stopped
    store.close()
    assert s.end == "signal SIGTERM" and s.frames == 2 and s.server_errors == 1 and s.server_retries >= 3
    assert [seq for seq, _ in _stored(tmp_path / "r.db")] == [0, 1]


# --------------------------------------------------------------------------- the engine, a stand-in client
def test_server_urls_are_checked_in_one_line():
    from prn_edge.runtime.backends.triton import parse_server_url

    assert parse_server_url("grpc://10.0.0.5:9001") == ("grpc", "10.0.0.5", 9001)
    assert parse_server_url("http://triton") == ("http", "triton", 8000)
    assert parse_server_url("grpc://[::1]") == ("grpc", "::1", 8001)
    for bad in ("", "triton:8001", "https://triton:8000", "grpc://:8001", "grpc://h:99999", "grpc://h:0",
                "http://h:8000/v2/models", "grpc://user@h:8001"):
        with pytest.raises(PRNError, match="expected grpc://HOST:PORT or http://HOST:PORT") as caught:
            parse_server_url(bad)
        assert "\n" not in str(caught.value)


class StandInClient:
    """What TritonEngine asks of tritonclient.grpc's client, answered from a dict; ``fail`` injects errors."""

    def __init__(self, state: dict) -> None:
        self.state = state

    def _maybe_fail(self, call: str) -> None:
        from tritonclient.utils import InferenceServerException

        fault = self.state["faults"].pop(0) if self.state["faults"] else None
        if fault is not None:
            self.state["log"].append(f"{call}: {fault[0]}")
            raise InferenceServerException(fault[1], status=fault[0])
        self.state["log"].append(call)

    def is_server_live(self, **_):
        self._maybe_fail("live")
        return True

    def is_model_ready(self, name, **_):
        self._maybe_fail("ready")
        return name == "prn"

    def get_model_config(self, name, as_json=False, **_):
        self._maybe_fail("config")
        size = self.state["size"]
        return {"config": {
            "name": name, "max_batch_size": 2,
            "input": [{"name": "image", "data_type": "TYPE_UINT8", "dims": [str(size), str(size), "3"]}],
            "output": [{"name": "anomaly_map", "data_type": "TYPE_FP32", "dims": ["1", str(size), str(size)]},
                       {"name": "score", "data_type": "TYPE_FP32", "dims": ["1"]}],
            "parameters": {k: {"string_value": v} for k, v in self.state["params"].items()}}}

    def infer(self, name, inputs, outputs=None, **_):
        self._maybe_fail("infer")
        batch = inputs[0].shape()[0]
        self.state["batches"].append(batch)
        images = np.frombuffer(inputs[0]._raw_content, np.uint8)      # what set_data_from_numpy sends
        level = images.reshape(batch, -1).mean(1).astype(np.float32) / 255
        size = self.state["size"]

        class Result:
            def as_numpy(self, output):
                return (np.broadcast_to(level[:, None, None, None], (batch, 1, size, size)).copy()
                        if output == "anomaly_map" else level[:, None].copy())
        return Result()

    def close(self):
        self.state["log"].append("close")


@pytest.fixture
def stand_in(monkeypatch):
    pytest.importorskip("tritonclient.grpc")
    from prn_edge.runtime.backends import triton

    state = {"size": 16, "faults": [], "log": [], "batches": [],
             "params": {"format": "prn-edge-onnx", "input_size": "16", "threshold": "0.25", "precision": "fp16",
                        "checkpoint_sha256": "ab" * 32, "config": "{}", "engine": "onnxruntime-cpu:fp16"}}
    monkeypatch.setattr(triton.TritonEngine, "_connect", lambda self: self._client or
                        setattr(self, "_client", StandInClient(state)) or self._client)
    return state


def test_the_engine_reads_the_model_from_the_server_and_batches_within_its_limit(stand_in):
    from prn_edge.runtime.loader import connect_server

    engine = connect_server("grpc://127.0.0.1:8001")
    assert (engine.image_size, engine.threshold, engine.precision, engine.max_batch) == (16, 0.25, "fp16", 2)
    assert engine.name == "triton-grpc:fp16" and engine.checkpoint_sha256 == "ab" * 32
    described = engine.describe()
    assert described["server"] == "grpc://127.0.0.1:8001" and described["served_by"] == "onnxruntime-cpu:fp16"
    images = np.stack([np.full((16, 16, 3), v, np.uint8) for v in (0, 51, 102, 153, 204)])
    maps, scores = engine.predict(images)
    assert stand_in["batches"] == [2, 2, 1]                     # max_batch_size 2: three requests
    np.testing.assert_allclose(scores, [0, 0.2, 0.4, 0.6, 0.8], atol=1e-6)
    assert maps.shape == (5, 16, 16)
    assert Pipeline(engine).threshold == 0.25                     # the server's threshold decides
    engine.close()


def test_the_engine_sorts_failures_and_checks_the_model_after_an_outage(stand_in):
    from prn_edge.runtime.backends.triton import TritonEngine

    engine = TritonEngine("grpc://127.0.0.1:8001")
    images = np.zeros((1, 16, 16, 3), np.uint8)
    stand_in["faults"] = [("StatusCode.UNAVAILABLE", "Socket closed")]
    with pytest.raises(EngineUnavailable, match=r"grpc://127.0.0.1:8001 \(model 'prn'\) unavailable \(a request\)"):
        engine.predict(images)
    assert stand_in["log"][-1] == "close"                       # the next call connects afresh
    stand_in["log"].clear()
    engine.predict(images)                                      # readiness and config again, then the frame
    assert stand_in["log"] == ["ready", "config", "infer"]

    stand_in["faults"] = [("StatusCode.INVALID_ARGUMENT", "unexpected shape for input 'image'")]
    with pytest.raises(PRNError, match=r"refused a request: \[StatusCode.INVALID_ARGUMENT\] unexpected") as caught:
        engine.predict(images)
    assert not isinstance(caught.value, EngineUnavailable)

    # Back after an outage with another model: refused, never a result of the wrong model.
    stand_in["faults"] = [("StatusCode.UNAVAILABLE", "failed to connect to all addresses")]
    with pytest.raises(EngineUnavailable):
        engine.predict(images)
    stand_in["params"]["threshold"] = "0.75"
    with pytest.raises(PRNError, match="came back with another model") as caught:
        engine.predict(images)
    assert not isinstance(caught.value, EngineUnavailable)


def test_a_server_without_the_model_or_its_metadata_is_one_line(stand_in):
    from prn_edge.runtime.backends.triton import TritonEngine

    with pytest.raises(PRNError, match=r"model 'other'\) is not ready: no such model") as caught:
        TritonEngine("grpc://127.0.0.1:8001", "other")
    assert not isinstance(caught.value, EngineUnavailable) and "\n" not in str(caught.value)
    del stand_in["params"]["input_size"]
    with pytest.raises(PRNError, match="no PRN Edge metadata in its config's parameters"):
        TritonEngine("grpc://127.0.0.1:8001")


# --------------------------------------------------------------------------- the command line, no server
def _inspect(*argv: str, timeout: float = 300) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "prn_edge.runtime.cli", *argv], capture_output=True, text=True,
                          check=False, timeout=timeout, env=env, cwd=REPO)


def _one_error_line(proc: subprocess.CompletedProcess) -> str:
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("prn-inspect: error: "), proc.stderr
    return lines[0]


def test_a_bad_server_url_is_one_line_and_exit_2(tmp_path):
    pytest.importorskip("tritonclient.grpc")
    (tmp_path / "frames").mkdir()
    cv2.imwrite(str(tmp_path / "frames" / "a.png"), np.zeros((8, 8, 3), np.uint8))
    with socket.socket() as probe:                              # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        nobody = probe.getsockname()[1]
    out = tmp_path / "out"
    for argv, needle in (
            (["--server", "triton:8001"], "--server 'triton:8001': expected grpc://HOST:PORT or http://HOST:PORT"),
            (["--server", "grpc://127.0.0.1:70000"], "the port must be from 1 to 65535"),
            (["--server", f"grpc://127.0.0.1:{nobody}"],
             f"cannot reach the Triton server grpc://127.0.0.1:{nobody} (model 'prn')"),
            (["--server", f"http://127.0.0.1:{nobody}"],
             f"cannot reach the Triton server http://127.0.0.1:{nobody} (model 'prn')"),
            (["--server", "grpc://h:1", "--model", "m"], "--server replaces --model"),
            (["--server", "grpc://h:1", "--backend", "onnxruntime-cpu"], "--backend chooses a local engine"),
            ([], "required: --model (or --server)")):
        proc = _inspect(*argv, "--source", str(tmp_path / "frames"), "--out", str(out))
        assert proc.returncode == 2 and needle in _one_error_line(proc), (argv, proc.stderr)
        assert not out.exists()


# --------------------------------------------------------------------------- a real tritonserver
@pytest.fixture(scope="module")
def serving(request):
    """(exported model folder, bottle_batch) with prn-serve runnable here; else the test skips, saying why."""
    if SERVE_TESTS_MISSING:
        pytest.skip(SERVE_TESTS_MISSING)
    if not (SERVE_ENV / ".installed").is_file():
        pytest.skip(NO_SERVE_ENV)
    return request.getfixturevalue("exported"), request.getfixturevalue("bottle_batch")


@pytest.fixture(scope="module")
def bottle_folder(serving, bottle_dir, tmp_path_factory) -> Path:
    """The images of ``bottle_batch`` (good and broken, as test_serve picks them), in that order, as a folder."""
    from prn_edge.imaging.read import list_images

    folder = tmp_path_factory.mktemp("bottle-frames")
    paths = []
    for kind in ("good", "broken_large", "broken_small", "contamination"):
        paths += list_images(bottle_dir / "test" / kind)[:3]
    for i, path in enumerate(paths):
        (folder / f"{i:02d}_{path.parent.name}_{path.name}").symlink_to(path)
    assert len(paths) == len(serving[1][0])
    return folder


@pytest.fixture(scope="module")
def running(serving):
    """prn-serve with the threshold between the middle two bottle scores (decisions of both kinds)."""
    model, (_, _, _, threshold) = serving
    server = Server(model, "--threshold", repr(threshold))
    yield server
    server.stop()


def _frames(records) -> list[dict]:
    return [r for r in records if r.get("type") == "frame"]


def test_inspect_through_triton_records_the_local_engine_results(serving, bottle_folder, running, tmp_path):
    from prn_edge.api import inspect
    from prn_edge.runtime.cli import main

    model, (_, _, scores, threshold) = serving
    local = inspect(model, str(bottle_folder), backend="onnxruntime-cpu", threads=1, threshold=threshold,
                    out=tmp_path / "local", store="jsonl", max_image_mb=0)
    local_records = read_jsonl(local.results)
    local_frames = _frames(local_records)
    local_run = next(r for r in local_records if r["type"] == "run")
    np.testing.assert_allclose([f["score"] for f in local_frames], scores, rtol=0, atol=1e-6)
    decisions = [f["anomalous"] for f in local_frames]
    assert any(decisions) and not all(decisions)

    assert main(["--server", f"grpc://127.0.0.1:{running.grpc}", "--source", str(bottle_folder),
                 "--out", str(tmp_path / "grpc"), "--store", "jsonl"]) == 0
    via_http = inspect(source=str(bottle_folder), server=f"http://127.0.0.1:{running.http}",
                       out=tmp_path / "http", store="jsonl", max_image_mb=0)
    assert via_http.exit_status == 0 and via_http.engine == "triton-http:fp32"
    for results in (tmp_path / "grpc" / "results.jsonl", via_http.results):
        records = read_jsonl(results)
        frames = _frames(records)
        assert [f["sequence"] for f in frames] == list(range(len(scores)))
        np.testing.assert_allclose([f["score"] for f in frames], scores, rtol=0, atol=1e-5)
        assert [f["anomalous"] for f in frames] == decisions
        assert all(f["threshold"] == threshold for f in frames)           # the server's, read from its config
        run = next(r for r in records if r["type"] == "run")
        assert run["info"]["engine"]["backend"] == "triton" and run["info"]["threshold"] == threshold
        assert run["info"]["engine"]["checkpoint_sha256"] == local_run["info"]["engine"]["checkpoint_sha256"]
    # The anomalous frames and their overlays, as locally.
    written = sorted(p.name for p in (tmp_path / "grpc" / "anomalies").iterdir())
    assert len(written) == 2 * sum(decisions)


def _count_frames(results: Path) -> int:
    try:
        if results.suffix == ".jsonl":
            return results.read_bytes().count(b'"type":"frame"')
        with sqlite3.connect(f"file:{results}?mode=ro", uri=True, timeout=1) as connection:
            return connection.execute("SELECT COUNT(*) FROM frames").fetchone()[0]
    except (OSError, sqlite3.Error):
        return 0


def _start_client(url: str, folder: Path, out: Path, *args: str) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    return subprocess.Popen([sys.executable, "-m", "prn_edge.runtime.cli", "--server", url, "--source", str(folder),
                             "--loop", "--out", str(out), *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=REPO)


def _wait_for_frames(client: subprocess.Popen, results: Path, n: int, timeout: float = 120) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        count = _count_frames(results)
        if count >= n:
            return count
        assert client.poll() is None, client.communicate()
        time.sleep(0.02)
    raise AssertionError(f"fewer than {n} frames in {results} after {timeout} s")


def _check_every_frame_is_real(frames, scores, decisions_at) -> None:
    """Each stored frame has its image's local score (1e-5) and decision: a result, never a placeholder."""
    n = len(scores)
    for f in frames:
        assert abs(f["score"] - float(scores[f["sequence"] % n])) <= 1e-5, f
        assert f["anomalous"] == decisions_at[f["sequence"] % n], f


def test_killing_the_server_mid_stream_loses_no_decided_frame(serving, bottle_folder, tmp_path):
    model, (_, _, scores, threshold) = serving
    decisions = scores.astype(np.float64) > threshold
    server = Server(model, "--threshold", repr(threshold))
    out = tmp_path / "run"
    frames_wanted = 60
    client = _start_client(f"grpc://127.0.0.1:{server.grpc}", bottle_folder, out, "--store", "jsonl",
                           "--max-frames", str(frames_wanted), "--server-attempts", "12")
    try:
        before = _wait_for_frames(client, out / "results.jsonl", 3)
        server.kill()                                   # prn-serve, tritonserver and stubs: kill -9, mid-stream
        assert before < frames_wanted
        time.sleep(1.0)                                 # the client meets it down and backs off
        assert client.poll() is None
        server = Server(model, "--threshold", repr(threshold), ports=server.ports)   # back, same ports
        stdout, stderr = client.communicate(timeout=300)
    finally:
        if client.poll() is None:
            client.kill()
        server.stop()
    assert client.returncode == 0, stderr
    records = read_jsonl(out / "results.jsonl")
    frames = _frames(records)
    # Every frame read was decided and stored once, in order: none lost, none twice, none without a result.
    assert [f["sequence"] for f in frames] == list(range(frames_wanted))
    _check_every_frame_is_real(frames, scores, decisions)
    summary = next(r for r in records if r["type"] == "summary")["summary"]
    assert summary["end"] == "max frames" and summary["server_errors"] >= 1 and summary["server_retries"] >= 1
    assert summary["frames"] == frames_wanted <= summary["read"]   # the reader reads ahead of --max-frames
    assert (f"server: grpc://127.0.0.1:{server.grpc}: {summary['server_errors']} frame(s) met it unavailable, "
            f"{summary['server_retries']} retr") in stdout
    assert "prn-inspect: error:" not in stderr and "Traceback" not in stderr


def test_a_server_that_stays_away_ends_the_run_with_status_1_and_one_line(serving, bottle_folder, tmp_path):
    model, (_, _, scores, threshold) = serving
    decisions = scores.astype(np.float64) > threshold
    server = Server(model, "--threshold", repr(threshold))
    out = tmp_path / "run"
    url = f"http://127.0.0.1:{server.http}"
    client = _start_client(url, bottle_folder, out, "--server-attempts", "2")      # SQLite, endless loop
    try:
        _wait_for_frames(client, out / "results.db", 3)
        server.kill()
        stdout, stderr = client.communicate(timeout=120)
    finally:
        if client.poll() is None:
            client.kill()
    assert client.returncode == 1, stderr
    with sqlite3.connect(out / "results.db") as connection:
        rows = connection.execute("SELECT sequence, score, anomalous FROM frames ORDER BY id").fetchall()
        summary = json.loads(connection.execute("SELECT summary FROM runs").fetchone()[0])
    frames = [{"sequence": s, "score": v, "anomalous": bool(a)} for s, v, a in rows]
    assert [f["sequence"] for f in frames] == list(range(len(frames))) and len(frames) >= 3
    _check_every_frame_is_real(frames, scores, decisions)
    assert summary["end"].startswith(f"server failed: Triton server {url} (model 'prn') unavailable")
    assert summary["end"].endswith(f"gave up on frame {len(frames)} after 2 retries")
    assert (summary["server_errors"], summary["server_retries"], summary["frames"]) == (1, 2, len(frames))
    # stderr: the retries as warnings, then one error line naming the server and what was kept.
    error = stderr.strip().splitlines()[-1]
    assert error.startswith(f"prn-inspect: error: Triton server {url} (model 'prn') unavailable"), stderr
    assert error.endswith(f"gave up on frame {len(frames)} after 2 retries; {len(frames)} frame(s) were recorded "
                          f"in {out / 'results.db'}, every one with its result"), stderr
    assert sum(line.startswith("prn-inspect: error:") for line in stderr.splitlines()) == 1
    assert "Traceback" not in stderr and f"ended: server failed: Triton server {url}" in stdout


def test_a_model_the_server_does_not_have_is_one_line(serving, running, bottle_folder, tmp_path):
    proc = _inspect("--server", f"grpc://127.0.0.1:{running.grpc}", "--server-model", "prn_tensorrt",
                    "--source", str(bottle_folder), "--out", str(tmp_path / "out"))
    line = _one_error_line(proc)
    assert proc.returncode == 2 and f"Triton server grpc://127.0.0.1:{running.grpc} (model 'prn_tensorrt') " \
        "is not ready: no such model on the server" in line
    assert not (tmp_path / "out").exists()
