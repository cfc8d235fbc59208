"""INT8 calibration methods: MinMax, percentile and entropy ranges, all symmetric S8.

On the small 128-px model of conftest.small_checkpoint with a few seeded random images: what is
checked is the ranges and the Q/DQ layout each method writes, not accuracy (that is
benchmarks/results/int8_calibration.md, on trained models).
"""
from __future__ import annotations

import logging

import numpy as np
import pytest

pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

from conftest import small_checkpoint  # noqa: E402

from prn_edge.errors import PRNError  # noqa: E402
from prn_edge.export import int8 as int8_module  # noqa: E402
from prn_edge.export.int8 import (CALIBRATION_METHODS, Calibration, _Reader, calibrate,  # noqa: E402
                                  check_calibration_method, describe_calibration, quantize_int8)


@pytest.fixture(scope="module")
def fp32(tmp_path_factory):
    import torch

    from prn_edge.export.onnx_export import export_onnx

    folder = tmp_path_factory.mktemp("int8cal")
    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        export_onnx(small_checkpoint(folder / "checkpoint.pt", seed=3), folder / "model.onnx")
    finally:
        torch.set_num_threads(prev)
    return folder / "model.onnx"


@pytest.fixture(scope="module")
def images():
    # 6 images: a last batch of 2 beside one of 4, as with any count that is not a multiple of 4.
    return np.random.default_rng(0).integers(0, 256, (6, 128, 128, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def calibrations(fp32, images) -> dict[str, Calibration]:
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(int8_module, "HISTOGRAM_BINS", 512)   # ORT's entropy search is a Python loop per bin
        return {m: calibrate(fp32, images, method=m, threads=1) for m in CALIBRATION_METHODS}


def magnitude(calibration: Calibration) -> dict[str, float]:
    return {t: max(abs(low), abs(high)) for t, (low, high) in calibration.ranges.items()}


def activation_qdq(model):
    """(scale, zero point) arrays of every activation QuantizeLinear."""
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in model.graph.initializer}
    return [(inits[n.input[1]], inits[n.input[2]]) for n in model.graph.node
            if n.op_type == "QuantizeLinear" and n.input[0] not in inits]


@pytest.mark.parametrize("method", CALIBRATION_METHODS)
def test_each_method_writes_a_symmetric_int8_model_that_runs(method, fp32, images, calibrations, tmp_path):
    import onnxruntime as ort

    path = quantize_int8(fp32, tmp_path / f"{method}.onnx", calibrations[method])
    model = onnx.load(path)
    onnx.checker.check_model(model)
    qdq = activation_qdq(model)
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    assert len(qdq) >= len(convs) // 2 > 0
    for scale, zero in qdq:
        assert zero.dtype == np.int8 and not zero.any(), "TensorRT needs symmetric S8: zero point 0"
        assert scale.size == 1 and scale > 0
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    amap, score = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"]).run(
        None, {"image": images[:2]})
    assert np.isfinite(amap).all() and np.isfinite(score).all()
    # The scales are the ranges given: max |range| / 127.
    scales = sorted(float(s) for s, _ in qdq)
    expected = sorted(v / 127 for v in magnitude(calibrations[method]).values())
    assert all(np.isclose(s, expected, rtol=1e-5).any() for s in scales)


def test_percentile_ranges_are_no_wider_than_minmax(calibrations):
    minmax, percentile = magnitude(calibrations["minmax"]), magnitude(calibrations["percentile"])
    assert minmax.keys() == percentile.keys()
    assert all(percentile[t] <= minmax[t] * (1 + 1e-6) for t in minmax)
    assert sum(percentile[t] < 0.999 * minmax[t] for t in minmax) > len(minmax) // 4   # outliers clipped
    assert all(magnitude(calibrations["entropy"])[t] <= minmax[t] * (1 + 1e-6) for t in minmax)


def test_a_lower_percentile_clips_more(fp32, images, calibrations, monkeypatch):
    monkeypatch.setattr(int8_module, "HISTOGRAM_BINS", 512)   # the same bins as the fixture's
    low = magnitude(calibrate(fp32, images, method="percentile", percentile=99.0, threads=1))
    high = magnitude(calibrations["percentile"])             # 99.999
    assert all(low[t] <= high[t] * (1 + 1e-6) for t in high) and sum(low[t] < high[t] for t in high) > 0


def test_minmax_is_what_ort_quantize_static_computes_itself(fp32, images, calibrations, tmp_path):
    """The export's MinMax models are unchanged: calibrating once and passing the ranges in gives the
    scales ORT's own MinMax pass over the same images gives."""
    from onnxruntime import quantization as q

    ours = quantize_int8(fp32, tmp_path / "ours.onnx", calibrations["minmax"])
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        q.quantize_static(str(fp32), str(tmp_path / "ort.onnx"), _Reader(images, "image"),
                          quant_format=q.QuantFormat.QDQ, per_channel=True, activation_type=q.QuantType.QInt8,
                          weight_type=q.QuantType.QInt8, op_types_to_quantize=["Conv"],
                          calibrate_method=q.CalibrationMethod.MinMax,
                          extra_options={"ActivationSymmetric": True, "WeightSymmetric": True})
    finally:
        root.setLevel(level)
    a, b = activation_qdq(onnx.load(ours)), activation_qdq(onnx.load(tmp_path / "ort.onnx"))
    np.testing.assert_allclose(sorted(float(s) for s, _ in a), sorted(float(s) for s, _ in b), rtol=1e-6)


def test_weights_use_seven_bits_so_x86_cpus_without_vnni_do_not_saturate(fp32, calibrations, tmp_path):
    """ORT's AVX2 kernels sum pairs of u8 x s8 products in 16 bits (vpmaddubsw): with 8-bit weights
    (255 * 127 * 2 > 32767) they saturate, which cost the demo model 5.3 points of PRO on such a CPU.
    Every quantized weight must stay in [-64, 64] (255 * 64 * 2 <= 32767), and that range must be used."""
    from onnx import numpy_helper

    model = onnx.load(quantize_int8(fp32, tmp_path / "q.onnx", calibrations["minmax"]))
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    weights = [inits[n.input[0]] for n in model.graph.node
               if n.op_type == "DequantizeLinear" and n.input[0] in inits and inits[n.input[0]].ndim == 4]
    assert len(weights) == sum(n.op_type == "Conv" for n in model.graph.node) > 0
    assert all(w.dtype == np.int8 and w.min() >= -64 and w.max() <= 64 for w in weights)
    assert max(max(-int(w.min()), int(w.max())) for w in weights) == 64   # the 7 bits are used, not fewer


def test_images_are_calibrated_with_the_method_asked(fp32, images, calibrations, tmp_path, monkeypatch):
    seen = []
    real = int8_module.calibrate
    monkeypatch.setattr(int8_module, "calibrate", lambda *a, **k: seen.append(k) or real(*a, **k))
    path = quantize_int8(fp32, tmp_path / "p.onnx", images, calibration_method="percentile", percentile=99.9,
                         threads=1)
    assert seen[0]["method"] == "percentile" and seen[0]["percentile"] == 99.9
    assert onnx.load(path).graph.node


@pytest.mark.parametrize("method, percentile, needle", [
    ("kl", None, "--calib-method expects one of minmax, percentile, entropy, got 'kl'"),
    ("minmax", 99.9, "--calib-percentile applies to --calib-method percentile only"),
    ("percentile", 0, "--calib-percentile"),
    ("percentile", 101, "--calib-percentile"),
    ("percentile", float("nan"), "--calib-percentile"),
])
def test_bad_methods_are_one_line_errors(method, percentile, needle, fp32, images, tmp_path):
    for call in (lambda: check_calibration_method(method, percentile),
                 lambda: quantize_int8(fp32, tmp_path / "x.onnx", images, calibration_method=method,
                                       percentile=percentile)):
        with pytest.raises(PRNError) as info:
            call()
        assert needle in str(info.value) and len(str(info.value).splitlines()) == 1
    assert not (tmp_path / "x.onnx").exists()


def test_a_calibration_for_other_activations_is_refused(fp32, calibrations, tmp_path):
    with pytest.raises(PRNError, match="made for s8 activations, not u8"):
        quantize_int8(fp32, tmp_path / "u8.onnx", calibrations["minmax"], activations="u8")


def test_the_export_rejects_an_unknown_method_before_any_work(tmp_path, capsys):
    from prn_edge.api import export
    from prn_edge.export.cli import main

    with pytest.raises(PRNError, match="--calib-method"):
        export(tmp_path / "checkpoint.pt", int8=True, calib_method="kl")
    for args in (["--calib-method", "kl"], ["--calib-method", "minmax", "--calib-percentile", "99"]):
        try:
            rc = main([str(tmp_path / "checkpoint.pt"), "--int8", "--out", str(tmp_path / "out"), *args])
        except SystemExit as exc:   # argparse usage errors
            rc = exc.code
        err = capsys.readouterr().err.strip()
        assert rc == 2 and len(err.splitlines()) == 1 and "--calib-" in err, err
    assert not (tmp_path / "out").exists() and not (tmp_path / "export").exists()


class _Scores:
    """The export's evaluation, without images: every INT8 trial scores the same."""

    def onnx(self, precision, path, *, quiet=False):
        assert path.is_file()
        return {"file": path.name, "image_auroc": 0.9, "pixel_auroc": 0.9, "pro": 0.9, "ap": 0.5}


@pytest.mark.parametrize("method, percentile", [("percentile", 99.99), ("entropy", None), ("minmax", None)])
def test_the_report_records_the_calibration(method, percentile, fp32, images, tmp_path, monkeypatch):
    from types import SimpleNamespace

    monkeypatch.setattr(int8_module, "HISTOGRAM_BINS", 512)

    from prn_edge.export.pipeline import ExportOptions, _int8

    options = ExportOptions(checkpoint=tmp_path / "c.pt", out=tmp_path, int8=True, calib_method=method,
                            calib_percentile=percentile, threads=1)
    prep = SimpleNamespace(calibration=images, calibration_files=[f"{i}.png" for i in range(6)])
    reference = {"image_auroc": 0.9, "pixel_auroc": 0.9, "pro": 0.9, "ap": 0.5}
    record, passed = _int8(options, prep, fp32, tmp_path / "model.int8.onnx", _Scores(), reference, lambda s: None)
    assert passed and record["trials"] == 1
    calibration = record["calibration"]
    assert calibration["method"] == method and calibration["images"] == 6 and calibration["seconds"] >= 0
    assert calibration.get("percentile") == percentile
    assert ("histogram_bins" in calibration) == (method != "minmax")
    assert record["all_int8_delta_points"] == {"image_auroc": 0.0, "pixel_auroc": 0.0, "pro": 0.0, "ap": 0.0}
    # export_report.md names the method used (a report from before --calib-method: MinMax).
    assert describe_calibration(calibration) == {
        "percentile": "99.99th-percentile ranges (512-bin histograms)",
        "entropy": "entropy ranges (least KL divergence, 512-bin histograms)",
        "minmax": "MinMax ranges"}[method]
    assert describe_calibration({"images": 6, "seed": 0}) == "MinMax ranges"


def test_u8_activations_keep_their_asymmetric_ranges(fp32, images, tmp_path):
    """benchmarks/export.py's CPU form: U8 activations with zero points, not a symmetric range."""
    path = quantize_int8(fp32, tmp_path / "u8.onnx", images[:4], activations="u8", threads=1)
    zeros = [zero for _, zero in activation_qdq(onnx.load(path))]
    assert zeros and all(z.dtype == np.uint8 for z in zeros) and any(z != 128 for z in zeros)
