"""The metadata a deployed PRN model carries, so that an engine needs nothing but its file.

Every exported ONNX file holds these keys in ``metadata_props`` (TensorRT engines copy them
into their sidecar). Values are strings in the file: JSON for dicts, decimal text for numbers,
"" for "unknown" (the threshold of an uncalibrated model, the hash of a model that was not
loaded from a file). :func:`build_metadata` writes them, :func:`parse_metadata` reads them
back as Python values, :func:`read_metadata` also checks that a file is a PRN export.
stdlib only.
"""
from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

from prn_edge.errors import PRNError, first_line

__all__ = ["FORMAT", "FORMAT_VERSION", "METADATA_KEYS", "build_metadata", "format_metadata", "parse_metadata",
           "read_metadata", "set_metadata"]

FORMAT = "prn-edge-onnx"
FORMAT_VERSION = 1
METADATA_KEYS = ("format", "format_version", "config", "num_prototypes", "input_size", "input_format",
                 "normalization", "threshold", "checkpoint_sha256", "exporter_version", "opset", "batch")
_JSON_KEYS = ("config", "normalization", "plugins")   # "plugins": set by the TensorRT surgery
_INT_KEYS = ("format_version", "num_prototypes", "input_size", "opset")
INPUT_FORMAT = "uint8 NHWC RGB"


def build_metadata(*, config: Mapping[str, Any], num_prototypes: int, input_size: int,
                   normalization: Mapping[str, Any], threshold: float | None, checkpoint_sha256: str | None,
                   exporter_version: str, opset: int, batch: int | None) -> dict[str, str]:
    """The ``metadata_props`` of an exported model, as strings (keys: :data:`METADATA_KEYS`).

    Raises:
        PRNError: a threshold that is not a finite number (it would not be valid JSON either).
    """
    if threshold is not None and not math.isfinite(float(threshold)):
        raise PRNError(f"the decision threshold must be a finite number, got {threshold}")
    return {
        "format": FORMAT,
        "format_version": str(FORMAT_VERSION),
        "config": json.dumps(dict(config), sort_keys=True),
        "num_prototypes": str(int(num_prototypes)),
        "input_size": str(int(input_size)),
        "input_format": INPUT_FORMAT,
        "normalization": json.dumps(dict(normalization), sort_keys=True),
        "threshold": "" if threshold is None else repr(float(threshold)),
        "checkpoint_sha256": checkpoint_sha256 or "",
        "exporter_version": exporter_version,
        "opset": str(int(opset)),
        "batch": str(batch) if batch else "dynamic",
    }


def parse_metadata(props: Mapping[str, str]) -> dict[str, Any]:
    """``metadata_props`` (or ONNX Runtime's ``custom_metadata_map``) back to Python values.

    JSON keys become dicts, counts become ints, ``threshold`` a float, "" becomes None.
    Unknown keys are passed through as strings.
    """
    out: dict[str, Any] = {}
    for key, value in props.items():
        if value == "" and key in ("threshold", "checkpoint_sha256"):
            out[key] = None
        elif key in _JSON_KEYS:
            out[key] = json.loads(value)
        elif key in _INT_KEYS:
            out[key] = int(value)
        elif key == "threshold":
            out[key] = float(value)
        elif key == "batch":
            out[key] = None if value == "dynamic" else int(value)
        else:
            out[key] = value
    return out


def format_metadata(values: Mapping[str, Any]) -> dict[str, str]:
    """Parsed metadata (:func:`parse_metadata`, an engine's ``metadata``) back to the strings of the file.

    The inverse of :func:`parse_metadata` for every key it converts (None -> "", dicts and lists ->
    JSON, ``batch`` None -> "dynamic", a threshold as ``repr(float)``, so it reads back exactly);
    strings stay as they are; other values become ``str(value)``.
    """
    out: dict[str, str] = {}
    for key, value in values.items():
        if isinstance(value, str):
            out[key] = value
        elif value is None:
            out[key] = "dynamic" if key == "batch" else ""
        elif isinstance(value, (dict, list, tuple)):
            out[key] = json.dumps(value, sort_keys=True)
        elif key == "threshold":
            out[key] = repr(float(value))
        else:
            out[key] = str(value)
    return out


def read_metadata(props: Mapping[str, str], path) -> dict[str, Any]:
    """:func:`parse_metadata`, or a PRNError naming a file that is not a PRN export."""
    if props.get("format") != FORMAT or "input_size" not in props:
        raise PRNError(f"{path}: not a PRN Edge ONNX export (no '{FORMAT}' metadata); export it with prn-export")
    try:
        return parse_metadata(props)
    except (ValueError, json.JSONDecodeError) as exc:
        raise PRNError(f"{path}: unreadable PRN metadata: {first_line(exc)}") from exc


def set_metadata(model, key: str, value: str) -> None:
    """Set (or add) one ``metadata_props`` entry of an ONNX ModelProto in place."""
    for prop in model.metadata_props:
        if prop.key == key:
            prop.value = value
            return
    entry = model.metadata_props.add()
    entry.key, entry.value = key, value
