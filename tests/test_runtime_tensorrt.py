"""The TensorRT engine's logic without a GPU: fake ``tensorrt`` and ``cupy`` modules.

What a fake can check: buffers allocated once with fixed addresses, the name-based I/O calls
of the TensorRT 10/11 API, one CUDA graph per batch size that replays on new inputs, the
fallback when capture fails, chunking above the preallocated batch, and the I/O check. What
it cannot: that real TensorRT, CuPy and the plugin library behave as documented. That is
the ``tensorrt``-marked test in test_runtime_model.py, on a GPU machine.
"""
from __future__ import annotations

import importlib.machinery
import sys
import types
from typing import ClassVar

import numpy as np
import pytest

from prn_edge.errors import PRNError

S = 16          # image side of the fake engine
MAX = 4         # the fake profile's largest batch


def _module(name):
    module = types.ModuleType(name)
    module.__spec__ = importlib.machinery.ModuleSpec(name, None)
    return module


class FakeArray(np.ndarray):
    """A numpy array posing as a CuPy device array."""

    @property
    def data(self):
        return types.SimpleNamespace(ptr=self.__array_interface__["data"][0])

    def set(self, arr, stream=None):
        self[...] = arr

    def get(self, stream=None, out=None, blocking=True):
        out[...] = self
        return out


class FakeStream:
    def __init__(self, non_blocking=False):
        self.ptr, self.capturing, self.fail_capture = 0xC0DE, None, False
        FakeStream.last = self

    def synchronize(self):
        pass

    def begin_capture(self):
        if self.fail_capture:
            raise RuntimeError("operation not permitted when stream is capturing")
        self.capturing = []

    def end_capture(self):
        ops, self.capturing = self.capturing, None
        return types.SimpleNamespace(launch=lambda stream=None: [op() for op in ops], ops=ops)


class FakeTRTEngine:
    def __init__(self, names=("image", "anomaly_map", "score"), static_batch=None):
        self.names = list(names)
        self.static_batch = static_batch
        self.contexts = []

    @property
    def num_io_tensors(self):
        return len(self.names)

    def get_tensor_name(self, i):
        return self.names[i]

    def get_tensor_mode(self, name):
        return "INPUT" if name == "image" else "OUTPUT"

    def get_tensor_shape(self, name):
        b = self.static_batch or -1
        return {"image": (b, S, S, 3), "anomaly_map": (b, 1, S, S), "score": (b,)}.get(name, (b,))

    def get_tensor_dtype(self, name):
        return np.uint8 if name == "image" else np.float32

    def get_tensor_profile_shape(self, name, profile):
        return [(1, S, S, 3), (1, S, S, 3), (MAX, S, S, 3)]

    def create_execution_context(self):
        self.contexts.append(FakeContext())
        return self.contexts[-1]


class FakeContext:
    """Computes map = mean pixel / 255 everywhere, score = that value + 0.01 * batch index."""

    def __init__(self):
        self.addresses, self.shapes, self.executed = {}, [], 0

    def set_tensor_address(self, name, ptr):
        self.addresses[name] = ptr
        return True

    def set_input_shape(self, name, shape):
        self.shapes.append(shape)
        self.batch = shape[0]
        return shape[0] <= MAX

    def execute_async_v3(self, stream_handle):
        stream = FakeStream.last
        assert stream_handle == stream.ptr
        batch = self.batch

        def run():
            arrays = FakeCupy.by_ptr
            images = arrays[self.addresses["image"]][:batch]
            level = images.reshape(batch, -1).mean(1) / 255.0
            arrays[self.addresses["anomaly_map"]][:batch] = level[:, None, None, None]
            arrays[self.addresses["score"]][:batch] = level + 0.01 * np.arange(batch)
            self.executed += 1

        if stream.capturing is not None:
            stream.capturing.append(run)
        else:
            run()
        return True


class FakeCupy:
    by_ptr: ClassVar[dict] = {}


@pytest.fixture
def fakes(monkeypatch, tmp_path):
    FakeCupy.by_ptr = {}
    trt = _module("tensorrt")
    trt.TensorIOMode = types.SimpleNamespace(INPUT="INPUT", OUTPUT="OUTPUT")
    trt.Logger = type("Logger", (), {"WARNING": 2, "__init__": lambda self, level=None: None})
    trt.nptype = lambda dtype: dtype
    state = types.SimpleNamespace(engine=FakeTRTEngine(), plugins=[])

    class Runtime:
        def __init__(self, logger):
            pass

        def deserialize_cuda_engine(self, data):
            return None if data == b"garbage" else state.engine

    trt.Runtime = Runtime
    cp = _module("cupy")

    def empty(shape, dtype=np.float32):
        a = np.zeros(shape, dtype).view(FakeArray)
        FakeCupy.by_ptr[a.data.ptr] = a
        return a

    cp.empty = empty

    class Event:
        def record(self, stream=None):
            self.t = Event.ticks
            Event.ticks += 1

    Event.ticks = 0
    props = {"name": b"Fake Orin", "major": 8, "minor": 7}
    cp.cuda = types.SimpleNamespace(
        Stream=FakeStream, Event=Event, get_elapsed_time=lambda a, b: float(b.t - a.t),
        Device=lambda i=0: types.SimpleNamespace(use=lambda: None, id=i),
        runtime=types.SimpleNamespace(getDeviceProperties=lambda i: props))
    cupyx = _module("cupyx")
    cupyx.empty_pinned = lambda shape, dtype=np.float32: np.zeros(shape, dtype)
    trt.__version__ = "10.3.0"
    trt.get_plugin_registry = lambda: types.SimpleNamespace(
        load_library=lambda path: state.plugins.append(path) or object())
    for name, module in (("tensorrt", trt), ("cupy", cp), ("cupyx", cupyx)):
        monkeypatch.setitem(sys.modules, name, module)

    from prn_edge.runtime.backends.tensorrt_support import write_sidecar

    library = tmp_path / "lib" / "libprn_edge_plugins.so"
    library.parent.mkdir()
    library.write_bytes(b"\x7fELF")
    path = tmp_path / "model.fp16.engine"
    path.write_bytes(b"serialized")
    state.sidecar = {"tensorrt_version": "10.3.0", "gpu_name": "Fake Orin", "compute_capability": "8.7",
                     "precision": "fp16", "checkpoint_sha256": "ab" * 32, "plugin_library": str(library),
                     "input_size": S, "threshold": 0.3, "onnx": "model.fp16.trt.onnx", "built_at": "now"}
    write_sidecar(path, state.sidecar)
    state.path, state.library = path, library
    return state


def reference(images):
    level = images.reshape(len(images), -1).mean(1) / 255.0
    return np.broadcast_to(level[:, None, None], (len(images), S, S)), level


def test_buffers_graphs_and_results(fakes):
    from prn_edge.runtime.backends.tensorrt import TensorRTEngine

    engine = TensorRTEngine(fakes.path)
    ctx = fakes.engine.contexts[0]
    assert engine.name == "tensorrt:fp16" and engine.image_size == S and engine.threshold == 0.3
    assert engine.max_batch == MAX and fakes.plugins == [str(fakes.library.resolve())]
    addresses = dict(ctx.addresses)
    assert set(addresses) == {"image", "anomaly_map", "score"}
    rng = np.random.default_rng(0)
    for batch in (1, 2, 1, 2, 1):
        images = rng.integers(0, 256, (batch, S, S, 3), dtype=np.uint8)
        maps, scores = engine.predict(images)
        ref_maps, level = reference(images)
        np.testing.assert_allclose(maps, ref_maps, rtol=1e-6)
        np.testing.assert_allclose(scores, level + 0.01 * np.arange(batch), rtol=1e-6)
    # Two plain runs (one per batch size, before capture), then only graph replays; same buffers throughout.
    assert ctx.addresses == addresses
    assert sorted(engine._graphs) == [1, 2] and engine.cuda_graph
    assert ctx.executed == 2 + 3
    assert [s[0] for s in ctx.shapes] == [1, 2, 1, 2, 1]
    # Above the preallocated batch: chunks of MAX.
    images = rng.integers(0, 256, (6, S, S, 3), dtype=np.uint8)
    maps, scores = engine.predict(images)
    np.testing.assert_allclose(scores, reference(images)[1] + 0.01 * np.array([0, 1, 2, 3, 0, 1]), rtol=1e-6)
    assert set(engine.last_timings) == {"h2d", "compute", "d2h", "total"} and engine.last_timings["h2d"] == 0.002  # 2 chunks
    info = engine.describe()
    assert info["cuda_graph"] and info["gpu_name"] == "Fake Orin" and info["max_batch"] == MAX
    engine.close()


def test_engine_that_cannot_be_captured_runs_without_graphs(fakes, monkeypatch):
    from prn_edge.runtime.backends.tensorrt import TensorRTEngine

    engine = TensorRTEngine(fakes.path)
    engine.stream.fail_capture = True
    images = np.full((1, S, S, 3), 51, np.uint8)
    for _ in range(3):
        _, scores = engine.predict(images)
        assert scores[0] == pytest.approx(0.2)
    assert not engine.cuda_graph and "not capturable" in engine.graph_note
    assert fakes.engine.contexts[0].executed == 3


def test_wrong_engines_are_refused(fakes):
    from prn_edge.runtime.loader import load_engine
    from prn_edge.runtime.backends.tensorrt import TensorRTEngine

    fakes.engine.names = ["input", "output"]
    with pytest.raises(PRNError, match="not the PRN contract"):
        TensorRTEngine(fakes.path)
    fakes.path.write_bytes(b"garbage")
    with pytest.raises(PRNError, match="could not deserialize"):
        TensorRTEngine(fakes.path)
    with pytest.raises(PRNError, match="no such TensorRT engine"):
        TensorRTEngine(fakes.path.with_name("missing.engine"))
    # Through the loader: the engine is found by precision and forced errors keep their reason.
    with pytest.raises(PRNError, match="could not deserialize"):
        load_engine(fakes.path.parent, "tensorrt")
    fakes.path.write_bytes(b"ok")
    fakes.engine.names = ["image", "anomaly_map", "score"]
    assert load_engine(fakes.path.parent).name == "tensorrt:fp16"     # auto: TensorRT first


def test_engine_for_another_gpu_or_tensorrt_or_without_its_plugins(fakes, monkeypatch):
    from prn_edge.runtime.backends import tensorrt_support
    from prn_edge.runtime.backends.tensorrt import TensorRTEngine
    from prn_edge.runtime.backends.tensorrt_support import write_sidecar

    write_sidecar(fakes.path, {**fakes.sidecar, "tensorrt_version": "10.4.0"})
    with pytest.raises(PRNError, match="built with TensorRT 10.4.0, this is TensorRT 10.3.0"):
        TensorRTEngine(fakes.path)
    write_sidecar(fakes.path, {**fakes.sidecar, "compute_capability": "9.0", "gpu_name": "H100"})
    with pytest.raises(PRNError, match="built for H100"):
        TensorRTEngine(fakes.path)
    write_sidecar(fakes.path, fakes.sidecar)
    # The recorded library is gone and none is in the usual places (even where a real build put one).
    fakes.library.unlink()
    monkeypatch.delenv(tensorrt_support.PLUGIN_LIBRARY_ENV, raising=False)
    monkeypatch.setattr(tensorrt_support, "PLUGIN_LIBRARY_NAME", "libprn_edge_plugins_not_built.so")
    with pytest.raises(PRNError, match="plugin library libprn_edge_plugins_not_built.so was not found"):
        TensorRTEngine(fakes.path)
    fakes.path.with_name(fakes.path.name + ".json").unlink()
    with pytest.raises(PRNError, match="no sidecar"):
        TensorRTEngine(fakes.path)


def test_static_batch_engine(fakes):
    from prn_edge.runtime.backends.tensorrt import TensorRTEngine

    fakes.engine.static_batch = 1
    engine = TensorRTEngine(fakes.path)
    assert engine.max_batch == 1
    engine.predict(np.zeros((1, S, S, 3), np.uint8))
    with pytest.raises(PRNError, match="exactly 1 frames"):
        engine.predict(np.zeros((2, S, S, 3), np.uint8))
