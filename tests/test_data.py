"""prn_edge.data: MVTec scanning, image / mask loading, the seen split, foreground masks and cache.

Real data (bottle, magnetic tile) is read in place from ``../shared/data``; bad inputs are
built in ``tmp_path``. Everything here runs in a few seconds on two cores.
"""
from __future__ import annotations

import logging
import os
import random
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from prn_edge.data import foreground as fg_mod
from prn_edge.data.foreground import (
    ForegroundCache,
    category_kind,
    compute_foreground,
    foreground_mask,
)
from prn_edge.data.mvtec import (
    MVTecCategory,
    load_image,
    load_mask,
    load_sample,
    scan_category,
    split_seen_anomalies,
)
from prn_edge.errors import DataError, PRNError
from prn_edge.imaging.read import IMAGE_EXTENSIONS

REPO = Path(__file__).resolve().parents[1]
BOTTLE_TYPES = ["broken_large", "broken_small", "contamination"]
TILE_TYPES = ["blowhole", "break", "crack", "fray", "uneven"]


@pytest.fixture(scope="module")
def bottle(bottle_dir: Path) -> MVTecCategory:
    return scan_category(bottle_dir)


@pytest.fixture(scope="module")
def tile(magnetic_tile_dir: Path) -> MVTecCategory:
    return scan_category(magnetic_tile_dir)


def _one_line_naming(exc: pytest.ExceptionInfo, path: Path) -> None:
    message = str(exc.value)
    assert "\n" not in message, message
    assert str(path) in message, message


# --------------------------------------------------------------------------------------
# Scanning


def test_scan_bottle(bottle: MVTecCategory, bottle_dir: Path):
    assert bottle.name == "bottle" and bottle.root == bottle_dir.absolute()
    assert len(bottle.train) == 209
    assert all(s.label == 0 and s.mask_path is None for s in bottle.train)
    assert len(bottle.test) == 83
    good = [s for s in bottle.test if s.label == 0]
    bad = [s for s in bottle.test if s.label == 1]
    assert len(good) == 20 and len(bad) == 63
    assert bottle.defect_types == BOTTLE_TYPES
    counts = {t: sum(s.defect_type == t for s in bad) for t in BOTTLE_TYPES}
    assert counts == {"broken_large": 20, "broken_small": 22, "contamination": 21}
    for s in bad:
        assert s.mask_path is not None and s.mask_path.is_file()
        assert s.mask_path.name == f"{s.path.stem}_mask.png"
        assert s.mask_path.parent.name == s.defect_type
    assert all(s.defect_type == "good" and s.mask_path is None for s in good)
    # Sorted and deterministic.
    assert [s.path.name for s in bottle.train] == sorted(s.path.name for s in bottle.train)
    assert scan_category(bottle_dir) == bottle


def test_scan_magnetic_tile(tile: MVTecCategory):
    assert len(tile.train) == 300
    assert sum(s.label == 0 for s in tile.test) == 100
    assert sum(s.label == 1 for s in tile.test) == 115 + 85 + 57 + 32 + 99
    assert tile.defect_types == TILE_TYPES
    assert all(s.path.suffix == ".jpg" for s in tile.train + tile.test)
    assert all(s.mask_path.suffix == ".png" for s in tile.test if s.label == 1)


def test_magnetic_tile_images_and_masks(tile: MVTecCategory):
    # Two per type, plus the two "uneven" masks of 1 and 3 native pixels that plain
    # nearest-neighbour shrinking would erase.
    by_type = {t: [s for s in tile.test if s.defect_type == t] for t in TILE_TYPES}
    picks = [s for t in TILE_TYPES for s in (by_type[t][0], by_type[t][-1])]
    picks += [s for s in by_type["uneven"] if s.path.stem in ("exp3_num_24829", "exp4_num_24843")]
    assert len(picks) == 12

    native_sizes = set()
    for s in picks:
        native = load_image(s.path, size=None)
        native_sizes.add(native.shape[:2])
        image, mask = load_sample(s)
        assert image.shape == (256, 256, 3) and image.dtype == np.uint8
        # A grey JPG becomes three equal channels.
        assert (image == image[..., :1]).all()
        assert mask.shape == (256, 256) and mask.dtype == bool
        assert mask.any(), f"{s.mask_path}: empty after resizing"
        assert np.array_equal(mask, load_mask(s.mask_path, native.shape[:2]))
    assert len(native_sizes) > 3  # crops of varying size


def test_masks_are_binary(bottle: MVTecCategory):
    s = next(s for s in bottle.test if s.label == 1)
    native = load_mask(s.mask_path, (256, 256), size=None)
    raw = cv2.imread(str(s.mask_path), cv2.IMREAD_GRAYSCALE)
    assert native.dtype == bool and np.array_equal(native, raw > 127)
    small = load_mask(s.mask_path, (256, 256), size=64)
    assert small.shape == (64, 64) and small.dtype == bool and small.any()
    _, good_mask = load_sample(next(s for s in bottle.test if s.label == 0))
    assert good_mask.dtype == bool and not good_mask.any()


def test_image_extensions():
    assert {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"} <= set(IMAGE_EXTENSIONS)


# --------------------------------------------------------------------------------------
# Loading synthetic images


def test_load_image_formats(tmp_path: Path):
    rng = np.random.default_rng(0)
    bgr = np.zeros((40, 60, 3), np.uint8)
    bgr[..., 2] = 200  # red in OpenCV's BGR order
    cv2.imwrite(str(tmp_path / "red.PNG"), bgr)
    rgb = load_image(tmp_path / "red.PNG", size=None)
    assert rgb.shape == (40, 60, 3) and rgb[0, 0].tolist() == [200, 0, 0]

    grey = rng.integers(0, 256, (50, 30), dtype=np.uint8)
    cv2.imwrite(str(tmp_path / "grey.png"), grey)
    out = load_image(tmp_path / "grey.png", size=None)
    assert out.shape == (50, 30, 3) and np.array_equal(out[..., 1], grey)

    rgba = np.dstack([bgr, np.full((40, 60), 7, np.uint8)])
    cv2.imwrite(str(tmp_path / "rgba.png"), rgba)
    assert np.array_equal(load_image(tmp_path / "rgba.png", size=None), rgb)

    deep = (grey.astype(np.uint16) * 257)  # 16-bit with the same 8-bit content
    cv2.imwrite(str(tmp_path / "deep.png"), deep)
    assert np.array_equal(load_image(tmp_path / "deep.png", size=None)[..., 0], grey)

    # Shrink, enlarge and mixed (one axis shrinks, the other grows).
    for shape in [(512, 300), (100, 80), (600, 100)]:
        cv2.imwrite(str(tmp_path / "s.png"), rng.integers(0, 256, shape, dtype=np.uint8))
        out = load_image(tmp_path / "s.png", size=256)
        assert out.shape == (256, 256, 3) and out.dtype == np.uint8 and out.flags.c_contiguous


def test_resize_uses_area_when_shrinking_and_linear_when_enlarging(tmp_path: Path):
    # A one-pixel checkerboard averages to grey under INTER_AREA (aliasing would not).
    board = (np.indices((512, 512)).sum(0) % 2 * 255).astype(np.uint8)
    cv2.imwrite(str(tmp_path / "board.png"), board)
    out = load_image(tmp_path / "board.png", size=256)[..., 0].astype(int)
    assert np.abs(out - 128).max() <= 1
    ramp = np.tile(np.linspace(0, 255, 64).astype(np.uint8), (64, 1))
    cv2.imwrite(str(tmp_path / "ramp.png"), ramp)
    up = load_image(tmp_path / "ramp.png", size=256)[..., 0]
    expected = cv2.resize(ramp, (256, 256), interpolation=cv2.INTER_LINEAR)
    assert np.array_equal(up, expected)


# --------------------------------------------------------------------------------------
# Bad inputs: one-line DataError naming the file or folder


def _write(path: Path, shape=(32, 32), value=100) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), np.full(shape, value, np.uint8))
    return path


def _tiny_category(root: Path) -> Path:
    _write(root / "train" / "good" / "000.png")
    _write(root / "test" / "good" / "000.png")
    _write(root / "test" / "scratch" / "000.png")
    _write(root / "ground_truth" / "scratch" / "000_mask.png", value=255)
    return root


def test_tiny_category_scans(tmp_path: Path):
    root = _tiny_category(tmp_path / "widget")
    (root / "train" / "good" / ".DS_Store").write_bytes(b"junk")  # ignored
    (root / "train" / "good" / "notes.txt").write_text("ignored")
    cat = scan_category(root)
    assert [s.path.name for s in cat.train] == ["000.png"]
    assert cat.defect_types == ["scratch"] and cat.test[1].mask_path.name == "000_mask.png"


@pytest.mark.parametrize(
    "broken, culprit",
    [
        ("missing_root", "."),
        ("no_train_good", "train/good"),
        ("no_test", "test"),
        ("empty_train_good", "train/good"),
        ("no_mask", "test/scratch/000.png"),
    ],
)
def test_scan_errors(tmp_path: Path, broken: str, culprit: str):
    root = tmp_path / "widget"
    if broken != "missing_root":
        _tiny_category(root)
    if broken == "no_train_good":
        for p in (root / "train" / "good").iterdir():
            p.unlink()
        (root / "train" / "good").rmdir()
    elif broken == "no_test":
        import shutil

        shutil.rmtree(root / "test")
    elif broken == "empty_train_good":
        (root / "train" / "good" / "000.png").unlink()
    elif broken == "no_mask":
        (root / "ground_truth" / "scratch" / "000_mask.png").unlink()
    with pytest.raises(DataError) as exc:
        scan_category(root)
    _one_line_naming(exc, (root / culprit) if culprit != "." else root)


def test_corrupt_and_missing_images(tmp_path: Path, bottle_dir: Path):
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes((bottle_dir / "train" / "good" / "000.png").read_bytes()[:200])  # truncated
    with pytest.raises(DataError) as exc:
        load_image(corrupt)
    _one_line_naming(exc, corrupt)

    garbage = tmp_path / "garbage.jpg"
    garbage.write_bytes(b"not an image at all")
    with pytest.raises(DataError) as exc:
        load_image(garbage)
    _one_line_naming(exc, garbage)

    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    with pytest.raises(DataError) as exc:
        load_image(empty)
    _one_line_naming(exc, empty)

    missing = tmp_path / "missing.png"
    with pytest.raises(DataError) as exc:
        load_image(missing)
    _one_line_naming(exc, missing)
    assert isinstance(exc.value, PRNError)


def test_mask_size_mismatch(tmp_path: Path):
    root = _tiny_category(tmp_path / "widget")
    mask = _write(root / "ground_truth" / "scratch" / "000_mask.png", shape=(32, 40), value=255)
    with pytest.raises(DataError) as exc:
        load_mask(mask, (32, 32))
    _one_line_naming(exc, mask)
    defect = next(s for s in scan_category(root).test if s.label == 1)
    with pytest.raises(DataError) as exc:
        load_sample(defect)
    _one_line_naming(exc, mask)


# --------------------------------------------------------------------------------------
# Seen anomalies


def test_split_seen_anomalies(bottle: MVTecCategory):
    seen, evaluation = split_seen_anomalies(bottle.test, n=10, seed=0)
    assert len(seen) == 10 and all(s.label == 1 for s in seen)
    counts = sorted(sum(s.defect_type == t for s in seen) for t in BOTTLE_TYPES)
    assert counts == [3, 3, 4]  # round-robin across the three types
    assert not set(seen) & set(evaluation)
    assert set(seen) | set(evaluation) == set(bottle.test)
    assert len(evaluation) == 73 and sum(s.label == 0 for s in evaluation) == 20
    assert evaluation == [s for s in bottle.test if s not in set(seen)]  # original order kept

    assert split_seen_anomalies(bottle.test, n=10, seed=0) == (seen, evaluation)
    assert set(split_seen_anomalies(bottle.test, n=10, seed=1)[0]) != set(seen)
    shuffled = list(bottle.test)
    random.Random(3).shuffle(shuffled)
    assert split_seen_anomalies(shuffled, n=10, seed=0)[0] == seen  # filesystem order is irrelevant

    assert split_seen_anomalies(bottle.test, n=0) == ([], bottle.test)
    everything, rest = split_seen_anomalies(bottle.test, n=63)
    assert len(everything) == 63 and all(s.label == 0 for s in rest)


def test_split_too_many(bottle: MVTecCategory):
    with pytest.raises(DataError) as exc:
        split_seen_anomalies(bottle.test, n=64)
    _one_line_naming(exc, bottle.root / "test")
    assert "64" in str(exc.value) and "63" in str(exc.value)
    with pytest.raises(DataError):
        split_seen_anomalies(bottle.test, n=-1)


# --------------------------------------------------------------------------------------
# Foreground


def test_foreground_bottle(bottle: MVTecCategory):
    # The bottle is a dark disc on a white background: the border picks the side.
    for s in bottle.train[::10][:20]:
        image = load_image(s.path)
        result = compute_foreground(image, "object")
        mask = result.mask
        assert mask.shape == (256, 256) and mask.dtype == bool and not result.fallback
        assert mask[128, 128], s.path
        assert not (mask[0, 0] or mask[0, -1] or mask[-1, 0] or mask[-1, -1]), s.path
        assert 0.2 < mask.mean() < 0.9, (s.path, mask.mean())
        assert np.array_equal(foreground_mask(image, "object"), mask)


@pytest.mark.parametrize("disc, background", [(230, 20), (20, 230)])
def test_foreground_either_polarity(disc: int, background: int):
    image = np.full((128, 160, 3), background, np.uint8)
    cv2.circle(image, (80, 64), 40, (disc,) * 3, -1)
    cv2.circle(image, (80, 64), 12, (background,) * 3, -1)  # a hole, filled
    cv2.circle(image, (10, 10), 2, (disc,) * 3, -1)  # a speck, dropped
    mask = foreground_mask(image)
    expected = np.zeros((128, 160), np.uint8)
    cv2.circle(expected, (80, 64), 40, 1, -1)
    assert (mask != expected.astype(bool)).mean() < 0.01
    assert mask[64, 80] and not mask[10, 10]


def test_foreground_texture_and_fallback(tile: MVTecCategory, caplog: pytest.LogCaptureFixture):
    assert category_kind("magnetic_tile") == category_kind("Magnetic-Tile") == "texture"
    assert all(category_kind(n) == "texture" for n in ["carpet", "grid", "leather", "tile", "wood"])
    assert category_kind("bottle") == "object" and category_kind("/data/mvtec/screw") == "object"

    image = load_image(tile.train[0].path)
    assert foreground_mask(image, "texture").all()

    flat = np.full((64, 64, 3), 90, np.uint8)  # nothing to find
    result = compute_foreground(flat, "object")
    assert result.fallback and result.mask.all()
    with caplog.at_level(logging.WARNING, logger="prn_edge.data.foreground"):
        assert foreground_mask(flat, "object").all()
    assert "whole image" in caplog.text

    with pytest.raises(PRNError):
        foreground_mask(flat, "blob")


def test_foreground_cache(tmp_path: Path, bottle: MVTecCategory, monkeypatch: pytest.MonkeyPatch):
    path = bottle.train[0].path
    image = load_image(path)
    expected = foreground_mask(image, "object")
    cache = ForegroundCache(tmp_path / "cache")

    first = cache.get(path, image, "object")
    assert np.array_equal(first, expected)
    files = list((tmp_path / "cache").iterdir())
    assert files == [cache.path_for(path, image, "object")]
    assert files[0].suffix == ".png" and not any(f.name.startswith(".tmp") for f in files)

    def boom(*args, **kwargs):
        raise AssertionError("recomputed a cached mask")

    monkeypatch.setattr(fg_mod, "foreground_mask", boom)
    second = cache.get(path, image, "object")
    assert np.array_equal(second, expected) and second.dtype == bool

    # Another size is another entry; a corrupt entry is recomputed.
    assert cache.path_for(path, image[:128, :128], "object") != files[0]
    monkeypatch.undo()
    files[0].write_bytes(b"broken")
    assert np.array_equal(cache.get(path, image, "object"), expected)

    # Textures and a disabled cache write nothing.
    assert cache.get(path, image, "texture").all()
    assert len(list((tmp_path / "cache").iterdir())) == 1
    assert np.array_equal(ForegroundCache(None).get(path, image, "object"), expected)


def test_cache_key_follows_the_file(tmp_path: Path):
    image_path = _write(tmp_path / "a.png")
    image = np.zeros((32, 32, 3), np.uint8)
    cache = ForegroundCache(tmp_path / "cache")
    before = cache.key(image_path, image, "object")
    assert before == cache.key(image_path, image, "object")
    st = image_path.stat()
    os.utime(image_path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert cache.key(image_path, image, "object") != before
    with pytest.raises(DataError) as exc:
        cache.get(tmp_path / "gone.png", image, "object")
    _one_line_naming(exc, tmp_path / "gone.png")


def test_data_modules_do_not_import_torch():
    code = (
        "import sys, prn_edge.data.mvtec, prn_edge.data.foreground; "
        "sys.exit('torch' in sys.modules)"
    )
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, timeout=60)
