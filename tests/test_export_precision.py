"""The export's decision logic that needs no model: the INT8 gate search, conv grouping,
TensorRT build settings per version, and the engine sidecar checks.

The model-level FP16 / INT8 checks (types, Q/DQ layout, ONNX Runtime parity) live in
test_export_onnx.py beside the exported models they use; the whole command in test_export_cli.py.
"""
from __future__ import annotations

import json

import pytest

onnx = pytest.importorskip("onnx")

from onnx import TensorProto, helper  # noqa: E402

from prn_edge.errors import PRNError  # noqa: E402
from prn_edge.export.int8 import (  # noqa: E402
    ConvGroup,
    conv_groups,
    gate_warning,
    input_side_limit,
    matched_feature_convs,
    search_keep_float,
    worst_drop,
)
from prn_edge.export.tensorrt_build import build_settings, tensorrt_major  # noqa: E402
from prn_edge.contract.model_folder import ModelFolder  # noqa: E402
from prn_edge.runtime.backends import tensorrt_support as ts  # noqa: E402

GATED = ("image_auroc", "pixel_auroc", "pro")
REF = {"image_auroc": 1.0, "pixel_auroc": 0.98, "pro": 0.97, "ap": 0.9}


def metrics(drop_points: float) -> dict:
    return {k: v - drop_points / 100 for k, v in REF.items()}


def groups(*names: str) -> list[ConvGroup]:
    return [ConvGroup(n, (f"{n}_conv0", f"{n}_conv1"), (f"{n}.0", f"{n}.1")) for n in names]


class FakeTrials:
    """Accuracy that depends on which groups stay in float: each listed group costs its points."""

    def __init__(self, cost: dict[str, float]) -> None:
        self.cost = cost
        self.calls: list[set[str]] = []

    def __call__(self, keep: set[str]) -> dict:
        self.calls.append(set(keep))
        lost = sum(c for g, c in self.cost.items() if f"{g}_conv0" not in keep)
        return metrics(lost)


def test_worst_drop_is_the_largest_gated_drop_in_points():
    m = dict(REF, pixel_auroc=REF["pixel_auroc"] - 0.004, pro=REF["pro"] - 0.012, ap=0.0)
    assert worst_drop(REF, m, GATED) == pytest.approx(1.2)   # AP is not gated


def test_gate_passes_at_once_without_a_search():
    trials = FakeTrials({"a": 0.1, "b": 0.2})
    out = search_keep_float(groups("a", "b"), trials, REF, GATED, 0.5, progress=lambda s: None)
    assert out.passed and out.kept == () and out.ranked == () and trials.calls == [set()]
    assert out.worst_drop == pytest.approx(0.3) == pytest.approx(out.all_int8_drop)


def test_gate_tries_the_input_side_first():
    trials = FakeTrials({"stem": 3.0, "early": 1.0, "late": 0.2, "head": 0.1})
    out = search_keep_float(groups("stem", "early", "late", "head"), trials, REF, GATED, 0.5,
                            progress=lambda s: None)
    assert out.passed
    assert [g.name for g in out.kept] == ["stem", "early"]
    assert out.ranked == ()                                      # no ranking needed
    assert out.worst_drop == pytest.approx(0.3) and out.all_int8_drop == pytest.approx(4.3)
    assert trials.calls == [set(), {"stem_conv0", "stem_conv1"},
                            {"stem_conv0", "stem_conv1", "early_conv0", "early_conv1"}]


def test_gate_ranks_by_sensitivity_when_the_input_side_is_not_it():
    trials = FakeTrials({"stem": 0.1, "early": 0.1, "late": 0.1, "head": 3.0})
    out = search_keep_float(groups("stem", "early", "late", "head"), trials, REF, GATED, 0.5,
                            progress=lambda s: None)
    assert out.passed
    assert [g.name for g in out.kept] == ["head"]                # the one that costs, alone
    assert out.ranked[0].group.name == "head"
    # 1 all-INT8 + 2 input-side + 4 own-cost (one part alone in INT8) + 1 cumulative
    assert len(trials.calls) == 8
    assert out.worst_drop == pytest.approx(0.3)


def test_gate_ranks_by_own_cost_a_part_that_only_shows_once_the_rest_is_clean():
    """The decoder of the bottle model: in INT8 it cost 2.4 points of AP, but with the other parts in INT8 the
    encoder's error hid it, so ranking by what keeping one part in float recovers put it last. Ranked by its
    cost alone in INT8, it is kept in float first."""
    class Masked(FakeTrials):
        def __call__(self, keep):
            self.calls.append(set(keep))
            if "encoder_conv0" not in keep:
                lost = 60.0                                    # the encoder in INT8 swamps everything else
            else:
                lost = 2.4 if "decoder_conv0" not in keep else 0.0
            return metrics(lost + (0.1 if "attention_conv0" not in keep else 0.0))

    trials = Masked({})
    out = search_keep_float(groups("encoder", "attention", "decoder"), trials, REF, GATED, 0.5,
                            progress=lambda s: None, prefix_limit=1)
    assert out.passed and [g.name for g in out.kept] == ["encoder", "decoder"]
    assert [r.group.name for r in out.ranked] == ["encoder", "decoder", "attention"]
    assert out.worst_drop == pytest.approx(0.1)


def test_gate_fails_and_names_the_groups_when_float_everywhere_but_one_is_needed():
    trials = FakeTrials({"a": 2.0, "b": 2.0, "c": 2.0})
    out = search_keep_float(groups("a", "b", "c"), trials, REF, GATED, 0.5, progress=lambda s: None)
    assert not out.passed
    assert len(out.kept) == 2                        # never all groups: that would not be INT8
    assert len(out.ranked) == 3
    assert out.worst_drop == pytest.approx(2.0)
    # 1 all-INT8 + 2 input-side + 3 own-cost + 2 cumulative, of which c's own cost ({a, b} in float) and both
    # cumulative trials ({a}, {a, b}) were measured before: each set of float groups is scored once.
    assert len(trials.calls) == 5 and len({frozenset(c) for c in trials.calls}) == 5
    # One group: keeping it in float would not be INT8, so there is nothing to search.
    single = FakeTrials({"a": 2.0})
    out = search_keep_float(groups("a"), single, REF, GATED, 0.5, progress=lambda s: None)
    assert not out.passed and out.kept == () and single.calls == [set()]


class Clock:
    """A clock that each trial moves on by ``step`` seconds."""

    def __init__(self, trials: FakeTrials, step: float) -> None:
        self.trials, self.step = trials, step

    def __call__(self) -> float:
        return len(self.trials.calls) * self.step


@pytest.mark.parametrize("budget_trials, expect_calls, expect_ranked, expect_kept", [
    (1, 1, 0, []),                  # out of time after the all-INT8 trial: it always runs, nothing after it
    (2, 2, 0, ["stem"]),            # one input-side trial, then out of time before the second
    (5, 5, 2, ["stem", "early"]),   # ranking stopped after two parts: those two are reported, costliest first
])
def test_gate_search_stops_when_its_budget_is_spent(budget_trials, expect_calls, expect_ranked, expect_kept):
    trials = FakeTrials({"stem": 0.2, "early": 0.1, "late": 0.1, "head": 3.0})
    lines: list[str] = []
    out = search_keep_float(groups("stem", "early", "late", "head"), trials, REF, GATED, 0.5,
                            progress=lines.append, budget_s=budget_trials * 60.0, clock=Clock(trials, 60.0))
    assert not out.passed and out.stopped_by_budget
    assert len(trials.calls) == expect_calls and len(out.ranked) == expect_ranked
    assert [g.name for g in out.kept] == expect_kept     # what the last trial, whose metrics these are, kept
    assert {n for g in out.kept for n in g.nodes} in trials.calls
    assert out.all_int8_drop == pytest.approx(3.4) and out.worst_drop > 0.5
    assert [r.worst_drop for r in out.ranked] == sorted((r.worst_drop for r in out.ranked), reverse=True)
    assert [r.group.name for r in out.ranked] == ["stem", "early"][:expect_ranked]   # costliest first
    assert f"budget of {budget_trials:g} min was spent after {expect_calls} trials" in lines[-1]


def test_gate_search_within_its_budget_is_unchanged_and_says_where_it_is():
    trials = FakeTrials({"stem": 0.1, "early": 0.1, "late": 0.1, "head": 3.0})
    lines: list[str] = []
    out = search_keep_float(groups("stem", "early", "late", "head"), trials, REF, GATED, 0.5,
                            progress=lines.append, budget_s=600.0, clock=Clock(trials, 60.0))
    assert out.passed and not out.stopped_by_budget and len(trials.calls) == 8
    assert [g.name for g in out.kept] == ["head"]
    assert any(line.startswith("INT8 sensitivity 4/4 (6.0 of 10 min)") for line in lines), lines
    assert lines[-1].startswith("INT8 trial 8 (7.0 of 10 min): head in float"), lines


def test_a_gate_that_cannot_mean_much_is_said_up_front():
    import numpy as np

    labels = np.array([False] * 16 + [True] * 32)          # the demo: 512 pairs, 0.2 points each
    assert gate_warning(labels, REF, GATED, 0.5) is None
    small = np.array([False] * 3 + [True] * 4)              # 12 pairs: one reordered pair is 8.3 points
    text = gate_warning(small, REF, GATED, 0.5)
    assert "3 normal and 4 defective" in text and "8.33 points" in text and "--data" in text
    weak = dict(REF, image_auroc=0.55, pro=0.41)
    text = gate_warning(labels, weak, GATED, 0.5)
    assert "near chance" in text and "image auroc 0.550" in text and "pro 0.410" in text
    assert "pixel" not in text and gate_warning(labels, weak, ("pixel_auroc",), 0.5) is None
    # The CPU flavour gates AP too; an AP of 0.3 (magnetic tile's) is a fine model, not one near chance.
    assert gate_warning(labels, dict(REF, ap=0.3), ("image_auroc", "pixel_auroc", "pro", "ap"), 0.5) is None


def _conv_model(weights: list[str]):
    nodes, inits = [], []
    x = "x"
    for i, w in enumerate(weights):
        nodes.append(helper.make_node("Conv", [x, w], [f"y{i}"], name=f"conv{i}"))
        inits.append(helper.make_tensor(w, TensorProto.FLOAT, [1, 1, 1, 1], [1.0]))
        x = f"y{i}"
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 4, 4])],
                              [helper.make_tensor_value_info(x, TensorProto.FLOAT, None)], inits)
    return helper.make_model(graph)


def test_conv_groups_cover_every_conv_once_by_module():
    weights = ["prn.encoder._conv_stem.weight"] + [f"prn.encoder._blocks.{b}._project_conv.weight"
                                                   for b in range(6)]
    weights += ["prn.fuse_features.paths.0.0.weight", "prn.attention.0.qkv.weight", "prn.attention.1.qkv.weight",
                "prn.decoder.stages.0.up.0.weight", "prn.decoder.head.1.weight"]
    found = conv_groups(_conv_model(weights))
    names = [g.name for g in found]
    assert names == ["encoder.stem", "encoder.blocks[early]", "encoder.blocks[middle]", "encoder.blocks[late]",
                     "fuse_features", "attention", "decoder.stages", "decoder.head"]
    all_nodes = [n for g in found for n in g.nodes]
    assert sorted(all_nodes) == sorted(f"conv{i}" for i in range(len(weights)))
    assert found[1].modules == ("encoder._blocks.0._project_conv", "encoder._blocks.1._project_conv")


@pytest.mark.parametrize(("version", "precision", "expected"), [
    ("10.3.0.30", "fp32", (False, False, False)),
    ("10.3.0.30", "fp16", (False, True, False)),
    ("10.3.0.30", "int8", (False, True, True)),      # explicit Q/DQ still needs the INT8 flag on 10.x
    ("11.4.0", "fp16", (True, False, False)),        # strongly typed: the ONNX decides
    ("11.4.0", "int8", (True, False, False)),
])
def test_build_settings_per_tensorrt_version(version, precision, expected):
    s = build_settings(version, precision)
    assert (s.strongly_typed, s.fp16_flag, s.int8_flag) == expected


def test_old_or_unreadable_tensorrt_versions_are_refused():
    with pytest.raises(PRNError, match="too old"):
        tensorrt_major("8.6.1")
    with pytest.raises(PRNError, match="cannot read"):
        tensorrt_major("banana")
    with pytest.raises(PRNError, match="unknown precision"):
        build_settings("10.3", "int4")


def _sidecar(**overrides) -> dict:
    info = {"tensorrt_version": "10.3.0", "gpu_name": "Orin", "compute_capability": "8.7", "precision": "fp16",
            "checkpoint_sha256": "ab" * 32, "plugin_library": "/x/libprn_edge_plugins.so", "input_size": 256,
            "threshold": 0.4, "onnx": "model.fp16.trt.onnx", "built_at": "2026-11-29T00:00:00"}
    info.update(overrides)
    return info


def test_sidecar_round_trip_and_compatibility(tmp_path):
    engine = tmp_path / "model.fp16.engine"
    engine.write_bytes(b"plan")
    path = ts.write_sidecar(engine, _sidecar())
    assert path.name == "model.fp16.engine.json"
    record = ts.read_sidecar(engine)
    assert record["format"] == ts.SIDECAR_FORMAT and record["compute_capability"] == "8.7"
    ts.check_engine_compatible(record, engine, tensorrt_version="10.3.0", gpu_name="Jetson AGX Orin",
                               compute_capability="8.7")   # another name, same capability: fine
    with pytest.raises(PRNError, match=r"built with TensorRT 10\.3\.0, this is TensorRT 11\.4"):
        ts.check_engine_compatible(record, engine, tensorrt_version="11.4", gpu_name="Orin", compute_capability="8.7")
    with pytest.raises(PRNError, match=r"built for Orin \(compute capability 8\.7\), this GPU is H200 \(9\.0\)"):
        ts.check_engine_compatible(record, engine, tensorrt_version="10.3.0", gpu_name="H200", compute_capability="9.0")


def test_bad_sidecars_are_one_line_errors(tmp_path):
    engine = tmp_path / "model.int8.engine"
    with pytest.raises(PRNError, match="no sidecar"):
        ts.read_sidecar(engine)
    ModelFolder.sidecar(engine).write_text("{not json")
    with pytest.raises(PRNError, match="unreadable engine sidecar"):
        ts.read_sidecar(engine)
    ModelFolder.sidecar(engine).write_text(json.dumps({"format": "other"}))
    with pytest.raises(PRNError, match="not a PRN Edge engine sidecar"):
        ts.read_sidecar(engine)
    ModelFolder.sidecar(engine).write_text(json.dumps({"format": ts.SIDECAR_FORMAT, "precision": "int8"}))
    with pytest.raises(PRNError, match="missing .*tensorrt_version"):
        ts.read_sidecar(engine)
    with pytest.raises(PRNError, match="missing"):
        ts.write_sidecar(engine, {"precision": "int8"})


def test_plugin_library_lookup(tmp_path, monkeypatch):
    monkeypatch.delenv(ts.PLUGIN_LIBRARY_ENV, raising=False)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(PRNError, match="no such plugin library"):
        ts.find_plugin_library(tmp_path / "missing.so")
    lib = tmp_path / "libprn_edge_plugins.so"
    lib.write_bytes(b"\x7fELF")
    monkeypatch.setenv(ts.PLUGIN_LIBRARY_ENV, str(lib))
    assert ts.find_plugin_library() == lib.resolve()

    class FakeRegistry:
        def __init__(self, handle):
            self.handle, self.loaded = handle, []

        def load_library(self, path):
            self.loaded.append(path)
            return self.handle

    class FakeTRT:
        def __init__(self, handle):
            self.registry = FakeRegistry(handle)

        def get_plugin_registry(self):
            return self.registry

    trt = FakeTRT(handle=object())
    assert ts.load_plugins(trt) == lib.resolve()
    assert trt.registry.loaded == [str(lib.resolve())]
    with pytest.raises(PRNError, match="could not load the plugin library"):
        ts.load_plugins(FakeTRT(handle=None))


def test_the_input_side_reaches_through_the_features_matched_against_the_prototypes():
    """The convolutions upstream of a ``prn.ProtoResidual`` call's features are found (not those
    feeding only the decoder, nor the prototype inputs), and the search's input side then spans
    every group up to the last one holding them (at least two)."""
    def conv(name, x, y):
        return helper.make_node("Conv", [x, f"{name}.w"], [y], name=name)

    nodes = [conv("stem", "x", "a"), conv("early", "a", "b"), conv("middle", "b", "c"),
             helper.make_node("ProtoResidual", ["c", "protos", "norms"], ["r"], domain="prn", name="match"),
             conv("late", "c", "d"), conv("fuse", "r", "e"), conv("head", "d", "f")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 4, 4])],
                              [helper.make_tensor_value_info(t, TensorProto.FLOAT, None) for t in ("e", "f")])
    model = helper.make_model(graph)
    matched = matched_feature_convs(model)
    assert matched == {"stem", "early", "middle"}
    found = groups("stem", "early", "middle", "late", "head")
    as_nodes = [ConvGroup(g.name, (g.name,), g.modules) for g in found]
    assert input_side_limit(as_nodes, matched) == 3
    assert input_side_limit(as_nodes, {"stem"}) == 2             # never fewer than the stem and early blocks
    assert input_side_limit(as_nodes, set()) == 2                 # a model without prototype calls
    # The search then keeps stem, early, middle in float before it ranks anything.
    trials = FakeTrials({"stem": 3.0, "early": 1.0, "middle": 2.0, "late": 0.2, "head": 0.1})
    out = search_keep_float(found, trials, REF, GATED, 0.5, progress=lambda s: None,
                            prefix_limit=input_side_limit(as_nodes, matched))
    assert out.passed and [g.name for g in out.kept] == ["stem", "early", "middle"] and out.ranked == ()
