"""The CuPy-fused backend: the PyTorch PRN on a CUDA GPU with the fused kernels in its hot spots.

The model's prototype banks and MSA layers are swapped (:func:`prn_edge.model.deployable.swap_fused_ops`,
the same substitution the ONNX export uses) for modules that call
:func:`prn_edge.kernels.proto_residual` and :func:`prn_edge.kernels.multi_size_attention` on the
torch CUDA tensors; everything else is the reference model.
"""
from __future__ import annotations

import os

from prn_edge.errors import PRNError
from prn_edge.runtime.backends.torch import TorchEngine

__all__ = ["CupyFusedEngine", "use_fused_kernels"]


def use_fused_kernels(model) -> int:
    """Swap the reference ops of ``model`` (in place) for the fused kernels; returns the count swapped."""
    from prn_edge import kernels
    from prn_edge.model.deployable import swap_fused_ops

    return swap_fused_ops(
        model,
        lambda features, prototypes, sqnorm, mode: kernels.proto_residual(features.contiguous(), prototypes,
                                                                          sqnorm, mode),
        lambda qkv, num_heads: kernels.multi_size_attention(qkv.contiguous(), num_heads))


class CupyFusedEngine(TorchEngine):
    """The PyTorch PRN with the fused CuPy kernels in place of the reference ops.

    Args:
        checkpoint: ``checkpoint.pt`` (or an in-memory PRN).
        device: a CUDA device (``cuda``, ``cuda:N``).
        threads: torch intra-op threads (0 = leave torch's setting).

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
        use_fused_kernels(self.model)
        self.fused_device = why
