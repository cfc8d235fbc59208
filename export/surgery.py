"""Graph surgery: the ONNX model for TensorRT, with the ``prn`` function calls as plugin nodes.

The exported model calls two model-local functions (domain ``prn``). For TensorRT each call
becomes a plugin node that the ONNX parser resolves through the plugin registry
(onnx-tensorrt's ``FallbackPluginImporter``): op type = plugin name, attributes
``plugin_version`` and ``plugin_namespace`` select the creator, every other attribute whose
name the creator lists becomes a plugin field, and the node's inputs (including the
prototype bank and its norms, initializers that the parser turns into constant tensors)
are the plugin's inputs. Names, versions, the namespace and the fields come from
:mod:`prn_edge.export.plugin_spec`, which the CUDA plugins follow too.

Nothing else changes: the other nodes, initializers, inputs and outputs are carried over
as they are (no cleanup, no re-sorting), the metadata is kept and marks the variant, and the
function definitions, no longer referenced, are dropped.

A note on newer parsers: onnx-tensorrt >= 10.x also imports a *function call* as a plugin
when a plugin of that op name is registered, but then it sees the function's attributes
(``mode`` as a string), not the plugin fields; this variant is explicit and parses the same
on TensorRT 10.3 (JetPack 6) and 11.x.
"""
from __future__ import annotations

import json
import os

from prn_edge.errors import PRNError, require
from prn_edge.export.plugin_spec import (
    FUNCTION_DOMAIN,
    PLUGIN_DOMAIN,
    PLUGIN_NAMESPACE_ATTR,
    PLUGIN_VERSION_ATTR,
    PLUGINS,
    plugin_fields,
)

VARIANT = "tensorrt-plugins"   # metadata "variant" of the surgered model


def make_tensorrt_variant(onnx_path_or_model, out_path: str | os.PathLike | None = None):
    """Replace every ``prn`` function call by its TensorRT plugin node.

    Args:
        onnx_path_or_model: a PRN Edge ONNX file (from :func:`~prn_edge.export.onnx_export.export_onnx`)
            or its ``onnx.ModelProto`` (not modified).
        out_path: where to write the result (atomically); None to only return it.

    Returns:
        The new ``onnx.ModelProto``.

    Raises:
        PRNError: no ``prn`` calls (not a PRN Edge export, or already converted), a call
            with the wrong arity or an attribute the plugins do not implement, or an
            unreadable input / unwritable output.
    """
    onnx = require("onnx", "the TensorRT graph surgery")
    gs = require("onnx_graphsurgeon", "the TensorRT graph surgery")
    source, where = _load(onnx, onnx_path_or_model)

    graph = gs.import_onnx(source)
    calls = [node for node in graph.nodes if node.domain == FUNCTION_DOMAIN]
    if not calls:
        raise PRNError(f"{where}: no '{FUNCTION_DOMAIN}' function calls to replace: not a PRN Edge ONNX "
                       "export (prn_edge.export.export_onnx), or already a TensorRT variant")
    for node in calls:
        spec = PLUGINS.get(node.op)
        if spec is None:
            raise PRNError(f"{where}: node {node.name!r} calls {FUNCTION_DOMAIN}.{node.op}, which has no "
                           f"TensorRT plugin (known: {', '.join(PLUGINS)})")
        if len(node.inputs) != len(spec.inputs) or len(node.outputs) != len(spec.outputs):
            raise PRNError(f"{where}: node {node.name!r} ({node.op}) has {len(node.inputs)} inputs and "
                           f"{len(node.outputs)} outputs, the plugin takes {len(spec.inputs)} and "
                           f"gives {len(spec.outputs)}")
        try:
            fields = plugin_fields(node.op, dict(node.attrs))
        except ValueError as exc:
            raise PRNError(f"{where}: node {node.name!r}: {exc}") from exc
        node.domain = PLUGIN_DOMAIN
        node.attrs = {PLUGIN_VERSION_ATTR: spec.version, PLUGIN_NAMESPACE_ATTR: spec.namespace, **fields}

    graph.functions = [f for f in graph.functions if f.domain != FUNCTION_DOMAIN]
    domains = [d for d in graph.import_domains or [] if d.domain not in (FUNCTION_DOMAIN, PLUGIN_DOMAIN)]
    graph.import_domains = domains + [onnx.helper.make_opsetid(PLUGIN_DOMAIN, 1)]
    model = gs.export_onnx(graph)

    # graphsurgeon carries the graph; the model-level fields are copied over.
    model.doc_string = source.doc_string
    model.domain = source.domain
    model.model_version = source.model_version
    metadata = {p.key: p.value for p in source.metadata_props}
    metadata["variant"] = VARIANT
    metadata["plugins"] = json.dumps(
        [{"name": spec.name, "version": spec.version, "namespace": spec.namespace, "fields": list(spec.fields)}
         for spec in PLUGINS.values()])
    onnx.helper.set_model_props(model, metadata)

    # The plugin ops are unknown to ONNX, so no full check (shape inference would stop at them).
    onnx.checker.check_model(model)
    if out_path is not None:
        from prn_edge.export.onnx_export import save_model

        save_model(model, out_path)
    return model


def _load(onnx, source):
    """(ModelProto, a name for messages); a given ModelProto is copied, never modified."""
    if isinstance(source, onnx.ModelProto):
        model = onnx.ModelProto()
        model.CopyFrom(source)
        return model, "the given model"
    if isinstance(source, (str, os.PathLike)):
        try:
            return onnx.load(os.fspath(source)), os.fspath(source)
        except FileNotFoundError as exc:
            raise PRNError(f"{source}: no such ONNX file") from exc
        except Exception as exc:  # protobuf raises DecodeError and others for damaged files
            raise PRNError(f"{source}: not a readable ONNX model ({type(exc).__name__}: {exc})") from exc
    raise PRNError(f"make_tensorrt_variant takes an ONNX path or ModelProto, got {type(source).__name__}")
