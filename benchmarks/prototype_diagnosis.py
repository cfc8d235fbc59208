"""Issue 13, diagnosis: how much anomaly evidence PRN's residuals carry before any training.

PRN's decoder can only find what its residuals show. This script measures the residuals
themselves, with no trained weight: an untrained edge PRN with the residual prior
(``PRNConfig.residual_prior``: the decoder's last convolution is zero, so its anomaly map is
the prior alone, the per-position residual magnitude of the three scales, each divided by its
mean on the training images; image score = the mean of the map's top 100 values, as PRN's).
Two matches side by side (``PRNConfig.prototype_match``):

* ``image`` (the paper): the nearest of K prototype images, position against position;
* ``patch``: each position's nearest of 1024 prototype feature vectors, wherever they sit;

and the same-backbone PatchCore baseline on the same images. Where ``image`` falls far below
the other two, no amount of training on 10 seen defects is likely to close the gap: the
evidence is missing at the input of the decoder.

Usage:
    python benchmarks/prototype_diagnosis.py --data ../shared/data/mvtec_ad/bottle \\
        ../shared/data/magnetic_tile runs/variations/bottle-unaligned ... --results benchmarks/results
writes ``prototype_diagnosis.md`` / ``.json``. The full test sets are scored (no seen split:
nothing here is trained).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from prn_edge.baseline.patchcore import PatchCorePredictor
from prn_edge.config import get_config
from prn_edge.data.mvtec import load_image, scan_category
from prn_edge.eval.evaluate import evaluate
from prn_edge.io import write_json_atomic, write_text_atomic
from prn_edge.model.prn import PRN
from prn_edge.provenance import provenance, provenance_line
from prn_edge.runtime.backends.torch import TorchEngine

# name -> PRNConfig overrides (on the edge preset, with the residual prior)
VARIANTS = {
    "image": {"prototype_match": "image"},
    "patch": {"prototype_match": "patch"},
    "image+pool3": {"prototype_match": "image", "match_pooling": 3, "match_pooling_border": "inside"},
    "patch+pool3-inside": {"prototype_match": "patch", "match_pooling": 3, "match_pooling_border": "inside"},
    "patch+pool3": {"prototype_match": "patch", "match_pooling": 3, "match_pooling_border": "zeros"},
    "patch+pool3+s23": {"prototype_match": "patch", "match_pooling": 3, "match_pooling_border": "zeros",
                        "prior_scales": (2, 3)},
}


def _metrics(result) -> dict[str, float]:
    m = result.metrics
    return {"image_auroc": 100 * m.image_auroc, "pixel_auroc": 100 * m.pixel_auroc, "pro": 100 * m.pro,
            "ap": 100 * m.ap}


def diagnose(data: Path, backbone: str, variants: list[str], known: dict | None = None) -> dict:
    """One set's row; the variants (and PatchCore) already in ``known`` (an earlier row) are reused."""
    category = scan_category(data)
    train = [load_image(s.path) for s in category.train]
    batches = [torch.from_numpy(np.stack(train[i:i + 32])).permute(0, 3, 1, 2).float() / 255
               for i in range(0, len(train), 32)]
    row: dict = {"data": data.name, "train_images": len(train), "test_images": len(category.test)}
    known = known or {}
    if (known.get("train_images"), known.get("test_images")) != (row["train_images"], row["test_images"]):
        known = {}   # the set changed since (e.g. the demo's data): nothing of it is comparable
    for name in variants:
        if name in known:
            row[name] = known[name]
            row.setdefault("reused", []).append(name)
            print(f"  {data.name} {name}: reused {row[name]}", flush=True)
            continue
        t0 = time.perf_counter()
        model = PRN(get_config("edge", backbone=backbone, residual_prior=True, **VARIANTS[name]))
        stats = model.build_prototypes(batches)
        result = evaluate(TorchEngine(model.eval()), category, progress=False)
        row[name] = {**_metrics(result), "k": stats["k"], "seconds": round(time.perf_counter() - t0, 1)}
        print(f"  {data.name} {name}: {row[name]}", flush=True)
    if "patchcore" in known:
        row["patchcore"] = known["patchcore"]
        return row
    t0 = time.perf_counter()
    baseline = PatchCorePredictor.fit_category(category, progress=False)
    row["patchcore"] = {**_metrics(evaluate(baseline, category, progress=False)),
                        "seconds": round(time.perf_counter() - t0, 1)}
    print(f"  {data.name} patchcore: {row['patchcore']}", flush=True)
    return row


def render(rows: list[dict], variants: list[str], origin: dict, reused_from: str | None = None) -> str:
    lines = ["# Prototype diagnosis: the residuals' evidence before training", "",
             ("Produced by `python benchmarks/prototype_diagnosis.py` (issue 13). No weight is trained: an edge PRN "
             "(EfficientNet-Lite0) with prototypes from `train/good` and the residual prior, its decoder's last "
             "convolution at zero, so its map is the residual magnitude |F - P| per position (each scale divided "
             "by its mean on the training images, the three averaged at 256x256; image score = mean of the top "
             "100 map values, as PRN's). `image` is the paper's match "
             "(nearest prototype image, position against position, K = 10 % of the training images); `patch` "
             "takes each position's nearest of 1024 k-means feature vectors, wherever it sits. PatchCore is "
             "the project's same-backbone baseline. Full test sets (nothing is trained, so no seen split). "
             "Metrics in percent: image AUROC / pixel AUROC / PRO@0.3 / AP."), "",
             ("`+pool3`: each feature averaged with its 8 neighbours before matching (`match_pooling=3`); "
              "`-inside`: at the border, the mean of the neighbours inside the map; without it, the map is padded "
              "with zeros as PatchCore's `AvgPool2d` does (`match_pooling_border`), which damps the backbone's "
              "border artefacts. `+s23`: the prior reads the residuals of scales 2 and 3 only (strides 8 and 16; "
              "`prior_scales`)." + (f" `*`: a cell kept from the run at commit `{reused_from}` (`--reuse`; the same code "
              "path), as is PatchCore on its row." if reused_from else "")), "",
             "| set | train | test | " + " | ".join(variants) + " | PatchCore |",
             "|---|---|---|" + "---|" * (len(variants) + 1)]

    def cell(m: dict) -> str:
        return " / ".join(f"{m[k]:.1f}" for k in ("image_auroc", "pixel_auroc", "pro", "ap"))

    for r in rows:
        kept = set(r.get("reused", []))
        lines.append(f"| {r['data']} | {r['train_images']} | {r['test_images']} | "
                     + " | ".join((cell(r[v]) + (" *" if v in kept else "")) if v in r else "-" for v in variants)
                     + f" | {cell(r['patchcore'])} |")
    lines += ["", provenance_line(origin), ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, nargs="+", required=True, help="MVTec-layout categories")
    parser.add_argument("--results", type=Path, default=REPO / "benchmarks" / "results")
    parser.add_argument("--backbone", default="efficientnet_lite0")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, of {', '.join(VARIANTS)}")
    parser.add_argument("--reuse", action="store_true",
                        help="keep the variants (and PatchCore) already in the results' JSON for a set; "
                             "only the missing ones are computed")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    variants = args.variants.split(",")
    if any(v not in VARIANTS for v in variants):
        parser.error(f"--variants: choose of {', '.join(VARIANTS)}")
    earlier, reused_from = {}, None
    if args.reuse and (args.results / "prototype_diagnosis.json").exists():
        old = json.loads((args.results / "prototype_diagnosis.json").read_text())
        earlier = {r["data"]: r for r in old["rows"]}
        reused_from = old.get("reused_from") or old["provenance"]["git"]["commit"][:12]
    rows = [diagnose(d, args.backbone, variants, earlier.get(d.name)) for d in args.data]
    origin = provenance()
    args.results.mkdir(parents=True, exist_ok=True)
    if not any(r.get("reused") for r in rows):
        reused_from = None
    write_json_atomic(args.results / "prototype_diagnosis.json", {"variants": variants, "rows": rows,
                                                                  "reused_from": reused_from, "provenance": origin})
    write_text_atomic(args.results / "prototype_diagnosis.md", render(rows, variants, origin, reused_from))
    print(f"wrote {args.results / 'prototype_diagnosis.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
