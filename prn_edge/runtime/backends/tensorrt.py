"""The TensorRT backend: a serialized engine behind the :class:`~prn_edge.contract.engine.Engine` contract.

Written against the TensorRT 10/11 Python API (name-based I/O: ``num_io_tensors``,
``get_tensor_name``, ``set_input_shape``, ``set_tensor_address``, ``execute_async_v3``) and
CuPy for memory, streams and CUDA graphs. Everything is allocated once, for the largest
batch of the engine's optimisation profile (capped): device buffers whose addresses never
change, and pinned host buffers so that the copies are real DMA transfers. CUDA events time
the host-to-device copy, the engine and the copy back (``last_timings``, for prn-bench). One CUDA graph per
batch size replays the engine's kernels when the engine allows capture (it does not, for
instance, with data-dependent shapes); otherwise ``execute_async_v3`` runs each time.

The plugin library and the sidecar checks (same GPU model, same TensorRT version, same
checkpoint) come from :mod:`prn_edge.runtime.backends.tensorrt_support`. tensorrt and cupy are
imported when an engine is built. Not run on this project's CI (no TensorRT there).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from prn_edge.contract.engine import Engine
from prn_edge.errors import PRNError, first_line, require

__all__ = ["TensorRTEngine"]

MAX_BATCH = 8   # buffers for more would only be wasted on a camera loop (batch 1)


class TensorRTEngine(Engine):
    """``model.<precision>.engine`` (with its sidecar ``.engine.json``) on the current CUDA device.

    Args:
        path: the engine file.
        plugin_library: the PRN plugin library (default: the one the sidecar names, found by
            :func:`~prn_edge.runtime.backends.tensorrt_support.load_plugins`).
        cuda_graph: capture the engine into CUDA graphs when it allows.
        max_batch: the largest batch to preallocate for (at most the profile's maximum).
        device: the CUDA device index (made current for this thread).

    Raises:
        PRNError: tensorrt or cupy missing, no GPU, an engine built for another GPU or
            TensorRT version, a missing plugin library, or I/O that is not the PRN contract.
    """

    backend = "tensorrt"

    def __init__(self, path: str | os.PathLike, *, plugin_library: str | os.PathLike | None = None,
                 cuda_graph: bool = True, max_batch: int = MAX_BATCH, device: int = 0) -> None:
        trt = require("tensorrt", "the TensorRT engine")
        self.cp = cp = require("cupy", "the TensorRT engine's GPU buffers")
        from prn_edge.runtime.backends.tensorrt_support import (
            check_engine_compatible,
            current_device,
            load_plugins,
            read_sidecar,
        )

        self.path = Path(path)
        if not self.path.is_file():
            raise PRNError(f"{self.path}: no such TensorRT engine file")
        # The sidecar first: another GPU or TensorRT version is a clear error, not an opaque
        # deserialization failure.
        sidecar = read_sidecar(self.path)
        self.device = int(device)
        cp.cuda.Device(self.device).use()
        check_engine_compatible(sidecar, self.path, tensorrt_version=str(trt.__version__),
                                **current_device(self.device))
        self.plugin_library = None
        recorded = sidecar.get("plugin_library")
        if plugin_library is not None or recorded:
            # The build recorded its library; use it where it still is, else the usual search.
            library = plugin_library if plugin_library is not None else (
                recorded if Path(recorded).is_file() else None)
            self.plugin_library = load_plugins(trt, library)
        self.metadata: dict[str, Any] = dict(sidecar)
        self.precision = str(sidecar.get("precision", "fp32"))
        self.threshold = sidecar.get("threshold")

        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        engine = self._runtime.deserialize_cuda_engine(self.path.read_bytes())
        if engine is None:
            raise PRNError(f"{self.path}: TensorRT could not deserialize the engine (see its log above); "
                           "rebuild it on this device with prn-export")
        self.engine = engine
        self.context = engine.create_execution_context()
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if n not in inputs]
        if inputs != ["image"] or sorted(outputs) != ["anomaly_map", "score"]:
            raise PRNError(f"{self.path}: engine I/O {inputs} -> {outputs} is not the PRN contract "
                           "image -> anomaly_map, score")
        in_shape = tuple(engine.get_tensor_shape("image"))            # (-1 or N, S, S, 3)
        self.image_size = int(sidecar.get("input_size") or in_shape[1])
        if in_shape[0] == -1:
            profile_max = int(engine.get_tensor_profile_shape("image", 0)[2][0])
        else:
            profile_max = int(in_shape[0])
        self.max_batch = max(1, min(int(max_batch), profile_max))
        self.static_batch = None if in_shape[0] == -1 else int(in_shape[0])
        s, b = self.image_size, self.max_batch

        self.stream = cp.cuda.Stream(non_blocking=True)
        dtypes = {n: np.dtype(trt.nptype(engine.get_tensor_dtype(n))) for n in names}
        shapes = {"image": (b, s, s, 3), "anomaly_map": (b, 1, s, s), "score": (b,)}
        self._device = {n: cp.empty(shapes[n], dtype=dtypes[n]) for n in names}           # fixed addresses
        self._host = {n: _pinned(cp, shapes[n], dtypes[n]) for n in names}               # DMA-able
        for n in names:
            if not self.context.set_tensor_address(n, int(self._device[n].data.ptr)):
                raise PRNError(f"{self.path}: TensorRT refused the buffer of tensor {n!r}")
        self.cuda_graph = bool(cuda_graph)
        self.graph_note = "" if cuda_graph else "disabled"
        self._graphs: dict[int, Any] = {}
        self._events = [cp.cuda.Event() for _ in range(4)]   # before H2D, after H2D, after compute, after D2H
        self._shape_batch: int | None = None
        self.name = f"tensorrt:{self.precision}"

    def _run(self, batch: int) -> None:
        """Enqueue the engine for ``batch`` images (already in the device input buffer)."""
        if self._shape_batch != batch:
            if not self.context.set_input_shape("image", (batch, self.image_size, self.image_size, 3)):
                raise PRNError(f"{self.path}: the engine does not take a batch of {batch}")
            self._shape_batch = batch
        graph = self._graphs.get(batch)
        if graph is not None:
            graph.launch(self.stream)
            return
        if not self.context.execute_async_v3(self.stream.ptr):
            raise PRNError(f"{self.path}: TensorRT failed to run the engine (see its log)")
        if self.cuda_graph:
            self._capture(batch)

    def _capture(self, batch: int) -> None:
        # After one ordinary run at this shape (TensorRT does its deferred set-up then),
        # record the same enqueue into a graph; an engine that cannot be captured runs ungraphed.
        self.stream.synchronize()
        try:
            self.stream.begin_capture()
            try:
                self.context.execute_async_v3(self.stream.ptr)
            finally:
                graph = self.stream.end_capture()
            self._graphs[batch] = graph
        except Exception as exc:  # noqa: BLE001 - capture errors come from CUDA or TensorRT
            self.cuda_graph = False
            self.graph_note = f"not capturable: {first_line(exc)}"

    def _predict(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Batches above the preallocated size run in chunks; device stages timed with CUDA events."""
        if self.static_batch is not None and images.shape[0] != self.static_batch:
            raise PRNError(f"{self.path}: this engine takes exactly {self.static_batch} frames per call")
        maps, scores = [], []
        timings = dict.fromkeys(("h2d", "compute", "d2h"), 0.0)
        start_ev, h2d_ev, compute_ev, d2h_ev = self._events
        for start in range(0, images.shape[0], self.max_batch):
            chunk = images[start:start + self.max_batch]
            b = chunk.shape[0]
            host_in, host_map, host_score = self._host["image"], self._host["anomaly_map"], self._host["score"]
            host_in[:b] = chunk
            start_ev.record(self.stream)
            self._device["image"][:b].set(host_in[:b], stream=self.stream)
            h2d_ev.record(self.stream)
            self._run(b)
            compute_ev.record(self.stream)
            self._device["anomaly_map"][:b].get(stream=self.stream, out=host_map[:b], blocking=False)
            self._device["score"][:b].get(stream=self.stream, out=host_score[:b], blocking=False)
            d2h_ev.record(self.stream)
            self.stream.synchronize()
            elapsed = self.cp.cuda.get_elapsed_time        # milliseconds between recorded events
            timings["h2d"] += elapsed(start_ev, h2d_ev) / 1e3
            timings["compute"] += elapsed(h2d_ev, compute_ev) / 1e3
            timings["d2h"] += elapsed(compute_ev, d2h_ev) / 1e3
            maps.append(host_map[:b, 0].astype(np.float32))     # copies: the pinned buffers are reused
            scores.append(host_score[:b].astype(np.float32))
        self._record_device_timings(**timings)
        return np.concatenate(maps), np.concatenate(scores)

    def _describe(self) -> dict[str, Any]:
        return {"max_batch": self.max_batch, "cuda_graph": self.cuda_graph, "cuda_graph_note": self.graph_note,
                "plugin_library": None if self.plugin_library is None else str(self.plugin_library),
                "gpu_name": self.metadata.get("gpu_name"), "device": self.device,
                "tensorrt_version": self.metadata.get("tensorrt_version")}

    def close(self) -> None:
        """Free the graphs, the context, the engine and the buffers."""
        if getattr(self, "stream", None) is not None:
            self.stream.synchronize()
        self._graphs.clear()
        self.context = self.engine = None
        self._device, self._host = {}, {}


def _pinned(cp, shape, dtype) -> np.ndarray:
    """A numpy array in page-locked host memory (needed for asynchronous copies)."""
    import cupyx

    return cupyx.empty_pinned(shape, dtype=dtype)
