"""The bodies of the model-local ONNX functions ``prn.ProtoResidual`` and ``prn.MultiSizeAttention``.

An exported PRN calls these two functions (domain ``prn``) where the fused kernels will run;
the bodies here are what ONNX Runtime (or any runtime) executes by inlining them, and they
follow the PyTorch references op for op:

* ``ProtoResidual`` = :func:`prn_edge.model.prototypes.prototype_residual`: the nearest
  prototype in GEMM form, ``Gemm(F, P, ||P||^2, alpha=-2, transB=1)`` = ``||P||^2 - 2 F P^T``
  (one (B, D) x (D, K) product; ``||F||^2`` is the same for every k and left out), then
  ``ArgMin(select_last_index=0)`` (first index on ties, like ``torch.argmin``), ``Gather`` of
  the winning row, and ``|F - P|`` or ``(F - P)^2``.
* ``MultiSizeAttention`` = :func:`prn_edge.model.attention.multi_size_attention`: per head
  s, cut Q, K, V into patches of side p = H >> s, ``softmax(Q K^T / d) V`` with d = c*p*p,
  fold back, concatenate the heads.

Whatever the storage type of the call (FP32 now, FP16 later), the distance reduction, the
attention scores and the softmax are computed in FP32 (``Cast`` to float first; a no-op
that ONNX Runtime removes in an FP32 model): FP16 would overflow on
``||P||^2`` of a 100k-dimensional bank and on the scores.

The bodies are shape-generic (one function serves all three scales, any batch), built with
``onnx.helper`` rather than onnxscript so that every node and attribute is explicit here.
They use ``Split(num_outputs=)`` (opset 18) and ``Equal`` on strings (opset 19): the graph
opset must be >= :data:`MIN_OPSET`.
"""
from __future__ import annotations

from onnx import AttributeProto, FunctionProto, TensorProto, helper

from prn_edge.export.plugin_spec import (
    FUNCTION_DOMAIN,
    MODE_FIELD,
    MULTI_SIZE_ATTENTION_SPEC,
    NUM_HEADS_FIELD,
    PROTO_RESIDUAL_SPEC,
)

MIN_OPSET = 19   # string Equal (the mode switch of ProtoResidual)


def _int64s(name: str, values) -> helper.NodeProto:
    return helper.make_node("Constant", [], [name], value=helper.make_tensor(
        name, TensorProto.INT64, [len(values)], list(values)))


def proto_residual_function(opset: int) -> FunctionProto:
    """``prn.ProtoResidual(features, prototypes, sqnorm) -> residual``, attribute ``mode``.

    Args:
        opset: the default-domain opset the body is written against (the model's).

    Returns:
        The FunctionProto (domain ``prn``, version 1).
    """
    _check_opset(opset)
    features, prototypes, sqnorm = PROTO_RESIDUAL_SPEC.inputs
    (residual,) = PROTO_RESIDUAL_SPEC.outputs
    make = helper.make_node
    nodes = [
        make("Shape", [features], ["shape"]),                                # [B, C, H, W]
        make("Flatten", [features], ["flat"], axis=1),                       # (B, D)
        # FP32 for the reduction whatever the storage type (no-op casts in an FP32 model).
        make("Cast", ["flat"], ["flat32"], to=TensorProto.FLOAT),
        make("Cast", [prototypes], ["bank32"], to=TensorProto.FLOAT),        # (K, D)
        make("Cast", [sqnorm], ["sqnorm32"], to=TensorProto.FLOAT),          # (K,)
        # ||P_k||^2 - 2 <F, P_k>: one GEMM, the norms broadcast as its C term.
        make("Gemm", ["flat32", "bank32", "sqnorm32"], ["distance"],
             alpha=-2.0, beta=1.0, transB=1),                                # (B, K)
        make("ArgMin", ["distance"], ["index"], axis=1, keepdims=0, select_last_index=0),  # (B,)
        make("Gather", [prototypes, "index"], ["nearest_flat"], axis=0),     # (B, D)
        make("Reshape", ["nearest_flat", "shape"], ["nearest"]),             # (B, C, H, W)
        make("Sub", [features, "nearest"], ["diff"]),
        # mode: a string attribute of the call, compared once (constant-folded by ORT).
        _constant_from_attribute("mode", "value_string", MODE_FIELD, AttributeProto.STRING),
        make("Constant", [], ["square"], value=helper.make_tensor("square", TensorProto.STRING, [], [b"square"])),
        make("Equal", ["mode", "square"], ["is_square"]),
        make("If", ["is_square"], [residual],
             then_branch=_branch("square", make("Mul", ["diff", "diff"], ["squared"]), "squared"),
             else_branch=_branch("abs", make("Abs", ["diff"], ["absolute"]), "absolute")),
    ]
    return helper.make_function(
        FUNCTION_DOMAIN, PROTO_RESIDUAL_SPEC.name, list(PROTO_RESIDUAL_SPEC.inputs), [residual], nodes,
        opset_imports=[helper.make_opsetid("", opset)], attributes=[MODE_FIELD],
        doc_string="Residual to the nearest prototype: |F - P_k*| (mode abs) or (F - P_k*)^2 (mode square), "
                   "k* = argmin_k ||P_k||^2 - 2 <F, P_k> in FP32, first index on ties. "
                   "Reference: prn_edge.model.prototypes.prototype_residual.")


def multi_size_attention_function(opset: int, num_heads: int) -> FunctionProto:
    """``prn.MultiSizeAttention(qkv) -> out``, attribute ``num_heads``.

    The body is unrolled over the heads at export time (ONNX has no static loop), so it is
    built for one ``num_heads`` (the export refuses a model whose MSA layers disagree); the
    attribute on each call states that value, and the plugin reads it as its field.

    Args:
        opset: the default-domain opset of the model.
        num_heads: heads of every MSA layer in the model.

    Returns:
        The FunctionProto (domain ``prn``, version 1).
    """
    _check_opset(opset)
    if num_heads < 1:
        raise ValueError(f"num_heads must be >= 1, got {num_heads}")
    (qkv,) = MULTI_SIZE_ATTENTION_SPEC.inputs
    (out,) = MULTI_SIZE_ATTENTION_SPEC.outputs
    make = helper.make_node
    parts = [f"q{s}" for s in range(num_heads)] + [f"k{s}" for s in range(num_heads)] + \
            [f"v{s}" for s in range(num_heads)]
    nodes = [
        make("Split", [qkv], parts, axis=1, num_outputs=3 * num_heads),      # 3h x (B, c, H, W)
        make("Shape", ["q0"], ["head_shape"]),                               # [B, c, H, W]
        _int64s("i0", [0]), _int64s("i1", [1]), _int64s("i2", [2]), _int64s("i3", [3]), _int64s("i4", [4]),
        make("Slice", ["head_shape", "i0", "i1"], ["B"]),
        make("Slice", ["head_shape", "i1", "i2"], ["c"]),
        make("Slice", ["head_shape", "i2", "i3"], ["H"]),
        make("Slice", ["head_shape", "i3", "i4"], ["W"]),
        _int64s("minus1", [-1]),
    ]
    heads = []
    for s in range(num_heads):
        t = f"h{s}_"
        grid = 1 << s                                                        # patches per column
        nodes += [
            _int64s(t + "grid", [grid]),
            make("Div", ["H", t + "grid"], [t + "p"]),                       # p = H >> s
            make("Div", ["W", t + "p"], [t + "gw"]),                         # patches per row
            make("Mul", ["c", t + "p"], [t + "cp"]),
            make("Mul", [t + "cp", t + "p"], [t + "d"]),                     # token size d = c p p
            # to_tokens: (B, c, H, W) -> (B, c, gh, p, gw, p) -> (B, gh, gw, c, p, p) -> (B, n, d)
            make("Concat", ["B", "c", t + "grid", t + "p", t + "gw", t + "p"], [t + "grid6"], axis=0),
            make("Concat", ["B", "minus1", t + "d"], [t + "tokens3"], axis=0),
        ]
        tokens = {}
        for kind in "qkv":
            x = f"{kind}{s}"
            nodes += [
                make("Reshape", [x, t + "grid6"], [t + kind + "_6d"]),
                make("Transpose", [t + kind + "_6d"], [t + kind + "_perm"], perm=[0, 2, 4, 1, 3, 5]),
                make("Reshape", [t + kind + "_perm", t + "tokens3"], [t + kind + "_tok"]),  # (B, n, d)
            ]
            tokens[kind] = t + kind + "_tok"
        nodes += [
            # Scores and softmax in FP32 whatever the storage type (FP16 would overflow).
            make("Cast", [tokens["q"]], [t + "q32"], to=TensorProto.FLOAT),
            make("Cast", [tokens["k"]], [t + "k32"], to=TensorProto.FLOAT),
            make("Transpose", [t + "k32"], [t + "kT"], perm=[0, 2, 1]),                 # (B, d, n)
            make("MatMul", [t + "q32", t + "kT"], [t + "qk"]),                          # (B, n, n)
            make("Cast", [t + "d"], [t + "d32"], to=TensorProto.FLOAT),
            make("Div", [t + "qk", t + "d32"], [t + "scores"]),                         # / d, not sqrt(d)
            make("Softmax", [t + "scores"], [t + "weights32"], axis=-1),
            make("CastLike", [t + "weights32", tokens["v"]], [t + "weights"]),
            make("MatMul", [t + "weights", tokens["v"]], [t + "o_tok"]),                # (B, n, d)
            # from_tokens: (B, n, d) -> (B, gh, gw, c, p, p) -> (B, c, gh, p, gw, p) -> (B, c, H, W)
            make("Concat", ["B", t + "grid", t + "gw", "c", t + "p", t + "p"], [t + "tok6"], axis=0),
            make("Reshape", [t + "o_tok", t + "tok6"], [t + "o_6d"]),
            make("Transpose", [t + "o_6d"], [t + "o_perm"], perm=[0, 3, 1, 4, 2, 5]),
            make("Reshape", [t + "o_perm", "head_shape"], [t + "out"]),                 # (B, c, H, W)
        ]
        heads.append(t + "out")
    nodes.append(make("Concat", heads, [out], axis=1))                                  # (B, h c, H, W)
    return helper.make_function(
        FUNCTION_DOMAIN, MULTI_SIZE_ATTENTION_SPEC.name, [qkv], [out], nodes,
        opset_imports=[helper.make_opsetid("", opset)], attributes=[NUM_HEADS_FIELD],
        doc_string=f"Multi-size patch self-attention core, body unrolled for num_heads={num_heads}: head s "
                   "attends over patches of side H >> s, softmax(Q K^T / d) V with d = c*p*p, FP32 scores. "
                   "Reference: prn_edge.model.attention.multi_size_attention.")


def prn_functions(opset: int, num_heads: int) -> list[FunctionProto]:
    """Both function definitions, as a model's ``functions`` list."""
    return [proto_residual_function(opset), multi_size_attention_function(opset, num_heads)]


def _branch(name: str, node: helper.NodeProto, output: str) -> helper.GraphProto:
    # Subgraph outputs need a ValueInfo; the type is left open (it is the input's type).
    return helper.make_graph([node], name, [], [helper.make_empty_tensor_value_info(output)])


def _constant_from_attribute(output: str, attr_name: str, ref_name: str, attr_type: int) -> helper.NodeProto:
    """``Constant`` whose ``attr_name`` is the calling node's attribute ``ref_name`` (ONNX ref_attr_name)."""
    node = helper.make_node("Constant", [], [output])
    ref = node.attribute.add()
    ref.name = attr_name
    ref.ref_attr_name = ref_name
    ref.type = attr_type
    return node


def _check_opset(opset: int) -> None:
    if opset < MIN_OPSET:
        raise ValueError(f"the prn functions need ONNX opset >= {MIN_OPSET} (string Equal), got {opset}")
