"""PRN -> the deployable ONNX model (docs/contract.md, "The ONNX model").

The graph takes ``image``: uint8, NHWC, RGB, (N, S, S, 3) with a dynamic batch, and does
everything a backend would otherwise re-implement: ``Transpose`` to NCHW, ``Cast``, ``/ 255``,
the PRN (whose backbone normalises itself), the sigmoid and the top-K image score. Outputs:
``anomaly_map`` float (N, 1, S, S) and ``score`` float (N,).

The nearest-prototype residual and the attention core of every MSA layer are calls to the
model-local ONNX functions ``prn.ProtoResidual`` and ``prn.MultiSizeAttention``
(:mod:`prn_edge.export.functions`): plain ONNX Runtime inlines them, and
:mod:`prn_edge.export.surgery` swaps exactly those calls for TensorRT plugins.

How the calls get into the graph (the route, and why):

1. Two ``torch.library`` ops, ``prn::proto_residual`` and ``prn::multi_size_attention``,
   whose kernel *is* the PyTorch reference (:func:`~prn_edge.model.prototypes.prototype_residual`,
   :func:`~prn_edge.model.attention.multi_size_attention`): opaque to ``torch.export``, so
   the exported program keeps one node per fused op.
2. An export twin of the model (a deep copy whose prototype banks and MSA layers call those
   ops, sharing nothing with the caller's model); the PRN's own ``forward`` is unchanged, so
   there is no second copy of the architecture to drift.
3. The dynamo exporter (``torch.onnx.export(dynamo=True)``) with a ``custom_translation_table``
   mapping each op to one node of domain ``prn`` (no body), then the function definitions
   are attached to ``model.functions``. The bodies are built with ``onnx.helper`` in
   :mod:`~prn_edge.export.functions`, so what ONNX Runtime runs is spelled out node by node
   there, not left to a converter. (The TorchScript exporter, ``dynamo=False`` with
   ``symbolic`` methods, is deprecated in torch 2.x and is not used.)

The input is transposed while still uint8 (a quarter of the bytes of a float transpose) and
then cast and divided by 255 (:func:`prn_edge.model.deployable.to_unit_float`): the same arithmetic
as the PyTorch engine, bit for bit.
"""
from __future__ import annotations

import contextlib
import copy
import logging
import os
import time
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prn_edge import __version__
from prn_edge.contract.metadata import build_metadata, parse_metadata
from prn_edge.errors import PRNError, require
from prn_edge.export.plugin_spec import (
    FUNCTION_DOMAIN,
    FUNCTION_DOMAIN_VERSION,
    MULTI_SIZE_ATTENTION_SPEC,
    PROTO_RESIDUAL_SPEC,
    RESIDUAL_MODES,
)
from prn_edge.io import atomic_write

log = logging.getLogger(__name__)

INPUT_NAME = "image"
OUTPUT_NAMES = ("anomaly_map", "score")
BATCH_DIM = "batch"            # dim_param of the dynamic batch axis
DEFAULT_OPSET = 19             # the lowest the prn functions allow (string Equal): widest TensorRT support
# A ModelProto is one protobuf message: 2 GiB is a hard limit of the format.
MAX_PROTOBUF_BYTES = 2 ** 31 - 1


@dataclass(frozen=True)
class ExportInfo:
    """What :func:`export_onnx` wrote.

    Attributes:
        path: the ONNX file.
        opset: default-domain opset of the graph.
        batch: the static batch size, or None for a dynamic batch.
        num_prototypes: K, prototypes per scale.
        input_size: S, the input side in pixels.
        bytes: size of the file.
        seconds: wall time of the export.
        metadata: ``model.metadata_props`` as written (strings).
    """

    path: Path
    opset: int
    batch: int | None
    num_prototypes: int
    input_size: int
    bytes: int
    seconds: float
    metadata: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Plain data (the metadata parsed back to Python values), e.g. for a sidecar JSON."""
        return {"path": str(self.path), "opset": self.opset, "batch": self.batch,
                "num_prototypes": self.num_prototypes, "input_size": self.input_size,
                "bytes": self.bytes, "seconds": round(self.seconds, 3),
                "metadata": parse_metadata(self.metadata)}


# --------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------
def export_onnx(model_or_checkpoint_path, path: str | os.PathLike, *, opset: int | None = None,
                batch: int | str = "dynamic", threshold: float | None = None) -> ExportInfo:
    """Export a PRN to the deployable ONNX model, written atomically to ``path``.

    Args:
        model_or_checkpoint_path: a :class:`~prn_edge.model.PRN` with its prototypes built,
            or the path of a ``checkpoint.pt`` (its threshold and SHA-256 go into the metadata).
        path: the ``.onnx`` file to write (its folder must exist).
        opset: default-domain ONNX opset, >= 19 (default :data:`DEFAULT_OPSET`).
        batch: ``"dynamic"`` (default) or a fixed batch size >= 1.
        threshold: decision threshold for the metadata (default: the checkpoint's, if any).

    Returns:
        What was written: :class:`ExportInfo`.

    Raises:
        PRNError: empty prototype banks, an invalid opset or batch, a model over the 2 GB
            protobuf limit, an unwritable path, or a missing export dependency.
        CheckpointError: an unusable checkpoint file.
    """
    start = time.perf_counter()
    torch = require("torch", "ONNX export")
    onnx = require("onnx", "ONNX export")
    require("onnxscript", "ONNX export (the dynamo exporter)")
    opset = DEFAULT_OPSET if opset is None else int(opset)
    from prn_edge.export.functions import MIN_OPSET, prn_functions

    if opset < MIN_OPSET:
        raise PRNError(f"opset {opset} is too old for the prn functions: they need >= {MIN_OPSET} "
                       f"(string Equal); use opset={DEFAULT_OPSET} (CLI: --opset {DEFAULT_OPSET})")
    static_batch = _parse_batch(batch)
    folder = Path(path).parent
    if not folder.is_dir():  # before the export, not after it
        raise PRNError(f"{folder}: output folder does not exist")
    model, sha256, ckpt_threshold, normalization = _resolve_source(model_or_checkpoint_path)
    threshold = ckpt_threshold if threshold is None else float(threshold)
    config = model.config
    num_heads = _check_exportable(model)
    _check_size(_tensor_bytes(model), what=f"the PRN with K={model.num_prototypes} prototypes per scale")

    twin = _export_twin(model).eval()
    size = config.image_size
    example = torch.randint(0, 256, (static_batch or 2, size, size, 3), dtype=torch.uint8,
                            generator=torch.Generator().manual_seed(0))
    dynamic_shapes = None if static_batch else {INPUT_NAME: {0: torch.export.Dim(BATCH_DIM)}}
    ops = _torch_ops()
    with _quiet_exporter():
        program = torch.onnx.export(
            twin, (example,), dynamo=True, opset_version=opset, input_names=[INPUT_NAME],
            output_names=list(OUTPUT_NAMES), dynamic_shapes=dynamic_shapes, optimize=True,
            verbose=False,
            custom_translation_table={ops.proto_residual.default: _onnx_proto_residual,
                                      ops.multi_size_attention.default: _onnx_multi_size_attention})
    proto = program.model_proto
    _check_calls(proto, expected={PROTO_RESIDUAL_SPEC.name: len(model.banks),
                                  MULTI_SIZE_ATTENTION_SPEC.name: _num_msa_layers(model)})

    # The exporter's per-node debug metadata (FX node, stack trace with this checkout's
    # absolute paths) would make the file depend on where it was built: drop it.
    _strip_debug_metadata(proto.graph)
    # Attach the function bodies the calls refer to, and the metadata.
    del proto.functions[:]
    proto.functions.extend(prn_functions(opset, num_heads))
    _set_opset(proto, FUNCTION_DOMAIN, FUNCTION_DOMAIN_VERSION)
    proto.graph.name = "prn_edge"
    proto.doc_string = (f"PRN anomaly detector ({config.preset} config, {config.backbone}), exported by "
                        f"prn_edge {__version__}: uint8 NHWC RGB image -> anomaly_map, score")
    metadata = build_metadata(config=config.to_dict(), num_prototypes=model.num_prototypes, input_size=size,
                              normalization=normalization, threshold=threshold, checkpoint_sha256=sha256,
                              exporter_version=__version__, opset=opset, batch=static_batch)
    onnx.helper.set_model_props(proto, metadata)

    _check_size(proto.ByteSize(), what="the exported ONNX model")
    onnx.checker.check_model(proto, full_check=True)
    nbytes = save_model(proto, path)
    seconds = time.perf_counter() - start
    log.info("wrote %s (%.1f MB, opset %d, batch %s) in %.1f s", path, nbytes / 1e6, opset,
             metadata["batch"], seconds)
    return ExportInfo(path=Path(path), opset=opset, batch=static_batch, num_prototypes=model.num_prototypes,
                      input_size=size, bytes=nbytes, seconds=seconds, metadata=metadata)


def save_model(model, path: str | os.PathLike) -> int:
    """Write a ModelProto as one protobuf file, atomically (old file or new file, never half).

    The model is serialized to bytes before the file is opened, so a model that cannot be
    serialized (e.g. over 2 GB) leaves ``path`` untouched.

    Returns:
        The number of bytes written.

    Raises:
        PRNError: a model over the protobuf limit, or an unwritable destination.
    """
    _check_size(model.ByteSize(), what=f"the ONNX model for {path}")
    data = _serialize(model)
    with atomic_write(path) as handle:
        handle.write(data)
    return len(data)


# --------------------------------------------------------------------------------------
# The source model
# --------------------------------------------------------------------------------------
def _resolve_source(source):
    """(model in eval mode on the CPU, checkpoint sha256, threshold, normalization)."""
    from prn_edge.model import PRN

    if isinstance(source, PRN):
        encoder = source.encoder
        normalization = {"mean": list(encoder.mean), "std": list(encoder.std)}
        return source, None, None, _normalization(normalization)
    if isinstance(source, (str, os.PathLike)):
        from prn_edge.checkpoint import load_model

        model, ckpt = load_model(source, device="cpu")
        return model, ckpt.sha256, ckpt.threshold, _normalization(ckpt.normalization)
    raise PRNError(f"export_onnx takes a PRN model or a checkpoint path, got {type(source).__name__}")


def _normalization(norm: Mapping[str, Any]) -> dict[str, Any]:
    return {"mean": [float(v) for v in norm["mean"]], "std": [float(v) for v in norm["std"]],
            "input": "uint8 RGB; the graph computes x / 255, then (x - mean) / std inside the backbone"}


def _check_exportable(model) -> int:
    """Raise PRNError on what cannot be exported; return the MSA heads (one value for all layers)."""
    if model.num_prototypes == 0:
        raise PRNError("the PRN's prototype banks are empty: build them (model.build_prototypes, prn-train) "
                       "or export from a checkpoint")
    if model.config.residual not in RESIDUAL_MODES:
        raise PRNError(f"residual mode {model.config.residual!r} has no ONNX function: "
                       f"choose one of {', '.join(RESIDUAL_MODES)}")
    from prn_edge.model.attention import NUM_HEADS, MSALayer

    heads = {layer.num_heads for layer in model.modules() if isinstance(layer, MSALayer)}
    if len(heads) > 1:
        raise PRNError(f"MSA layers with different head counts {sorted(heads)}: the exported "
                       "MultiSizeAttention function is built for one num_heads")
    return heads.pop() if heads else NUM_HEADS


def _num_msa_layers(model) -> int:
    from prn_edge.model.attention import MSALayer

    return sum(isinstance(m, MSALayer) for m in model.modules())


def _check_calls(proto, expected: Mapping[str, int]) -> None:
    """The exported graph has one prn call per bank and per MSA layer (else: an exporter change)."""
    found = {name: 0 for name in expected}
    for node in proto.graph.node:
        if node.domain == FUNCTION_DOMAIN:
            found[node.op_type] = found.get(node.op_type, 0) + 1
    if found != dict(expected):
        raise RuntimeError(f"internal error: the exported graph has prn calls {found}, expected {dict(expected)}; "
                           "the torch exporter may have decomposed the prn custom ops")


def _parse_batch(batch) -> int | None:
    if batch == "dynamic" or batch is None:
        return None
    try:
        value = int(batch)
    except (TypeError, ValueError):
        value = 0
    if value < 1 or (isinstance(batch, float) and not float(batch).is_integer()):
        raise PRNError(f"batch must be 'dynamic' or a positive int, got {batch!r} (CLI: --batch)")
    return value


def _tensor_bytes(model) -> int:
    return sum(t.numel() * t.element_size() for t in model.state_dict().values())


def _check_size(nbytes: int, what: str) -> None:
    if nbytes > MAX_PROTOBUF_BYTES:
        raise PRNError(f"{what} needs {nbytes / 2 ** 30:.2f} GiB, over the 2 GiB limit of a single-file "
                       "ONNX model: use fewer prototypes (a smaller prototype_ratio or --k)")


def _serialize(model) -> bytes:
    return model.SerializeToString()


def _strip_debug_metadata(graph) -> None:
    for node in graph.node:
        del node.metadata_props[:]
    for info in (*graph.input, *graph.output, *graph.value_info):
        del info.metadata_props[:]
    for tensor in graph.initializer:
        del tensor.metadata_props[:]


def _set_opset(proto, domain: str, version: int) -> None:
    for entry in proto.opset_import:
        if entry.domain == domain:
            entry.version = version
            return
    entry = proto.opset_import.add()
    entry.domain, entry.version = domain, version


@contextlib.contextmanager
def _quiet_exporter():
    """Hide the exporter's noise that says nothing about this model.

    'torchvision is not installed. Skipping torchvision::nms' (PRN uses none of those ops)
    and torch's own deprecation of ``LeafSpec`` inside ``torch.export``.
    """
    logger = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*LeafSpec.*", category=FutureWarning)
            yield
    finally:
        logger.setLevel(level)


# --------------------------------------------------------------------------------------
# torch side: the custom ops and the export twin
# --------------------------------------------------------------------------------------
_LIBRARY = None  # keeps the torch.library registration alive


def _torch_ops():
    """Define ``prn::proto_residual`` and ``prn::multi_size_attention`` once; return ``torch.ops.prn``.

    Their kernel is the PyTorch reference for every device (``CompositeExplicitAutograd``),
    so the export twin computes exactly what the PRN computes; the fake kernels give
    ``torch.export`` the output shapes.
    """
    global _LIBRARY
    import torch

    if _LIBRARY is None:
        from prn_edge.model.attention import multi_size_attention
        from prn_edge.model.prototypes import prototype_residual

        library = torch.library.Library("prn", "DEF")
        library.define("proto_residual(Tensor features, Tensor prototypes, Tensor sqnorm, str mode) -> Tensor")
        library.define("multi_size_attention(Tensor qkv, int num_heads) -> Tensor")
        library.impl("proto_residual", prototype_residual, "CompositeExplicitAutograd")
        library.impl("multi_size_attention", multi_size_attention, "CompositeExplicitAutograd")

        @torch.library.register_fake("prn::proto_residual", lib=library)
        def _proto_residual_fake(features, prototypes, sqnorm, mode):
            return torch.empty_like(features)                              # (B, C, H, W)

        @torch.library.register_fake("prn::multi_size_attention", lib=library)
        def _multi_size_attention_fake(qkv, num_heads):
            b, channels, h, w = qkv.shape
            return qkv.new_empty(b, channels // 3, h, w)                   # (B, heads*c, H, W)

        _LIBRARY = library
    return torch.ops.prn


def _function_op(spec, attributes: Mapping[str, Any]):
    """An onnxscript op for a call of the prn function ``spec`` (a node with no body of its own)."""
    from onnx.defs import OpSchema
    from onnxscript.values import Op, Opset

    types = ["tensor(float)", "tensor(float16)", "tensor(bfloat16)"]
    schema = OpSchema(
        spec.name, FUNCTION_DOMAIN, FUNCTION_DOMAIN_VERSION,
        inputs=[OpSchema.FormalParameter(name, "T") for name in spec.inputs],
        outputs=[OpSchema.FormalParameter(name, "T") for name in spec.outputs],
        type_constraints=[("T", types, "float tensors")],
        attributes=[OpSchema.Attribute(name, kind, "") for name, kind in attributes.items()])
    return Op(Opset(FUNCTION_DOMAIN, FUNCTION_DOMAIN_VERSION), spec.name, schema)


_OPS: dict[str, Any] = {}


def _onnx_proto_residual(features, prototypes, sqnorm, mode: str):
    """Translation of ``prn::proto_residual``: one ``prn.ProtoResidual`` call."""
    from onnx.defs import OpSchema

    if "pr" not in _OPS:
        _OPS["pr"] = _function_op(PROTO_RESIDUAL_SPEC, {"mode": OpSchema.AttrType.STRING})
    return _OPS["pr"](features, prototypes, sqnorm, mode=mode)


def _onnx_multi_size_attention(qkv, num_heads: int):
    """Translation of ``prn::multi_size_attention``: one ``prn.MultiSizeAttention`` call."""
    from onnx.defs import OpSchema

    if "msa" not in _OPS:
        _OPS["msa"] = _function_op(MULTI_SIZE_ATTENTION_SPEC, {"num_heads": OpSchema.AttrType.INT})
    return _OPS["msa"](qkv, num_heads=num_heads)


def _export_twin(model):
    """A deep copy of ``model`` whose fused parts call the prn torch ops, behind the deployable I/O.

    The model package's op swap (:func:`~prn_edge.model.deployable.swap_fused_ops`, shared with
    the CuPy-fused engine) replaces each prototype bank and MSA layer of the copy by one calling
    ``prn::proto_residual`` / ``prn::multi_size_attention``; the deployable wrapper
    (:class:`~prn_edge.model.deployable.DeployablePRN`) takes uint8 NHWC frames, converted as
    every backend converts them. The caller's model is not touched.
    """
    from prn_edge.model.deployable import DeployablePRN, swap_fused_ops

    ops = _torch_ops()
    twin = copy.deepcopy(model).cpu().float().eval()
    swap_fused_ops(twin, ops.proto_residual, ops.multi_size_attention)
    for p in twin.parameters():
        p.requires_grad_(False)
    return DeployablePRN(twin)
