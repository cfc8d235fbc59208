"""Variation sets: realistic copies of an MVTec-layout category that break its alignment or lighting.

Issue 13 asks whether PRN's accuracy holds beyond centred, aligned, evenly lit parts. These
sets answer it cheaply from the data we have: every image (train, test) and its mask get their
own seeded transform, as parts arriving on a line would:

* ``shifted``: translated by up to 12 % of the side in x and y;
* ``rotated``: turned by any angle about the centre;
* ``scaled``: zoomed by 0.8-1.2;
* ``unaligned``: all three together;
* ``darker``: each image's brightness multiplied by 0.45-0.85 and its gamma raised (no geometry).

Borders revealed by a transform are filled by edge replication (a camera sees more of the same
background, not black). Masks follow the geometry with nearest-neighbour interpolation, so a
defect keeps its label; a defect pushed out of the frame leaves its image labelled by what is
left (an image whose mask became empty moves to ``test/good``).

Usage:
    python benchmarks/variations.py --data ../shared/data/mvtec_ad/bottle --out runs/variations
writes ``runs/variations/bottle-shifted/`` ... (MVTec layout, git-ignored: never committed).
"""
from __future__ import annotations

import argparse
import hashlib
import shutil
import sys
from pathlib import Path

import cv2
import numpy as np

KINDS = ("shifted", "rotated", "scaled", "unaligned", "darker")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")


def _rng(kind: str, relative: str, seed: int) -> np.random.Generator:
    """One generator per image: a set is the same whatever order or subset is written."""
    digest = hashlib.sha256(f"{seed}/{kind}/{relative}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def transform_for(kind: str, rng: np.random.Generator, height: int, width: int):
    """(2x3 affine matrix or None, brightness gain, gamma) of one image."""
    angle, scale, dx, dy = 0.0, 1.0, 0.0, 0.0
    if kind in ("shifted", "unaligned"):
        dx, dy = rng.uniform(-0.12, 0.12, size=2) * (width, height)
    if kind in ("rotated", "unaligned"):
        angle = float(rng.uniform(-180.0, 180.0))
    if kind in ("scaled", "unaligned"):
        scale = float(rng.uniform(0.8, 1.2))
    if kind == "darker":
        return None, float(rng.uniform(0.45, 0.85)), float(rng.uniform(1.0, 1.6))
    matrix = cv2.getRotationMatrix2D((width / 2.0, height / 2.0), angle, scale)
    matrix[:, 2] += (dx, dy)
    return matrix, 1.0, 1.0


def apply(image: np.ndarray, matrix, gain: float, gamma: float, *, mask: bool = False) -> np.ndarray:
    if matrix is not None:
        h, w = image.shape[:2]
        image = cv2.warpAffine(image, matrix, (w, h), flags=cv2.INTER_NEAREST if mask else cv2.INTER_LINEAR,
                               borderMode=cv2.BORDER_CONSTANT if mask else cv2.BORDER_REPLICATE, borderValue=0)
    if not mask and (gain != 1.0 or gamma != 1.0):
        unit = image.astype(np.float32) / 255.0
        image = np.clip(255.0 * gain * unit ** gamma + 0.5, 0, 255).astype(np.uint8)
    return image


def make_variation(data: Path, out: Path, kind: str, seed: int = 0) -> dict[str, int]:
    """Write ``out`` (replaced) as the ``kind`` variation of category ``data``; returns image counts."""
    if kind not in KINDS:
        raise ValueError(f"unknown variation {kind!r}: choose one of {', '.join(KINDS)}")
    staging = out.with_name(out.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    counts = {"train": 0, "test": 0, "moved_to_good": 0}
    for path in sorted(p for p in (data / "train").rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES):
        relative = path.relative_to(data).as_posix()
        image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        matrix, gain, gamma = transform_for(kind, _rng(kind, relative, seed), *image.shape[:2])
        _write(staging / relative, apply(image, matrix, gain, gamma))
        counts["train"] += 1
    for path in sorted(p for p in (data / "test").rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES):
        relative = path.relative_to(data).as_posix()
        defect = path.parent.name
        image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        matrix, gain, gamma = transform_for(kind, _rng(kind, relative, seed), *image.shape[:2])
        result = apply(image, matrix, gain, gamma)
        counts["test"] += 1
        if defect == "good":
            _write(staging / relative, result)
            continue
        mask_path = data / "ground_truth" / defect / f"{path.stem}_mask.png"
        mask = apply(cv2.imread(str(mask_path), cv2.IMREAD_GRAYSCALE), matrix, 1.0, 1.0, mask=True)
        if not mask.any():                          # the defect left the frame: a good image now
            _write(staging / "test" / "good" / f"{defect}_{path.name}", result)
            counts["moved_to_good"] += 1
            continue
        _write(staging / relative, result)
        _write(staging / "ground_truth" / defect / mask_path.name, mask)
    shutil.rmtree(out, ignore_errors=True)
    staging.rename(out)
    return counts


def _write(path: Path, image: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), image):
        raise OSError(f"{path}: cannot write the image")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="source category (MVTec layout)")
    parser.add_argument("--out", type=Path, required=True, help="folder for the sets (<name>-<kind>/ each)")
    parser.add_argument("--kinds", default=",".join(KINDS), help=f"comma-separated, of {', '.join(KINDS)}")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if not (args.data / "train").is_dir() or not (args.data / "test").is_dir():
        print(f"variations: {args.data} is not an MVTec-layout category (train/, test/)", file=sys.stderr)
        return 2
    for kind in args.kinds.split(","):
        if kind not in KINDS:
            print(f"variations: unknown kind {kind!r}: choose of {', '.join(KINDS)}", file=sys.stderr)
            return 2
        target = args.out / f"{args.data.name}-{kind}"
        counts = make_variation(args.data, target, kind, args.seed)
        print(f"{target}: {counts['train']} train, {counts['test']} test images "
              f"({counts['moved_to_good']} defect(s) left the frame: now good)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
