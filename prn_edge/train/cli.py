"""``prn-train``: build prototypes, train PRN with synthesized anomalies, calibrate, save.

Several GPUs (or CPU processes): the same command under ``torchrun --nproc-per-node N``.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path

from prn_edge.cli import ArgumentParser, run_cli
from prn_edge.config import BACKBONE_NAMES, PRESETS, RESIDUAL_MODES

PROG = "prn-train"
CPU_DEFAULT_MINUTES = 10.0
CPU_DEFAULT_BATCH = 8


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
    p.add_argument("--config", choices=sorted(PRESETS), default="paper", help="model preset (default: paper)")
    p.add_argument("--backbone", choices=BACKBONE_NAMES, default=None, help="override the preset's backbone")
    p.add_argument("--backbone-weights", type=Path, default=None,
                   help="ResNet-18 state dict (torchvision layout); default: the torch hub cache")
    p.add_argument("--residual", choices=RESIDUAL_MODES, default=None, help="override the residual (abs | square)")
    p.add_argument("--msa-layers", type=int, default=None, help="override MSA layers per scale")
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("--steps", type=int, default=None, help="train for N optimiser steps")
    budget.add_argument("--minutes", type=float, default=None, help="train for M minutes of wall clock")
    p.add_argument("--batch-size", type=int, default=None,
                   help=f"images per step and process, a multiple of 4 (default: 64 on GPU, {CPU_DEFAULT_BATCH} on CPU)")
    p.add_argument("--lr", type=float, default=1e-4, help="Adam learning rate (default 1e-4)")
    p.add_argument("--weight-decay", type=float, default=1e-2, help="Adam weight decay (default 1e-2)")
    p.add_argument("--seed", type=int, default=0, help="seed of splits, prototypes, synthesis (default 0)")
    p.add_argument("--seen", type=int, default=10, help="seen anomalies drawn from test/ (default 10)")
    p.add_argument("--calibration-fraction", type=float, default=0.1,
                   help="share of train/good held out to calibrate the threshold (default 0.1)")
    p.add_argument("--threshold-quantile", type=float, default=1.0,
                   help="threshold = this quantile of the held-out normal scores (default 1.0: their maximum)")
    p.add_argument("--textures", type=Path, default=None,
                   help="DTD texture folder for heterologous anomalies (default: a 'dtd' folder near --data)")
    p.add_argument("--foreground", choices=("auto", "object", "texture"), default="auto",
                   help="where simulated anomalies may go: object (the object found in each image), texture "
                        "(everywhere) or auto (texture for the MVTec textures and magnetic tile, else object)")
    p.add_argument("--no-ea", action="store_true", help="ablation: no extended anomalies (their share goes to SA)")
    p.add_argument("--no-sa", action="store_true", help="ablation: no simulated anomalies (their share goes to EA)")
    p.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:N")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's choice)")
    p.add_argument("--resume", action="store_true", help="continue from OUT/train_state.pt")
    p.add_argument("--save-every", type=float, default=5.0, metavar="MIN",
                   help="save the training state every MIN minutes (default 5)")
    p.add_argument("--snapshot-steps", type=str, default="", metavar="S1,S2,...",
                   help="also write OUT/snapshots/checkpoint_step<S>.pt after S steps (learning curves)")
    p.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "prn-edge" / "foreground",
                   help="foreground mask cache folder (default: ~/.cache/prn-edge/foreground)")
    p.add_argument("--preview", type=int, default=None, metavar="N",
                   help="do not train: write OUT/preview.png with N synthesized samples beside their masks")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format=f"{PROG}: %(message)s")
    return run_cli(PROG, lambda: _run(args))


def _run(args: argparse.Namespace) -> int:
    import torch

    from prn_edge.config import get_config
    from prn_edge.data.synthesis import SynthesisConfig
    from prn_edge.errors import PRNError
    from prn_edge.train.data import load_training_data
    from prn_edge.train.trainer import DistInfo, TrainSettings, Trainer, paper_schedule_steps

    if args.threads:
        torch.set_num_threads(args.threads)
    dist_info = DistInfo.from_env()
    device = _device(args.device, dist_info)
    on_gpu = device.type == "cuda"
    batch_size = args.batch_size or (64 if on_gpu else CPU_DEFAULT_BATCH)
    config = get_config(args.config, backbone=args.backbone, residual=args.residual, msa_layers=args.msa_layers)
    synthesis = SynthesisConfig(use_ea=not args.no_ea, use_sa=not args.no_sa)
    progress = None if args.quiet or not dist_info.is_main else _tqdm_wrap

    if not args.data.is_dir():
        raise PRNError(f"{args.data}: data folder does not exist")
    # The model first: a missing backbone weight file fails before any data is read.
    from prn_edge.model import PRN
    from prn_edge.model.backbones import build_backbone

    torch.manual_seed(args.seed)  # weight initialisation
    model = PRN(config, backbone=build_backbone(config.backbone, args.backbone_weights))
    _prepare_out(args.out, args.resume)
    data = load_training_data(args.data, image_size=config.image_size, num_seen=0 if args.no_ea else args.seen,
                              seed=args.seed, calibration_fraction=args.calibration_fraction,
                              textures=args.textures, cache_dir=args.cache, progress=progress,
                              kind=None if args.foreground == "auto" else args.foreground)

    if args.preview is not None:
        return _preview(args, data, synthesis)

    steps, minutes = args.steps, args.minutes
    if steps is None and minutes is None:
        if on_gpu:
            steps = paper_schedule_steps(len(data.normal), batch_size * dist_info.world_size)
            budget = f"the paper schedule: {steps} steps = 700 epochs of {len(data.normal)} images at batch {batch_size}"
        else:
            minutes = CPU_DEFAULT_MINUTES
            budget = (f"a reduced CPU budget of {minutes:g} minutes at batch {batch_size} (no GPU; the paper "
                      "schedule is 700 epochs at batch 64 on a GPU; set --steps or --minutes)")
    else:
        budget = f"{steps} steps" if steps is not None else f"{minutes:g} minutes"
    try:
        snapshots = tuple(int(m) for m in args.snapshot_steps.split(",") if m.strip())
    except ValueError:
        raise PRNError(f"--snapshot-steps takes whole step numbers like 100,200, got {args.snapshot_steps!r}") from None
    settings = TrainSettings(steps=steps, minutes=minutes, batch_size=batch_size, lr=args.lr,
                             weight_decay=args.weight_decay, seed=args.seed, save_every_minutes=args.save_every,
                             snapshot_steps=snapshots, threshold_quantile=args.threshold_quantile)
    if dist_info.is_main:
        logging.getLogger(PROG).info(
            "training %s (%s) on %s: %d normal images (+%d held out for the threshold), %d seen anomalies, "
            "%s textures; device %s x%d; budget: %s", config.preset, config.backbone, data.category.name,
            len(data.normal), len(data.calibration), len(data.seen_names),
            0 if data.textures is None else len(data.textures), device, dist_info.world_size, budget)

    trainer = Trainer(model, data, settings, synthesis, args.out, device, dist_info, progress=not args.quiet,
                      extra_metadata={"command": " ".join([PROG, *sys.argv[1:]]), "budget": budget})
    started = time.perf_counter()
    path = trainer.run(resume=args.resume)
    if path is not None:
        threshold = trainer.last_calibration.get("threshold")
        print(f"{PROG}: wrote {path} after {trainer.step} steps in {(time.perf_counter() - started) / 60:.1f} min; "
              f"final loss {trainer.history.loss[-1] if trainer.history.loss else float('nan'):.4f}; threshold "
              f"{'none' if threshold is None else f'{threshold:.4f}'} from {len(data.calibration)} held-out normal images")
    if dist_info.world_size > 1:
        import torch.distributed as dist
        dist.destroy_process_group()
    return 0


def _device(name: str, dist_info):
    import torch

    from prn_edge.errors import PRNError

    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise PRNError(f"--device {name}: no CUDA GPU is available to this torch ({torch.__version__})")
    if dist_info.world_size > 1:
        import torch.distributed as dist
        if name.startswith("cuda"):
            torch.cuda.set_device(dist_info.local_rank)
            name = f"cuda:{dist_info.local_rank}"
        if not dist.is_initialized():
            dist.init_process_group(backend="nccl" if name.startswith("cuda") else "gloo")
    try:
        return torch.device(name)
    except RuntimeError as exc:
        raise PRNError(f"--device {name}: not a torch device") from exc


def _prepare_out(out: Path, resume: bool) -> None:
    from prn_edge.errors import PRNError

    if out.exists() and not out.is_dir():
        raise PRNError(f"{out}: exists and is not a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise PRNError(f"{out}: cannot create the output folder ({exc.strerror})") from exc
    if not os.access(out, os.W_OK):
        raise PRNError(f"{out}: output folder is not writable")
    if not resume and (out / "train_state.pt").exists():
        raise PRNError(f"{out}: holds an earlier run (train_state.pt): pass --resume to continue it, "
                       "or choose another --out")


def _tqdm_wrap(iterable, desc: str = ""):
    from tqdm import tqdm
    return tqdm(iterable, desc=desc, leave=False, dynamic_ncols=True)


def _preview(args, data, synthesis) -> int:
    import cv2
    import torch

    from prn_edge.data.synthesis import batch_composition, preview_grid
    from prn_edge.errors import PRNError
    from prn_edge.io import atomic_write
    from prn_edge.train.trainer import build_synthesizer

    if args.preview < 1:
        raise PRNError("--preview N needs N >= 1")
    size = _smallest_batch(args.preview, synthesis)
    gen = torch.Generator().manual_seed(args.seed)
    idx = torch.randint(len(data.normal), (size,), generator=gen)
    batch = build_synthesizer(data, synthesis)(data.normal[idx].float() / 255.0, data.foreground[idx].float(), gen)
    _, png = cv2.imencode(".png", cv2.cvtColor(preview_grid(batch, columns=4), cv2.COLOR_RGB2BGR))
    path = args.out / "preview.png"
    with atomic_write(path) as handle:
        handle.write(png.tobytes())
    counts = ", ".join(f"{k} {v}" for k, v in zip(("normal", "EA", "SA"), batch_composition(size, synthesis)))
    print(f"{PROG}: wrote {path} ({size} samples: {counts})")
    return 0


def _smallest_batch(n: int, synthesis) -> int:
    """The smallest batch of at least ``n`` images that holds the normal:EA:SA mix exactly."""
    from prn_edge.data.synthesis import batch_composition
    from prn_edge.errors import PRNError

    for size in range(n, n + 1024):
        try:
            batch_composition(size, synthesis)
            return size
        except PRNError:
            continue
    raise PRNError(f"no batch of {n} to {n + 1023} images holds the synthesis mix exactly")


if __name__ == "__main__":
    sys.exit(main())
