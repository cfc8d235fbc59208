"""What building and running a TensorRT engine share: the plugin library and the engine sidecar.

A serialized engine is only valid for the TensorRT version and the GPU (compute
capability) it was built with; TensorRT's own error for a mismatch is an opaque
deserialization failure. So every engine gets a sidecar, ``<engine>.json``, written by the
build (``prn-export --engine``), and the runtime reads it *before* deserializing and says
in one line what differs and how to rebuild.

Nothing here imports TensorRT: callers pass their ``tensorrt`` module in, so this file is
importable (and tested) on machines without it.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from prn_edge.contract.model_folder import ModelFolder
from prn_edge.errors import PRNError, first_line

PLUGIN_LIBRARY_ENV = "PRN_EDGE_PLUGIN_LIB"
PLUGIN_LIBRARY_NAME = "libprn_edge_plugins.so"
SIDECAR_FORMAT = "prn-edge-engine"
SIDECAR_KEYS = ("format", "tensorrt_version", "gpu_name", "compute_capability", "precision",
                "checkpoint_sha256", "plugin_library", "input_size", "threshold", "onnx", "built_at")


def find_plugin_library(explicit: str | os.PathLike | None = None) -> Path | None:
    """Where the plugin library is: ``explicit``, else ``$PRN_EDGE_PLUGIN_LIB``, else the CMake build folder.

    Returns:
        The path, or None when no candidate exists.
    """
    candidates = [explicit, os.environ.get(PLUGIN_LIBRARY_ENV)]
    repo = Path(__file__).resolve().parents[2]
    candidates += [repo / "build" / PLUGIN_LIBRARY_NAME, Path.cwd() / "build" / PLUGIN_LIBRARY_NAME]
    for candidate in candidates:
        if candidate and Path(candidate).is_file():
            return Path(candidate).resolve()
    if explicit:
        raise PRNError(f"{explicit}: no such plugin library")
    return None


def load_plugins(trt, library: str | os.PathLike | None = None) -> Path:
    """Register PRN Edge's plugins with TensorRT's plugin registry.

    The library exports ``getCreators``/``setLoggerFinder`` (TensorRT >= 10), so it is loaded
    through the registry (``load_library``), not ``ctypes`` (which would register nothing).

    Args:
        trt: the imported ``tensorrt`` module.
        library: the ``.so``; default: :func:`find_plugin_library`.

    Returns:
        The loaded library's path.

    Raises:
        PRNError: no library found, or TensorRT refusing it.
    """
    path = find_plugin_library(library)
    if path is None:
        raise PRNError(f"the TensorRT plugin library {PLUGIN_LIBRARY_NAME} was not found: build it with "
                       f"'cmake -S . -B build -DTENSORRT_INCLUDE_DIR=... && cmake --build build' and/or set "
                       f"{PLUGIN_LIBRARY_ENV}")
    registry = trt.get_plugin_registry()
    try:
        handle = registry.load_library(str(path))
    except Exception as exc:  # TensorRT raises RuntimeError/TypeError depending on the version
        raise PRNError(f"{path}: TensorRT could not load the plugin library: {first_line(exc)}") from exc
    if handle is None:
        raise PRNError(f"{path}: TensorRT could not load the plugin library (wrong TensorRT or CUDA version?)")
    return path


def current_device(cuda_device: int = 0) -> dict[str, Any]:
    """Name and compute capability of a CUDA GPU, through CuPy (the runtime's CUDA binding).

    Raises:
        PRNError: CuPy missing or no GPU.
    """
    try:
        import cupy
    except ImportError as exc:
        raise PRNError("CuPy is needed to query the GPU (pip install 'prn-edge[gpu]')") from exc
    try:
        props = cupy.cuda.runtime.getDeviceProperties(cuda_device)
    except Exception as exc:  # cupy raises CUDARuntimeError without a driver
        raise PRNError(f"no usable CUDA GPU {cuda_device}: {first_line(exc)}") from exc
    name = props["name"].decode() if isinstance(props["name"], bytes) else str(props["name"])
    return {"gpu_name": name, "compute_capability": f"{props['major']}.{props['minor']}"}


def write_sidecar(engine_path: str | os.PathLike, info: dict[str, Any]) -> Path:
    """Write ``<engine>.json`` atomically; ``info`` must hold every key of :data:`SIDECAR_KEYS` but ``format``."""
    from prn_edge.io import write_json_atomic

    record = {"format": SIDECAR_FORMAT, **info}
    missing = [k for k in SIDECAR_KEYS if k not in record]
    if missing:
        raise PRNError(f"engine sidecar is missing {', '.join(missing)}")
    path = ModelFolder.sidecar(engine_path)
    write_json_atomic(path, record)
    return path


def read_sidecar(engine_path: str | os.PathLike) -> dict[str, Any]:
    """Read an engine's sidecar.

    Raises:
        PRNError: missing, unreadable, or not a PRN Edge sidecar.
    """
    path = ModelFolder.sidecar(engine_path)
    if not path.is_file():
        raise PRNError(f"{engine_path}: no sidecar {path.name} beside it; engines are built by "
                       "prn-export --engine, which writes one")
    try:
        record = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PRNError(f"{path}: unreadable engine sidecar: {first_line(exc)}") from exc
    if not isinstance(record, dict) or record.get("format") != SIDECAR_FORMAT:
        raise PRNError(f"{path}: not a PRN Edge engine sidecar")
    missing = [k for k in SIDECAR_KEYS if k not in record]
    if missing:
        raise PRNError(f"{path}: engine sidecar is missing {', '.join(missing)}")
    return record


def check_engine_compatible(sidecar: dict[str, Any], engine_path: str | os.PathLike, *,
                            tensorrt_version: str, gpu_name: str, compute_capability: str) -> None:
    """Refuse, in one line, an engine built for another TensorRT or another GPU.

    TensorRT engines are tied to the exact TensorRT version (unless built version-compatible)
    and to the compute capability (unless hardware-compatible); a different GPU name with the
    same capability works but may be slower, which is not an error.

    Raises:
        PRNError: the version or the compute capability differ.
    """
    built = str(sidecar["tensorrt_version"])
    if built != tensorrt_version:
        raise PRNError(f"{engine_path} was built with TensorRT {built}, this is TensorRT {tensorrt_version}: "
                       "rebuild it here with prn-export --engine")
    if str(sidecar["compute_capability"]) != compute_capability:
        raise PRNError(f"{engine_path} was built for {sidecar['gpu_name']} (compute capability "
                       f"{sidecar['compute_capability']}), this GPU is {gpu_name} ({compute_capability}): "
                       "rebuild it here with prn-export --engine")
