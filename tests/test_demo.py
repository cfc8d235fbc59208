"""The demo's dataset (built from scikit-image's bundled photos) and its video; the demo CLI's errors;
the demo's own model trained and exported with INT8 (about 4 minutes on 2 cores).

The inspection and benchmark steps of the full demo are timed by hand (``make demo``; README).
"""
from __future__ import annotations

import dataclasses
import hashlib

import numpy as np
import pytest

pytest.importorskip("skimage")
cv2 = pytest.importorskip("cv2")

from prn_edge.data.mvtec import load_sample, scan_category
from prn_edge.demo.__main__ import main as demo_main
from prn_edge.demo.__main__ import make_video
from prn_edge.demo.data import (
    DEFECT_TYPES,
    DemoDataSpec,
    _normal_crop,
    _surface,
    build_demo_dataset,
    draw_defect,
)
from prn_edge.errors import PRNError

SMALL = DemoDataSpec(size=128, num_train=5, num_test_good=3, num_per_defect=2, num_textures=4, seed=7)


def digest(folder) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo") / "data"
    return root, build_demo_dataset(root, SMALL)


def test_layout_is_mvtec_and_every_defect_has_a_matching_non_empty_mask(small):
    root, cat = small
    assert cat == root / "demo_brick"
    category = scan_category(cat)       # the project's own reader accepts it
    assert len(category.train) == 5
    assert category.defect_types == sorted(DEFECT_TYPES)
    good = [s for s in category.test if s.label == 0]
    bad = [s for s in category.test if s.label == 1]
    assert len(good) == 3 and len(bad) == 2 * len(DEFECT_TYPES)
    for sample in bad:
        assert sample.mask_path.name == f"{sample.path.stem}_mask.png"
        image, mask = load_sample(sample, size=None)
        assert image.shape == (128, 128, 3) and mask.shape == (128, 128)
        assert 0 < mask.mean() < 0.5, sample.path
    assert len(list((root / "textures").glob("*.png"))) == 4
    assert (root / "manifest.json").is_file()
    assert not [p for p in root.parent.iterdir() if p.name.startswith(".data.")]   # no temporary left


@pytest.mark.parametrize("kind", DEFECT_TYPES)
def test_defects_change_the_surface_inside_their_mask_only(kind):
    rng = np.random.default_rng(3)
    clean = _normal_crop(_surface("brick"), 128, rng)
    dirty, mask = draw_defect(clean, kind, rng)
    assert mask.any()
    change = np.abs(dirty - clean).max(axis=2)
    grown = cv2.dilate(mask.astype(np.uint8), np.ones((7, 7), np.uint8)).astype(bool)
    assert change[~grown].max() < 1e-3            # nothing drawn away from the mask
    assert change[~mask].max() <= 0.1 * 255       # only a faint rim (opacity < 0.1) just outside it
    assert change[mask].mean() > 20               # a visible change inside it


def test_seeded_reproducible_and_skipped_when_built(small, tmp_path):
    root, _ = small
    again = build_demo_dataset(tmp_path / "again", SMALL).parent
    assert digest(again) == digest(root)           # byte-identical files from the same spec
    other = build_demo_dataset(tmp_path / "other", dataclasses.replace(SMALL, seed=8)).parent
    assert digest(other) != digest(root)
    first = (again / "demo_brick" / "train" / "good" / "000.png").stat().st_mtime_ns
    build_demo_dataset(tmp_path / "again", SMALL)  # same spec: nothing rewritten
    assert (again / "demo_brick" / "train" / "good" / "000.png").stat().st_mtime_ns == first
    bigger = build_demo_dataset(tmp_path / "again", dataclasses.replace(SMALL, num_train=6))   # new spec: rebuilt
    assert len(list((bigger / "train" / "good").iterdir())) == 6


def test_bad_specs_are_user_errors(tmp_path):
    for spec in (DemoDataSpec(source="marble"), DemoDataSpec(size=32), DemoDataSpec(num_train=0)):
        with pytest.raises(PRNError):
            build_demo_dataset(tmp_path / "x", spec)
    assert not (tmp_path / "x").exists()
    with pytest.raises(PRNError, match="unknown demo defect"):
        draw_defect(np.zeros((64, 64, 3), np.float32), "dent", np.random.default_rng(0))


def test_video_alternates_normal_and_defective_frames(small, tmp_path):
    _, cat = small
    path = tmp_path / "demo.avi"
    n = make_video(cat, path, size=128, fps=4)
    assert n == 3 + 2 * len(DEFECT_TYPES)
    cap = cv2.VideoCapture(str(path))
    frames = 0
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        assert frame.shape == (128, 128, 3)
        frames += 1
    cap.release()
    assert frames == n
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize("argv, message", [(["--skip", "train"], "--skip takes"), (["--steps", "0"], "--steps")])
def test_demo_cli_user_errors_are_one_line(argv, message, tmp_path, capsys):
    assert demo_main([*argv, "--root", str(tmp_path / "demo")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]


def test_training_data_takes_the_texture_foreground_for_the_demo_surface(small, monkeypatch):
    """prn-train --foreground texture: a brick wall is foreground everywhere (auto would call it an object);
    a relative --data path works too."""
    pytest.importorskip("torch")
    from prn_edge.errors import DataError
    from prn_edge.train.data import load_training_data

    root, cat = small
    texture = load_training_data(cat, image_size=128, num_seen=2, calibration_fraction=0.2,
                                 textures=root / "textures", kind="texture")
    assert texture.kind == "texture" and texture.record()["kind"] == "texture"
    assert bool(texture.foreground.all()) and texture.seen_images.shape[0] == 2
    monkeypatch.chdir(root)
    auto = load_training_data("demo_brick", image_size=128, num_seen=0, calibration_fraction=0.2, textures="textures")
    assert auto.kind == "object" and auto.train_names[0].startswith("train/good/")
    with pytest.raises(DataError, match="foreground kind"):
        load_training_data(cat, image_size=128, num_seen=0, kind="surface")


def test_builtin_textures_are_seeded_crops_of_the_bundled_photos(small):
    """--textures builtin: a texture source every user has (scikit-image's CC0 photos, no download), the same
    crops for the same seed, distinct crops within a draw, and recorded as 'builtin' by training."""
    pytest.importorskip("torch")
    import torch

    from prn_edge.data.synthesis.textures import BUILTIN_TEXTURE_SOURCES, builtin_textures
    from prn_edge.errors import DataError
    from prn_edge.train.data import load_training_data

    first = builtin_textures(size=64, count=12, seed=3)
    assert first.shape == (12, 3, 64, 64) and first.dtype == torch.uint8
    assert torch.equal(first, builtin_textures(size=64, count=12, seed=3))
    assert not torch.equal(first, builtin_textures(size=64, count=12, seed=4))
    flat = first.flatten(1).float()
    assert len({tuple(row[:64].tolist()) for row in flat}) == 12            # no two crops alike
    assert float(flat.std(dim=1).min()) > 5                                 # textured, not flat
    with pytest.raises(DataError, match="source left"):
        builtin_textures(count=4, exclude=tuple(BUILTIN_TEXTURE_SOURCES))
    _, cat = small
    data = load_training_data(cat, image_size=128, num_seen=0, calibration_fraction=0.2, textures="builtin")
    assert data.record()["textures"] == "builtin" and data.textures.shape[1:] == (3, 128, 128)


@pytest.mark.slow
def test_the_demo_model_exports_an_int8_model_that_passes_its_gate(tmp_path):
    """The README's first command promises an INT8 model: the demo's training and export steps, as `make demo`
    runs them, write model.int8.onnx within prn-export's 0.5-point gate. --threads 1 does not change the
    model: training always runs the demo's 2 threads (the model must not depend on the machine's cores)."""
    pytest.importorskip("torch")
    pytest.importorskip("onnxruntime.quantization")
    import json

    from prn_edge.checkpoint import load_checkpoint
    from prn_edge.demo.__main__ import INT8_TOLERANCE, TRAIN_THREADS

    root = tmp_path / "demo"
    assert demo_main(["--root", str(root), "--threads", "1", "--skip", "eval,inspect,bench"]) == 0
    training = load_checkpoint(root / "train" / "checkpoint.pt").metadata["training"]
    assert training["threads"] == TRAIN_THREADS and training["steps"] == 60
    version = root / "model" / "versions" / json.loads((root / "model" / "manifest.json").read_text())["version"]
    report = json.loads((version / "export_report.json").read_text())
    int8 = report["int8"]
    assert (version / "model.int8.onnx").is_file() and report["status"] == "ok", report.get("notes")
    assert int8["tolerance_points"] == INT8_TOLERANCE and int8["worst_drop_points"] <= INT8_TOLERANCE, int8
    # The search keeps convolutions in float only where that helps: never worse than all-INT8. With the
    # measured defaults (patch match, prior, map blur) the demo's all-INT8 model passes as it is (0.1 points).
    assert int8["worst_drop_points"] <= int8["all_int8_worst_drop_points"], int8
