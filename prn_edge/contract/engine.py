"""The engine contract: what every backend takes, returns and reports, checked in one place.

An engine takes what the deployed model takes, uint8 RGB NHWC frames ``(B, S, S, 3)`` at the
model's input size ``S``, and returns per-pixel anomaly maps ``(B, S, S)`` and image scores
``(B,)``, both float32. Normalisation for the network happens inside each backend (inside the
PyTorch model, inside the exported graph), so every backend is fed the same pixels.

:class:`Engine` is a base class in the manner of Polygraphy's runners: the public
:meth:`Engine.predict` checks the frames, times the call, runs the backend's
:meth:`Engine._predict` and checks what came back, so no backend repeats the checks and every
backend reports the same per-stage timings (:attr:`Engine.last_timings`). numpy only.
"""
from __future__ import annotations

import abc
import time
from typing import Any

import numpy as np

from prn_edge.errors import PRNError

__all__ = ["DEVICE_STAGES", "Engine", "EngineUnavailable", "check_frames", "check_outputs"]

#: The stages an engine that moves data to a device reports separately (seconds).
DEVICE_STAGES = ("h2d", "compute", "d2h")


class EngineUnavailable(PRNError):
    """The engine cannot answer now, though nothing is wrong with the frames (a server that is down or
    restarting): the same call may succeed later, so a caller may retry the same frames.

    :class:`~prn_edge.runtime.loop.InspectionLoop` retries the frame in hand with back-off and counts it;
    anything else reports it as the one-line error it is (a :class:`PRNError`).
    """


def check_frames(images: np.ndarray, size: int) -> np.ndarray:
    """``images`` if it is a non-empty uint8 ``(B, size, size, 3)`` array, else a one-line PRNError."""
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim != 4 \
            or images.shape[1:] != (size, size, 3) or images.shape[0] == 0:
        got = f"{images.dtype} {images.shape}" if isinstance(images, np.ndarray) else type(images).__name__
        raise PRNError(f"the model takes uint8 (B, {size}, {size}, 3) RGB frames, got {got}")
    return np.ascontiguousarray(images)


def check_outputs(name: str, maps, scores, batch: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """``(maps, scores)`` as float32 ``(B, S, S)`` and ``(B,)`` arrays, or a one-line PRNError.

    Raises:
        PRNError: a wrong shape, or NaN / infinite values (a broken model or engine).
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


class Engine(abc.ABC):
    """One way to run a model: a backend implements :meth:`_predict`, the contract does the rest.

    Attributes a backend sets in its constructor:
        name: a short label for reports (``"onnxruntime-cpu:fp32"``).
        backend: the backend's name (``"onnxruntime"``, ``"tensorrt"``, ``"torch"``, ...).
        precision: ``fp32``, ``fp16`` or ``int8``.
        image_size: the side ``S`` of the square uint8 input frames.
        threshold: the calibrated decision threshold on the image score (None if uncalibrated).
        metadata: the model's metadata (:mod:`prn_edge.contract.metadata`).
        path: the file it runs (None for an in-memory model).

    After each :meth:`predict`, :attr:`last_timings` holds seconds per stage: ``total`` always;
    ``h2d``, ``compute`` and ``d2h`` where the backend separates device transfers
    (:meth:`_record_device_timings`), else ``compute`` equal to ``total``.
    """

    name: str = "engine"
    backend: str = "engine"
    precision: str = "fp32"
    image_size: int = 0
    threshold: float | None = None
    metadata: dict[str, Any] = {}
    path: Any = None
    last_timings: dict[str, float] = {}

    def predict(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """uint8 ``(B, S, S, 3)`` RGB -> float32 maps ``(B, S, S)``, scores ``(B,)``.

        Raises:
            PRNError: frames that break the contract, or outputs that do (shape, NaN).
            EngineUnavailable: a remote engine that cannot answer now (the same frames may be retried).
        """
        images = check_frames(images, self.image_size)
        self._device_timings: dict[str, float] | None = None
        start = time.perf_counter()
        maps, scores = self._predict(images)
        total = time.perf_counter() - start
        self.last_timings = {**(self._device_timings or {"compute": total}), "total": total}
        return check_outputs(self.name, maps, scores, images.shape[0], self.image_size)

    @abc.abstractmethod
    def _predict(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The backend's work on checked, contiguous frames: maps ``(B, S, S)`` and scores ``(B,)``."""

    def _record_device_timings(self, h2d: float, compute: float, d2h: float) -> None:
        """Called by :meth:`_predict` of a device backend: seconds of copy in, compute, copy out."""
        self._device_timings = {"h2d": float(h2d), "compute": float(compute), "d2h": float(d2h)}

    def describe(self) -> dict[str, Any]:
        """Backend, precision, model file, threshold: what a report prints about this engine."""
        return {"backend": self.backend, "name": self.name, "precision": self.precision,
                "model": None if self.path is None else str(self.path), "image_size": self.image_size,
                "threshold": self.threshold, "checkpoint_sha256": self.metadata.get("checkpoint_sha256"),
                **self._describe()}

    def _describe(self) -> dict[str, Any]:
        """Backend-specific fields of :meth:`describe` (providers, device, GPU ...)."""
        return {}

    @property
    def checkpoint_sha256(self) -> str | None:
        """SHA-256 of the checkpoint the model came from, when known."""
        return self.metadata.get("checkpoint_sha256")

    def close(self) -> None:
        """Release the session / device memory (the default holds nothing)."""

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        where = "" if self.path is None else f"{str(self.path)!r}, "
        return f"{type(self).__name__}({where}name={self.name!r})"
