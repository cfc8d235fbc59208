"""Issue 13: what a Gaussian blur of the anomaly map (``--map-smoothing SIGMA``) does to trained PRN models.

PatchCore smooths its map with sigma 4; PRN's decoder map was used as it came. The blur acts after
the sigmoid and before the image score, and the loss reads the logits, so blurring the maps of an
already trained model (trained without it) gives exactly the metrics the same weights give with
``map_smoothing`` set: each checkpoint of ``benchmarks/match_ablation.py`` is evaluated once with
its blur switched off, then its maps are blurred by :class:`~prn_edge.model.smoothing.MapSmoothing`
(the model's own module) at each sigma and scored again. Only the calibrated threshold (not a
metric) and the end-point selection (``select``, which validates the blurred map) can differ from
a run trained with the blur on.

Usage:
    python benchmarks/map_smoothing.py --data ../shared/data/magnetic_tile ../shared/data/mvtec_ad/bottle \\
        --variants patch+prior+pool3+s23+cosine+select+builtin --minutes 20 --runs runs/match_ablation
writes ``benchmarks/results/map_smoothing.md`` / ``.json``; PatchCore's cells come from the
match ablation's results file of the same budget (the same images: each run's seen anomalies left out).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from match_ablation import METRICS, VARIANTS, add_checkpoint_arguments, parse_checkpoint_arguments, patchcore_cells, run_folder  # noqa: E402

from prn_edge.checkpoint import load_model  # noqa: E402
from prn_edge.data.mvtec import scan_category  # noqa: E402
from prn_edge.eval.evaluate import evaluate, seen_anomalies_from  # noqa: E402
from prn_edge.eval.metrics import compute_metrics  # noqa: E402
from prn_edge.io import write_json_atomic, write_text_atomic  # noqa: E402
from prn_edge.model.decoder import top_k_score  # noqa: E402
from prn_edge.model.smoothing import MapSmoothing  # noqa: E402
from prn_edge.provenance import provenance, provenance_line  # noqa: E402
from prn_edge.runtime.backends.torch import TorchEngine  # noqa: E402

SIGMAS = (0.0, 1.0, 2.0, 4.0, 8.0)
BLUR_BATCH = 16


def score_sigmas(checkpoint: Path, data: Path, sigmas=SIGMAS) -> dict[str, dict[str, float]]:
    """``{sigma: metrics in percent}`` of one checkpoint on its category's test set (seen anomalies left out)."""
    model, ckpt = load_model(checkpoint, device=torch.device("cpu"))
    if model.smoothing is not None:      # score the unblurred map; each sigma is applied below
        model.smoothing = None
    category = scan_category(data)
    result = evaluate(TorchEngine(model, device=torch.device("cpu"), checkpoint=ckpt), category,
                      exclude=seen_anomalies_from(ckpt, category), progress=False)
    raw = torch.from_numpy(result.maps)[:, None]                         # (N, 1, S, S)
    out = {}
    for sigma in sigmas:
        maps = raw if sigma == 0 else torch.cat([MapSmoothing(sigma)(raw[i:i + BLUR_BATCH])
                                                 for i in range(0, len(raw), BLUR_BATCH)])
        scores = top_k_score(maps, model.config.score_top_k).numpy()
        metrics = compute_metrics(scores, result.labels, maps[:, 0].numpy(), result.masks)
        out[f"{sigma:g}"] = {m: round(100 * float(getattr(metrics, m)), 2) for m in METRICS}
        print(f"{data.name} {checkpoint.parent.name} sigma {sigma:g}: {out[f'{sigma:g}']}", flush=True)
    return out


def render(rows: list[dict], sigmas, origin: dict, minutes: float) -> str:
    def cell(m: dict | None) -> str:
        return " / ".join(f"{m[k]:.1f}" for k in METRICS) if m else "-"

    head = ["set", "variant", *(f"sigma {s:g}" for s in sigmas), "PatchCore (sigma 4)"]
    lines = ["# Anomaly map smoothing on trained PRN models (issue 13)", "",
             "Produced by `python benchmarks/map_smoothing.py`. Each 20-minute checkpoint of "
             "`match_ablation_20min.md` (edge preset, seed 0) evaluated once with its 10 seen anomalies left out; "
             "its maps then blurred by a Gaussian of sigma pixels (PRN's `MapSmoothing`, the module "
             "`--map-smoothing` adds after the sigmoid) and scored again, image score included (mean of the top 100 "
             "blurred values). Exact for these weights: the loss never reads the blurred map. PatchCore (which blurs "
             "its own map with sigma 4) on the same images, from the match ablation. Metrics in percent: image AUROC "
             f"/ pixel AUROC / PRO@0.3 / AP. Budget: {minutes:g} minutes per run.", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        lines.append(f"| {r['data']} | {r['variant']} | " + " | ".join(cell(r["sigmas"].get(f"{s:g}")) for s in sigmas)
                     + f" | {cell(r.get('patchcore'))} |")
    best = {}
    for r in rows:
        for s in sigmas:
            if f"{s:g}" in r["sigmas"]:
                gain = np.mean([r["sigmas"][f"{s:g}"][m] - r["sigmas"]["0"][m] for m in METRICS])
                best.setdefault(f"{s:g}", []).append(gain)
    lines += ["", "Mean change over the four metrics against sigma 0, averaged over the rows: "
              + ", ".join(f"sigma {s}: {np.mean(g):+.2f}" for s, g in best.items()) + " points.",
              "", provenance_line(origin), ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_checkpoint_arguments(parser)
    parser.add_argument("--variants", required=True, help=f"comma-separated, of {', '.join(VARIANTS)}")
    parser.add_argument("--seed", type=int, default=0)
    args = parse_checkpoint_arguments(parser, argv)
    variants = args.variants.split(",")
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        parser.error(f"unknown variant(s) {', '.join(unknown)}: choose of {', '.join(VARIANTS)}")
    patchcore = patchcore_cells(args.ablation)
    rows = []
    for data in args.data:
        for variant in variants:
            checkpoint = run_folder(args.runs, data, variant, args.seed, args.minutes) / "checkpoint.pt"
            if not checkpoint.exists():
                print(f"skipped {data.name} {variant}: no {checkpoint}", file=sys.stderr)
                continue
            rows.append({"data": data.name, "variant": variant, "seed": args.seed,
                         "sigmas": score_sigmas(checkpoint, data),
                         "patchcore": patchcore.get((data.name, args.seed))})
    if not rows:
        parser.error("no checkpoint found: run benchmarks/match_ablation.py first")
    origin = provenance()
    args.results.mkdir(parents=True, exist_ok=True)
    write_json_atomic(args.results / "map_smoothing.json", {"minutes": args.minutes, "seed": args.seed,
                                                             "sigmas": list(SIGMAS), "rows": rows,
                                                             "provenance": origin})
    write_text_atomic(args.results / "map_smoothing.md", render(rows, SIGMAS, origin, args.minutes))
    print(f"wrote {args.results / 'map_smoothing.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
