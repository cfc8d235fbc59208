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

__all__ = ["PROVIDERS", "OnnxRuntimeEngine"]

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

    Raises:
        PRNError: onnxruntime missing, the file missing or not a PRN export, or ORT refusing it.
    """

    backend = "onnxruntime"

    def __init__(self, path: str | os.PathLike, *, providers: list[str] | None = None, threads: int = 0) -> None:
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
        options.log_severity_level = 3   # ORT warns about every unused initializer otherwise
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

    def _describe(self) -> dict[str, Any]:
        return {"providers": self.providers}

    def close(self) -> None:
        """Drop the session (ORT frees its memory with it)."""
        self.session = None
