"""Unsupervised baselines over PRN's frozen backbone, to measure PRN's gain side by side.

* :mod:`prn_edge.baseline.patchcore`: PatchCore (Roth et al., CVPR 2022) adapted to the
  backbones of :mod:`prn_edge.model.backbones`: its config, the memory-bank model and the
  predictor (an engine of :mod:`prn_edge.contract.engine`).
* :mod:`prn_edge.baseline.coreset`: the memory bank's coreset selection (random, greedy
  k-center and the greedy reference loop).

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

_HOME = {
    "PatchCoreConfig": "patchcore",
    "PatchCoreModel": "patchcore",
    "PatchCorePredictor": "patchcore",
    "nearest_neighbor_distance": "patchcore",
    "greedy_coreset": "coreset",
    "random_coreset": "coreset",
}


def __getattr__(name: str):
    if name in _HOME:
        return getattr(importlib.import_module(f"prn_edge.baseline.{_HOME[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
