"""The PyTorch backend: the PRN model itself, the reference every other backend is tested against.

torch is imported when an engine is built, so the edge runtime stays torch-free. The engine
takes the contract's uint8 frames, converts them with the model package's one conversion
(:func:`prn_edge.model.deployable.frames_to_tensor`) and runs the model in eval mode.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from prn_edge.contract.engine import Engine
from prn_edge.errors import PRNError, require

__all__ = ["TorchEngine", "resolve_device"]


def resolve_device(device):
    """``device`` as a usable ``torch.device``; a clear error for a bad or absent one."""
    torch = require("torch", "the PyTorch engine")
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


class TorchEngine(Engine):
    """A PRN in PyTorch behind the engine contract.

    Args:
        model: a :class:`~prn_edge.model.PRN` (moved to ``device``, switched to eval mode), or the
            path of a ``checkpoint.pt`` (loaded weights-only).
        device: where to run it (``"cpu"``, ``"cuda"``, ``"cuda:1"``).
        threads: torch intra-op threads (0 = leave torch's setting; it is process-wide).
        checkpoint: the :class:`~prn_edge.checkpoint.Checkpoint` an in-memory model came from, if any.
        name: the report label; default ``prn:<preset>/<backbone>`` for an in-memory model,
            ``torch-<device>:fp32`` for a checkpoint.

    Raises:
        PRNError: torch missing, a bad or unavailable device; CheckpointError for an unusable checkpoint.
    """

    backend = "torch"

    def __init__(self, model, *, device="cpu", threads: int = 0, checkpoint=None, name: str | None = None) -> None:
        torch = require("torch", "the PyTorch engine")
        if threads:
            torch.set_num_threads(int(threads))
        self.device = resolve_device(device)          # before loading: a bad --device fails fast
        if isinstance(model, (str, os.PathLike)):
            from prn_edge.checkpoint import load_model

            self.path = Path(model)
            model, checkpoint = load_model(self.path, device=self.device)
            name = name or f"{self.backend}-{self.device.type}:fp32"
        self.model = model.to(self.device).eval()
        self.checkpoint = checkpoint
        config = model.config
        self.image_size = int(config.image_size)
        self.threshold = None if checkpoint is None else checkpoint.threshold
        self.metadata: dict[str, Any] = {"config": config.to_dict(), "input_size": self.image_size,
                                         "threshold": self.threshold,
                                         "checkpoint_sha256": None if checkpoint is None else checkpoint.sha256,
                                         "num_prototypes": model.num_prototypes}
        self.name = name or f"prn:{config.preset}/{config.backbone}"

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike, device="cpu", **kwargs) -> TorchEngine:
        """Load ``checkpoint.pt`` (weights-only); ``.checkpoint`` holds the loaded checkpoint."""
        return cls(path, device=device, **kwargs)

    def _predict(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        import torch

        from prn_edge.model.deployable import frames_to_tensor

        if self.model.training:  # someone called .train() since; scores need eval-mode BatchNorm
            self.model.eval()
        with torch.no_grad():
            out = self.model(frames_to_tensor(images, self.device))             # (B, 3, S, S) in [0, 1]
            return out.anomaly_map[:, 0].float().cpu().numpy(), out.score.float().cpu().numpy()

    def _describe(self) -> dict[str, Any]:
        return {"device": str(self.device)}

    def close(self) -> None:
        """Drop the model (and its device memory with it)."""
        self.model = None
