"""The names and fields of PRN's two fused ops, in every form they take.

One home for the strings that the ONNX export, the graph surgery, the CUDA kernels and the
TensorRT plugins must agree on. No imports beyond the standard library: the kernels'
build scripts and the edge runtime may read it without torch or onnx.

The two ops (reference semantics in PyTorch -> ONNX function -> TensorRT plugin):

* ``prn_edge.model.prototypes.prototype_residual`` -> ``prn.ProtoResidual`` -> ``ProtoResidual``
* ``prn_edge.model.attention.multi_size_attention`` -> ``prn.MultiSizeAttention`` -> ``MultiSizeAttention``

``ProtoResidual`` (plugin ``ProtoResidual`` v1, namespace ``prn_edge``)
    inputs:  0 ``features`` (B, C, H, W) float; 1 ``prototypes`` (K, C*H*W) float, the bank;
             2 ``sqnorm`` (K,) float, the prototypes' squared L2 norms. Keep ``sqnorm`` FP32
             in an FP16 model: ||P||^2 of a 100k-dimensional prototype overflows FP16.
    output:  0 ``residual`` (B, C, H, W), same type as ``features``:
             ``|F - P_k*|`` (mode abs) or ``(F - P_k*)^2`` (mode square) with
             ``k* = argmin_k ||P_k||^2 - 2 <F, P_k>`` (first index on ties), reduced in FP32.
    ONNX function attribute: ``mode`` (string, ``"abs"`` | ``"square"``).
    plugin fields:           ``mode`` (int32, 0 abs / 1 square).

``MultiSizeAttention`` (plugin ``MultiSizeAttention`` v1, namespace ``prn_edge``)
    input:   0 ``qkv`` (B, 3*heads*c, H, W) float: [Q of heads 0..h-1, K ..., V ...], c each.
    output:  0 ``out`` (B, heads*c, H, W), same type: head s attends over non-overlapping
             patches of side H >> s, ``softmax(Q K^T / d) V`` with d = c*p*p, scores and
             softmax in FP32.
    ONNX function attribute and plugin field: ``num_heads`` (int, 4).

The banks stay tensor inputs in every form (graph initializers feeding inputs 1 and 2), never
attributes (docs/platform.md, "TensorRT plugins"): as weights, TensorRT and the ONNX tools see them, convert them
(FP16) and can refit them; as a field they would be an opaque blob copied into the plugin.
"""
from __future__ import annotations

from dataclasses import dataclass

# -- ONNX functions (the model every runtime can run) ------------------------------------
FUNCTION_DOMAIN = "prn"
FUNCTION_DOMAIN_VERSION = 1

# -- TensorRT plugins (what graph surgery turns the function calls into) ------------------
PLUGIN_VERSION = "1"
PLUGIN_NAMESPACE = "prn_edge"
# The ONNX domain of the plugin nodes. onnx-tensorrt dispatches on op_type alone and ignores
# the domain; ONNX Runtime's TensorRT execution provider looks plugins up in "trt.plugins";
# and a non-default domain keeps the graph a valid ONNX model (onnx.checker skips unknown
# domains, while an unknown op in the default domain is an error).
PLUGIN_DOMAIN = "trt.plugins"
# Node attributes the ONNX parser reads to find the plugin creator (not plugin fields).
PLUGIN_VERSION_ATTR = "plugin_version"
PLUGIN_NAMESPACE_ATTR = "plugin_namespace"

# -- ProtoResidual ------------------------------------------------------------------------
PROTO_RESIDUAL = "ProtoResidual"
RESIDUAL_MODES = {"abs": 0, "square": 1}   # ONNX attribute value -> plugin field value
MODE_FIELD = "mode"

# -- MultiSizeAttention -------------------------------------------------------------------
MULTI_SIZE_ATTENTION = "MultiSizeAttention"
NUM_HEADS_FIELD = "num_heads"


@dataclass(frozen=True)
class PluginSpec:
    """One fused op: its ONNX function signature and its TensorRT plugin identity.

    Attributes:
        name: op type of the ONNX function and name of the TensorRT plugin (the same string).
        inputs: input names, in order (function inputs and plugin inputs alike).
        outputs: output names, in order.
        fields: plugin field names (all int32), in the order the plugin creator lists them.
    """

    name: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    fields: tuple[str, ...]
    version: str = PLUGIN_VERSION
    namespace: str = PLUGIN_NAMESPACE


PROTO_RESIDUAL_SPEC = PluginSpec(PROTO_RESIDUAL, ("features", "prototypes", "sqnorm"), ("residual",),
                                 (MODE_FIELD,))
MULTI_SIZE_ATTENTION_SPEC = PluginSpec(MULTI_SIZE_ATTENTION, ("qkv",), ("out",), (NUM_HEADS_FIELD,))
PLUGINS = {spec.name: spec for spec in (PROTO_RESIDUAL_SPEC, MULTI_SIZE_ATTENTION_SPEC)}


def plugin_fields(op_type: str, attributes: dict) -> dict[str, int]:
    """The plugin fields of one ``prn`` function call, from its ONNX attributes.

    Args:
        op_type: ``ProtoResidual`` or ``MultiSizeAttention``.
        attributes: the call node's attributes as Python values (``mode`` a str, ``num_heads`` an int).

    Returns:
        Field name -> int value, in the plugin's field order.

    Raises:
        ValueError: unknown op or an attribute value the plugin does not implement.
    """
    if op_type == PROTO_RESIDUAL:
        mode = attributes.get(MODE_FIELD)
        if isinstance(mode, bytes):
            mode = mode.decode()
        if mode not in RESIDUAL_MODES:
            raise ValueError(f"{PROTO_RESIDUAL}: mode {mode!r} is not one of {', '.join(RESIDUAL_MODES)}")
        return {MODE_FIELD: RESIDUAL_MODES[mode]}
    if op_type == MULTI_SIZE_ATTENTION:
        heads = attributes.get(NUM_HEADS_FIELD)
        if not isinstance(heads, int) or heads < 1:
            raise ValueError(f"{MULTI_SIZE_ATTENTION}: num_heads must be a positive int, got {heads!r}")
        return {NUM_HEADS_FIELD: heads}
    raise ValueError(f"no plugin is defined for op {op_type!r}: known ops are {', '.join(PLUGINS)}")
