"""The PyTorch engines: the reference (eager PRN) and the CuPy-fused path.

Both load ``checkpoint.pt`` and need torch, imported lazily here so that the edge runtime
stays torch-free. :class:`TorchEngine` is :class:`prn_edge.eval.predictors.TorchPRNPredictor`
behind the :class:`~prn_edge.runtime.engine.Engine` contract (one reference, not a copy).
:class:`CupyFusedEngine` is the same model on a CUDA device whose nearest-prototype residual
and multi-size attention run the fused kernels of :mod:`prn_edge.kernels` instead of the
PyTorch reference ops.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from prn_edge.errors import PRNError, require
from prn_edge.runtime.engine import check_frames, check_outputs

__all__ = ["CupyFusedEngine", "TorchEngine"]


class TorchEngine:
    """The PyTorch PRN (the reference every other backend is tested against).

    Args:
        checkpoint: ``checkpoint.pt`` written by prn-train.
        device: torch device (``cpu``, ``cuda``, ``cuda:N``).
        threads: torch intra-op threads (0 = leave torch's setting; note it is process-wide).

    Raises:
        PRNError: torch missing, a bad device; CheckpointError for an unusable checkpoint.
    """

    backend = "torch"

    def __init__(self, checkpoint: str | os.PathLike, *, device: str = "cpu", threads: int = 0) -> None:
        torch = require("torch", "the PyTorch engine")
        from prn_edge.eval.predictors import TorchPRNPredictor

        if threads:
            torch.set_num_threads(int(threads))
        self.path = Path(checkpoint)
        self.predictor = TorchPRNPredictor.from_checkpoint(self.path, device=device)
        ckpt = self.predictor.checkpoint
        config = self.predictor.model.config
        self.image_size = self.predictor.image_size
        self.threshold = ckpt.threshold
        self.metadata: dict[str, Any] = {"config": config.to_dict(), "input_size": self.image_size,
                                         "threshold": ckpt.threshold, "checkpoint_sha256": ckpt.sha256,
                                         "num_prototypes": self.predictor.model.num_prototypes}
        self.name = f"{self.backend}-{self.predictor.device.type}:fp32"

    def predict(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """See :meth:`Engine.predict`."""
        images = check_frames(images, self.image_size)
        maps, scores = self.predictor.predict(images)
        return check_outputs(self.name, maps, scores, images.shape[0], self.image_size)

    def describe(self) -> dict[str, Any]:
        """See :meth:`Engine.describe`."""
        return {"backend": self.backend, "name": self.name, "precision": "fp32",
                "device": str(self.predictor.device), "model": str(self.path), "image_size": self.image_size,
                "threshold": self.threshold, "checkpoint_sha256": self.metadata["checkpoint_sha256"]}

    def close(self) -> None:
        """Drop the model (and its device memory with it)."""
        self.predictor = None

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.path)!r}, name={self.name!r})"


class CupyFusedEngine(TorchEngine):
    """The PyTorch PRN on a CUDA GPU with the fused CuPy kernels in place of the reference ops.

    Module substitution, as the ONNX export does: every
    :class:`~prn_edge.model.prototypes.PrototypeBank` calls :func:`prn_edge.kernels.proto_residual`
    and every :class:`~prn_edge.model.attention.MSALayer` calls
    :func:`prn_edge.kernels.multi_size_attention` on the torch CUDA tensors (the kernels take
    them directly); everything else is the reference model.

    Args:
        checkpoint: ``checkpoint.pt``.
        device: a CUDA device (``cuda``, ``cuda:N``).

    Raises:
        PRNError: the kernels cannot run here (no CuPy, no GPU, NVRTC failure: the reason of
            :func:`prn_edge.kernels.fused_available`), or a non-CUDA device.
    """

    backend = "cupy-fused"

    def __init__(self, checkpoint: str | os.PathLike, *, device: str = "cuda", threads: int = 0) -> None:
        from prn_edge.kernels import fused_available

        ok, why = fused_available()
        if not ok:
            raise PRNError(f"the CuPy-fused engine cannot run here: {why}")
        if not str(device).startswith("cuda"):
            raise PRNError(f"the CuPy-fused engine runs on a CUDA device, not {device!r}")
        super().__init__(checkpoint, device=device, threads=threads)
        _use_fused_kernels(self.predictor.model)
        self.fused_device = why


def _use_fused_kernels(model) -> None:
    """Swap the reference ops of ``model`` (in place) for the fused kernels."""
    from torch import nn

    from prn_edge import kernels
    from prn_edge.model.attention import MSALayer
    from prn_edge.model.prototypes import PrototypeBank

    class FusedBank(nn.Module):
        def __init__(self, bank: PrototypeBank):
            super().__init__()
            self.register_buffer("prototypes", bank.prototypes)   # (K, D)
            self.register_buffer("sqnorm", bank.sqnorm)           # (K,)

        def forward(self, features, mode: str = "abs"):           # (B, C, H, W)
            return kernels.proto_residual(features.contiguous(), self.prototypes, self.sqnorm, mode)

    class FusedMSALayer(nn.Module):
        def __init__(self, layer: MSALayer):
            super().__init__()
            self.num_heads, self.qkv, self.block = layer.num_heads, layer.qkv, layer.block

        def forward(self, x):                                      # (B, C, H, W)
            return self.block(kernels.multi_size_attention(self.qkv(x).contiguous(), self.num_heads))

    swapped = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, PrototypeBank):
                setattr(parent, name, FusedBank(child))
                swapped += 1
            elif isinstance(child, MSALayer):
                setattr(parent, name, FusedMSALayer(child))
                swapped += 1
    if swapped == 0:
        raise PRNError("the model has no prototype banks or attention layers to fuse")
