"""Seeded random weights for the trainable part of a PRN: the fixture of every parity check.

Backends are compared on models whose head is random but seeded and scaled so that the
anomaly map spans (0, 1) rather than sitting at 0.5 (where any two backends agree trivially).
Used by the export and runtime tests and by the GPU check scripts, so they all test alike.
"""
from __future__ import annotations

from torch import nn


def randomize_head(model, seed: int, gain: float) -> None:
    """Seeded random weights and BatchNorm statistics for everything but the (frozen) encoder.

    Args:
        model: a :class:`~prn_edge.model.PRN`, modified in place.
        seed: the generator seed.
        gain: scale of the conv weights relative to 1/sqrt(fan-in); above 1 spreads the map.
    """
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, m in model.named_modules():
            if name.startswith("encoder"):
                continue
            if isinstance(m, nn.Conv2d):
                m.weight.normal_(0.0, gain / m.weight[0].numel() ** 0.5, generator=g)
                if m.bias is not None:
                    m.bias.normal_(0.0, 0.1, generator=g)
            elif isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5, generator=g)
                m.bias.normal_(0.0, 0.1, generator=g)
                m.running_mean.normal_(0.0, 0.1, generator=g)
                m.running_var.uniform_(0.5, 2.0, generator=g)
