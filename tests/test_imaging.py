"""prn_edge.imaging.read: the one image reader, and eval / inspect seeing the same pixels.

Real images (bottle, magnetic tile) are read in place from ``../shared/data`` (skipped when
absent); variants (16-bit, grey, alpha, non-ASCII names, broken files) are written to tmp_path.
"""
from __future__ import annotations

import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest

from prn_edge.data import mvtec
from prn_edge.data.mvtec import load_image, load_mask, load_sample, scan_category
from prn_edge.errors import DataError, PRNError
from prn_edge.imaging import preprocess
from prn_edge.imaging.preprocess import prepare_frame
from prn_edge.imaging.read import (
    IMAGE_EXTENSIONS,
    is_image,
    list_images,
    read_image,
    read_mask,
    to_rgb,
    to_uint8,
)
from prn_edge.runtime.sources import ImageFolderSource, SourceError, open_source

MODEL_SIZE = 256   # PRNConfig.image_size of every shipped config


def _png(path: Path, array: np.ndarray, colour_type: int) -> Path:
    """A PNG written byte by byte (OpenCV cannot write grey+alpha): colour type 0 grey,
    2 RGB, 4 grey+alpha, 6 RGBA; 8- or 16-bit from the array's dtype; channels in RGB order."""
    depth = 16 if array.dtype == np.uint16 else 8
    h, w = array.shape[:2]
    rows = array.astype(">u2" if depth == 16 else np.uint8).reshape(h, -1)
    raw = b"".join(b"\x00" + row.tobytes() for row in rows)

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", w, h, depth, colour_type, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw))
                     + chunk(b"IEND", b""))
    return path


def _one_line_naming(exc: pytest.ExceptionInfo, path: Path) -> str:
    message = str(exc.value)
    assert "\n" not in message and str(path) in message, message
    return message


def _deep(rgb8: np.ndarray, seed: int = 0) -> np.ndarray:
    """A 16-bit image whose low byte is noise, so truncating (>> 8) and rounding (/ 257) differ."""
    rng = np.random.default_rng(seed)
    deep = rgb8.astype(np.uint16) * 256 + rng.integers(0, 256, rgb8.shape, dtype=np.uint16)
    assert np.any((deep >> 8).astype(np.uint8) != to_uint8(deep))   # the test can see a difference
    return deep


# --------------------------------------------------------------------------------------
# One extension list, one listing


def test_one_extension_list_and_one_conversion():
    assert {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"} <= set(IMAGE_EXTENSIONS)
    assert all(e == e.lower() and e.startswith(".") for e in IMAGE_EXTENSIONS)
    assert mvtec.IMAGE_EXTENSIONS is IMAGE_EXTENSIONS
    assert preprocess.to_rgb is to_rgb and preprocess.to_uint8 is to_uint8


def test_list_images_sorted_case_insensitive_hidden_skipped(tmp_path: Path):
    folder = tmp_path / ".cache" / "imgs"          # a hidden folder above is fine
    (folder / "sub" / "deeper").mkdir(parents=True)
    (folder / ".ipynb_checkpoints").mkdir()
    ok = cv2.imencode(".png", np.zeros((4, 4), np.uint8))[1].tobytes()
    for name in ["b.PNG", "a.jpg", "c.TiFf", ".DS_Store", "._a.png", "notes.txt", "sub/z.png", "sub/deeper/y.bmp",
                 ".ipynb_checkpoints/a.png"]:
        (folder / name).write_bytes(ok)
    (folder / "dir.png").mkdir()                   # a folder named like an image is not one
    assert [p.name for p in list_images(folder)] == ["a.jpg", "b.PNG", "c.TiFf"]
    assert [p.relative_to(folder).as_posix() for p in list_images(folder, recursive=True)] == [
        "a.jpg", "b.PNG", "c.TiFf", "sub/deeper/y.bmp", "sub/z.png"]
    assert is_image(folder / "b.PNG") and not is_image(folder / "._a.png") and not is_image(folder / "dir.png")
    assert not is_image(folder / "missing.png")
    with pytest.raises(DataError) as exc:
        list_images(tmp_path / "nowhere")
    _one_line_naming(exc, tmp_path / "nowhere")


# --------------------------------------------------------------------------------------
# Reading


def test_non_ascii_path_reads(tmp_path: Path, bottle_dir: Path):
    original = bottle_dir / "train" / "good" / "000.png"
    folder = tmp_path / "données 瓶"
    folder.mkdir()
    copy = folder / "échantillon_ß_000.png"
    copy.write_bytes(original.read_bytes())
    expected = read_image(original)
    assert expected.ndim == 3 and expected.shape[2] == 3 and expected.dtype == np.uint8
    assert np.array_equal(read_image(copy), expected)
    assert np.array_equal(load_image(copy, size=None), expected)
    with ImageFolderSource(folder) as source:
        frame = source.read()
    assert np.array_equal(frame.image, expected[..., ::-1])


def test_depth_grey_and_alpha_read_as_uint8_rgb(tmp_path: Path):
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
    grey = rng.integers(0, 256, (20, 30), dtype=np.uint8)
    alpha = rng.integers(0, 256, (20, 30), dtype=np.uint8)

    deep = _deep(rgb)
    out = read_image(_png(tmp_path / "deep.png", deep, 2))
    assert out.dtype == np.uint8 and out.shape == (20, 30, 3)
    assert np.array_equal(out, ((deep.astype(np.uint32) + 128) // 257).astype(np.uint8))   # rounded top 8 bits

    out = read_image(_png(tmp_path / "grey.png", grey, 0))
    assert out.shape == (20, 30, 3) and all(np.array_equal(out[..., c], grey) for c in range(3))

    out = read_image(_png(tmp_path / "rgba.png", np.dstack([rgb, alpha]), 6))
    assert np.array_equal(out, rgb)                                       # alpha dropped, not composited

    out = read_image(_png(tmp_path / "grey_alpha.png", np.dstack([grey, alpha]), 4))
    assert np.array_equal(out, np.dstack([grey] * 3))

    deep_grey = _deep(grey, seed=2)
    out = read_image(_png(tmp_path / "grey16_alpha.png", np.dstack([deep_grey, deep_grey]), 4))
    assert np.array_equal(out[..., 1], to_uint8(deep_grey))

    # The BGR order is the same pixels, channels swapped (what a folder source delivers).
    bgr = read_image(tmp_path / "rgba.png", order="BGR")
    assert np.array_equal(bgr, rgb[..., ::-1]) and bgr.flags.c_contiguous
    with pytest.raises(PRNError, match="channel order"):
        read_image(tmp_path / "rgba.png", order="RGBA")


def test_missing_and_corrupt_files_are_told_apart(tmp_path: Path, bottle_dir: Path):
    missing = tmp_path / "missing.png"
    with pytest.raises(DataError) as exc:
        read_image(missing)
    said_missing = _one_line_naming(exc, missing)

    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes((bottle_dir / "train" / "good" / "000.png").read_bytes()[:300])   # truncated
    with pytest.raises(DataError) as exc:
        read_image(corrupt)
    said_corrupt = _one_line_naming(exc, corrupt)

    assert "cannot read image" in said_missing and "cannot decode image" in said_corrupt
    assert said_missing.replace(str(missing), "") != said_corrupt.replace(str(corrupt), "")

    with pytest.raises(DataError, match="cannot read image") as exc:
        read_image(tmp_path)                                              # a folder
    _one_line_naming(exc, tmp_path)
    (tmp_path / "empty.jpg").write_bytes(b"")
    with pytest.raises(DataError, match="cannot decode image"):
        read_mask(tmp_path / "empty.jpg")

    # The folder source says the same, as a SourceError (the loop skips the file and goes on).
    with pytest.raises(SourceError) as exc:
        ImageFolderSource(corrupt).__enter__().read()
    assert "cannot decode image" in _one_line_naming(exc, corrupt)


def test_read_mask(tmp_path: Path, bottle_dir: Path):
    mask = np.zeros((10, 12), np.uint8)
    mask[2:5, 3:7] = 255
    want = mask > 127
    assert np.array_equal(read_mask(_png(tmp_path / "m8.png", mask, 0)), want)
    assert np.array_equal(read_mask(_png(tmp_path / "m16.png", mask.astype(np.uint16) * 257, 0)), want)
    colour = np.zeros((10, 12, 3), np.uint8)
    colour[2:5, 3:7, 0] = 255                                             # red defect, saved in colour
    assert np.array_equal(read_mask(_png(tmp_path / "mc.png", colour, 2)), want)
    opaque = np.full((10, 12), 255, np.uint8)                             # alpha is not the defect
    assert np.array_equal(read_mask(_png(tmp_path / "mga.png", np.dstack([mask, opaque]), 4)), want)
    assert np.array_equal(read_mask(_png(tmp_path / "mrgba.png", np.dstack([colour, opaque]), 6)), want)

    real = bottle_dir / "ground_truth" / "broken_large" / "000_mask.png"
    native = read_mask(real)
    assert native.ndim == 2 and native.dtype == bool and native.any()
    assert np.array_equal(load_mask(real, native.shape, size=None), native)


# --------------------------------------------------------------------------------------
# The key property: evaluation and inspection give the model the same input


def _inspect_inputs(folder: Path, size: int) -> dict[str, np.ndarray]:
    """What prn-inspect feeds the model for each image of ``folder`` (folder source -> prepare_frame)."""
    out = {}
    source = open_source(str(folder))
    assert isinstance(source, ImageFolderSource)
    with source:
        while (frame := source.read()) is not None:
            assert frame.image.dtype == np.uint8 and frame.image.shape[2] == 3
            out[Path(source.files[frame.sequence]).name] = prepare_frame(frame.image, size, order="BGR")
    return out


@pytest.mark.parametrize("size", [MODEL_SIZE, 128])
def test_eval_and_inspect_see_the_same_model_input(tmp_path: Path, bottle_dir: Path, magnetic_tile_dir: Path,
                                                    size: int):
    bottle = read_image(bottle_dir / "test" / "broken_large" / "000.png")    # colour
    tile_file = sorted((magnetic_tile_dir / "train" / "good").iterdir())[0]
    tile = read_image(tile_file)[..., 0]                                       # grey JPEG, odd size

    root = tmp_path / "widget"
    good = root / "test" / "good"
    for d in (root / "train" / "good", good):
        d.mkdir(parents=True)
    cv2.imwrite(str(root / "train" / "good" / "000.png"), bottle[..., ::-1])
    # The same pictures as 8-bit, 16-bit (low byte noise), grey, grey 16-bit, RGBA and JPEG files.
    _png(good / "bottle8.png", bottle, 2)
    _png(good / "bottle16.png", _deep(bottle), 2)
    _png(good / "bottle_rgba.png", np.dstack([bottle, np.full(bottle.shape[:2], 9, np.uint8)]), 6)
    _png(good / "bottle16_rgba.png", np.dstack([_deep(bottle, 3), np.full(bottle.shape[:2], 9, np.uint16)]), 6)
    _png(good / "tile8.png", tile, 0)
    _png(good / "tile16.png", _deep(tile), 0)
    (good / "tile.jpg").write_bytes(tile_file.read_bytes())

    category = scan_category(root)
    evaluated = {s.path.name: load_sample(s, size)[0] for s in category.test}
    assert all(np.array_equal(load_image(good / n, size), a) for n, a in evaluated.items())
    inspected = _inspect_inputs(good, size)

    assert sorted(evaluated) == sorted(inspected) and len(evaluated) == 7
    for name, model_input in evaluated.items():
        assert model_input.shape == (size, size, 3) and model_input.dtype == np.uint8
        assert np.array_equal(inspected[name], model_input), name
    # The variants of one picture agree where the file format allows (8-bit == RGBA).
    assert np.array_equal(evaluated["bottle8.png"], evaluated["bottle_rgba.png"])


def test_old_inspect_read_disagreed_on_16_bit(tmp_path: Path):
    """Why the folder source no longer uses cv2.imread: it truncates 16-bit where eval rounds."""
    rng = np.random.default_rng(4)
    deep = _deep(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8))
    path = _png(tmp_path / "deep.png", deep, 2)
    old = cv2.imread(str(path), cv2.IMREAD_COLOR)
    with ImageFolderSource(path) as source:
        new = source.read().image
    assert np.array_equal(new, read_image(path, order="BGR"))
    assert not np.array_equal(old, new)
