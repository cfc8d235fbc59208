"""The model's arithmetic and memory traffic, for the achieved rates in a benchmark report.

FLOPs come from :func:`prn_edge.model.summary.summarize` (``torch.utils.flop_counter``:
convolutions and matrix products, one multiply-add = 2 FLOPs; element-wise ops, softmax and
resizes are not counted), so they need torch and the checkpoint.

Bytes moved per batch of B images, a *lower bound* that says what it counts:

- weights: read once per batch. PyTorch: every parameter and buffer of the state dict
  (prototype banks included) at its stored dtype; ONNX Runtime and TensorRT: the size of the
  ``.onnx`` / ``.engine`` file (weights dominate it: FP16 halves them, INT8 Q/DQ quarters the
  convolution weights);
- input: B x S x S x 3 bytes (uint8); output: B x (S x S + 1) x 4 bytes (float32 map and score);
- activations: every stage tensor that :meth:`prn_edge.model.PRN.stages` lists, written once
  and read once, at 4 bytes per value whatever the precision (FP16/INT8 engines move fewer).

Caches, re-reads inside a fused kernel and the attention's temporary scores are not counted.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from prn_edge.errors import PRNError, first_line

__all__ = ["COUNTED", "bytes_per_batch", "model_cost"]

COUNTED = ("FLOPs: convolutions and matrix products (torch.utils.flop_counter, multiply-add = 2). "
           "Bytes per batch (lower bound): weights once (PyTorch state dict; .onnx / .engine file size) + uint8 input + "
           "float32 map and score + every PRN.stages() tensor written and read once at 4 bytes.")


def model_cost(checkpoint: Path | None, weight_files: dict[str, Path]) -> dict[str, Any]:
    """FLOPs per image and the byte counts that :func:`bytes_per_batch` adds up.

    Args:
        checkpoint: ``checkpoint.pt`` (None: no FLOPs or activation counts, only file sizes).
        weight_files: ``{engine key: path}`` of the model files benchmarked (``.onnx``, ``.engine``);
            their sizes stand for the weight bytes.

    Returns:
        ``{"gflops_per_image", "image_size", "input_bytes_per_image", "output_bytes_per_image",
        "activation_bytes_per_image", "weight_bytes": {"torch:fp32": ..., "onnxruntime-cpu:int8": ...},
        "counted", "notes"}``; values are None where they could not be computed (with a note).
    """
    out: dict[str, Any] = {"gflops_per_image": None, "image_size": None, "input_bytes_per_image": None,
                           "output_bytes_per_image": None, "activation_bytes_per_image": None,
                           "weight_bytes": {}, "counted": COUNTED, "notes": []}
    for key, path in weight_files.items():
        out["weight_bytes"][key] = path.stat().st_size
    if checkpoint is None:
        out["notes"].append("no checkpoint: FLOPs and activation bytes need the PyTorch model (--checkpoint)")
        return out
    try:
        import torch

        from prn_edge.checkpoint import load_model
        from prn_edge.model.summary import summarize
    except ImportError as exc:
        out["notes"].append(f"FLOPs need torch ({first_line(exc)})")
        return out
    try:
        model, _ = load_model(checkpoint, device="cpu")
    except PRNError as exc:
        out["notes"].append(f"FLOPs not counted: {exc}")
        return out
    summary = summarize(model, k=model.num_prototypes, batch=1)
    size = model.config.image_size
    with torch.no_grad():
        stages = model.stages(torch.rand(1, 3, size, size))
    out.update({
        "gflops_per_image": summary.gflops_total,
        "gflops_by_part": {k: round(v, 3) for k, v in summary.gflops_by_part.items()},
        "image_size": size,
        "input_bytes_per_image": size * size * 3,
        "output_bytes_per_image": (size * size + 1) * 4,
        "activation_bytes_per_image": 2 * 4 * sum(math.prod(t.shape[1:]) for t in stages.values()),
    })
    out["weight_bytes"]["torch:fp32"] = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    return out


def bytes_per_batch(cost: dict[str, Any], engine_key: str, batch: int) -> int | None:
    """Bytes moved by one batch on ``engine_key`` (None when a term is unknown)."""
    weights = cost["weight_bytes"].get(engine_key)
    per_image = [cost.get("input_bytes_per_image"), cost.get("output_bytes_per_image"),
                 cost.get("activation_bytes_per_image")]
    if weights is None or any(v is None for v in per_image):
        return None
    return int(weights + batch * sum(per_image))
