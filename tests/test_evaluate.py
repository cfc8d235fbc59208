"""``prn-eval``: the predictor contract, the evaluation (no seen anomaly scored), the report.

Fast by construction: the real-model run uses a tiny random PRN on the first image of each
type of the real bottle folder (``--limit 1``); the end-to-end plumbing check uses an
"oracle" predictor that needs no network at all.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import json
import subprocess
import sys
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")
cv2 = pytest.importorskip("cv2")
pytest.importorskip("matplotlib")
pytest.importorskip("sklearn")

from conftest import REPO  # noqa: E402
from test_imports import run_blocked  # noqa: E402

from prn_edge.checkpoint import file_sha256, save_checkpoint  # noqa: E402
from prn_edge.config import get_config  # noqa: E402
from prn_edge.data.mvtec import load_sample, scan_category  # noqa: E402
from prn_edge.errors import PRNError  # noqa: E402
from prn_edge.eval import cli  # noqa: E402
from prn_edge.eval.evaluate import (  # noqa: E402
    EvaluationWarning,
    evaluate,
    seen_anomalies_from,
    select_samples,
)
from prn_edge.contract.engine import Engine  # noqa: E402
from prn_edge.runtime.backends.torch import TorchEngine  # noqa: E402
from prn_edge.eval.report import REPORT_FILES, write_report  # noqa: E402
from prn_edge.model import PRN  # noqa: E402
from prn_edge.model.backbones import build_backbone  # noqa: E402

# The first file of two types: with --limit 1 they would be evaluated were they not excluded.
SEEN = ["test/broken_large/000.png", "test/contamination/000.png"]
METRIC_KEYS = {"image_auroc", "pixel_auroc", "pro", "ap"}


def tiny_prn(**overrides) -> PRN:
    torch.manual_seed(0)
    model = PRN(get_config("edge", **overrides), backbone=build_backbone("efficientnet_lite0", weights="none"))
    for bank in model.banks:
        bank.set(torch.rand(2, bank.dim))
    return model.eval()


@pytest.fixture(scope="module")
def model() -> PRN:
    return tiny_prn()


@pytest.fixture(scope="module")
def checkpoint(model, tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "checkpoint.pt"
    save_checkpoint(path, model, threshold=0.5,
                    metadata={"data": {"category": "bottle", "seen_anomalies": SEEN}})
    return path


@pytest.fixture(scope="module")
def bottle(bottle_dir):
    return scan_category(bottle_dir)


def run_main(argv):
    """``prn-eval`` in-process: (exit status, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = cli.main([str(a) for a in argv])
        except SystemExit as exc:  # argparse (--help, usage errors)
            code = exc.code
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def cli_run(checkpoint, bottle_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("eval") / "report"
    torch.set_num_threads(min(torch.get_num_threads(), 2))
    code, stdout, stderr = run_main(["--checkpoint", checkpoint, "--data", bottle_dir, "--out", out,
                                     "--limit", 1, "--batch-size", 4, "--no-progress"])
    assert code == 0, stderr
    return out, stdout, stderr


# --------------------------------------------------------------------------- the real CLI run

def test_cli_metrics_json(cli_run, checkpoint):
    out, stdout, _ = cli_run
    assert sorted(p.name for p in out.iterdir()) == sorted(REPORT_FILES)  # no temporaries left
    data = json.loads((out / "metrics.json").read_text())
    for key in METRIC_KEYS | {"pro_fpr_limit", "images_per_second"}:
        assert isinstance(data[key], float), key
    for key in METRIC_KEYS:
        assert 0.0 <= data[key] <= 1.0, (key, data[key])
    assert data["pro_fpr_limit"] == 0.3
    assert data["images_per_second"] > 0
    assert data["num_images"] == 4 and data["limit_per_type"] == 1  # 1 good + 3 defect types
    assert data["excluded"] == sorted(SEEN)
    assert data["checkpoint_sha256"] == file_sha256(checkpoint)
    assert data["predictor"] == "prn:edge/efficientnet_lite0" and data["category"] == "bottle"
    assert set(data["per_type"]) == {"broken_large", "broken_small", "contamination"}
    for name, values in data["per_type"].items():
        assert METRIC_KEYS <= set(values), name
        assert all(0.0 <= values[k] <= 1.0 for k in METRIC_KEYS), name
    # The seen anomalies are absent; the next file of their type took their place.
    evaluated = [item["path"] for item in data["per_image"]]
    assert not set(evaluated) & set(SEEN)
    assert evaluated == ["test/broken_large/001.png", "test/broken_small/000.png",
                         "test/contamination/001.png", "test/good/000.png"]
    assert "PRO@0.3" in stdout and "overall" in stdout and "images/s" in stdout


def test_cli_report_md_and_figures(cli_run):
    out, _, _ = cli_run
    text = (out / "report.md").read_text()
    assert "PRO FPR limit 0.3" in text and "FPR <= 0.3" in text
    for path in SEEN:
        assert f"`{path}`" in text  # the exclusions are stated
    assert "100.0 / 99.4 / 97.0 / 92.3" in text  # the paper's bottle numbers, for reference
    assert "quick check" in text  # --limit is flagged
    for name in ("roc.png", "pr.png", "cases.png"):
        image = cv2.imread(str(out / name))
        assert image is not None and image.ndim == 3 and min(image.shape[:2]) > 100, name


# --------------------------------------------------------------------------- engines

def test_torch_engine_matches_the_model():
    # 128x128 keeps this cheap; the conversion under test does not depend on the size.
    model = tiny_prn(image_size=128, decoder_resolution=32)
    predictor = TorchEngine(model)
    assert isinstance(predictor, Engine) and predictor.image_size == 128
    images = np.random.default_rng(0).integers(0, 256, (1, 128, 128, 3), dtype=np.uint8)
    model.train()  # the predictor must score in eval mode regardless
    maps, scores = predictor.predict(images)
    assert not model.training
    assert maps.dtype == np.float32 and maps.shape == (1, 128, 128)
    assert scores.dtype == np.float32 and scores.shape == (1,)
    with torch.no_grad():
        ref = model(torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0)
    np.testing.assert_array_equal(maps, ref.anomaly_map[:, 0].numpy())
    np.testing.assert_array_equal(scores, ref.score.numpy())
    with pytest.raises(PRNError, match="uint8"):
        predictor.predict(images.astype(np.float32))
    with pytest.raises(PRNError, match="unknown device"):
        TorchEngine(model, device="warp-drive")
    if not torch.cuda.is_available():
        with pytest.raises(PRNError, match="no usable CUDA"):
            TorchEngine(model, device="cuda")


class OraclePredictor(Engine):
    """Maps = ground-truth masks, scores = labels: a perfect scorer, found by image content.

    Looking samples up by their pixels (not by call order) also checks that :func:`evaluate`
    puts every map back beside its own mask.
    """

    name = "oracle"
    image_size = 256

    def __init__(self, samples):
        self.truth = {}
        for sample in samples:
            image, mask = load_sample(sample, self.image_size)
            self.truth[hashlib.sha1(image.tobytes()).hexdigest()] = (mask, sample.label)
        self.seen: list[str] = []

    def _predict(self, images):
        found = [self.truth[hashlib.sha1(image.tobytes()).hexdigest()] for image in images]
        maps = np.stack([mask for mask, _ in found]).astype(np.float32)
        scores = np.array([label for _, label in found], dtype=np.float32)
        return maps, scores


def test_oracle_scores_one_on_every_metric(bottle):
    samples, _ = select_samples(bottle, SEEN, limit_per_type=3)
    oracle = OraclePredictor(samples)  # knows only the samples that should be scored
    result = evaluate(oracle, bottle, exclude=SEEN, batch_size=5, progress=False, limit_per_type=3)
    assert result.num_images == 12 and not set(result.paths) & set(SEEN)
    assert result.excluded == sorted(SEEN)
    assert result.maps.shape == (12, 256, 256) and result.maps.dtype == np.float32
    for m in [result.metrics, *result.per_type.values()]:
        # PRO sums per-pixel fractions: exact up to float rounding (~1e-14).
        assert (m.image_auroc, m.pixel_auroc, m.pro, m.ap) == pytest.approx((1.0,) * 4, abs=1e-9)
    assert set(result.per_type) == {"broken_large", "broken_small", "contamination"}
    # 3 batches of 5, 5, 2: the speed leaves out the first (warm-up) batch.
    assert len(result.batch_seconds) == 3 and result.warmup_excluded
    assert result.images_per_second == pytest.approx(7 / sum(result.batch_seconds[1:]))


class BrokenPredictor(Engine):
    name = "broken"
    image_size = 256

    def __init__(self, bad: str):
        self.bad = bad

    def _predict(self, images):
        b = len(images)
        if self.bad == "shape":
            return np.zeros((b, 1, 256, 256), np.float32), np.zeros(b, np.float32)
        return np.full((b, 256, 256), np.nan, np.float32), np.zeros(b, np.float32)


@pytest.mark.parametrize("bad, match", [("shape", "the contract is maps"), ("nan", "NaN")])
def test_a_predictor_breaking_the_contract_is_a_clear_error(bottle, bad, match):
    with pytest.raises(PRNError, match=match):
        evaluate(BrokenPredictor(bad), bottle, batch_size=2, progress=False, limit_per_type=1)


# --------------------------------------------------------------------------- seen anomalies

def test_seen_anomalies_from_a_matching_record(bottle):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a matching record warns about nothing
        assert seen_anomalies_from({"data": {"category": "bottle", "seen_anomalies": SEEN}}, bottle) == set(SEEN)
        assert seen_anomalies_from({"data": {"category": "bottle", "seen_anomalies": []}}, bottle) == set()


@pytest.mark.parametrize("metadata, match", [
    ({}, "records no seen anomalies"),
    ({"data": "bottle"}, "records no seen anomalies"),
    ({"data": {"category": "carpet", "seen_anomalies": SEEN}}, "trained on category 'carpet'"),
])
def test_seen_anomalies_without_a_usable_record_warn(bottle, metadata, match):
    with pytest.warns(EvaluationWarning, match=match):
        assert seen_anomalies_from(metadata, bottle) == set()


@pytest.mark.parametrize("seen, match", [
    (["test/broken_large/999.png"], "not a test image of this folder"),
    (["test/good/000.png"], "is a good image"),
    ("test/good/000.png", "must be a list"),
])
def test_seen_anomalies_that_do_not_fit_the_folder_are_errors(bottle, seen, match):
    with pytest.raises(PRNError, match=match):
        seen_anomalies_from({"data": {"category": "bottle", "seen_anomalies": seen}}, bottle)


def test_unknown_exclusions_and_limits_are_errors(bottle):
    with pytest.raises(PRNError, match="not a test image"):
        select_samples(bottle, ["test/broken_large/0.png"])
    with pytest.raises(PRNError, match="positive integer"):
        select_samples(bottle, (), limit_per_type=0)
    samples, paths = select_samples(bottle, SEEN, limit_per_type=2)
    assert len(samples) == 8 and not set(paths) & set(SEEN)


def test_write_report_refuses_a_file_as_folder(bottle, tmp_path):
    samples, _ = select_samples(bottle, (), limit_per_type=1)
    result = evaluate(OraclePredictor(samples), bottle, progress=False, limit_per_type=1)
    (tmp_path / "file").write_text("x")
    with pytest.raises(PRNError, match="not a folder"):
        write_report(result, tmp_path / "file")
    written = write_report(result, tmp_path / "new" / "out")
    assert [p.name for p in written] == list(REPORT_FILES)


# --------------------------------------------------------------------------- CLI errors

def _bad_inputs(tmp_path, checkpoint, bottle_dir):
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    return {
        "missing checkpoint": (["--checkpoint", tmp_path / "nope.pt", "--data", bottle_dir], "no such checkpoint"),
        "corrupt checkpoint": (["--checkpoint", garbage, "--data", bottle_dir], "garbage.pt"),
        "missing data": (["--checkpoint", checkpoint, "--data", tmp_path / "nodata"], "does not exist"),
        "not a category": (["--checkpoint", checkpoint, "--data", tmp_path], "training folder"),
        "bad batch size": (["--checkpoint", checkpoint, "--data", bottle_dir, "--batch-size", "0"],
                           "positive integer"),
        "out under a file": (["--checkpoint", checkpoint, "--data", bottle_dir], "not a folder"),
    }


@pytest.mark.parametrize("case", ["missing checkpoint", "corrupt checkpoint", "missing data", "not a category",
                                  "bad batch size", "out under a file"])
def test_cli_bad_input_is_one_line_and_exit_2(case, tmp_path, checkpoint, bottle_dir):
    argv, match = _bad_inputs(tmp_path, checkpoint, bottle_dir)[case]
    out = tmp_path / "a_file" / "report" if case == "out under a file" else tmp_path / "report"
    code, stdout, stderr = run_main([*argv, "--out", out, "--no-progress"])
    assert code == 2
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("prn-eval: error:"), stderr
    assert match in lines[0]
    assert not out.exists() and stdout == ""


def test_cli_seen_anomaly_missing_from_the_folder(model, tmp_path, bottle_dir):
    path = tmp_path / "other.pt"
    save_checkpoint(path, model, metadata={"data": {"category": "bottle",
                                                    "seen_anomalies": ["test/broken_large/500.png"]}})
    out = tmp_path / "report"
    code, _, stderr = run_main(["--checkpoint", path, "--data", bottle_dir, "--out", out, "--limit", 1])
    assert code == 2 and len(stderr.strip().splitlines()) == 1
    assert "test/broken_large/500.png" in stderr and not out.exists()


def test_cli_help():
    proc = subprocess.run([sys.executable, "-m", "prn_edge.eval.cli", "--help"], cwd=REPO,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    for flag in ("--checkpoint", "--baseline", "--data", "--out", "--device", "--batch-size", "--limit"):
        assert flag in proc.stdout
    assert "prn-eval" in proc.stdout


def test_evaluation_modules_import_without_torch():
    # ONNX / TensorRT backends will be evaluated where torch is not installed.
    proc = run_blocked("""
        import prn_edge.eval.evaluate, prn_edge.eval.report
        from prn_edge.eval.cli import main
        try:
            main(["--help"])
        except SystemExit as exc:
            assert exc.code == 0
        heavy = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
        assert not heavy, heavy
    """)
    assert proc.returncode == 0, proc.stderr
    assert "--checkpoint" in proc.stdout


# --------------------------------------------------------------------------- the baseline

@pytest.mark.parametrize("extra, match", [
    (["--seen-from", "CKPT"], "--seen-from is for --baseline only"),
    (["--baseline", "patchcore"], "not allowed with argument"),
])
def test_cli_checkpoint_option_conflicts(extra, match, tmp_path, checkpoint, bottle_dir):
    extra = [str(checkpoint) if a == "CKPT" else a for a in extra]
    out = tmp_path / "report"
    code, _, stderr = run_main(["--checkpoint", checkpoint, "--data", bottle_dir, "--out", out, *extra])
    assert code == 2 and len(stderr.strip().splitlines()) == 1 and match in stderr, stderr
    assert not out.exists()


def test_cli_baseline_on_a_gpu_is_refused(tmp_path, bottle_dir):
    out = tmp_path / "report"
    code, _, stderr = run_main(["--baseline", "patchcore", "--device", "cuda", "--data", bottle_dir, "--out", out])
    assert code == 2 and "CPU only" in stderr and not out.exists()


def test_cli_baseline_same_images_as_the_checkpoint(monkeypatch, tmp_path, checkpoint, bottle_dir):
    patchcore = pytest.importorskip("prn_edge.baseline.patchcore")
    original = patchcore.PatchCorePredictor.fit_category.__func__

    def fit_on_two(cls, category, **kwargs):  # the real fit, on 2 normal images to stay fast
        return original(cls, dataclasses.replace(category, train=category.train[:2]), **kwargs)

    monkeypatch.setattr(patchcore.PatchCorePredictor, "fit_category", classmethod(fit_on_two))
    out = tmp_path / "report"
    code, stdout, stderr = run_main(["--baseline", "patchcore", "--seen-from", checkpoint, "--data", bottle_dir,
                                     "--out", out, "--limit", 1, "--no-progress"])
    assert code == 0, stderr
    data = json.loads((out / "metrics.json").read_text())
    assert data["predictor"] == "patchcore" and "checkpoint_sha256" not in data
    assert data["excluded"] == sorted(SEEN) and data["num_images"] == 4
    assert not {item["path"] for item in data["per_image"]} & set(SEEN)
    assert data["predictor_info"]["fit"]["images"] == 2
    assert data["predictor_info"]["seen_from_sha256"] == file_sha256(checkpoint)
    assert all(0.0 <= data[k] <= 1.0 for k in METRIC_KEYS)
    assert "patchcore" in stdout
