"""``python -m prn_edge.model``: print the architecture summary of a PRN configuration."""
from __future__ import annotations

import argparse
import sys

from prn_edge.cli import ArgumentParser, run_cli
from prn_edge.config import BACKBONE_NAMES, MSA_BLOCKS, PRESETS, RESIDUAL_MODES, get_config


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="python -m prn_edge.model",
        description="Summarise a PRN configuration: output shape of every stage, trainable and frozen "
                    "parameters, GFLOPs per image, and the size of the prototype banks for K prototypes. "
                    "Runs one forward pass on random input (weights do not change any of these numbers).")
    parser.add_argument("--config", choices=sorted(PRESETS), default="paper",
                        help="preset: 'paper' (docs/model.md as written) or 'edge' (Lite0, 1 MSA layer, "
                             "decoder at 64x64); default: paper")
    parser.add_argument("--backbone", choices=BACKBONE_NAMES, default=None,
                        help="override the preset's backbone")
    parser.add_argument("--msa-layers", type=int, default=None, help="override MSA layers per scale")
    parser.add_argument("--msa-block", choices=MSA_BLOCKS, default=None,
                        help="override the MSA residual block's first convolution (conv3x3 | separable)")
    parser.add_argument("--residual", choices=RESIDUAL_MODES, default=None, help="override the residual")
    parser.add_argument("--k", type=int, default=21,
                        help="prototypes per scale for the bank size (default 21: MVTec bottle's 209 "
                             "normal images x 0.1)")
    parser.add_argument("--batch", type=int, default=1, help="batch size of the measuring pass (default 1)")
    parser.add_argument("--json", metavar="FILE", default=None, help="also write the summary as JSON")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def run() -> int:
        from prn_edge.errors import PRNError
        from prn_edge.io import write_json_atomic
        from prn_edge.model import PRN
        from prn_edge.model.backbones import build_backbone
        from prn_edge.model.summary import summarize

        if args.k < 1 or args.batch < 1:
            raise PRNError("--k and --batch must be >= 1")
        config = get_config(args.config, backbone=args.backbone, msa_layers=args.msa_layers,
                            msa_block=args.msa_block, residual=args.residual)
        model = PRN(config, backbone=build_backbone(config.backbone, weights="none"))
        summary = summarize(model, k=args.k, batch=args.batch)
        print(summary.format())
        if args.json:
            write_json_atomic(args.json, summary.to_dict())
        return 0

    return run_cli("python -m prn_edge.model", run)


if __name__ == "__main__":
    sys.exit(main())
