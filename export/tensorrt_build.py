"""TensorRT engines from the plugin-variant ONNX files: thin, on Polygraphy's loaders.

Precision lives in the ONNX (docs/platform.md, "Precision lives in the ONNX"). What differs per TensorRT version is only how the
builder is told to honour it:

* TensorRT 11.x: every network is strongly typed; the builder precision flags are gone.
  The FP16 ONNX builds FP16, the Q/DQ ONNX builds INT8, exactly as typed.
* TensorRT 10.x (JetPack 6 ships 10.3): weakly typed with builder flags: ``FP16`` for the
  FP16 model, ``INT8`` + ``FP16`` for the Q/DQ model (explicit quantization: the flags only
  allow the kernels, the Q/DQ nodes decide where INT8 runs).

Each engine gets a timing cache (shared by all builds in the output folder, so rebuilds and
the other precisions reuse the measured tactics) and a sidecar (``<engine>.json``: TensorRT
version, GPU, compute capability, precision, checkpoint hash) that the runtime checks before
loading. The plugin library is registered before parsing: the ONNX parser resolves the
``ProtoResidual`` / ``MultiSizeAttention`` nodes through the registry.

TensorRT cannot be installed on the development and CI machines (docs/platform.md, "What installs where"): only
:func:`build_settings` and the argument checks run there; the build itself runs on a GPU
machine (``benchmarks/gpu_check.sh``).
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prn_edge.errors import PRNError, first_line
from prn_edge.io import atomic_write

PRECISIONS = ("fp32", "fp16", "int8")
TIMING_CACHE = "tensorrt.timing_cache"


@dataclass(frozen=True)
class BuildSettings:
    """How one TensorRT version builds one precision."""

    strongly_typed: bool
    fp16_flag: bool
    int8_flag: bool


def tensorrt_major(version: str) -> int:
    """``"10.3.0.30"`` -> 10; a PRNError for versions without IPluginV3 (< 10)."""
    try:
        major = int(str(version).split(".")[0])
    except ValueError as exc:
        raise PRNError(f"cannot read the TensorRT version {version!r}") from exc
    if major < 10:
        raise PRNError(f"TensorRT {version} is too old: the PRN plugins are IPluginV3 (TensorRT >= 10.0)")
    return major


def build_settings(version: str, precision: str) -> BuildSettings:
    """The builder settings for ``precision`` on TensorRT ``version`` (see the module doc)."""
    if precision not in PRECISIONS:
        raise PRNError(f"unknown precision {precision!r}: choose one of {', '.join(PRECISIONS)}")
    if tensorrt_major(version) >= 11:
        return BuildSettings(strongly_typed=True, fp16_flag=False, int8_flag=False)
    return BuildSettings(strongly_typed=False, fp16_flag=precision in ("fp16", "int8"),
                         int8_flag=precision == "int8")


def import_tensorrt():
    """``tensorrt``, or a PRNError saying what to install and where it runs."""
    try:
        import tensorrt
    except ImportError as exc:
        raise PRNError("TensorRT is not installed: engines are built on the machine that runs them "
                       "(a Jetson with JetPack 6 has TensorRT 10.3; on x86 'pip install tensorrt' with an "
                       "NVIDIA driver); the ONNX files written here are what it needs") from exc
    return tensorrt


def build_engine(onnx_path: str | os.PathLike, engine_path: str | os.PathLike, precision: str, *,
                 metadata: dict[str, Any], max_batch: int = 8, opt_batch: int = 1,
                 plugin_library: str | os.PathLike | None = None,
                 timing_cache: str | os.PathLike | None = None) -> dict[str, Any]:
    """Build, serialize (atomically) and describe (sidecar) one engine.

    Args:
        onnx_path: the TensorRT variant (plugin nodes) of the model in this precision.
        engine_path: where the engine goes; the sidecar goes beside it.
        precision: ``fp32``, ``fp16`` or ``int8`` (must match how the ONNX is typed).
        metadata: the ONNX metadata (``input_size``, ``threshold``, ``checkpoint_sha256``).
        max_batch, opt_batch: the optimisation profile of the dynamic batch axis (min 1).
        plugin_library: the plugin ``.so`` (default: found as in
            :func:`~prn_edge.runtime.backends.tensorrt_support.find_plugin_library`).
        timing_cache: the timing cache file (default: beside the engine).

    Returns:
        The sidecar record.

    Raises:
        PRNError: TensorRT or Polygraphy missing, no GPU, the plugins missing, or the build failing.
    """
    from prn_edge.runtime.backends.tensorrt_support import current_device, load_plugins, write_sidecar

    if not 1 <= opt_batch <= max_batch:
        raise PRNError(f"need 1 <= opt_batch <= max_batch, got {opt_batch} and {max_batch}")
    trt = import_tensorrt()
    settings = build_settings(trt.__version__, precision)
    device = current_device()
    library = load_plugins(trt, plugin_library)
    try:
        from polygraphy.backend.trt import CreateConfig, NetworkFromOnnxPath, Profile, engine_bytes_from_network
    except ImportError as exc:
        raise PRNError("Polygraphy is needed to build engines: pip install 'prn-edge[export]'") from exc

    size = int(metadata["input_size"])
    engine_path = Path(engine_path)
    cache = Path(timing_cache) if timing_cache else engine_path.with_name(TIMING_CACHE)
    profile = Profile().add("image", min=(1, size, size, 3), opt=(opt_batch, size, size, 3),
                            max=(max_batch, size, size, 3))
    start = time.perf_counter()
    try:
        network = NetworkFromOnnxPath(str(onnx_path), strongly_typed=settings.strongly_typed or None)
        config = CreateConfig(fp16=settings.fp16_flag, int8=settings.int8_flag, profiles=[profile],
                              load_timing_cache=str(cache) if cache.is_file() else None)
        serialized = engine_bytes_from_network(network, config=config, save_timing_cache=str(cache))
    except Exception as exc:  # Polygraphy wraps TensorRT's errors in PolygraphyException
        raise PRNError(f"TensorRT could not build {engine_path.name} from {onnx_path}: {first_line(exc)}") from exc
    if serialized is None:
        raise PRNError(f"TensorRT could not build {engine_path.name} (see its log above)")
    with atomic_write(engine_path) as handle:
        handle.write(bytes(serialized))
    info = {
        "tensorrt_version": trt.__version__, **device, "precision": precision,
        "checkpoint_sha256": metadata.get("checkpoint_sha256"), "plugin_library": str(library),
        "input_size": size, "threshold": metadata.get("threshold"), "onnx": Path(onnx_path).name,
        "built_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "max_batch": max_batch, "opt_batch": opt_batch,
        "strongly_typed": settings.strongly_typed, "build_seconds": round(time.perf_counter() - start, 1),
        "bytes": engine_path.stat().st_size,
    }
    write_sidecar(engine_path, info)
    return info
