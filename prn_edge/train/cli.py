"""``prn-train``: build prototypes, train PRN with synthesized anomalies, calibrate, save.

A thin view of :func:`prn_edge.train.api.train`: parse the flags, set up logging, call it, print.

Several GPUs (or CPU processes): the same command under ``torchrun --nproc-per-node N``.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from prn_edge.cli import (
    ArgumentParser,
    bounded_float,
    non_negative_int,
    positive_int,
    run_cli,
    seed_number,
    thread_count,
)
from prn_edge.config import (
    BACKBONE_NAMES,
    MSA_BLOCKS,
    POOLING_BORDERS,
    PRESETS,
    PROTOTYPE_MATCHES,
    RESIDUAL_MODES,
)
from prn_edge.defaults import DEFAULT_SET, DEFAULT_SETS
from prn_edge.train.api import (
    CPU_DEFAULT_BATCH,
    CPU_DEFAULT_MINUTES,
    DEFAULT_CACHE,
    FOREGROUNDS,
    LR_SCHEDULES,
)

PROG = "prn-train"


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(
        prog=PROG,
        description="Train PRN on one MVTec-layout category: k-means prototypes from the normal training "
                    "images, then Adam on batches of normal images mixed with synthesized anomalies "
                    "(extended anomalies from the seen defects, Perlin-shaped simulated anomalies). "
                    "Holds out a few normal images to calibrate the decision threshold and writes "
                    "OUT/checkpoint.pt. On a GPU the default budget is the paper's 700 epochs at batch 64; "
                    f"on a CPU it is a reduced {CPU_DEFAULT_MINUTES:g} minutes at batch {CPU_DEFAULT_BATCH}.",
        epilog="examples:\n"
               "  prn-train --data ../shared/data/mvtec_ad/bottle --config edge --minutes 20 --out runs/bottle\n"
               "  prn-train --data DIR --out runs/x --resume            # continue an interrupted run\n"
               "  prn-train --data DIR --preview 16 --out runs/preview  # look at synthesized samples\n"
               "  torchrun --nproc-per-node 2 -m prn_edge.train.cli --data DIR --out runs/ddp",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, type=Path, help="category folder (train/good, test/<type>, ground_truth)")
    p.add_argument("--out", required=True, type=Path, help="output folder (checkpoint.pt, train_state.pt, snapshots/)")
    p.add_argument("--config", choices=sorted(PRESETS), default="paper",
                   help="model preset: the architecture's size (default: paper, ResNet-18; edge: Lite0)")
    p.add_argument("--defaults", choices=DEFAULT_SETS, default=DEFAULT_SET,
                   help="where every option below that is not given takes its value: measured (default: patch "
                        "match, 3x3 pooling, residual prior over scales 2,3, map smoothing 4, decoder map weight 0.75, score prior share 0.5, lr 2e-5 cosine, "
                        "best validated step, built-in textures; measured to beat PatchCore beyond "
                        "aligned objects, docs/model.md) or paper (PRN as published)")
    p.add_argument("--backbone", choices=BACKBONE_NAMES, default=None, help="override the preset's backbone")
    p.add_argument("--backbone-weights", type=Path, default=None,
                   help="ResNet-18 state dict (torchvision layout); default: the torch hub cache")
    p.add_argument("--residual", choices=RESIDUAL_MODES, default=None, help="override the residual (abs | square)")
    p.add_argument("--msa-layers", type=positive_int, default=None, help="override MSA layers per scale")
    p.add_argument("--msa-block", choices=MSA_BLOCKS, default=None,
                   help="override the first convolution of each MSA layer's residual block: conv3x3 (the paper) "
                        "or separable (depthwise 3x3 + pointwise 1x1: about a third fewer FLOPs for the edge model)")
    p.add_argument("--match", choices=PROTOTYPE_MATCHES, default=None,
                   help="override the prototype match: image (the paper: nearest prototype image, position "
                        "against position) or patch (each position's nearest prototype vector, wherever it "
                        "sits: shifted, rotated and textured parts)")
    p.add_argument("--match-pooling", type=positive_int, default=None, metavar="SIDE",
                   help="override the neighbourhood (odd side, 1 = none) each feature is averaged over before "
                        "it is matched; 3 = PatchCore's locally aware features")
    p.add_argument("--match-pooling-border", choices=POOLING_BORDERS, default=None,
                   help="override how --match-pooling averages border positions: zeros (pad with zeros, as "
                        "PatchCore; damps the backbone's border artefacts) or inside (the neighbours inside the map)")
    p.add_argument("--prior", action=argparse.BooleanOptionalAction, default=None,
                   help="override the residual prior: the residuals' own evidence added to the logits, so "
                        "that the untrained model already scores like a nearest-prototype detector")
    p.add_argument("--prior-scales", default=None, metavar="S1,S2",
                   help="override the scales whose residuals form the prior (1 = stride 4, 2 = stride 8, "
                        "3 = stride 16), e.g. 2,3")
    p.add_argument("--map-smoothing", type=bounded_float("a sigma", 0), default=None, metavar="SIGMA",
                   help="override the Gaussian blur of the anomaly map, sigma in pixels at the model's image size "
                        "(0 = none), applied before the image score; 4 = PatchCore's smoothing")
    p.add_argument("--decoder-map-weight", type=bounded_float("a weight", 0, 1, low_open=True), default=None,
                   metavar="W",
                   help="override the weight of the decoder's learnt correction in the anomaly map, "
                        "sigmoid(prior + W * decoder), 0 < W <= 1 (1 = as trained; the loss always reads it "
                        "whole); needs the residual prior")
    p.add_argument("--score-prior-share", type=bounded_float("a share", 0, 1), default=None, metavar="S",
                   help="override the residual prior's share of the image score: (1 - S) * top-K(map) + S * "
                        "top-K(the prior's own map), 0 <= S <= 1 (0 = the map's score alone); the map itself is "
                        "unchanged; needs the residual prior")
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("--steps", type=positive_int, default=None, help="train for N optimiser steps")
    budget.add_argument("--minutes", type=bounded_float("minutes", 0, low_open=True), default=None, help="train for M minutes of wall clock")
    p.add_argument("--batch-size", type=positive_int, default=None,
                   help=f"images per step and process, a multiple of 4 (default: 64 on GPU, {CPU_DEFAULT_BATCH} on CPU)")
    p.add_argument("--lr", type=bounded_float("a learning rate", 0, low_open=True), default=None,
                   help="Adam learning rate (default: 2e-5 with --defaults measured, 1e-4 with paper)")
    p.add_argument("--lr-schedule", choices=LR_SCHEDULES, default=None,
                   help="constant: --lr throughout (paper); cosine: from --lr down to 5%% of it over the budget "
                        "(default with --defaults measured)")
    p.add_argument("--select-best", action=argparse.BooleanOptionalAction, default=None,
                   help="keep the training step that scores best on the held-out normal images and their "
                        "synthesized anomalous copies (never the test set), validated 10 times over the budget "
                        "(default with --defaults measured); --no-select-best keeps the final step (paper)")
    p.add_argument("--weight-decay", type=bounded_float("a weight decay", 0), default=1e-2, help="Adam weight decay (default 1e-2)")
    p.add_argument("--seed", type=seed_number, default=0, help="seed of splits, prototypes, synthesis (default 0)")
    p.add_argument("--seen", type=non_negative_int, default=10, help="seen anomalies drawn from test/ (default 10)")
    p.add_argument("--calibration-fraction", type=bounded_float("a fraction", 0, 1), default=0.1,
                   help="share of train/good held out to calibrate the threshold (default 0.1)")
    p.add_argument("--threshold-quantile", type=bounded_float("a quantile", 0, 1, low_open=True), default=1.0,
                   help="threshold = this quantile of the held-out normal scores (default 1.0: their maximum)")
    p.add_argument("--textures", default=None, metavar="DIR|builtin",
                   help="texture source for heterologous anomalies: a DTD folder, or 'builtin' (crops of the "
                        "CC0 photos scikit-image ships; nothing to download); default: builtin (--defaults "
                        "paper: a 'dtd' folder near --data, else none, all simulated anomalies homologous)")
    p.add_argument("--foreground", choices=FOREGROUNDS, default="auto",
                   help="where simulated anomalies may go: object (the object found in each image), texture "
                        "(everywhere) or auto (texture for the MVTec textures and magnetic tile, else object)")
    p.add_argument("--no-ea", action="store_true", help="ablation: no extended anomalies (their share goes to SA)")
    p.add_argument("--no-sa", action="store_true", help="ablation: no simulated anomalies (their share goes to EA)")
    p.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:N")
    p.add_argument("--threads", type=thread_count, default=None, help="CPU threads for torch (default: torch's choice)")
    p.add_argument("--resume", action="store_true", help="continue from OUT/train_state.pt")
    p.add_argument("--save-every", type=bounded_float("minutes", 0, low_open=True), default=5.0, metavar="MIN",
                   help="save the training state every MIN minutes (default 5)")
    p.add_argument("--snapshot-steps", type=str, default="", metavar="S1,S2,...",
                   help="also write OUT/snapshots/checkpoint_step<S>.pt after S steps (learning curves)")
    p.add_argument("--cache", type=Path, default=DEFAULT_CACHE,
                   help="foreground mask cache folder (default: ~/.cache/prn-edge/foreground)")
    p.add_argument("--preview", type=positive_int, default=None, metavar="N",
                   help="do not train: write OUT/preview.png with N synthesized samples beside their masks")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format=f"{PROG}: %(message)s")
    return run_cli(PROG, lambda: _run(args))


def _run(args: argparse.Namespace) -> int:
    from prn_edge.train.api import train

    result = train(args.data, args.out, config=args.config, backbone=args.backbone,
                   backbone_weights=args.backbone_weights, residual=args.residual, msa_layers=args.msa_layers,
                   msa_block=args.msa_block,
                   match=args.match, match_pooling=args.match_pooling,
                   match_pooling_border=args.match_pooling_border, prior=args.prior, prior_scales=args.prior_scales,
                   map_smoothing=args.map_smoothing, decoder_map_weight=args.decoder_map_weight,
                   score_prior_share=args.score_prior_share, defaults=args.defaults, steps=args.steps, minutes=args.minutes, batch_size=args.batch_size, lr=args.lr,
                   lr_schedule=args.lr_schedule, select_best=args.select_best, weight_decay=args.weight_decay, seed=args.seed, seen=args.seen,
                   calibration_fraction=args.calibration_fraction, threshold_quantile=args.threshold_quantile,
                   textures=args.textures, foreground=args.foreground, no_ea=args.no_ea, no_sa=args.no_sa,
                   device=args.device, threads=args.threads, resume=args.resume, save_every=args.save_every,
                   snapshot_steps=args.snapshot_steps, cache=args.cache, preview=args.preview, quiet=args.quiet,
                   command=" ".join([PROG, *sys.argv[1:]]))
    if result.preview is not None or result.checkpoint is not None:
        print(result.summary_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
