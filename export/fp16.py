"""FP32 PRN ONNX -> mixed-precision FP16 ONNX: where the precision lives for TensorRT 11.

TensorRT 11 builds strongly typed networks only (docs/platform.md, "TensorRT versions"), so the FP16 engine runs what
the ONNX says. This pass decides it, node by node, with a short policy:

* FP16 storage and arithmetic: the convolutional body (encoder, fusion, attention
  projections, decoder): ``Conv``, activations, ``Add``/``Mul``/``Concat``/``Resize`` ...
* FP16 storage, FP32 inside: the two ``prn`` calls. Their bodies (and the CUDA kernels)
  cast to FP32 before the distance GEMM and before the attention scores and softmax, so
  features, the prototype bank and the attention inputs travel as FP16 while the reductions
  that would overflow do not; ``sqnorm`` (||P||^2 of a ~100k-dimensional prototype,
  beyond FP16's 65504) stays an FP32 input (plugin_spec.py).
* FP32: the input normalisation (uint8 -> x / 255 -> (x - mean) / std, before the first
  ``Conv``) and everything from the graph outputs' producers on (the final ``Sigmoid``,
  the top-K score): cheap, and they set the numbers a threshold is compared with.

``Cast`` nodes are inserted on every edge between the two worlds (one per tensor); float
initializers used only by FP16 nodes are stored as FP16 (half the file), shared ones get an
FP16 copy. Inputs and outputs keep their types (uint8 in, float32 out), so every runtime
runs both files with the same code. Non-float tensors (shapes, indices) are never touched.

Why not onnxconverter-common's ``convert_float_to_float16``: on this graph (an output,
``anomaly_map``, that is also read by the score nodes) it produced models that ONNX
Runtime refused with type clashes, and its block lists act on node names the exporter
makes up; this pass is ~150 lines whose policy is stated above and tested.
"""
from __future__ import annotations

from collections import defaultdict

from prn_edge.errors import PRNError, require
from prn_edge.contract.metadata import set_metadata
from prn_edge.export.plugin_spec import FUNCTION_DOMAIN, MULTI_SIZE_ATTENTION_SPEC, PROTO_RESIDUAL_SPEC

# Ops run in FP16 when they are in the body (not in the FP32 head or tail).
FP16_OPS = frozenset({
    "Conv", "ConvTranspose", "Relu", "Clip", "LeakyRelu", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh",
    "Add", "Sub", "Mul", "Div", "Concat", "Resize", "MaxPool", "AveragePool", "GlobalAveragePool",
    "BatchNormalization", "Identity", "Split", "Slice", "Transpose", "Reshape", "Flatten", "Abs",
})
# Which inputs of a node carry the data that changes type; the rest keep theirs
# (Resize's roi/scales must stay float32; the prototype norms stay FP32 by design).
DATA_INPUTS = {
    "Resize": (0,),
    "Reshape": (0,),
    "Slice": (0,),
    "Split": (0,),
    PROTO_RESIDUAL_SPEC.name: (0, 1),          # features, prototypes; not sqnorm
    MULTI_SIZE_ATTENTION_SPEC.name: (0,),      # qkv
}


def convert_to_fp16(model):
    """Return the mixed-precision FP16 copy of an exported PRN model (the input is not modified).

    Args:
        model: the FP32 ``onnx.ModelProto`` from :func:`~prn_edge.export.onnx_export.export_onnx`.

    Returns:
        The FP16 ``onnx.ModelProto``; metadata ``precision`` = ``fp16``.

    Raises:
        PRNError: the model has tensors of unknown type (not an export of this project) or
            nothing to convert.
    """
    onnx = require("onnx", "the FP16 conversion")
    from onnx import TensorProto, helper, numpy_helper

    model = _copy(onnx, model)
    graph = model.graph
    types = _tensor_types(onnx, model)
    float32 = TensorProto.FLOAT

    producer = {out: node for node in graph.node for out in node.output}
    consumers = defaultdict(list)
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name:
                consumers[name].append((node, i))

    keep32 = _fp32_head_and_tail(graph, producer, consumers)
    half = [n for n in graph.node if id(n) not in keep32 and (n.op_type in FP16_OPS or n.domain == FUNCTION_DOMAIN)]
    if not half:
        raise PRNError("nothing to convert to FP16: the model has no convolutional body")
    half_ids = {id(n) for n in half}

    def is_data_input(node, index: int) -> bool:
        allowed = DATA_INPUTS.get(node.op_type)
        return allowed is None or index in allowed

    def is_float(name: str) -> bool:
        if name not in types:
            raise PRNError(f"tensor {name!r} has no known type: re-export the model with prn-export")
        return types[name] == float32

    # Tensors that become FP16: float outputs of FP16 nodes.
    half_tensors = {out for n in half for out in n.output if out and is_float(out)}
    initializers = {init.name: init for init in graph.initializer}
    new_nodes_before: dict[int, list] = defaultdict(list)   # id(node) -> casts to insert before it
    casts: dict[tuple[str, int], str] = {}

    def cast(name: str, to: int, before) -> str:
        key = (name, to)
        if key not in casts:
            suffix = "fp16" if to == TensorProto.FLOAT16 else "fp32"
            casts[key] = out = f"{name}__{suffix}"
            new_nodes_before[id(before)].append(
                helper.make_node("Cast", [name], [out], to=to, name=f"cast_{suffix}__{name}"))
        return casts[key]

    fp16_copies: dict[str, str] = {}
    order = {id(n): i for i, n in enumerate(graph.node)}
    for node in graph.node:
        in_half = id(node) in half_ids
        for i, name in enumerate(node.input):
            if not name or not is_float(name):
                continue
            wants_half = in_half and is_data_input(node, i)
            has_half = name in half_tensors
            if wants_half and not has_half:
                if name in initializers:
                    node.input[i] = fp16_copies.setdefault(name, f"{name}__fp16")
                else:   # a graph input or an FP32 node's output: cast at its first FP16 reader
                    first = min((c for c, j in consumers[name] if id(c) in half_ids and is_data_input(c, j)),
                                key=lambda c: order[id(c)])
                    node.input[i] = cast(name, TensorProto.FLOAT16, first)
            elif has_half and not wants_half:
                first = min((c for c, _ in consumers[name]), key=lambda c: order[id(c)])
                node.input[i] = cast(name, float32, first)

    # FP16 copies of initializers (the original stays if an FP32 node still reads it).
    still_read = {name for node in graph.node for name in node.input}
    for name, copy_name in fp16_copies.items():
        init = initializers[name]
        graph.initializer.append(numpy_helper.from_array(numpy_helper.to_array(init).astype("float16"), copy_name))
        if name not in still_read:
            graph.initializer.remove(init)

    # Graph outputs produced in FP16: the producer writes name__half, a Cast restores name.
    tail = []
    for output in graph.output:
        if output.name in half_tensors:
            node = producer[output.name]
            renamed = f"{output.name}__half"
            node.output[list(node.output).index(output.name)] = renamed
            for reader, j in consumers[output.name]:
                if id(reader) in half_ids and is_data_input(reader, j):
                    reader.input[j] = renamed
            tail.append(helper.make_node("Cast", [renamed], [output.name], to=float32, name=f"cast_out__{output.name}"))

    # FP16 node outputs change type: rewrite the node list with casts in place.
    nodes = []
    for node in graph.node:
        nodes.extend(new_nodes_before.get(id(node), ()))
        nodes.append(node)
    del graph.node[:]
    graph.node.extend(nodes + tail)
    del graph.value_info[:]   # stale FP32 types would clash; ORT and TensorRT infer them again
    set_metadata(model, "precision", "fp16")
    return model


def _copy(onnx, model):
    copied = onnx.ModelProto()
    copied.CopyFrom(model)
    return copied


def _tensor_types(onnx, model) -> dict[str, int]:
    """Element type of every tensor: declared, else inferred (with the functions' outputs)."""
    inferred = onnx.shape_inference.infer_shapes(model, data_prop=False)
    graph = inferred.graph
    types = {init.name: init.data_type for init in graph.initializer}
    for vi in list(graph.input) + list(graph.output) + list(graph.value_info):
        if vi.type.tensor_type.elem_type:
            types[vi.name] = vi.type.tensor_type.elem_type
    for node in graph.node:   # Constant nodes: the type of their value
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value":
                    types[node.output[0]] = attr.t.data_type
    return types


TAIL_SEARCH_DEPTH = 16  # nodes from an output back to its Sigmoid: the blur 4 (6 over two channels), the score's chain 3 (6)


def _fp32_head_and_tail(graph, producer, consumers) -> set[int]:
    """ids of the nodes that stay FP32: the input normalisation and the output tail.

    Head: every node reachable from a graph input without passing a ``Conv`` (the uint8 ->
    normalised float chain). Tail: the last ``Sigmoid`` upstream of each graph output (through
    the map's Gaussian blur, ``map_smoothing``, when the model has one: Pad and 1-channel Conv
    on probabilities), the nodes between, and everything downstream.
    """
    keep: set[int] = set()
    frontier = [vi.name for vi in graph.input]
    while frontier:
        name = frontier.pop()
        for node, _ in consumers.get(name, ()):
            if node.op_type == "Conv" or id(node) in keep:
                continue
            keep.add(id(node))
            frontier.extend(o for o in node.output if o)
    outputs = [o.name for o in graph.output]
    frontier = []
    for name in outputs:
        path, node = [], producer.get(name)
        while node is not None and node.op_type != "Sigmoid" and len(path) < TAIL_SEARCH_DEPTH:
            path.append(node)
            node = producer.get(node.input[0]) if node.input else None
        frontier.extend(path + [node] if node is not None and node.op_type == "Sigmoid" else path[:1])
    while frontier:
        node = frontier.pop()
        if id(node) in keep:
            continue
        keep.add(id(node))
        for out in node.output:
            frontier.extend(reader for reader, _ in consumers.get(out, ()))
    return keep

