"""Training loss (docs/model.md, "Loss"): SmoothL1 on probabilities + 5 x focal on logits."""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def focal_loss(logits: Tensor, target: Tensor, alpha: float = 0.5, gamma: float = 4.0) -> Tensor:
    """Binary focal loss, mean over pixels, computed from logits for stability.

    ``FL = -alpha_t (1 - p_t)^gamma log(p_t)``; ``log(p_t)`` comes from
    ``binary_cross_entropy_with_logits`` (log-sum-exp form), so large logits never
    produce log(0).
    """
    ce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")  # -log(p_t)
    p = logits.sigmoid()
    p_t = p * target + (1 - p) * (1 - target)
    alpha_t = alpha * target + (1 - alpha) * (1 - target)
    return (alpha_t * (1 - p_t).pow(gamma) * ce).mean()


def prn_loss(logits: Tensor, target: Tensor, focal_weight: float = 5.0, alpha: float = 0.5,
             gamma: float = 4.0, beta: float = 1.0) -> Tensor:
    """``SmoothL1(sigmoid(logits), M) + focal_weight * Focal(logits, M)``.

    Args:
        logits: (B, 1, H, W) decoder output.
        target: (B, 1, H, W) anomaly mask in {0, 1} (float).
    """
    smooth = F.smooth_l1_loss(logits.sigmoid(), target, beta=beta)
    return smooth + focal_weight * focal_loss(logits, target, alpha, gamma)
