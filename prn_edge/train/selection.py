"""End-point selection: which training step to keep, judged on images the run never trained on.

Issue 13: on magnetic tile the final checkpoint scored below the step-120 snapshot, and the run
kept the final one. The run now validates its model a few times over the budget (and once before
the first step, where the residual prior alone decides) and keeps the best state. The test set is
never looked at: the validation set is the held-out normal images of the threshold calibration,
each also turned into an anomalous copy by the run's own anomaly synthesis (fixed seed).

Score: the mean of image AUROC (normal copies against anomalous ones) and pixel average precision
on the anomalous copies' masks (maps and masks at 64x64). Both are rank measures, so the
threshold, calibrated later on the same normal images, does not enter.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from prn_edge.data.synthesis import AnomalySynthesizer
from prn_edge.model.deployable import to_unit_float

SCORE_SIDE = 64          # maps and masks are compared at this side (AP over 4k pixels per image)
MIN_NORMAL = 2           # fewer held-out images than this: no selection (the final state is kept)


@dataclass
class ValidationSet:
    images: torch.Tensor   # (V, 3, S, S) float [0, 1]
    masks: torch.Tensor    # (V, 1, S, S) float {0, 1}; all zero for the normal images

    @property
    def counts(self) -> tuple[int, int]:
        anomalous = int(self.masks.flatten(1).any(dim=1).sum())
        return len(self.images) - anomalous, anomalous


def make_validation_set(normal: torch.Tensor, foreground: torch.Tensor, synthesizer: AnomalySynthesizer,
                        seed: int, rounds: int = 4, device: torch.device | str = "cpu") -> ValidationSet | None:
    """The held-out normal images (uint8 (M, 3, S, S)) as they are, plus their synthesized anomalous copies.

    The synthesizer makes batches of four with its own normal:EA:SA mix; ``rounds`` passes over
    the images collect the rows it turned anomalous (on ``device``, the synthesizer's; the set is kept on
    the CPU). None when there are fewer than
    :data:`MIN_NORMAL` images.
    """
    if len(normal) < MIN_NORMAL:
        return None
    generator = torch.Generator().manual_seed(seed * 7 + 104729)    # never the training stream
    images, masks = [to_unit_float(normal)], [torch.zeros(len(normal), 1, *normal.shape[2:])]
    order = list(range(len(normal)))
    for _ in range(rounds):
        for start in range(0, len(order), 4):
            rows = [order[(start + i) % len(order)] for i in range(4)]
            batch = synthesizer(to_unit_float(normal[rows].to(device)), foreground[rows].to(device).float(),
                                generator)
            keep = batch.masks.flatten(1).any(dim=1)
            images.append(batch.images[keep].cpu())
            masks.append(batch.masks[keep].cpu())
    return ValidationSet(torch.cat(images), torch.cat(masks))


@torch.no_grad()
def validation_score(model: torch.nn.Module, validation: ValidationSet, device: torch.device,
                     batch_size: int = 16) -> float:
    """Mean of image AUROC and pixel AP of ``model`` (put in eval mode) on ``validation``."""
    from sklearn.metrics import average_precision_score, roc_auc_score

    model.eval()
    scores, maps = [], []
    for start in range(0, len(validation.images), batch_size):
        out = model(validation.images[start:start + batch_size].to(device))
        scores.append(out.score.float().cpu())
        maps.append(F.adaptive_avg_pool2d(out.anomaly_map.float(), SCORE_SIDE).cpu())
    scores_np = torch.cat(scores).numpy()
    maps_np = torch.cat(maps).numpy()
    masks = F.adaptive_max_pool2d(validation.masks, SCORE_SIDE).numpy() > 0.5
    labels = masks.reshape(len(masks), -1).any(axis=1)
    anomalous = np.flatnonzero(labels)
    image_auroc = roc_auc_score(labels, scores_np)
    pixel_ap = average_precision_score(masks[anomalous].ravel(), maps_np[anomalous].ravel())
    return float((image_auroc + pixel_ap) / 2)
