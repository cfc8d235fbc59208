"""PRN Edge: train, export and deploy the Prototypical Residual Network for anomaly detection.

Importing ``prn_edge`` is light (no torch, onnx, tensorrt or cupy): the edge runtime
(:mod:`prn_edge.runtime`) runs with numpy, OpenCV and one inference engine.
"""
__version__ = "0.1.0"

from prn_edge.errors import CheckpointError, DataError, PRNError

__all__ = ["__version__", "PRNError", "CheckpointError", "DataError"]
