"""A Triton model repository from an exported model folder, for NVIDIA's NGC ``tritonserver`` container.

``prn-serve repo --model DIR --out REPO`` writes::

    REPO/README.md                        how to serve it (docker run line, the plugin preload)
    REPO/prn-serve.json                   what it was written from (model folder, version, files)
    REPO/prn_onnxruntime/config.pbtxt     onnxruntime backend
    REPO/prn_onnxruntime/1/model.onnx
    REPO/prn_tensorrt/config.pbtxt        tensorrt backend, only where the folder has an engine
    REPO/prn_tensorrt/1/model.plan
    REPO/prn_tensorrt/libprn_edge_plugins.so   the PRN plugins the plan needs (LD_PRELOAD or
                                               --backend-config=tensorrt,plugins=...)

Triton loads every sub-folder of the repository as a model and ignores plain files, so the
README and the record sit at the top. Each ``config.pbtxt`` is taken from the model file itself
(input and output names, element types and shapes of the ONNX graph: uint8 NHWC ``image``,
``anomaly_map`` and ``score``), never typed by hand, with the dynamic batch axis left to Triton
(``max_batch_size``), ``dynamic_batching`` (preferred sizes, queue delay), ``instance_group``,
``model_warmup`` (zeros at batch 1 and at the largest batch, so the first camera does not pay
for the backend's lazy set-up), and the model's metadata (threshold, input size, checkpoint
hash ...) as ``parameters``, where a client reads them with ``get_model_config``.

The repository is written into a staging folder beside ``REPO`` and swapped in by one
``renameat2(RENAME_EXCHANGE)`` (two renames where the filesystem cannot exchange), so a Triton
polling ``REPO`` never sees half of it.
"""
from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import os
import re
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prn_edge.contract.metadata import read_metadata
from prn_edge.contract.model_folder import PRECISIONS, find_model_files, precision_of, read_manifest
from prn_edge.contract.serving import MODEL_NAME
from prn_edge.errors import PRNError, first_line, require
from prn_edge.io import check_output_dir, fsync_dir, make_output_dir, write_json_atomic, write_text_atomic

__all__ = ["BACKENDS", "DEFAULT_QUEUE_DELAY_US", "KINDS", "RECORD", "Repository", "TensorSpec", "check_batching", "check_model_name",
           "default_preferred", "model_config_text", "onnx_io", "write_repository"]

BACKENDS = ("onnxruntime", "tensorrt")
KINDS = ("cpu", "gpu")
RECORD = "prn-serve.json"
RECORD_FORMAT = "prn-edge-triton-repository"
PLAN = "model.plan"
# Triton's own rule for model names (PyTriton checks the same).
_MODEL_NAME = re.compile(r"[A-Za-z0-9._-]+")
# ONNX TensorProto element types -> Triton data types (model_config.proto).
_TRITON_TYPES = {1: "TYPE_FP32", 2: "TYPE_UINT8", 3: "TYPE_INT8", 4: "TYPE_UINT16", 5: "TYPE_INT16",
                 6: "TYPE_INT32", 7: "TYPE_INT64", 8: "TYPE_STRING", 9: "TYPE_BOOL", 10: "TYPE_FP16",
                 11: "TYPE_FP64", 12: "TYPE_UINT32", 13: "TYPE_UINT64", 16: "TYPE_BF16"}


@dataclass(frozen=True)
class TensorSpec:
    """One input or output as Triton sees it: the batch axis is not part of ``dims``.

    Attributes:
        name: the tensor's name in the graph.
        data_type: Triton's name for its element type (``TYPE_UINT8`` ...).
        dims: the shape after the batch axis.
        reshape: the shape the model really has after the batch axis, when Triton must be told
            a different one (a tensor of shape ``(batch,)`` is ``dims: [1]``, ``reshape: []``).
    """

    name: str
    data_type: str
    dims: tuple[int, ...]
    reshape: tuple[int, ...] | None = None


@dataclass
class Repository:
    """What :func:`write_repository` wrote.

    Attributes:
        out: the repository folder.
        models: model name -> backend (``onnxruntime`` / ``tensorrt``).
        notes: what the caller should know (a batch capped by an engine's profile ...).
        tensorrt_version: the TensorRT the plan was built with (None: no plan), which the container must have.
    """

    out: Path
    models: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    tensorrt_version: str | None = None


#: How long a request may wait for others to join its batch (``max_queue_delay_microseconds``), unless
#: told otherwise: short next to one image's compute on a CPU (~60 ms) or a GPU (~1-9 ms at batch 8).
DEFAULT_QUEUE_DELAY_US = 2000


def onnx_io(path: str | os.PathLike) -> tuple[list[TensorSpec], list[TensorSpec], dict[str, str]]:
    """The inputs, outputs and ``metadata_props`` of an ONNX file with a dynamic batch axis.

    Only the graph is read (``onnx``, no session), so the TensorRT plugin variant reads too.

    Raises:
        PRNError: onnx missing, an unreadable file, a fixed batch axis, another dynamic axis, or an
            element type Triton has no name for.
    """
    onnx = require("onnx", "reading the model's inputs and outputs")
    path = Path(path)
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # onnx raises DecodeError, OSError ... depending on the damage
        raise PRNError(f"{path}: not a readable ONNX file ({first_line(exc)}); export it again") from exc
    initializers = {t.name for t in model.graph.initializer}

    def spec(value) -> TensorSpec:
        tensor = value.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else None for d in tensor.shape.dim]
        if not dims or dims[0] is not None:
            raise PRNError(f"{path}: {value.name!r} has no dynamic batch axis (shape {dims}): Triton's dynamic "
                           "batching needs one; export the model again without a fixed batch")
        if any(d is None for d in dims[1:]):
            raise PRNError(f"{path}: {value.name!r} has a dynamic axis besides the batch (shape {dims}); "
                           "a PRN export has fixed image sizes")
        if tensor.elem_type not in _TRITON_TYPES:
            raise PRNError(f"{path}: {value.name!r} has ONNX element type {tensor.elem_type}, which Triton "
                           "does not serve")
        rest = tuple(int(d) for d in dims[1:])
        # Triton cannot express a batched scalar as dims []: it is dims [1] reshaped to [].
        return TensorSpec(value.name, _TRITON_TYPES[tensor.elem_type], rest or (1,), None if rest else ())

    inputs = [spec(v) for v in model.graph.input if v.name not in initializers]
    outputs = [spec(v) for v in model.graph.output]
    return inputs, outputs, {p.key: p.value for p in model.metadata_props}


def default_preferred(max_batch: int) -> tuple[int, ...]:
    """Preferred batch sizes when none are given: half the largest batch and the largest."""
    return tuple(sorted({max(1, max_batch // 2), max_batch}))


def _quote(text: str) -> str:
    """A protobuf text-format string literal (UTF-8 passes through; quotes and controls escaped)."""
    escapes = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r", "\t": "\\t"}
    return '"' + "".join(escapes.get(c, c if c >= " " else f"\\{ord(c):03o}") for c in text) + '"'


def _dims(values: Sequence[int]) -> str:
    return "[ " + "".join(f"{int(v)}, " for v in values).removesuffix(", ") + (" ]" if values else "]")


def _tensor_block(spec: TensorSpec) -> str:
    lines = [f"    name: {_quote(spec.name)}", f"    data_type: {spec.data_type}", f"    dims: {_dims(spec.dims)}"]
    if spec.reshape is not None:
        lines.append(f"    reshape: {{ shape: {_dims(spec.reshape)} }}")
    return "  {\n" + "\n".join(lines) + "\n  }"


def model_config_text(*, name: str, backend: str, inputs: Sequence[TensorSpec], outputs: Sequence[TensorSpec],
                      max_batch: int, preferred: Sequence[int], queue_delay_us: int, instances: int, kind: str,
                      parameters: Mapping[str, str], model_filename: str, dynamic_batching: bool = True) -> str:
    """The ``config.pbtxt`` of one model (protobuf text format of Triton's ``ModelConfig``).

    Without ``dynamic_batching`` Triton runs each request as it came (clients may still send batches).
    """
    warmup = []
    for size in sorted({1, max_batch}):
        feeds = "\n".join(
            f"    inputs {{\n      key: {_quote(t.name)}\n      value {{ data_type: {t.data_type} "
            f"dims: {_dims(t.dims)} zero_data: true }}\n    }}" for t in inputs)
        warmup.append(f"  {{\n    name: \"zeros-batch-{size}\"\n    batch_size: {size}\n{feeds}\n  }}")
    params = "\n".join(f"parameters {{\n  key: {_quote(k)}\n  value {{ string_value: {_quote(str(v))} }}\n}}"
                       for k, v in parameters.items())
    return (f"# Written by prn-serve repo from the model file's own inputs, outputs and metadata.\n"
            f"name: {_quote(name)}\n"
            f"backend: {_quote(backend)}\n"
            f"default_model_filename: {_quote(model_filename)}\n"
            f"max_batch_size: {int(max_batch)}\n"
            "input [\n" + ",\n".join(_tensor_block(t) for t in inputs) + "\n]\n"
            "output [\n" + ",\n".join(_tensor_block(t) for t in outputs) + "\n]\n"
            + ("dynamic_batching {\n"
               f"  preferred_batch_size: {_dims(preferred)}\n"
               f"  max_queue_delay_microseconds: {int(queue_delay_us)}\n"
               "}\n" if dynamic_batching else "")
            +             f"instance_group [\n  {{\n    count: {int(instances)}\n    kind: KIND_{kind.upper()}\n  }}\n]\n"
            "model_warmup [\n" + ",\n".join(warmup) + "\n]\n"
            + params + "\n")


def check_model_name(name: str) -> str:
    """``name`` if Triton accepts it as a model name, else a one-line PRNError."""
    if not _MODEL_NAME.fullmatch(name or ""):
        raise PRNError(f"model name {name!r}: use letters, digits, '.', '_' and '-' only (--name)")
    return name


def check_batching(max_batch: int, preferred: Sequence[int] | None, queue_delay_us: int,
                   instances: int) -> tuple[int, ...]:
    """Check the batching options; returns the preferred batch sizes (the default ones if none are given)."""
    if not 1 <= int(max_batch) <= 4096:
        raise PRNError(f"the largest batch must be from 1 to 4096, got {max_batch} (--max-batch)")
    preferred = tuple(sorted(set(int(p) for p in preferred))) if preferred else default_preferred(max_batch)
    bad = [p for p in preferred if not 1 <= p <= max_batch]
    if bad:
        raise PRNError(f"preferred batch sizes must be from 1 to the largest batch {max_batch}, got {bad} "
                       "(--preferred-batch)")
    if not 0 <= int(queue_delay_us) <= 10_000_000:
        raise PRNError(f"the queue delay must be from 0 to 10000000 microseconds, got {queue_delay_us} "
                       "(--queue-delay-us)")
    if not 1 <= int(instances) <= 64:
        raise PRNError(f"instances must be from 1 to 64, got {instances} (--instances)")
    return preferred


def _pick(table: Mapping[str, Path], precision: str | None, order: Sequence[str], what: str, source) -> Path:
    for p in ([precision] if precision else order):
        if p in table:
            return table[p]
    have = ", ".join(sorted(table)) or "none"
    raise PRNError(f"no {what}{' for ' + precision if precision else ''} in {source} (precisions here: {have}) "
                   "(--precision)")


def write_repository(model: str | os.PathLike, out: str | os.PathLike, *, name: str = MODEL_NAME,
                     backends: Sequence[str] | None = None, precision: str | None = None, max_batch: int = 8,
                     preferred_batch: Sequence[int] | None = None, queue_delay_us: int = DEFAULT_QUEUE_DELAY_US,
                     instances: int = 1, kind: str = "cpu", threads: int = 0,
                     plugin_library: str | os.PathLike | None = None, dynamic_batching: bool = True) -> Repository:
    """Write (or replace) the Triton model repository ``out`` for the model folder ``model``.

    Args:
        model: a model folder written by ``prn-export`` (verified against its manifest).
        out: the repository folder; an existing one is replaced only if ``prn-serve repo`` wrote it.
        name: prefix of the model names (``<name>_onnxruntime``, ``<name>_tensorrt``).
        backends: which models to write (default: every one the folder can feed; asking for
            ``tensorrt`` without an engine is an error).
        precision: fp32, fp16 or int8 (default: FP32 for ONNX Runtime, FP16 first for TensorRT).
        max_batch: ``max_batch_size`` (a TensorRT model's is capped by its engine's profile).
        preferred_batch: ``preferred_batch_size`` (default: half the largest batch and the largest).
        queue_delay_us: ``max_queue_delay_microseconds``: how long a request may wait for others.
        instances: model instances (``instance_group.count``).
        kind: ``cpu`` or ``gpu`` for the ONNX Runtime model (a TensorRT plan always runs on the GPU).
        threads: ONNX Runtime's intra-op threads per instance (0: the backend's default).
        plugin_library: the PRN TensorRT plugin library (default: the one the engine was built with,
            else where the runtime finds it).
        dynamic_batching: write ``dynamic_batching`` (False: Triton runs each request as it came).

    Returns:
        The :class:`Repository` written.

    Raises:
        PRNError: a bad option, a model folder that does not verify, a file without a dynamic batch,
            a TensorRT engine without its plugin library, or an ``out`` that is not a repository this
            command wrote.
    """
    check_model_name(name)
    if kind not in KINDS:
        raise PRNError(f"unknown instance kind {kind!r}: choose one of {', '.join(KINDS)} (--kind)")
    if precision is not None and precision not in PRECISIONS:
        raise PRNError(f"unknown precision {precision!r}: choose one of {', '.join(PRECISIONS)} (--precision)")
    unknown = sorted(set(backends or ()) - set(BACKENDS))
    if unknown:
        raise PRNError(f"unknown backend(s) {unknown}: choose from {', '.join(BACKENDS)} (--backends)")
    if not 0 <= int(threads) <= 1024:
        raise PRNError(f"threads must be from 0 to 1024, got {threads} (--threads)")
    preferred = check_batching(max_batch, preferred_batch, queue_delay_us, instances)
    files = find_model_files(model)
    wanted = tuple(backends) if backends else tuple(b for b in BACKENDS if b != "tensorrt" or files.engines)
    out = check_output_dir(out)
    _check_replaceable(out)
    result = Repository(out)

    plans = []   # (model name, config text, {file name in the model folder: source})
    if "onnxruntime" in wanted:
        path = _pick(files.onnx, precision, ("fp32", "fp16", "int8"), "ONNX Runtime model", files.source)
        inputs, outputs, props = onnx_io(path)
        meta = read_metadata(props, path)
        params = {**props, "precision": precision_of(path)}
        if threads:
            params["intra_op_thread_count"] = str(threads)   # the onnxruntime backend's own key
        model_name = f"{name}_onnxruntime"
        text = model_config_text(name=model_name, backend="onnxruntime", inputs=inputs, outputs=outputs,
                                 max_batch=max_batch, preferred=preferred, queue_delay_us=queue_delay_us,
                                 instances=instances, kind=kind, parameters=params, model_filename="model.onnx",
                                 dynamic_batching=dynamic_batching)
        plans.append((model_name, text, {"1/model.onnx": path}))
        result.models[model_name] = "onnxruntime"
        _check_input_size(inputs, meta, path)
    if "tensorrt" in wanted:
        plans.append(_tensorrt_plan(files, name, precision, max_batch, preferred, queue_delay_us, instances,
                                    plugin_library, result, dynamic_batching))

    make_output_dir(out.parent)   # the staging folder goes beside REPO
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.staging-", dir=out.parent))
    try:
        for model_name, text, sources in plans:
            for rel, source in sources.items():
                target = staging / model_name / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(source, target)
            write_text_atomic(staging / model_name / "config.pbtxt", text)
        write_text_atomic(staging / "README.md", _readme(result))
        manifest = read_manifest(files.source) if Path(files.source).is_dir() else None
        write_json_atomic(staging / RECORD, {
            "format": RECORD_FORMAT, "model": str(Path(files.source).resolve()),
            "version": (manifest or {}).get("version"), "models": result.models,
            "files": {f"{m}/{rel}": str(src) for m, _, srcs in plans for rel, src in srcs.items()}})
        _swap_in(staging, out)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return result


def _check_input_size(inputs: Sequence[TensorSpec], meta: Mapping[str, Any], path: Path) -> None:
    size = int(meta["input_size"])
    image = next((t for t in inputs if t.name == "image"), None)
    if image is None or image.data_type != "TYPE_UINT8" or image.dims != (size, size, 3):
        got = "no 'image' input" if image is None else f"{image.data_type} {list(image.dims)}"
        raise PRNError(f"{path}: the contract's input is uint8 'image' [batch, {size}, {size}, 3] (NHWC), this "
                       f"file has {got}; export it again")


def _tensorrt_plan(files, name, precision, max_batch, preferred, queue_delay_us, instances, plugin_library,
                   result: Repository, dynamic_batching: bool):
    from prn_edge.runtime.backends.tensorrt_support import (
        PLUGIN_LIBRARY_NAME,
        find_plugin_library,
        read_sidecar,
    )

    engine = _pick(files.engines, precision, ("fp16", "fp32", "int8"), "TensorRT engine", files.source)
    sidecar = read_sidecar(engine)
    # The plan's I/O is its TensorRT ONNX variant's (the graph it was built from).
    source = engine.parent / str(sidecar.get("onnx") or "")
    if not source.is_file():
        source = _pick(files.onnx, sidecar.get("precision"), ("fp32",), "ONNX model", files.source)
    inputs, outputs, props = onnx_io(source)
    _check_input_size(inputs, read_metadata(props, source), source)
    limit = int(sidecar.get("max_batch") or max_batch)
    if max_batch > limit:
        result.notes.append(f"{engine.name} takes batches up to {limit} (its optimisation profile): its model's "
                            f"max_batch_size is {limit}, not {max_batch}")
    batch = min(max_batch, limit)
    recorded = sidecar.get("plugin_library")
    library = (Path(plugin_library) if plugin_library is not None
               else Path(recorded) if recorded and Path(recorded).is_file() else find_plugin_library())
    if library is None or not Path(library).is_file():
        raise PRNError(f"{engine}: the plan needs the PRN plugin library {PLUGIN_LIBRARY_NAME} (built for TensorRT "
                       f"{sidecar.get('tensorrt_version')}) and none was found: pass --plugin-library FILE, or "
                       "--backends onnxruntime to leave the plan out")
    params = {**props, "precision": str(sidecar.get("precision")),
              **{k: str(sidecar.get(k)) for k in ("tensorrt_version", "gpu_name", "compute_capability")},
              "plugin_library": PLUGIN_LIBRARY_NAME}
    model_name = f"{name}_tensorrt"
    text = model_config_text(name=model_name, backend="tensorrt", inputs=inputs, outputs=outputs, max_batch=batch,
                             preferred=[p for p in preferred if p <= batch] or [batch],
                             queue_delay_us=queue_delay_us, instances=instances, kind="gpu", parameters=params,
                             model_filename=PLAN, dynamic_batching=dynamic_batching)
    result.models[model_name] = "tensorrt"
    result.tensorrt_version = str(sidecar.get("tensorrt_version"))
    return model_name, text, {f"1/{PLAN}": engine, PLUGIN_LIBRARY_NAME: Path(library)}


def _check_replaceable(out: Path) -> None:
    """``out`` may be replaced: absent, empty, or a repository this command wrote."""
    if out.is_dir() and any(out.iterdir()):
        try:
            record = json.loads((out / RECORD).read_text())
        except (OSError, ValueError):
            record = None
        if not isinstance(record, dict) or record.get("format") != RECORD_FORMAT:
            raise PRNError(f"{out}: exists and is not a repository written by prn-serve repo (no {RECORD}); "
                           "choose another --out")
    elif out.exists() and not out.is_dir():
        raise PRNError(f"{out}: exists and is not a folder (--out)")


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one step (Linux ``renameat2``); False where this system or filesystem cannot."""
    libc = ctypes.CDLL(None, use_errno=True)
    renameat2 = getattr(libc, "renameat2", None)
    if renameat2 is None:
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP):
        return False
    raise OSError(code, os.strerror(code), str(b))


def _swap_in(staging: Path, out: Path) -> None:
    if not out.exists():
        os.rename(staging, out)
    elif _exchange(staging, out):
        shutil.rmtree(staging)   # now the old repository
    else:
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
        os.rename(out, old / "repo")
        os.rename(staging, out)
        shutil.rmtree(old, ignore_errors=True)
    with contextlib.suppress(OSError):
        fsync_dir(out.parent)


def _readme(result: Repository) -> str:
    from prn_edge.runtime.backends.tensorrt_support import PLUGIN_LIBRARY_NAME

    onnx = next((m for m, b in result.models.items() if b == "onnxruntime"), None)
    trt = next((m for m, b in result.models.items() if b == "tensorrt"), None)
    lines = ["# PRN model repository for Triton Inference Server", "",
             "Written by `prn-serve repo`; regenerate it rather than editing it (`prn-serve.json` says from what).",
             "", "| model | backend |", "|---|---|"]
    lines += [f"| `{m}` | {b} |" for m, b in result.models.items()]
    lines += ["", "Serve it with NVIDIA's container (ports: 8000 HTTP, 8001 gRPC, 8002 Prometheus metrics):", "",
              "```sh", "REPO=$(pwd)   # this folder"]
    if trt:
        plugin = f"/models/{trt}/{PLUGIN_LIBRARY_NAME}"
        lines += [f"# The plan and its plugin library need the release whose TensorRT is {result.tensorrt_version}",
                  "# (NVIDIA's Frameworks Support Matrix); the plugins load by LD_PRELOAD or, equivalently,",
                  f"# --backend-config=tensorrt,plugins={plugin}",
                  "docker run --rm --gpus all -p 8000:8000 -p 8001:8001 -p 8002:8002 -v \"$REPO\":/models \\",
                  f"  -e LD_PRELOAD={plugin} nvcr.io/nvidia/tritonserver:YY.MM-py3 \\",
                  "  tritonserver --model-repository=/models"]
    else:
        lines += ["# Any release whose ONNX Runtime runs opset 19 (23.05 and later); --gpus all for --kind gpu",
                  "docker run --rm -p 8000:8000 -p 8001:8001 -p 8002:8002 -v \"$REPO\":/models \\",
                  "  nvcr.io/nvidia/tritonserver:24.08-py3 tritonserver --model-repository=/models"]
    lines += ["```", "",
              "Every model takes uint8 NHWC RGB frames (`image`, the model's input size, as `prn-inspect` "
              "prepares them) and returns `anomaly_map` (float32, N x 1 x S x S) and `score` (float32, N x 1). "
              "A frame is anomalous when its score is above the `threshold` parameter "
              "(`client.get_model_config(NAME).config.parameters[\"threshold\"].string_value`).", ""]
    if onnx:
        lines += [f"Check it: `curl localhost:8000/v2/models/{onnx}/config`, `curl localhost:8002/metrics`.", ""]
    return "\n".join(lines)
