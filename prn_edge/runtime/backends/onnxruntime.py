"""The one inference interface of the edge runtime, and its ONNX Runtime implementation.

An :class:`Engine` takes what the deployed model takes, uint8 RGB NHWC frames at the model's
input size, and returns per-pixel anomaly maps and image scores: the same contract as
:class:`prn_edge.eval.predictors.Predictor`, so ``prn-eval``, ``prn-export``'s accuracy
gates, ``prn-inspect`` and ``prn-bench`` all score every backend with one code path.

Metadata (config, threshold, input size, checkpoint hash) travels inside the ONNX file
(``metadata_props``), so an engine needs nothing but the model file. numpy only here;
ONNX Runtime is imported when an :class:`OnnxRuntimeEngine` is built.

The other implementations live beside this one: ``TensorRTEngine``
(:mod:`prn_edge.runtime.backends.tensorrt`), ``TorchEngine`` (the reference) and
``CupyFusedEngine`` (:mod:`prn_edge.runtime.torch_engine`); :func:`prn_edge.runtime.loader.load_engine`
picks the best one that runs here, or the one asked for.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from prn_edge.errors import PRNError, first_line, require

__all__ = ["Engine", "OnnxRuntimeEngine", "check_frames", "check_outputs"]


@runtime_checkable
class Engine(Protocol):
    """What every backend offers.

    Attributes:
        name: a short label for reports (``"onnxruntime-cpu:fp32"``).
        image_size: the side ``S`` of the square uint8 input frames.
        threshold: the calibrated decision threshold on the image score (None if the model
            was never calibrated).
        metadata: the model's metadata (``prn_edge.export.onnx_export.METADATA_KEYS``).
    """

    name: str
    image_size: int
    threshold: float | None
    metadata: dict[str, Any]

    def predict(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """uint8 ``(B, S, S, 3)`` RGB -> float32 maps ``(B, S, S)`` in [0, 1], scores ``(B,)``."""
        ...

    def describe(self) -> dict[str, Any]:
        """Backend, device, precision, model file: what a report prints about this engine."""
        ...

    def close(self) -> None:
        """Release the session / device memory."""
        ...


def check_frames(images: np.ndarray, size: int) -> np.ndarray:
    """``images`` if it is a non-empty uint8 ``(B, size, size, 3)`` array, else a one-line PRNError."""
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim != 4 \
            or images.shape[1:] != (size, size, 3) or images.shape[0] == 0:
        got = f"{images.dtype} {images.shape}" if isinstance(images, np.ndarray) else type(images).__name__
        raise PRNError(f"the model takes uint8 (B, {size}, {size}, 3) RGB frames, got {got}")
    return np.ascontiguousarray(images)


def check_outputs(name: str, maps, scores, batch: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """The contract's single output check, shared by every engine and predictor.

    Args:
        name: the engine's or predictor's name, for the message.
        maps: the returned maps.
        scores: the returned scores.
        batch: the number of frames given.
        size: the input side ``S``.

    Returns:
        ``(maps, scores)`` as float32 ``(B, S, S)`` and ``(B,)`` numpy arrays.

    Raises:
        PRNError: a wrong shape (an engine drops the ONNX output's channel axis itself), or NaN /
            infinite values (a broken model or engine).
    """
    maps = np.asarray(maps, dtype=np.float32)
    scores = np.asarray(scores, dtype=np.float32)
    if maps.shape != (batch, size, size) or scores.shape != (batch,):
        raise PRNError(f"{name!r} returned maps {maps.shape} and scores {scores.shape} for {batch} frames; "
                       f"the contract is maps ({batch}, {size}, {size}) and scores ({batch},)")
    for what, array in (("maps", maps), ("scores", scores)):
        if not np.isfinite(array).all():
            bad = int(np.count_nonzero(~np.isfinite(array)))
            raise PRNError(f"{name!r} returned {bad} NaN or infinite value(s) in its {what}: "
                           "the model or engine is broken")
    return maps, scores


def _precision_of(path: Path) -> str:
    """``model.fp16.onnx`` -> fp16; ``model.int8.onnx`` -> int8; anything else -> fp32."""
    suffixes = [s.lstrip(".") for s in path.suffixes[:-1]]
    return next((s for s in reversed(suffixes) if s in ("fp16", "int8")), "fp32")


class OnnxRuntimeEngine:
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

    def __init__(self, path: str | os.PathLike, *, providers: list[str] | None = None, threads: int = 0) -> None:
        ort = require("onnxruntime", "the ONNX Runtime engine")
        self.path = Path(path)
        if not self.path.is_file():
            raise PRNError(f"{self.path}: no such model file")
        available = ort.get_available_providers()
        wanted = providers or ["CPUExecutionProvider"]
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
        self.metadata = _parse_metadata(self.session.get_modelmeta().custom_metadata_map, self.path)
        self.image_size = int(self.metadata["input_size"])
        self.threshold = self.metadata.get("threshold")
        self.precision = _precision_of(self.path)
        self.providers = self.session.get_providers()
        device = "cpu" if self.providers[0] == "CPUExecutionProvider" else self.providers[0].replace(
            "ExecutionProvider", "").lower()
        self.name = f"onnxruntime-{device}:{self.precision}"
        self._input = self.session.get_inputs()[0].name
        self._outputs = [o.name for o in self.session.get_outputs()]

    def predict(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """See :meth:`Engine.predict`."""
        images = check_frames(images, self.image_size)
        maps, scores = self.session.run(self._outputs, {self._input: images})    # (B, 1, S, S), (B,)
        return check_outputs(self.name, maps[:, 0], scores, images.shape[0], self.image_size)

    def describe(self) -> dict[str, Any]:
        """See :meth:`Engine.describe`."""
        return {"backend": "onnxruntime", "name": self.name, "precision": self.precision,
                "providers": self.providers, "model": str(self.path), "image_size": self.image_size,
                "threshold": self.threshold, "checkpoint_sha256": self.metadata.get("checkpoint_sha256")}

    def close(self) -> None:
        """Drop the session (ORT frees its memory with it)."""
        self.session = None

    def __repr__(self) -> str:
        return f"OnnxRuntimeEngine({str(self.path)!r}, name={self.name!r})"


def _parse_metadata(props: dict[str, str], path: Path) -> dict[str, Any]:
    """The ONNX metadata as Python values, or a PRNError naming a file that is not a PRN export."""
    from prn_edge.export.onnx_export import FORMAT, parse_metadata  # stdlib-only module

    if props.get("format") != FORMAT or "input_size" not in props:
        raise PRNError(f"{path}: not a PRN Edge ONNX export (no '{FORMAT}' metadata); export it with prn-export")
    try:
        return parse_metadata(props)
    except (ValueError, json.JSONDecodeError) as exc:
        raise PRNError(f"{path}: unreadable PRN metadata: {first_line(exc)}") from exc
