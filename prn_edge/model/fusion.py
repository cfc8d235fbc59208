"""Multi-scale fusion (MF, docs/model.md, "Multi-scale fusion"): ``out_j = sum_r f_rj(in_r)`` over three scales."""
from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn


def _down_path(c_in: int, c_out: int, factor: int) -> nn.Module:
    # Depthwise conv, kernel factor+1, stride factor, padding factor/2, then pointwise:
    # exactly the stride-'factor' reduction docs/model.md writes (64 -> 32 -> 16 sides).
    return nn.Sequential(
        nn.Conv2d(c_in, c_in, kernel_size=factor + 1, stride=factor, padding=factor // 2,
                  groups=c_in, bias=False),
        nn.Conv2d(c_in, c_out, kernel_size=1),
    )


class MultiScaleFusion(nn.Module):
    """Fuse three maps (strides 4, 8, 16) into three maps with the same shapes.

    r = j: identity. r < j: depthwise-separable strided conv. r > j: 1x1 conv and bilinear
    upsampling. docs/model.md orders the up path "upsample, then 1x1 conv"; we convolve first:
    bilinear interpolation (align_corners=False) is a convex combination per output pixel,
    so it commutes with a per-pixel affine map, and the conv then runs on 4-16x fewer
    pixels. No normalisation, no activation.
    """

    def __init__(self, channels: Sequence[int]):
        super().__init__()
        self.channels = tuple(channels)
        self.paths = nn.ModuleDict()
        for r, c_r in enumerate(self.channels):
            for j, c_j in enumerate(self.channels):
                if r < j:
                    self.paths[f"{r}to{j}"] = _down_path(c_r, c_j, 2 ** (j - r))
                elif r > j:
                    self.paths[f"{r}to{j}"] = nn.Conv2d(c_r, c_j, kernel_size=1)

    def forward(self, inputs: Sequence[Tensor]) -> list[Tensor]:
        outputs = []
        for j, target in enumerate(inputs):
            total = target
            for r, source in enumerate(inputs):
                if r == j:
                    continue
                x = self.paths[f"{r}to{j}"](source)
                if r > j:
                    x = F.interpolate(x, size=target.shape[-2:], mode="bilinear", align_corners=False)
                total = total + x
            outputs.append(total)
        return outputs
