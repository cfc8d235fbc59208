"""U-Net decoder and image score (docs/model.md, "Decoder and image score")."""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from prn_edge.model.attention import conv_bn_relu


class DecoderStage(nn.Module):
    """x2 bilinear, conv3x3-BN-ReLU, concatenate the skip, two conv3x3-BN-ReLU."""

    def __init__(self, c_in: int, c_skip: int, c_out: int):
        super().__init__()
        self.up = conv_bn_relu(c_in, c_out)
        self.fuse = nn.Sequential(conv_bn_relu(c_out + c_skip, c_out), conv_bn_relu(c_out, c_out))

    def forward(self, x: Tensor, skip: Tensor) -> Tensor:
        x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
        return self.fuse(torch.cat((self.up(x), skip), dim=1))


class Decoder(nn.Module):
    """From the stride-32 feature and the three skips to 1-channel logits at full size.

    Args:
        bottom_channels: channels of the stride-32 encoder feature.
        skip_channels: channels of the skips T*_1..3 (strides 4, 8, 16).
        stage_channels: output channels of the stages at scales 1..3.
        head_channels: channels of the conv3x3-BN-ReLU before the logits.
        full_resolution: True for the paper's head (x4, then convs at full size); False to
            predict at stride 4 and upsample the logits x4 (edge preset).
    """

    def __init__(self, bottom_channels: int, skip_channels: Sequence[int], stage_channels: Sequence[int],
                 head_channels: int, full_resolution: bool = True):
        super().__init__()
        self.full_resolution = full_resolution
        c_in = bottom_channels
        stages = []
        for j in (2, 1, 0):  # scales 3 -> 2 -> 1
            stages.append(DecoderStage(c_in, skip_channels[j], stage_channels[j]))
            c_in = stage_channels[j]
        self.stages = nn.ModuleList(stages)
        self.head = nn.Sequential(conv_bn_relu(c_in, head_channels),
                                  nn.Conv2d(head_channels, 1, 3, padding=1))

    def forward(self, bottom: Tensor, skips: Sequence[Tensor], record: dict | None = None) -> Tensor:
        x = bottom
        for scale, stage, skip in zip((3, 2, 1), self.stages, reversed(skips)):
            x = stage(x, skip)
            if record is not None:
                record[f"decoder scale {scale}"] = x
        if self.full_resolution:
            x = F.interpolate(x, scale_factor=4, mode="bilinear", align_corners=False)
            return self.head(x)
        return F.interpolate(self.head(x), scale_factor=4, mode="bilinear", align_corners=False)


def top_k_score(anomaly_map: Tensor, k: int) -> Tensor:
    """Image score: the mean of the ``k`` largest map values, (B, 1, H, W) -> (B,); per channel,
    (B, C, H, W) -> (B, C), when there are several."""
    if anomaly_map.shape[1] == 1:
        return anomaly_map.flatten(1).topk(k, dim=1).values.mean(dim=1)
    return anomaly_map.flatten(2).topk(k, dim=2).values.mean(dim=2)
