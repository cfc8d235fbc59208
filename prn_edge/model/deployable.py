"""The deployable form of a PRN: uint8 frames in, (anomaly map, score) out, and its op swap.

Two concepts that every consumer of the PyTorch model shares, written once:

* :func:`to_unit_float` / :class:`DeployablePRN`: the uint8 -> [0, 1] input conversion. The
  exported ONNX graph, the PyTorch and CuPy-fused engines and the PatchCore baseline take uint8
  RGB frames; training batches are uint8 tensors. All of them convert with this one function,
  so the arithmetic (transpose while still uint8, cast, divide by 255) is the same bit for bit.
* :func:`swap_fused_ops`: module substitution of the two fused parts (each
  :class:`~prn_edge.model.prototypes.PrototypeBank` and each :class:`~prn_edge.model.attention.MSALayer`)
  for implementations that call other functions with the same signature: the ``prn`` torch ops
  of the ONNX export, or the CuPy kernels of the fused engine. Everything else stays the
  reference model.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from prn_edge.errors import PRNError

__all__ = ["DeployablePRN", "frames_to_tensor", "swap_fused_ops", "to_unit_float"]


def to_unit_float(images: Tensor, *, channels_last: bool = False) -> Tensor:
    """uint8 images -> float32 NCHW in [0, 1].

    Args:
        images: uint8 ``(B, 3, S, S)``, or ``(B, S, S, 3)`` with ``channels_last`` (transposed
            while still uint8: a quarter of the bytes of a float transpose).
    """
    if channels_last:
        images = images.permute(0, 3, 1, 2)
    return images.float().div(255.0)


def frames_to_tensor(images, device) -> Tensor:
    """A numpy uint8 ``(B, S, S, 3)`` RGB batch -> float32 ``(B, 3, S, S)`` in [0, 1] on ``device``."""
    import numpy as np

    x = torch.from_numpy(np.ascontiguousarray(images)).to(device)
    return to_unit_float(x, channels_last=True)


class DeployablePRN(nn.Module):
    """uint8 NHWC RGB -> ``(anomaly_map (N, 1, S, S), score (N,))``: the deployed model's I/O."""

    def __init__(self, prn: nn.Module) -> None:
        super().__init__()
        self.prn = prn

    def forward(self, image: Tensor) -> tuple[Tensor, Tensor]:        # (N, S, S, 3) uint8
        out = self.prn(to_unit_float(image, channels_last=True))      # the backbone normalises itself
        return out.anomaly_map, out.score


ProtoResidualFn = Callable[[Tensor, Tensor, Tensor, str], Tensor]   # (features, prototypes, sqnorm, mode)
AttentionFn = Callable[[Tensor, int], Tensor]                         # (qkv, num_heads)


class _SwappedBank(nn.Module):
    """A prototype bank (same buffers) whose residual is ``fn``."""

    def __init__(self, bank: nn.Module, fn: ProtoResidualFn) -> None:
        super().__init__()
        self.register_buffer("prototypes", bank.prototypes)   # (K, D)
        self.register_buffer("sqnorm", bank.sqnorm)           # (K,)
        self.match = bank.match
        self.fn = fn

    def forward(self, features: Tensor, mode: str = "abs") -> Tensor:   # (B, C, H, W)
        from prn_edge.model.prototypes import match_residual

        return match_residual(features, self.prototypes, self.sqnorm, mode, self.match, self.fn)


class _SwappedMSALayer(nn.Module):
    """An MSA layer (same ``qkv`` and ``block``) whose attention core is ``fn``."""

    def __init__(self, layer: nn.Module, fn: AttentionFn) -> None:
        super().__init__()
        self.num_heads, self.qkv, self.block = layer.num_heads, layer.qkv, layer.block
        self.fn = fn

    def forward(self, x: Tensor) -> Tensor:                              # (B, C, H, W)
        return self.block(self.fn(self.qkv(x), self.num_heads))


def swap_fused_ops(model: nn.Module, proto_residual: ProtoResidualFn, attention: AttentionFn) -> int:
    """Replace (in place) every prototype bank and MSA layer of ``model`` by one calling the given functions.

    Returns:
        How many modules were swapped.

    Raises:
        PRNError: the model has neither (nothing to fuse).
    """
    from prn_edge.model.attention import MSALayer
    from prn_edge.model.prototypes import PrototypeBank

    swapped = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, PrototypeBank):
                setattr(parent, name, _SwappedBank(child, proto_residual))
                swapped += 1
            elif isinstance(child, MSALayer):
                setattr(parent, name, _SwappedMSALayer(child, attention))
                swapped += 1
    if swapped == 0:
        raise PRNError("the model has no prototype banks or attention layers to fuse")
    return swapped
