"""Unsupervised baselines over PRN's frozen backbone, to measure PRN's gain side by side.

* :mod:`prn_edge.baseline.patchcore`: PatchCore (Roth et al., CVPR 2022) adapted to the
  backbones of :mod:`prn_edge.model.backbones`.

Names are resolved lazily so that ``import prn_edge.baseline`` does not import torch.
"""
from __future__ import annotations

import importlib

__all__ = [
    "PatchCoreConfig",
    "PatchCoreModel",
    "PatchCorePredictor",
    "greedy_coreset",
    "nearest_neighbor_distance",
    "random_coreset",
]


def __getattr__(name: str):
    if name in __all__:
        return getattr(importlib.import_module("prn_edge.baseline.patchcore"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
