"""Random numbers of the synthesis, each from an explicit ``torch.Generator``.

Drawn on the generator's device, then moved to the data's device, so a CPU generator can
drive GPU synthesis (and a CUDA generator works as well).
"""
from __future__ import annotations

import torch


def _rand(generator: torch.Generator, shape: tuple[int, ...], device: torch.device,
          dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.rand(shape, generator=generator, device=generator.device).to(device=device, dtype=dtype)


def _uniform(generator: torch.Generator, shape: tuple[int, ...], low: float, high: float,
             device: torch.device, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return low + (high - low) * _rand(generator, shape, device, dtype)


def _randint(generator: torch.Generator, low: int, high: int, shape: tuple[int, ...],
             device: torch.device) -> torch.Tensor:
    """Integers in [low, high) (high exclusive, as torch.randint)."""
    return torch.randint(low, high, shape, generator=generator, device=generator.device).to(device)


def _random_op_order(generator: torch.Generator, n: int, n_ops: int, k: int,
                     device: torch.device) -> torch.Tensor:
    """``(n, k)`` indices of k distinct ops out of n_ops per sample, in random order."""
    return _rand(generator, (n, n_ops), device).argsort(dim=1)[:, :k]


def _sample_pixels(weights: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Inverse-CDF sampling of one pixel per row: ``weights (n, H*W)`` >= 0, ``u (n,)`` in [0, 1).

    torch.multinomial would need a generator on the data's device; this needs only ``u``.
    Rows must have a positive sum. Returns ``(n,)`` flat indices of pixels with weight > 0.
    """
    cdf = weights.cumsum(dim=1)                                      # (n, HW)
    target = (u * cdf[:, -1]).unsqueeze(1)                           # (n, 1)
    index = torch.searchsorted(cdf, target, right=True).squeeze(1)
    return index.clamp(max=weights.shape[1] - 1)
