"""The checkpoint format: ``checkpoint.pt``, tensors and plain data only.

A checkpoint is a dict saved with ``torch.save``::

    {"format": "prn-edge-checkpoint", "format_version": 1,
     "config": {...PRNConfig fields...},
     "state_dict": {name: Tensor},           # encoder, prototypes (+ norms), all PRN weights
     "tensor_digest": "sha256 hex",          # over names, dtypes, shapes and bytes of state_dict
     "normalization": {"mean": [...], "std": [...], "input": "RGB in [0, 1]"},
     "threshold": float | None,              # decision threshold calibrated on normal images
     "metadata": {...}}                      # provenance: data, seed, steps, metrics, versions

It loads with ``torch.load(weights_only=True)`` only, so a file from disk can never run
code. Every way a file can be unusable (missing, truncated, corrupted, foreign, unsafe,
newer format) is a :class:`CheckpointError` whose one-line message names the file.
"""
from __future__ import annotations

import hashlib
import io
import math
import os
import pickle
import re
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from prn_edge import __version__
from prn_edge.config import PRNConfig
from prn_edge.errors import CheckpointError, PRNError, first_line
from prn_edge.io import atomic_write, file_sha256
from prn_edge.validate import check_number

FORMAT = "prn-edge-checkpoint"
FORMAT_VERSION = 1
_PLAIN = (str, int, float, bool, type(None))


@dataclass
class Checkpoint:
    """A loaded (validated) checkpoint."""

    path: Path | None
    config: PRNConfig
    state_dict: dict[str, torch.Tensor]
    normalization: dict[str, Any]
    threshold: float | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    sha256: str | None = None  # of the file's bytes: identifies the checkpoint in exports

    @property
    def num_prototypes(self) -> int:
        return int(self.state_dict["banks.0.prototypes"].shape[0])


def tensor_digest(state_dict: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 over every tensor's name, dtype, shape and bytes, in name order.

    Stored at save time and checked at load time: a bit flipped inside the tensor data
    (which the zip container does not verify) is caught as corruption.
    """
    digest = hashlib.sha256()
    for name in sorted(state_dict):
        tensor = state_dict[name].detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _check_plain(value: Any, where: str) -> None:
    """Refuse to save anything ``weights_only`` could not load back."""
    # Exact types: a str or int subclass (torch.__version__ is one) would not unpickle.
    if type(value) in _PLAIN or isinstance(value, torch.Tensor):
        return
    if isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            _check_plain(item, f"{where}[{i}]")
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise PRNError(f"checkpoint field {where} has a non-string key {key!r}")
            _check_plain(item, f"{where}.{key}")
        return
    raise PRNError(f"checkpoint field {where} is a {type(value).__name__}: only tensors and plain data "
                   "(dict, list, str, int, float, bool, None) may be saved")


def save_checkpoint(path: str | os.PathLike, model, *, threshold: float | None = None,
                    metadata: Mapping[str, Any] | None = None) -> str:
    """Write ``model`` (a :class:`~prn_edge.model.PRN`) to ``path`` atomically.

    Returns:
        The SHA-256 of the written file.

    Raises:
        PRNError: metadata that is not plain data, or an unwritable destination.
    """
    # A score is in [0, 1]; a NaN threshold would be saved, evaluated and exported as invalid JSON.
    check_number("the decision threshold", threshold, low=0, high=1)
    state_dict = {name: tensor.detach().cpu().clone() for name, tensor in model.state_dict().items()}
    meta = {"prn_edge_version": __version__, "torch_version": str(torch.__version__), **(metadata or {})}
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "config": model.config.to_dict(),
        "state_dict": state_dict,
        "tensor_digest": tensor_digest(state_dict),
        "normalization": {"mean": list(model.encoder.mean), "std": list(model.encoder.std),
                          "input": "RGB in [0, 1]"},
        "threshold": None if threshold is None else float(threshold),
        "metadata": meta,
    }
    _check_plain(payload, "checkpoint")
    return save_torch_atomic(path, payload)


def save_torch_atomic(path: str | Path, obj: Any) -> str:
    """``torch.save`` to ``path`` atomically; returns the SHA-256 of the bytes written.

    Serialised in memory first: torch's zip writer reports a failed write (a full disk) as a bare
    RuntimeError ("unexpected pos"), while a plain write raises the OSError that names ``path``.
    """
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    data = buffer.getbuffer()
    with atomic_write(path) as handle:
        handle.write(data)
    return hashlib.sha256(data).hexdigest()


def load_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """Read and validate a checkpoint (tensors land on the CPU).

    Raises:
        CheckpointError: one line naming the file and the problem.
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such checkpoint file")
    if not path.is_file():
        raise CheckpointError(f"{path}: is not a file")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: file is empty")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "GLOBAL" not in str(exc) and "Unsupported global" not in str(exc):  # garbage, not a payload
            raise CheckpointError(f"{path}: not a readable checkpoint (not a file written by torch.save)") from exc
        raise CheckpointError(
            f"{path}: refused: it holds Python objects other than tensors and plain data, which could "
            f"run code when unpickled ({_unsupported_global(exc)})") from exc
    except (RuntimeError, zipfile.BadZipFile, EOFError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: not a readable checkpoint (truncated or corrupted file: "
                              f"{first_line(exc)})") from exc
    except Exception as exc:  # torch raises many types for damaged archives; all mean the same here
        raise CheckpointError(f"{path}: not a readable checkpoint ({type(exc).__name__}: "
                              f"{first_line(exc)})") from exc

    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        kind = "a plain state dict or another tool's file" if isinstance(payload, dict) else type(payload).__name__
        raise CheckpointError(f"{path}: not a PRN Edge checkpoint (no 'format': '{FORMAT}' field; "
                              f"found {kind})")
    version = payload.get("format_version")
    if version != FORMAT_VERSION:
        newer = isinstance(version, int) and version > FORMAT_VERSION
        hint = "upgrade prn-edge" if newer else "re-export it with the PRN Edge that wrote it"
        raise CheckpointError(f"{path}: checkpoint format version {version!r}, this PRN Edge reads "
                              f"version {FORMAT_VERSION}: {hint}")
    for key, kind in (("config", dict), ("state_dict", dict), ("normalization", dict), ("metadata", dict)):
        if not isinstance(payload.get(key), kind):
            raise CheckpointError(f"{path}: malformed checkpoint: field {key!r} is missing or not a {kind.__name__}")
    state_dict = payload["state_dict"]
    bad = [k for k, v in state_dict.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f"{path}: malformed checkpoint: state_dict entry {bad[0]!r} is not a tensor")
    if payload.get("tensor_digest") != tensor_digest(state_dict):
        raise CheckpointError(f"{path}: corrupted checkpoint: the tensor data does not match its checksum")
    try:
        config = PRNConfig.from_dict(payload["config"])
    except PRNError as exc:
        raise CheckpointError(f"{path}: invalid config: {exc}") from exc
    threshold = payload.get("threshold")
    if threshold is not None and (not isinstance(threshold, (int, float)) or isinstance(threshold, bool)
                                  or not math.isfinite(threshold)):
        raise CheckpointError(f"{path}: malformed checkpoint: threshold is {threshold!r}, not a finite number")
    return Checkpoint(path=path, config=config, state_dict=state_dict,
                      normalization=payload["normalization"],
                      threshold=None if threshold is None else float(threshold),
                      metadata=payload["metadata"], sha256=file_sha256(path))


def load_model(path: str | os.PathLike, device: str | torch.device = "cpu"):
    """Build the PRN of a checkpoint and load its weights; returns ``(model, checkpoint)``.

    The encoder weights come from the checkpoint itself: no hub or package is consulted.

    Raises:
        CheckpointError: unreadable file, or weights that do not fit the stored config.
    """
    from prn_edge.model import PRN
    from prn_edge.model.backbones import build_backbone

    ckpt = load_checkpoint(path)
    model = PRN(ckpt.config, backbone=build_backbone(ckpt.config.backbone, weights="none"))
    try:
        result = model.load_state_dict(ckpt.state_dict, strict=False)
    except RuntimeError as exc:  # size mismatches
        raise CheckpointError(f"{ckpt.path}: weights do not fit the stored config ({first_line(exc)})") from exc
    if result.missing_keys or result.unexpected_keys:
        parts = []
        if result.missing_keys:
            parts.append(f"missing {_few(result.missing_keys)}")
        if result.unexpected_keys:
            parts.append(f"unexpected {_few(result.unexpected_keys)}")
        raise CheckpointError(f"{ckpt.path}: weights do not fit the stored config ({'; '.join(parts)})")
    return model.to(device).eval(), ckpt


def _few(keys: list[str], n: int = 3) -> str:
    more = f" (+{len(keys) - n} more)" if len(keys) > n else ""
    return ", ".join(keys[:n]) + more


def _unsupported_global(exc: BaseException) -> str:
    """The object torch's weights_only unpickler refused (without its advice to trust the file)."""
    match = re.search(r"GLOBAL ([\w.]+)", str(exc))
    return f"it refers to {match.group(1)}" if match else "the weights_only unpickler refused it"
