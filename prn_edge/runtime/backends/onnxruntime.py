"""The ONNX Runtime backend: an exported PRN ONNX file (FP32, FP16 or INT8 Q/DQ) on CPU or CUDA.

Metadata (config, threshold, input size, checkpoint hash) travels inside the ONNX file, so the
engine needs nothing but the model file. ONNX Runtime is imported when an engine is built.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from prn_edge.contract.engine import Engine
from prn_edge.contract.metadata import read_metadata
from prn_edge.contract.model_folder import precision_of
from prn_edge.errors import PRNError, first_line, require

__all__ = ["PROVIDERS", "OnnxRuntimeEngine", "summarize_profile"]

#: ONNX Runtime execution providers of each runtime backend name, in order of preference.
PROVIDERS = {
    "onnxruntime-cpu": ["CPUExecutionProvider"],
    "onnxruntime-cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
    # The TensorRT provider builds its engines when the session starts (minutes): only when asked for.
    "onnxruntime-tensorrt": ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
}


class OnnxRuntimeEngine(Engine):
    """An exported PRN ONNX file in ONNX Runtime.

    Args:
        path: the ``.onnx`` file (FP32, FP16 or INT8 Q/DQ: all take uint8 and return float32).
        providers: ORT execution providers in order of preference; default CPU only. Names
            that this onnxruntime build lacks are dropped (CUDA / TensorRT providers exist only
            in onnxruntime-gpu); asking only for missing ones is an error.
        threads: intra-op threads (0 = ORT's default, one per core).
        profile_dir: record ORT's per-node profile into this folder (for :meth:`op_profile`);
            profiling slows every call, so timed runs never use it.
        spinning: idle intra-op threads spin-wait for the next op (ORT's default: the lowest latency
            for a process that has the cores to itself). False where other processes need the cores
            between calls: in prn-serve, tritonserver and its Python-backend stub move every request
            while the engine waits (benchmarks/results/serving.md measures the difference).

    Raises:
        PRNError: onnxruntime missing, the file missing or not a PRN export, or ORT refusing it.
    """

    backend = "onnxruntime"

    def __init__(self, path: str | os.PathLike, *, providers: list[str] | None = None, threads: int = 0,
                 profile_dir: str | os.PathLike | None = None, spinning: bool = True) -> None:
        ort = require("onnxruntime", "the ONNX Runtime engine")
        self.path = Path(path)
        if not self.path.is_file():
            raise PRNError(f"{self.path}: no such model file")
        available = ort.get_available_providers()
        wanted = providers or PROVIDERS["onnxruntime-cpu"]
        usable = [p for p in wanted if p in available]
        if not usable:
            raise PRNError(f"none of the ONNX Runtime providers {wanted} is available here "
                           f"(this onnxruntime has {available})")
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(threads)
        options.inter_op_num_threads = 1
        if not spinning:
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.log_severity_level = 3   # ORT warns about every unused initializer otherwise
        if profile_dir is not None:
            options.enable_profiling = True
            options.profile_file_prefix = str(Path(profile_dir) / "ort-profile")
        try:
            self.session = ort.InferenceSession(str(self.path), sess_options=options, providers=usable)
        except Exception as exc:
            raise PRNError(f"{self.path}: ONNX Runtime cannot load it: {first_line(exc)}") from exc
        self.metadata = read_metadata(self.session.get_modelmeta().custom_metadata_map, self.path)
        self.image_size = int(self.metadata["input_size"])
        self.threshold = self.metadata.get("threshold")
        self.precision = precision_of(self.path)
        self.providers = self.session.get_providers()
        device = "cpu" if self.providers[0] == "CPUExecutionProvider" else self.providers[0].replace(
            "ExecutionProvider", "").lower()
        self.name = f"onnxruntime-{device}:{self.precision}"
        self._input = self.session.get_inputs()[0].name
        self._outputs = [o.name for o in self.session.get_outputs()]

    def _predict(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        maps, scores = self.session.run(self._outputs, {self._input: images})    # (B, 1, S, S), (B,)
        return maps[:, 0], scores

    def op_profile(self) -> dict[str, dict[str, float]]:
        """End profiling (the engine was built with ``profile_dir``) and sum it per operator type.

        Returns:
            :func:`summarize_profile` of every call since the engine was built.
        """
        import json

        path = self.session.end_profiling()
        if not path:
            raise PRNError(f"{self.name}: not built with profile_dir, so there is no profile")
        with open(path, encoding="utf-8") as handle:
            return summarize_profile(json.load(handle))

    def _describe(self) -> dict[str, Any]:
        return {"providers": self.providers}

    def close(self) -> None:
        """Drop the session (ORT frees its memory with it)."""
        self.session = None


def summarize_profile(events: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """ORT profile events (chrome-trace JSON) -> ``{op type: {"us": total, "nodes": n, "calls": n}}``.

    Only the kernels' own time counts (``Node`` events named ``..._kernel_time``): session and
    input-copy overhead is not any operator's. Quantized graphs name their fused kernels
    (``QLinearConv``, ``QuantizeLinear``) as ORT runs them, which is the point of looking.
    """
    totals: dict[str, dict[str, float]] = {}
    nodes: dict[str, set[str]] = {}
    for event in events:
        if event.get("cat") != "Node" or not str(event.get("name", "")).endswith("_kernel_time"):
            continue
        op = event.get("args", {}).get("op_name", "?")
        entry = totals.setdefault(op, {"us": 0.0, "nodes": 0, "calls": 0})
        entry["us"] += float(event.get("dur", 0))
        entry["calls"] += 1
        nodes.setdefault(op, set()).add(event["name"])
    for op, entry in totals.items():
        entry["nodes"] = len(nodes[op])
    return dict(sorted(totals.items(), key=lambda item: -item[1]["us"]))
