"""Multi-size self-attention (MSA, docs/model.md, "Multi-size attention").

One layer on X (B, c, H, W), c = 2C: four heads with patch sides p_s = H / 2^s
(s = 0..3). Per head, 1x1 convolutions give Q, K, V; each is cut into non-overlapping
p x p patches, a patch flattened into one token of dimension d = c * p * p; then
``softmax(Q K^T / d) V`` (1/d, not 1/sqrt(d): at these token sizes 1/sqrt(d) makes the
softmax one-hot) is folded back to (c, H, W). The four heads are concatenated (4c
channels) and a residual block maps them back to c channels.

That block's first 3x3 convolution (4c -> c) is the most expensive operation of the edge model
(benchmarks/results/cpu_profile.md); ``PRNConfig.msa_block = "separable"`` makes it depthwise-separable.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from prn_edge.config import MSA_BLOCKS

NUM_HEADS = 4


def patch_sizes(height: int, num_heads: int = NUM_HEADS) -> tuple[int, ...]:
    """Patch side per head: H, H/2, H/4, H/8."""
    return tuple(height >> s for s in range(num_heads))


def to_tokens(x: Tensor, p: int) -> Tensor:
    """(B, c, H, W) -> (B, n, c*p*p) with n = (H/p)*(W/p) non-overlapping patches."""
    b, c, h, w = x.shape
    x = x.reshape(b, c, h // p, p, w // p, p)          # (B, c, gh, p, gw, p)
    x = x.permute(0, 2, 4, 1, 3, 5)                    # (B, gh, gw, c, p, p)
    return x.reshape(b, (h // p) * (w // p), c * p * p)


def from_tokens(tokens: Tensor, c: int, h: int, w: int, p: int) -> Tensor:
    """Inverse of :func:`to_tokens`: (B, n, c*p*p) -> (B, c, H, W)."""
    b = tokens.shape[0]
    x = tokens.reshape(b, h // p, w // p, c, p, p)     # (B, gh, gw, c, p, p)
    x = x.permute(0, 3, 1, 4, 2, 5)                    # (B, c, gh, p, gw, p)
    return x.reshape(b, c, h, w)


def multi_size_attention(qkv: Tensor, num_heads: int = NUM_HEADS) -> Tensor:
    """The attention core of one MSA layer, for all heads at once.

    This is the reference semantics of the fused ``MultiSizeAttention`` kernel and of the
    ONNX function ``prn.MultiSizeAttention``.

    Args:
        qkv: (B, 3*heads*c, H, W): channels ordered [Q of heads 0..3, K of heads 0..3,
            V of heads 0..3], c channels each (the output of one 1x1 projection).
        num_heads: number of heads (patch sides H, H/2, ...).

    Returns:
        (B, heads*c, H, W): the folded head outputs, concatenated in head order.
    """
    b, channels, h, w = qkv.shape
    c = channels // (3 * num_heads)
    q_all, k_all, v_all = qkv.split(num_heads * c, dim=1)
    outputs = []
    for s, p in enumerate(patch_sizes(h, num_heads)):
        head = slice(s * c, (s + 1) * c)
        q = to_tokens(q_all[:, head], p)               # (B, n, d)
        k = to_tokens(k_all[:, head], p)
        v = to_tokens(v_all[:, head], p)
        d = q.shape[-1]
        # Scores and softmax in at least FP32 whatever the storage type (FP16 would overflow).
        acc = torch.promote_types(q.dtype, torch.float32)
        scores = torch.matmul(q.to(acc), k.to(acc).transpose(1, 2)) / d    # (B, n, n)
        weights = scores.softmax(dim=-1).to(v.dtype)
        outputs.append(from_tokens(torch.matmul(weights, v), c, h, w, p))  # (B, c, H, W)
    return torch.cat(outputs, dim=1)


def conv_bn_relu(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
                         nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))


def separable_conv_bn_relu(c_in: int, c_out: int) -> nn.Sequential:
    """Depthwise 3x3 then pointwise 1x1: the same 3x3 reach as :func:`conv_bn_relu` at
    (9 + c_out) / (9 * c_out) of its multiply-adds (1/8 for the 4c -> c of an MSA block)."""
    return nn.Sequential(nn.Conv2d(c_in, c_in, 3, padding=1, groups=c_in, bias=False),
                         nn.Conv2d(c_in, c_out, 1, bias=False),
                         nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))


class ResidualBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN plus a 1x1-conv shortcut, then ReLU.

    ``first="separable"`` makes the first convolution depthwise-separable
    (:func:`separable_conv_bn_relu`, ``PRNConfig.msa_block``).
    """

    def __init__(self, c_in: int, c_out: int, first: str = "conv3x3"):
        super().__init__()
        if first not in MSA_BLOCKS:
            raise ValueError(f"unknown first convolution {first!r}: choose one of {', '.join(MSA_BLOCKS)}")
        self.body = nn.Sequential(
            (separable_conv_bn_relu if first == "separable" else conv_bn_relu)(c_in, c_out),
            nn.Conv2d(c_out, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out))
        self.shortcut = nn.Conv2d(c_in, c_out, 1)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.relu(self.body(x) + self.shortcut(x))


class MSALayer(nn.Module):
    """One multi-size attention layer: (B, c, H, W) -> (B, c, H, W)."""

    def __init__(self, channels: int, num_heads: int = NUM_HEADS, block: str = "conv3x3"):
        super().__init__()
        self.num_heads = num_heads
        # One 1x1 conv computes Q, K, V of every head: the per-head 1x1 embeddings of
        # docs/model.md, stacked along the output channels.
        self.qkv = nn.Conv2d(channels, 3 * num_heads * channels, kernel_size=1)
        self.block = ResidualBlock(num_heads * channels, channels, first=block)

    def forward(self, x: Tensor) -> Tensor:
        return self.block(multi_size_attention(self.qkv(x), self.num_heads))
