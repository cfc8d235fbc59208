"""The names a PRN model goes by behind Triton Inference Server, shared by the server and its client.

``prn-serve`` (PyTriton here) and ``prn-serve repo`` (a repository for NVIDIA's container) serve an
exported model under these names, and ``prn-inspect --server`` (:mod:`prn_edge.runtime.backends.triton`)
reads them back, so the two sides cannot drift apart:

* the model: :data:`MODEL_NAME` (``prn-serve``; ``prn-serve repo`` writes ``<name>_onnxruntime`` and
  ``<name>_tensorrt``);
* the tensors: the ONNX model's own (``docs/contract.md``, "The ONNX model"): :data:`INPUT` uint8
  ``[N, S, S, 3]``, :data:`MAP` float32 ``[N, 1, S, S]``, :data:`SCORE` float32 ``[N, 1]`` (the model's
  ``[N]``, as Triton batches it), and from ``prn-serve`` also :data:`DECISION` bool ``[N, 1]``;
* the model's metadata (:mod:`prn_edge.contract.metadata`) as string ``parameters`` of its
  ``config.pbtxt`` (:func:`served_parameters`), where a client reads the input size and the threshold
  with ``get_model_config``. stdlib only.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from prn_edge.contract.metadata import format_metadata

__all__ = ["DECISION", "INPUT", "MAP", "MODEL_NAME", "OUTPUTS", "SCORE", "served_parameters"]

#: The model's name under ``prn-serve`` (``--name``), and what ``prn-inspect --server-model`` defaults to.
MODEL_NAME = "prn"
INPUT = "image"
MAP = "anomaly_map"
SCORE = "score"
OUTPUTS = (MAP, SCORE)
#: ``prn-serve``'s third output: the decision at the served threshold.
DECISION = "anomalous"


def served_parameters(metadata: Mapping[str, Any], *, precision: str, threshold: float | None = None,
                      **extra: Any) -> dict[str, str]:
    """The ``parameters`` of a served model's config: its metadata as the file's strings, and more.

    Args:
        metadata: the model's metadata, parsed (an engine's ``metadata``) or as the file's strings.
        precision: fp32, fp16 or int8.
        threshold: the threshold the server decides with, when not the model's own (``--threshold``).
        extra: further entries (``engine``: what runs the model behind the server).
    """
    params = format_metadata(metadata)
    params["precision"] = precision
    if threshold is not None:
        params["threshold"] = repr(float(threshold))
    params.update({k: str(v) for k, v in extra.items() if v is not None})
    return params
