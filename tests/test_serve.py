"""prn-serve: the Triton model repository, read back with Triton's own protobufs, and a real tritonserver.

The repository tests parse every ``config.pbtxt`` with ``tritonclient``'s ``model_config_pb2`` (the
``ModelConfig`` message Triton itself reads) and hold it against the ONNX as ONNX Runtime reads it.
The server tests start ``prn-serve`` from the environment ``make serve-env`` builds (PyTriton's
``tritonserver`` runs only under the distribution's own Python) on loopback ports, and compare what
comes back through Triton with the local engine on real bottle images. Without that environment
they skip, saying so.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO, small_checkpoint
from prn_edge.errors import PRNError
from prn_edge.io import file_sha256
from prn_edge.serve.process import ServeProcess, free_tcp_ports

pytest.importorskip("torch")
ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")
text_format = pytest.importorskip("google.protobuf.text_format")
model_config_pb2 = pytest.importorskip("tritonclient.grpc.model_config_pb2")

pytestmark = pytest.mark.slow

SERVE_ENV = Path(os.environ.get("PRN_SERVE_ENV", REPO / ".venv-serve"))
SERVE_PYTHON = SERVE_ENV / "bin" / "python"
NO_SERVE_ENV = (f"no serving environment at {SERVE_ENV} (its .installed stamp is missing): `make serve-env` builds "
                "it, a venv of the distribution's own python3 with nvidia-pytriton, whose tritonserver stub runs "
                "only under that Python")
ONNX_TO_TRITON = {"tensor(uint8)": "TYPE_UINT8", "tensor(float)": "TYPE_FP32", "tensor(float16)": "TYPE_FP16"}
DTYPE_NAMES = {v: k for k, v in model_config_pb2.DataType.items()}


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> Path:
    """A small exported model folder (128 px, random head; threshold 0.5): about 15 s."""
    root = tmp_path_factory.mktemp("serve")
    checkpoint = small_checkpoint(root / "checkpoint.pt", seed=3)
    proc = subprocess.run([sys.executable, "-m", "prn_edge.export.cli", str(checkpoint), "--out", str(root / "model"),
                           "--threads", "1", "--latency-rounds", "1", "--no-progress"],
                          capture_output=True, text=True, timeout=300, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return root / "model"


def _version(model: Path) -> Path:
    return model / "versions" / json.loads((model / "manifest.json").read_text())["version"]


def _configs(repo: Path) -> dict[str, model_config_pb2.ModelConfig]:
    found = {}
    for path in sorted(repo.rglob("config.pbtxt")):
        found[path.parent.name] = text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())
    return found


def _assert_io_matches_onnx(config, onnx_path: Path) -> None:
    """Names, element types and shapes of config.pbtxt against the graph, as ONNX Runtime reads it."""
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"]) \
        if ".trt." not in onnx_path.name else None
    if session is not None:
        graph = {"input": session.get_inputs(), "output": session.get_outputs()}
        read = {k: [(t.name, ONNX_TO_TRITON[t.type], t.shape) for t in v] for k, v in graph.items()}
    else:   # the plugin variant does not load in ONNX Runtime: read the graph itself
        model = onnx.load(str(onnx_path), load_external_data=False)
        types = {1: "TYPE_FP32", 2: "TYPE_UINT8", 10: "TYPE_FP16"}

        def dims(v):
            return [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]
        read = {"input": [(v.name, types[v.type.tensor_type.elem_type], dims(v)) for v in model.graph.input],
                "output": [(v.name, types[v.type.tensor_type.elem_type], dims(v)) for v in model.graph.output]}
    for kind in ("input", "output"):
        declared = getattr(config, kind)
        assert [t.name for t in declared] == [name for name, _, _ in read[kind]]
        for tensor, (name, dtype, shape) in zip(declared, read[kind]):
            assert DTYPE_NAMES[tensor.data_type] == dtype, name
            assert isinstance(shape[0], str), f"{name}: the ONNX batch axis must be dynamic, got {shape}"
            rest = [int(d) for d in shape[1:]]
            if rest:
                assert list(tensor.dims) == rest and not tensor.HasField("reshape"), name
            else:   # a batched scalar: Triton's dims [1], reshaped to the model's []
                assert list(tensor.dims) == [1] and tensor.HasField("reshape") and list(tensor.reshape.shape) == [], name


# --------------------------------------------------------------------------- prn-serve repo
def test_repository_configs_match_the_onnx(exported, tmp_path):
    from prn_edge.serve.api import repo

    out = tmp_path / "triton"
    written = repo(exported, out, max_batch=8, preferred_batch=(2, 8), queue_delay_us=1500, instances=2,
                   threads=1)
    assert written.models == {"prn_onnxruntime": "onnxruntime"}
    configs = _configs(out)
    assert set(configs) == {"prn_onnxruntime"}
    config = configs["prn_onnxruntime"]
    source = _version(exported) / "model.onnx"
    model_file = out / "prn_onnxruntime" / "1" / "model.onnx"
    assert file_sha256(model_file) == file_sha256(source)
    assert config.name == "prn_onnxruntime" and config.backend == "onnxruntime"
    assert config.default_model_filename == "model.onnx"
    _assert_io_matches_onnx(config, model_file)
    assert config.input[0].name == "image" and list(config.input[0].dims) == [128, 128, 3]
    assert config.max_batch_size == 8
    assert list(config.dynamic_batching.preferred_batch_size) == [2, 8]
    assert config.dynamic_batching.max_queue_delay_microseconds == 1500
    assert [(g.count, model_config_pb2.ModelInstanceGroup.Kind.Name(g.kind)) for g in config.instance_group] \
        == [(2, "KIND_CPU")]
    warmups = {w.batch_size: w for w in config.model_warmup}
    assert set(warmups) == {1, 8}
    for warmup in warmups.values():
        feed = warmup.inputs["image"]
        assert feed.zero_data and list(feed.dims) == [128, 128, 3] and DTYPE_NAMES[feed.data_type] == "TYPE_UINT8"
    # Every metadata entry of the ONNX, unchanged, and the threshold a client decides with.
    props = {p.key: p.value for p in onnx.load(str(source), load_external_data=False).metadata_props}
    params = {k: v.string_value for k, v in config.parameters.items()}
    assert {k: params[k] for k in props} == props
    assert float(params["threshold"]) == 0.5 and params["input_size"] == "128" and params["precision"] == "fp32"
    assert params["intra_op_thread_count"] == "1"
    readme = (out / "README.md").read_text()
    assert "docker run" in readme and "--model-repository=/models" in readme and "prn_onnxruntime" in readme
    record = json.loads((out / "prn-serve.json").read_text())
    assert record["models"] == written.models and record["version"] == _version(exported).name


def _fake_engine_folder(exported: Path, root: Path, *, plugin: Path | None) -> Path:
    """A flat model folder with a TensorRT engine: the plan is opaque bytes here (no TensorRT), the sidecar real."""
    from prn_edge.runtime.backends.tensorrt_support import SIDECAR_FORMAT

    folder = root / "flat"
    folder.mkdir()
    for name in ("model.onnx", "model.trt.onnx"):
        shutil.copyfile(_version(exported) / name, folder / name)
    (folder / "model.fp16.engine").write_bytes(b"plan bytes " * 100)
    (folder / "model.fp16.engine.json").write_text(json.dumps({
        "format": SIDECAR_FORMAT, "tensorrt_version": "10.3.0", "gpu_name": "NVIDIA H200", "compute_capability": "9.0",
        "precision": "fp16", "checkpoint_sha256": "ab" * 32, "plugin_library": str(plugin or root / "gone.so"),
        "input_size": 128, "threshold": 0.5, "onnx": "model.trt.onnx", "built_at": "2025-01-01T00:00:00",
        "max_batch": 4, "opt_batch": 1}))
    return folder


def test_tensorrt_plan_comes_with_its_plugin_library(exported, tmp_path, monkeypatch):
    from prn_edge.serve.api import repo

    plugin = tmp_path / "libprn_edge_plugins.so"
    plugin.write_bytes(b"\x7fELF plugins")
    folder = _fake_engine_folder(exported, tmp_path, plugin=plugin)
    out = tmp_path / "triton"
    written = repo(folder, out, max_batch=8, kind="gpu")
    assert written.models == {"prn_onnxruntime": "onnxruntime", "prn_tensorrt": "tensorrt"}
    assert any("up to 4" in note for note in written.notes)
    configs = _configs(out)
    trt = configs["prn_tensorrt"]
    assert trt.backend == "tensorrt" and trt.default_model_filename == "model.plan"
    _assert_io_matches_onnx(trt, folder / "model.trt.onnx")
    assert trt.max_batch_size == 4 and list(trt.dynamic_batching.preferred_batch_size) == [4]
    assert {w.batch_size for w in trt.model_warmup} == {1, 4}
    assert model_config_pb2.ModelInstanceGroup.Kind.Name(trt.instance_group[0].kind) == "KIND_GPU"
    assert model_config_pb2.ModelInstanceGroup.Kind.Name(configs["prn_onnxruntime"].instance_group[0].kind) \
        == "KIND_GPU"
    assert trt.parameters["tensorrt_version"].string_value == "10.3.0"
    assert trt.parameters["threshold"].string_value == "0.5"
    assert (out / "prn_tensorrt" / "1" / "model.plan").read_bytes() == (folder / "model.fp16.engine").read_bytes()
    assert (out / "prn_tensorrt" / "libprn_edge_plugins.so").read_bytes() == plugin.read_bytes()
    readme = (out / "README.md").read_text()
    assert "LD_PRELOAD=/models/prn_tensorrt/libprn_edge_plugins.so" in readme
    assert "--backend-config=tensorrt,plugins=/models/prn_tensorrt/libprn_edge_plugins.so" in readme
    assert "TensorRT is 10.3.0" in readme

    # The recorded library gone and none found elsewhere: the plan is refused, in one line, with the way out.
    monkeypatch.delenv("PRN_EDGE_PLUGIN_LIB", raising=False)
    monkeypatch.setattr("prn_edge.runtime.backends.tensorrt_support.find_plugin_library", lambda explicit=None: None)
    plugin.unlink()
    with pytest.raises(PRNError, match=r"--plugin-library FILE, or --backends onnxruntime") as caught:
        repo(folder, tmp_path / "other")
    assert "\n" not in str(caught.value) and not (tmp_path / "other").exists()
    assert repo(folder, tmp_path / "other", backends=["onnxruntime"]).models == {"prn_onnxruntime": "onnxruntime"}


def test_repository_is_swapped_in_whole_and_foreign_folders_are_refused(exported, tmp_path, capsys):
    from prn_edge.serve.cli import main

    out = tmp_path / "triton"
    assert main(["repo", "--model", str(exported), "--out", str(out), "--max-batch", "4"]) == 0
    assert "wrote" in capsys.readouterr().out
    inode = (out / "prn_onnxruntime" / "config.pbtxt").stat().st_ino
    assert main(["repo", "--model", str(exported), "--out", str(out), "--max-batch", "16", "--queue-delay-us", "0"]) == 0
    config = _configs(out)["prn_onnxruntime"]
    assert config.max_batch_size == 16 and config.dynamic_batching.max_queue_delay_microseconds == 0
    assert (out / "prn_onnxruntime" / "config.pbtxt").stat().st_ino != inode
    assert sorted(p.name for p in tmp_path.iterdir()) == ["triton"]      # no staging or old copy left
    capsys.readouterr()

    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    for argv, needle in ((["--out", str(foreign)], "not a repository written by prn-serve repo"),
                         (["--out", str(out), "--max-batch", "4", "--preferred-batch", "2,8"],
                          "preferred batch sizes must be from 1 to the largest batch 4"),
                         (["--out", str(out), "--precision", "int8"], "no ONNX Runtime model for int8")):
        assert main(["repo", "--model", str(exported), *argv]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("prn-serve repo: error:") and needle in err[0], err
    assert (foreign / "notes.txt").read_text() == "keep me"
    assert _configs(out)["prn_onnxruntime"].max_batch_size == 16       # the failed runs changed nothing
    assert main(["repo", "--model", str(exported), "--out", str(out), "--no-dynamic-batching"]) == 0
    config = _configs(out)["prn_onnxruntime"]
    assert config.max_batch_size == 8 and not config.HasField("dynamic_batching")


def test_a_missing_model_or_an_unusable_out_is_one_line(exported, tmp_path, capsys):
    """Whatever the environment: a wrong --model is named first, and --out is checked before any work."""
    from prn_edge.serve.cli import main

    (tmp_path / "file").write_text("x")
    missing = tmp_path / "no-such-model"
    for argv, prog, needle in (
            (["--model", str(missing)], "prn-serve", "no such model folder or file (--model)"),
            (["repo", "--model", str(missing), "--out", str(tmp_path / "r")], "prn-serve repo",
             "no such model folder or file (--model)"),
            (["repo", "--model", str(exported), "--out", str(tmp_path / "file")], "prn-serve repo",
             "it exists and is not a folder (--out)"),
            (["repo", "--model", str(exported), "--out", str(tmp_path / "file" / "r")], "prn-serve repo",
             "a parent of it, exists and is not a folder (--out)")):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(f"{prog}: error:") and needle in err[0], err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]
    # A new REPO under folders that do not exist yet: they are made.
    assert main(["repo", "--model", str(exported), "--out", str(tmp_path / "a" / "b" / "repo")]) == 0
    assert (tmp_path / "a" / "b" / "repo" / "prn_onnxruntime" / "config.pbtxt").is_file()


# --------------------------------------------------------------------------- the Python the stub needs
def test_another_python_build_is_named_in_one_line(exported, capsys):
    """From an interpreter other than the one PyTriton's stub links against, prn-serve refuses in one line."""
    from prn_edge.serve.cli import main
    from prn_edge.serve.triton import stub_python_problem

    if not (SERVE_ENV / ".installed").is_file():
        pytest.skip(NO_SERVE_ENV)
    stub = next(SERVE_ENV.glob("lib/python3*/site-packages/pytriton/tritonserver/python_backend_stubs/"
                               f"{sys.version_info[0]}.{sys.version_info[1]}/triton_python_backend_stub"), None)
    if stub is None:
        pytest.skip(f"PyTriton in {SERVE_ENV} has no stub for Python {sys.version_info[0]}.{sys.version_info[1]}")
    ok = subprocess.run([str(SERVE_PYTHON), "-c", "from prn_edge.serve.triton import stub_python_problem as p; "
                         "print(p())"], capture_output=True, text=True, timeout=60, env=_env())
    assert ok.returncode == 0 and ok.stdout.strip() == "None", ok.stderr
    if os.path.realpath(sys.base_prefix) == os.path.realpath(subprocess.run(
            [str(SERVE_PYTHON), "-c", "import sys; print(sys.base_prefix)"], capture_output=True, text=True,
            timeout=60).stdout.strip()):
        pytest.skip("this test interpreter is the distribution's own Python: no other build to refuse")
    problem = stub_python_problem(stub)
    assert problem and "_thread.RLock" in problem and "make serve-env" in problem and sys.executable in problem
    assert main(["--model", str(exported), "--http-port", "1"]) == 2     # refused before the ports are tried
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("prn-serve: error:") and "make serve-env" in err[0], err


# --------------------------------------------------------------------------- a real tritonserver
def _env() -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")   # this checkout, one thread
    env.pop("PRN_EDGE_PLUGIN_LIB", None)
    return env


class Server(ServeProcess):
    """``prn-serve`` from the serving environment with one thread, on free loopback ports (or ``ports``).

    ``client`` is a ``tritonclient.http`` client of it, closed before the server is stopped or killed.
    """

    def __init__(self, model: Path, *args: str, ports: tuple[int, int, int] | None = None) -> None:
        import tritonclient.http as http

        try:
            super().__init__(model, "--threads", "1", *args, python=SERVE_PYTHON, ports=ports, env=_env())
        except PRNError as exc:
            raise AssertionError(str(exc)) from None
        self.client = http.InferenceServerClient(f"127.0.0.1:{self.http}")

    def kill(self) -> None:
        self.client.close()
        super().kill()

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> tuple[int, str]:
        self.client.close()   # an open keep-alive connection holds tritonserver's exit for its timeout
        return super().stop(sig, timeout)


def _children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


@pytest.fixture(scope="module")
def bottle_batch(exported, bottle_dir):
    """Real bottle images (good and broken) prepared as prn-inspect prepares frames, and the local engine's results."""
    from prn_edge.imaging.read import list_images, read_image
    from prn_edge.runtime.loader import load_engine
    from prn_edge.runtime.pipeline import Pipeline

    paths = []
    for kind in ("good", "broken_large", "broken_small", "contamination"):
        paths += list_images(bottle_dir / "test" / kind)[:3]
    engine = load_engine(exported, "onnxruntime-cpu", threads=1)
    local = Pipeline(engine)
    images, _ = local.prepare([read_image(p, order="BGR") for p in paths])
    judged = local.judge(images)
    # A threshold between the middle two scores: decisions of both kinds, none on a tie.
    ranked = np.sort(judged.scores.astype(np.float64))
    threshold = float((ranked[len(ranked) // 2 - 1] + ranked[len(ranked) // 2]) / 2)
    engine.close()
    return images, judged.maps, judged.scores, threshold


@pytest.fixture(scope="module")
def server(exported, bottle_batch):
    if not (SERVE_ENV / ".installed").is_file():
        pytest.skip(NO_SERVE_ENV)
    threshold = bottle_batch[3]
    # Batches of up to 4; a long queue delay so that concurrent requests surely meet in one batch.
    running = Server(exported, "--max-batch", "4", "--preferred-batch", "4", "--queue-delay-us", "200000",
                     "--threshold", repr(threshold))
    yield running
    running.stop()


def _infer(server: Server, images: np.ndarray, dtype: str = "UINT8"):
    import tritonclient.grpc as grpc

    client = grpc.InferenceServerClient(f"127.0.0.1:{server.grpc}")
    feed = grpc.InferInput("image", list(images.shape), dtype)
    feed.set_data_from_numpy(images)
    result = client.infer("prn", [feed])
    return result.as_numpy("anomaly_map"), result.as_numpy("score"), result.as_numpy("anomalous")


def test_triton_results_equal_the_local_engine(server, bottle_batch):
    images, maps, scores, threshold = bottle_batch
    local_decisions = scores.astype(np.float64) > threshold
    assert local_decisions.any() and not local_decisions.all()
    # Single-image requests from concurrent clients: Triton batches them (dynamic batching).
    with ThreadPoolExecutor(len(images)) as pool:
        singles = list(pool.map(lambda i: _infer(server, images[i:i + 1]), range(len(images))))
    got_maps = np.concatenate([m for m, _, _ in singles])
    got_scores = np.concatenate([s for _, s, _ in singles])
    got_decisions = np.concatenate([d for _, _, d in singles])
    assert got_maps.shape == (len(images), 1, 128, 128) and got_scores.shape == (len(images), 1)
    np.testing.assert_allclose(got_scores[:, 0], scores, rtol=0, atol=1e-5)
    np.testing.assert_allclose(got_maps[:, 0], maps, rtol=0, atol=1e-5)
    assert (got_decisions[:, 0] == local_decisions).all()

    import tritonclient.grpc as grpc

    stats = grpc.InferenceServerClient(f"127.0.0.1:{server.grpc}").get_inference_statistics("prn", as_json=True)
    model = stats["model_stats"][0]
    assert int(model["inference_count"]) == len(images)
    sizes = {int(b["batch_size"]) for b in model["batch_stats"]}
    assert max(sizes) > 1 and int(model["execution_count"]) < len(images), model["batch_stats"]

    # One request of a whole batch: the same numbers.
    batch_maps, batch_scores, batch_decisions = _infer(server, images[:4])
    np.testing.assert_allclose(batch_scores[:, 0], scores[:4], rtol=0, atol=1e-5)
    np.testing.assert_allclose(batch_maps[:, 0], maps[:4], rtol=0, atol=1e-5)
    assert (batch_decisions[:, 0] == local_decisions[:4]).all()


def test_without_dynamic_batching_each_request_runs_alone(exported, bottle_batch):
    """--no-dynamic-batching: concurrent single-image requests run one by one, with the same results."""
    if not (SERVE_ENV / ".installed").is_file():
        pytest.skip(NO_SERVE_ENV)
    images, maps, scores, threshold = bottle_batch
    alone = Server(exported, "--max-batch", "4", "--no-dynamic-batching", "--threshold", repr(threshold))
    try:
        assert "dynamic_batching" not in alone.client.get_model_config("prn")
        with ThreadPoolExecutor(4) as pool:
            singles = list(pool.map(lambda i: _infer(alone, images[i:i + 1]), range(4)))
        np.testing.assert_allclose(np.concatenate([s for _, s, _ in singles])[:, 0], scores[:4], rtol=0, atol=1e-5)
        _infer(alone, images[:2])   # a client's own batch still runs as one
        stats = alone.statistics()
        assert int(stats["inference_count"]) == 6 and int(stats["execution_count"]) == 5, stats
        assert {int(b["batch_size"]): int(b["compute_infer"]["count"]) for b in stats["batch_stats"]} == {1: 4, 2: 1}
    finally:
        alone.stop()


def test_health_metadata_and_metrics(server, bottle_batch, exported):
    client = server.client
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready("prn")
    meta = client.get_model_metadata("prn")
    assert [(t["name"], t["datatype"], t["shape"]) for t in meta["inputs"]] == [("image", "UINT8", [-1, 128, 128, 3])]
    assert [(t["name"], t["datatype"], t["shape"]) for t in meta["outputs"]] == [
        ("anomaly_map", "FP32", [-1, 1, 128, 128]), ("score", "FP32", [-1, 1]), ("anomalous", "BOOL", [-1, 1])]
    config = client.get_model_config("prn")
    assert config["max_batch_size"] == 4 and config["dynamic_batching"]["max_queue_delay_microseconds"] == 200000
    # The model's metadata as parameters, as prn-serve repo writes them; the threshold is the served one.
    params = {k: v["string_value"] for k, v in config["parameters"].items()}
    props = {p.key: p.value for p in onnx.load(str(_version(exported) / "model.onnx"),
                                                load_external_data=False).metadata_props}
    assert {k: params[k] for k in props if k != "threshold"} == {k: v for k, v in props.items() if k != "threshold"}
    assert float(params["threshold"]) == bottle_batch[3] and params["precision"] == "fp32"
    assert params["input_size"] == "128" and params["engine"] == "onnxruntime-cpu:fp32"
    with urllib.request.urlopen(f"http://127.0.0.1:{server.metrics}/metrics", timeout=10) as response:
        metrics = response.read().decode()
    assert 'nv_inference_request_success{model="prn",version="1"}' in metrics


def test_bad_requests_get_clear_errors_and_the_server_keeps_serving(server, bottle_batch):
    from tritonclient.utils import InferenceServerException

    images, _, scores, _ = bottle_batch
    bad = {"data-type is 'FP32', but model 'prn' expects 'UINT8'": (images[:1].astype(np.float32), "FP32"),
           "unexpected shape for input 'image'": (np.ascontiguousarray(images[:1, :64]), "UINT8"),
           "batch-size must be <= 4": (np.repeat(images[:1], 5, axis=0), "UINT8")}
    for needle, (array, dtype) in bad.items():
        with pytest.raises(InferenceServerException, match=needle):
            _infer(server, array, dtype)
    _, again, _ = _infer(server, images[:1])
    np.testing.assert_allclose(again[:, 0], scores[:1], rtol=0, atol=1e-5)
    assert server.proc.poll() is None


def test_a_taken_port_is_one_line(exported, server):
    proc = subprocess.run([str(SERVE_PYTHON), "-m", "prn_edge.serve.cli", "--model", str(exported),
                           "--http-port", str(server.http), "--grpc-port", str(free_tcp_ports(1)[0]),
                           "--metrics-port", str(free_tcp_ports(1)[0])],
                          capture_output=True, text=True, timeout=120, env=_env(), cwd=REPO)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert lines[0] == (f"prn-serve: error: cannot listen on 127.0.0.1:{server.http} (Address already in use); "
                        "choose another --http-port")


def test_sigterm_stops_the_server_cleanly(exported):
    if not (SERVE_ENV / ".installed").is_file():
        pytest.skip(NO_SERVE_ENV)
    # One instance: with two, PyTriton 0.7.0's second Python-backend stub sometimes fails its handshake
    # at start-up (ConnectionRefusedError in get_config_from_handshake_server, ~1 start in 5 here), a
    # start-up race upstream that this test of the shutdown must not inherit.
    running = Server(exported)
    children = _children(running.proc.pid)
    assert children, "prn-serve runs tritonserver as its child"
    status, err = running.stop(signal.SIGTERM)
    assert status == 0, err
    assert "Traceback" not in err and err.strip().splitlines()[-1].startswith("prn-serve: stopped after"), err
    assert not [pid for pid in children if Path(f"/proc/{pid}").exists()], "tritonserver outlived prn-serve"
    for port in (running.http, running.grpc, running.metrics):   # every port is free again (as a restart binds)
        with socket.socket() as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind(("127.0.0.1", port))
