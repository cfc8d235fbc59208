"""Issue 13: how much of the image score should come from the residual prior (``--score-prior-share S``).

With the residual prior, PRN's image score is ``(1 - S) * top-K(map) + S * top-K(prior's map)``, the
prior's map being ``sigmoid(prior)`` blurred as the anomaly map is. The map, the loss and so pixel
AUROC, PRO and AP do not depend on S, so re-scoring an already trained model gives exactly the image
AUROC the same weights give with ``score_prior_share = S``: each 20-minute checkpoint of the measured
defaults (``benchmarks/match_ablation.py --variants measured``) runs once over its test set, its seen
anomalies left out, recording the prior and the logits; every share's score is then taken from its
map (the weight the checkpoint was trained with, blurred at sigma 4). Only the end-point selection
(its validation score includes an image AUROC) and the calibrated threshold (not a metric) can
differ from a run trained with S set. Each row records the share its checkpoint trained with.

Usage:
    python benchmarks/score_prior_share.py --runs runs/match_ablation --data ../shared/data/magnetic_tile ...
writes ``benchmarks/results/score_prior_share.md`` / ``.json``. ``make results-score-prior-share`` runs it
on every set and seed that the measured defaults trained.
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

from accuracy import at_least  # noqa: E402
from decoder_map_weight import record  # noqa: E402
from match_ablation import add_checkpoint_arguments, parse_checkpoint_arguments, patchcore_cells, run_folder  # noqa: E402

from prn_edge.checkpoint import load_checkpoint  # noqa: E402
from prn_edge.eval.metrics import image_auroc  # noqa: E402
from prn_edge.io import write_json_atomic, write_text_atomic  # noqa: E402
from prn_edge.model.decoder import top_k_score  # noqa: E402
from prn_edge.model.smoothing import MapSmoothing  # noqa: E402
from prn_edge.provenance import provenance, provenance_line  # noqa: E402

SHARES = (0.0, 0.25, 0.5, 0.75, 1.0)
SEEDS = (0, 1)
VARIANT = "measured"
CHUNK = 16


def share_aurocs(recorded: dict, sigma: float, shares=SHARES) -> dict[str, float]:
    """``{share: image AUROC in percent}`` of the recorded logits, the map at the checkpoint's own weight."""
    smoothing = MapSmoothing(sigma) if sigma > 0 else (lambda maps: maps)
    masks, weight, k = recorded["masks"], recorded["trained_weight"], recorded["top_k"]
    labels = masks.reshape(len(masks), -1).any(axis=1)
    map_scores, prior_scores = [], []
    for lo in range(0, len(masks), CHUNK):
        prior = recorded["prior"][lo:lo + CHUNK]
        correction = recorded["logits"][lo:lo + CHUNK] - prior
        map_scores.append(top_k_score(smoothing(torch.sigmoid(prior + weight * correction)), k).numpy())
        prior_scores.append(top_k_score(smoothing(torch.sigmoid(prior)), k).numpy())
    a, b = np.concatenate(map_scores), np.concatenate(prior_scores)
    return {f"{s:g}": 100 * image_auroc((1 - s) * a + s * b, labels) for s in shares}


def render(rows: list[dict], origin: dict) -> str:
    columns = [f"{s:g}" for s in SHARES]
    head = ["set", "seed", "trained S", *(f"S {c}" for c in columns), "PatchCore"]
    lines = ["# The residual prior's share of the image score (issue 13)", "",
             "Produced by `python benchmarks/score_prior_share.py` (`make results-score-prior-share`). Each 20-minute "
             "checkpoint of the measured defaults (`decoder_map_weight_trained.md`: W 0.75, sigma 4) runs once over its "
             "test set, its seen anomalies left out; the image score is then `(1 - S) * top-K(map) + S * "
             "top-K(prior's map)`, the prior's map being `sigmoid(prior)` blurred as the map is. S 0: the map's score "
             "alone (what these runs trained with unless `trained S` says otherwise); S 1: the prior's alone. The map "
             "does not depend on S, so pixel AUROC, PRO and AP are those of `decoder_map_weight_trained.md`, and these "
             "image AUROCs are exact for the weights; a run trained with S set can differ only in its selected step "
             "and threshold. The default S was chosen on these test sets (as W was, `decoder_map_weight.md`); runs "
             "trained with it are in `decoder_map_weight_trained.md`. PatchCore: its image AUROC on the same images. Image AUROC in percent; `<` marks a cell "
             "below PatchCore at the table's precision.", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        pc = r.get("patchcore")
        cells = [f"{r['shares'][c]:.1f}" + (" <" if pc is not None and not at_least(r["shares"][c], pc) else "")
                 for c in columns]
        lines.append(f"| {r['data']} | {r['seed']} | {r['trained_share']:g} | " + " | ".join(cells)
                     + f" | {'-' if pc is None else f'{pc:.1f}'} |")
    compared = [r for r in rows if r.get("patchcore") is not None]
    lines += ["", "Per share, over the rows: the change of image AUROC against S 0 (mean, worst, best), and the rows "
              "at or above PatchCore:", ""]
    for c in columns:
        deltas = np.array([r["shares"][c] - r["shares"]["0"] for r in rows])
        wins = sum(at_least(r["shares"][c], r["patchcore"]) for r in compared)
        lines.append(f"- S {c}: mean {deltas.mean():+.2f}, worst {deltas.min():+.1f}, best {deltas.max():+.1f}; "
                     f"at least PatchCore on {wins} of {len(compared)}")
    lines += ["", provenance_line(origin), ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_checkpoint_arguments(parser)
    args = parse_checkpoint_arguments(parser, argv)
    patchcore = patchcore_cells(args.ablation)
    rows = []
    for data in args.data:
        for seed in SEEDS:
            checkpoint = run_folder(args.runs, data, VARIANT, seed, args.minutes) / "checkpoint.pt"
            if not checkpoint.exists():
                print(f"skipped {data.name} seed {seed}: no {checkpoint}", file=sys.stderr)
                continue
            config = load_checkpoint(checkpoint).config
            shares = share_aurocs(record(checkpoint, data), config.map_smoothing)
            baseline = patchcore.get((data.name, seed))
            rows.append({"data": data.name, "seed": seed, "shares": shares, "trained_share": config.score_prior_share,
                         "trained_weight": config.decoder_map_weight,
                         "patchcore": None if baseline is None else baseline["image_auroc"]})
            print(f"{data.name} seed {seed}: " + "; ".join(f"S {k} {v:.1f}" for k, v in shares.items()), flush=True)
    if not rows:
        parser.error("no checkpoint found: run benchmarks/match_ablation.py --variants measured first")
    origin = provenance()
    args.results.mkdir(parents=True, exist_ok=True)
    write_json_atomic(args.results / "score_prior_share.json",
                      {"minutes": args.minutes, "shares": list(SHARES), "rows": rows, "provenance": origin})
    write_text_atomic(args.results / "score_prior_share.md", render(rows, origin))
    print(f"wrote {args.results / 'score_prior_share.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
