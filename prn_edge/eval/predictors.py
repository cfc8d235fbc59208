"""The one scoring contract every backend implements, so that all share one evaluation.

A :class:`Predictor` takes what the deployed model takes, uint8 RGB images ``(B, S, S, 3)``
at its input size ``S``, and returns a per-pixel anomaly map and an image score per image.
Resizing, colour conversion and normalisation of the *dataset* happen once, in
:func:`prn_edge.data.mvtec.load_sample`; normalisation for the *network* happens inside each
backend (inside the PyTorch model, inside the exported graph). So PRN in PyTorch, the
PatchCore baseline and the ONNX / TensorRT backends are scored by exactly the same code
(:func:`prn_edge.eval.evaluate.evaluate`) on exactly the same pixels.

This module imports torch only inside :class:`TorchPRNPredictor`.
"""
from __future__ import annotations

import os
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import numpy as np

from prn_edge.errors import PRNError, require
from prn_edge.runtime.engine import check_frames, check_outputs

if TYPE_CHECKING:  # pragma: no cover - typing only
    from prn_edge.checkpoint import Checkpoint

__all__ = ["Predictor", "TorchPRNPredictor", "check_images", "check_prediction"]


@runtime_checkable
class Predictor(Protocol):
    """What :func:`~prn_edge.eval.evaluate.evaluate` needs from a scorer.

    Attributes:
        name: a short label for reports (``"prn:edge/efficientnet_lite0"``, ``"patchcore"``).
        image_size: the side ``S`` of the square uint8 input images.
    """

    name: str
    image_size: int

    def predict(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Score a batch.

        Args:
            images: uint8 ``(B, S, S, 3)`` RGB.

        Returns:
            ``(maps, scores)``: float32 ``(B, S, S)`` anomaly maps (in [0, 1] for PRN, any
            real values for other scorers; higher = more anomalous) and float32 ``(B,)``
            image scores.
        """
        ...


# One validation for every backend: the runtime's engines and the evaluation share it.
check_images = check_frames
check_prediction = check_outputs


def _resolve_device(device):
    """``device`` as a usable ``torch.device``; a clear error for a bad or absent one."""
    torch = require("torch", "the PyTorch predictor")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError) as exc:
        raise PRNError(f"unknown device {device!r} (use cpu, cuda or cuda:N)") from exc
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise PRNError(f"device {device!r} asked for, but this torch has no usable CUDA GPU "
                           "(use --device cpu, or install a CUDA build of torch)")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise PRNError(f"device {device!r} does not exist: {torch.cuda.device_count()} GPU(s) visible")
    return dev


class TorchPRNPredictor:
    """The PyTorch PRN behind the :class:`Predictor` contract (the reference backend).

    uint8 NHWC -> float NCHW / 255 (the model normalises for its backbone itself) -> model
    in eval mode under ``no_grad`` -> ``anomaly_map[:, 0]`` and ``score``.

    Args:
        model: a :class:`~prn_edge.model.PRN` (moved to ``device``, switched to eval mode).
        device: where to run it (``"cpu"``, ``"cuda"``, ``"cuda:1"``).
        checkpoint: the checkpoint it came from, if any (reports cite its SHA-256).
        name: the report label; default ``prn:<preset>/<backbone>``.

    Raises:
        PRNError: a bad or unavailable device.
    """

    def __init__(self, model, *, device="cpu", checkpoint: Checkpoint | None = None,
                 name: str | None = None) -> None:
        self.device = _resolve_device(device)
        self.model = model.to(self.device).eval()
        self.checkpoint = checkpoint
        config = model.config
        self.image_size = int(config.image_size)
        self.name = name or f"prn:{config.preset}/{config.backbone}"

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike, device="cpu") -> TorchPRNPredictor:
        """Load ``checkpoint.pt`` (weights-only) and wrap its model.

        Args:
            path: the checkpoint file.
            device: where to run the model.

        Returns:
            The predictor; ``.checkpoint`` holds the loaded :class:`~prn_edge.checkpoint.Checkpoint`.

        Raises:
            CheckpointError: the file is missing, unreadable or does not fit its config.
            PRNError: a bad or unavailable device.
        """
        from prn_edge.checkpoint import load_model

        dev = _resolve_device(device)  # before loading: a bad --device fails fast
        model, ckpt = load_model(path, device=dev)
        return cls(model, device=dev, checkpoint=ckpt)

    @property
    def checkpoint_sha256(self) -> str | None:
        """SHA-256 of the checkpoint file's bytes, when the model came from one."""
        return None if self.checkpoint is None else self.checkpoint.sha256

    def predict(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """See :meth:`Predictor.predict`; maps are the sigmoid probabilities in [0, 1]."""
        import torch

        check_images(images, self.image_size)
        if self.model.training:  # someone called .train() since; scores need eval-mode BatchNorm
            self.model.eval()
        with torch.no_grad():
            x = torch.from_numpy(np.ascontiguousarray(images)).to(self.device)   # (B, S, S, 3) uint8
            x = x.permute(0, 3, 1, 2).float().div_(255.0)                         # (B, 3, S, S) [0, 1]
            out = self.model(x)
            maps = out.anomaly_map[:, 0].float().cpu().numpy()                   # (B, S, S)
            scores = out.score.float().cpu().numpy()                             # (B,)
        return maps, scores

    def __repr__(self) -> str:
        return f"TorchPRNPredictor(name={self.name!r}, image_size={self.image_size}, device='{self.device}')"
