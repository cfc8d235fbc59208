"""Training as a function: :func:`train` does what ``prn-train`` does, without argv.

``prn-train`` (:mod:`prn_edge.train.cli`) parses its flags, sets up logging and calls
:func:`train` with keyword arguments of the same names and defaults; the demo and the
benchmark scripts call it directly::

    from prn_edge.api import train
    result = train("../shared/data/mvtec_ad/bottle", "runs/bottle", config="edge", steps=360)
    result.checkpoint          # runs/bottle/checkpoint.pt

torch is imported when :func:`train` runs, not when this module is imported.
"""
from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prn_edge.errors import PRNError
from prn_edge.validate import MAX_SEED, MAX_THREADS, check_number

__all__ = ["CPU_DEFAULT_BATCH", "CPU_DEFAULT_MINUTES", "DEFAULT_CACHE", "FOREGROUNDS", "TrainResult", "train"]

PROG = "prn-train"                 # the tool this API is the body of (its messages say so)
CPU_DEFAULT_MINUTES = 10.0
CPU_DEFAULT_BATCH = 8
DEFAULT_CACHE = Path.home() / ".cache" / "prn-edge" / "foreground"
FOREGROUNDS = ("auto", "object", "texture")
LR_SCHEDULES = ("constant", "cosine")   # prn_edge.train.trainer.TrainSettings.lr_at

log = logging.getLogger("prn_edge.train")


@dataclass
class TrainResult:
    """What :func:`train` did.

    Attributes:
        out: the output folder.
        checkpoint: ``OUT/checkpoint.pt`` (None for a preview, and on the non-main processes of a
            distributed run).
        preview: ``OUT/preview.png`` when ``preview`` was asked for, else None.
        preview_counts: normal / EA / SA samples in the preview.
        steps: optimiser steps done (the total, a resumed run included).
        seconds: wall clock of this call's training loop.
        final_loss: the last step's loss (None: no step was taken).
        threshold: the calibrated decision threshold (None: not calibrated).
        calibration_images: held-out normal images the threshold came from.
        budget: the training budget, in words.
    """

    out: Path
    checkpoint: Path | None = None
    preview: Path | None = None
    preview_counts: dict[str, int] | None = None
    steps: int = 0
    seconds: float = 0.0
    final_loss: float | None = None
    threshold: float | None = None
    calibration_images: int = 0
    budget: str = ""

    def summary_text(self) -> str:
        """The line ``prn-train`` prints at the end."""
        if self.preview is not None:
            counts = ", ".join(f"{k} {v}" for k, v in (self.preview_counts or {}).items())
            return f"{PROG}: wrote {self.preview} ({sum((self.preview_counts or {}).values())} samples: {counts})"
        if self.checkpoint is None:
            return f"{PROG}: done (not the main process: nothing written here)"
        loss = float("nan") if self.final_loss is None else self.final_loss
        threshold = "none" if self.threshold is None else f"{self.threshold:.4f}"
        return (f"{PROG}: wrote {self.checkpoint} after {self.steps} steps in {self.seconds / 60:.1f} min; "
                f"final loss {loss:.4f}; threshold {threshold} from {self.calibration_images} held-out normal images")


def _snapshot_steps(value: str | Iterable[int] | None) -> tuple[int, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        try:
            return tuple(int(m) for m in value.split(",") if m.strip())
        except ValueError:
            raise PRNError(f"--snapshot-steps takes whole step numbers like 100,200, got {value!r}") from None
    try:
        return tuple(int(m) for m in value)
    except (TypeError, ValueError):
        raise PRNError(f"--snapshot-steps takes whole step numbers like 100,200, got {value!r}") from None


def _prior_scales(value: str | Iterable[int] | None) -> tuple[int, ...] | None:
    """``--prior-scales``: "2,3" or a sequence of ints, as a tuple (None: the preset's)."""
    if value is None:
        return None
    try:
        parts = value.split(",") if isinstance(value, str) else list(value)
        scales = tuple(int(p) for p in parts)
    except (TypeError, ValueError):
        raise PRNError(f"--prior-scales {value!r}: give scales of 1, 2, 3 separated by commas, e.g. 2,3") from None
    if not scales or any(s not in (1, 2, 3) for s in scales) or len(set(scales)) != len(scales):
        raise PRNError(f"--prior-scales {value!r}: give distinct scales of 1, 2, 3, e.g. 2,3")
    return tuple(sorted(scales))


def _check_choice(flag: str, value, choices) -> None:
    if value is not None and value not in choices:
        raise PRNError(f"{flag} {value!r}: choose from {', '.join(map(str, choices))}")


def train(data: str | os.PathLike, out: str | os.PathLike, *, config: str = "paper", backbone: str | None = None,
          backbone_weights: str | os.PathLike | None = None, residual: str | None = None,
          msa_layers: int | None = None, msa_block: str | None = None, match: str | None = None, match_pooling: int | None = None,
          match_pooling_border: str | None = None, prior: bool | None = None,
          prior_scales: str | Iterable[int] | None = None, map_smoothing: float | None = None,
          decoder_map_weight: float | None = None, score_prior_share: float | None = None, steps: int | None = None, minutes: float | None = None, batch_size: int | None = None,
          defaults: str = "measured", lr: float | None = None, weight_decay: float = 1e-2,
          lr_schedule: str | None = None, select_best: bool | None = None,
          seed: int = 0,
          seen: int = 10, calibration_fraction: float = 0.1, threshold_quantile: float = 1.0,
          textures: str | os.PathLike | None = None, foreground: str = "auto", no_ea: bool = False,
          no_sa: bool = False, device: str = "auto", threads: int | None = None, resume: bool = False,
          save_every: float = 5.0, snapshot_steps: str | Iterable[int] | None = "",
          cache: str | os.PathLike = DEFAULT_CACHE, preview: int | None = None, quiet: bool = False,
          command: str | None = None) -> TrainResult:
    """Train PRN on one MVTec-layout category and write ``OUT/checkpoint.pt`` (``prn-train``).

    k-means prototypes from the normal training images, then Adam on batches of normal images
    mixed with synthesized anomalies; a share of the normal images is held out to calibrate the
    threshold. The arguments are ``prn-train``'s flags (see ``prn-train --help``), with the same
    defaults: None takes the value of the ``defaults`` set (:mod:`prn_edge.defaults`: ``measured``,
    or ``paper`` for PRN as published), the preset's for the architecture; ``snapshot_steps`` also takes a sequence of ints, ``command`` is what the checkpoint
    records as the command that made it (default: this call). Progress goes to the ``prn-train``
    logger (INFO) and, unless ``quiet``, to tqdm bars on stderr.

    With no budget (``steps`` and ``minutes`` both None): the paper schedule (700 epochs) on a
    GPU, :data:`CPU_DEFAULT_MINUTES` at batch :data:`CPU_DEFAULT_BATCH` on a CPU. Under
    ``torchrun`` the call is one process of a distributed run (its process group is set up and
    torn down here).

    Returns:
        A :class:`TrainResult`.

    Raises:
        PRNError: bad arguments, data, backbone weights or output folder (one-line messages),
            or a run that cannot go on (a non-finite loss, an interruption: state saved).
    """
    from prn_edge import defaults as default_sets
    from prn_edge.config import (
        BACKBONE_NAMES,
        MSA_BLOCKS,
        POOLING_BORDERS,
        PRESETS,
        PROTOTYPE_MATCHES,
        RESIDUAL_MODES,
    )

    _check_choice("--defaults", defaults, default_sets.DEFAULT_SETS)
    chosen = default_sets.TRAINING[defaults]
    lr = chosen["lr"] if lr is None else lr
    lr_schedule = chosen["lr_schedule"] if lr_schedule is None else lr_schedule
    select_best = chosen["select_best"] if select_best is None else select_best
    _check_choice("--config", config, sorted(PRESETS))
    _check_choice("--backbone", backbone, BACKBONE_NAMES)
    _check_choice("--residual", residual, RESIDUAL_MODES)
    _check_choice("--msa-block", msa_block, MSA_BLOCKS)
    _check_choice("--match", match, PROTOTYPE_MATCHES)
    _check_choice("--match-pooling-border", match_pooling_border, POOLING_BORDERS)
    prior_scales = _prior_scales(prior_scales)
    _check_choice("--lr-schedule", lr_schedule, LR_SCHEDULES)
    _check_choice("--foreground", foreground, FOREGROUNDS)
    if steps is not None and minutes is not None:
        raise PRNError("give one training budget, --steps N or --minutes M, not both")
    # The CLI's argument types check these too; the API checks them for Python callers.
    for name, value, bounds in (("--steps", steps, {"low": 1, "integer": True}),
                                ("--minutes", minutes, {"low": 0, "low_open": True}),
                                ("--batch-size", batch_size, {"low": 1, "integer": True}),
                                ("--msa-layers", msa_layers, {"low": 1, "integer": True}),
                                ("--match-pooling", match_pooling, {"low": 1, "high": 15, "integer": True}),
                                ("--map-smoothing", map_smoothing, {"low": 0}),
                                ("--decoder-map-weight", decoder_map_weight, {"low": 0, "low_open": True, "high": 1}),
                                ("--score-prior-share", score_prior_share, {"low": 0, "high": 1}),
                                ("--lr", lr, {"low": 0, "low_open": True, "optional": False}),
                                ("--weight-decay", weight_decay, {"low": 0, "optional": False}),
                                ("--seed", seed, {"low": 0, "high": MAX_SEED, "integer": True, "optional": False}),
                                ("--seen", seen, {"low": 0, "integer": True, "optional": False}),
                                ("--calibration-fraction", calibration_fraction, {"low": 0, "high": 1,
                                                                                  "optional": False}),
                                ("--threshold-quantile", threshold_quantile, {"low": 0, "low_open": True, "high": 1,
                                                                              "optional": False}),
                                ("--threads", threads, {"low": 0, "high": MAX_THREADS, "integer": True}),
                                ("--save-every", save_every, {"low": 0, "low_open": True, "optional": False}),
                                ("--preview", preview, {"low": 1, "integer": True})):
        check_number(name, value, **bounds)
    snapshots = _snapshot_steps(snapshot_steps)
    data, out = Path(data), Path(out)
    cache = Path(cache)
    backbone_weights = None if backbone_weights is None else Path(backbone_weights)
    from prn_edge.data.synthesis.textures import BUILTIN_TEXTURES

    if textures is None:      # measured: the built-in crops; paper: a DTD folder near the data, else none
        textures = chosen["textures"]
    if textures is not None and str(textures) != BUILTIN_TEXTURES:
        textures = Path(textures)

    import torch

    from prn_edge.config import get_config
    from prn_edge.data.synthesis import SynthesisConfig
    from prn_edge.train.data import load_training_data
    from prn_edge.train.trainer import (
        DistInfo,
        Trainer,
        TrainSettings,
        paper_schedule_steps,
    )

    if threads:
        torch.set_num_threads(threads)
    dist_info = DistInfo.from_env()
    dev = _device(device, dist_info)
    on_gpu = dev.type == "cuda"
    if batch_size is None:
        batch_size = 64 if on_gpu else CPU_DEFAULT_BATCH
    given = dict(backbone=backbone, residual=residual, msa_layers=msa_layers, msa_block=msa_block, prototype_match=match,
                 match_pooling=match_pooling, match_pooling_border=match_pooling_border, residual_prior=prior,
                 prior_scales=prior_scales, map_smoothing=map_smoothing, decoder_map_weight=decoder_map_weight,
                 score_prior_share=score_prior_share)
    chosen_model = dict(default_sets.MODEL[defaults])
    if prior is not None and not prior:     # the set's decoder weight and score share need the prior --no-prior removes
        chosen_model.pop("decoder_map_weight", None)
        chosen_model.pop("score_prior_share", None)
    model_config = get_config(config, **{**chosen_model, **{k: v for k, v in given.items() if v is not None}})
    synthesis = SynthesisConfig(use_ea=not no_ea, use_sa=not no_sa)
    progress = None if quiet or not dist_info.is_main else _tqdm_wrap

    if not data.is_dir():
        raise PRNError(f"{data}: data folder does not exist")
    # The model first: a missing backbone weight file fails before any data is read.
    from prn_edge.model import PRN
    from prn_edge.model.backbones import build_backbone

    torch.manual_seed(seed)  # weight initialisation
    model = PRN(model_config, backbone=build_backbone(model_config.backbone, backbone_weights))
    _prepare_out(out, resume)
    training_data = load_training_data(data, image_size=model_config.image_size, num_seen=0 if no_ea else seen,
                                       seed=seed, calibration_fraction=calibration_fraction, textures=textures,
                                       cache_dir=cache, progress=progress,
                                       kind=None if foreground == "auto" else foreground)

    if preview is not None:
        return _preview(out, preview, seed, training_data, synthesis)

    if steps is None and minutes is None:
        if on_gpu:
            steps = paper_schedule_steps(len(training_data.normal), batch_size * dist_info.world_size)
            budget = (f"the paper schedule: {steps} steps = 700 epochs of {len(training_data.normal)} images "
                      f"at batch {batch_size}")
        else:
            minutes = CPU_DEFAULT_MINUTES
            budget = (f"a reduced CPU budget of {minutes:g} minutes at batch {batch_size} (no GPU; the paper "
                      "schedule is 700 epochs at batch 64 on a GPU; set --steps or --minutes)")
    else:
        budget = f"{steps} steps" if steps is not None else f"{minutes:g} minutes"
    settings = TrainSettings(steps=steps, minutes=minutes, batch_size=batch_size, lr=lr,
                             weight_decay=weight_decay, seed=seed, save_every_minutes=save_every,
                             snapshot_steps=snapshots, threshold_quantile=threshold_quantile,
                             lr_schedule=lr_schedule, select_best=select_best)
    if dist_info.is_main:
        log.info("training %s (%s) on %s: %d normal images (+%d held out for the threshold), %d seen anomalies, "
                 "%s textures; device %s x%d; budget: %s", model_config.preset, model_config.backbone,
                 training_data.category.name, len(training_data.normal), len(training_data.calibration),
                 len(training_data.seen_names),
                 0 if training_data.textures is None else len(training_data.textures), dev,
                 dist_info.world_size, budget)

    if command is None:
        command = f"prn_edge.api.train(data={str(data)!r}, out={str(out)!r}, config={config!r}, ...)"
    trainer = Trainer(model, training_data, settings, synthesis, out, dev, dist_info, progress=not quiet,
                      extra_metadata={"command": command, "budget": budget, "defaults": defaults})
    started = time.perf_counter()
    try:
        path = trainer.run(resume=resume)
    finally:
        if dist_info.world_size > 1:
            import torch.distributed as dist
            if dist.is_initialized():
                dist.destroy_process_group()
    loss = trainer.last_loss
    threshold = trainer.last_calibration.get("threshold")
    return TrainResult(out=out, checkpoint=path, steps=trainer.step, seconds=time.perf_counter() - started,
                       final_loss=None if loss is None or not math.isfinite(loss) else float(loss),
                       threshold=None if threshold is None else float(threshold),
                       calibration_images=len(training_data.calibration), budget=budget)


def _device(name: str, dist_info):
    import torch

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
    from prn_edge.io import make_output_dir

    make_output_dir(out)
    if not resume and (out / "train_state.pt").exists():
        raise PRNError(f"{out}: holds an earlier run (train_state.pt): pass --resume to continue it, "
                       "or choose another --out")


def _tqdm_wrap(iterable, desc: str = ""):
    from tqdm import tqdm
    return tqdm(iterable, desc=desc, leave=False, dynamic_ncols=True)


def _preview(out: Path, n: int, seed: int, data, synthesis) -> TrainResult:
    import cv2
    import torch

    from prn_edge.data.synthesis import batch_composition, preview_grid
    from prn_edge.io import atomic_write
    from prn_edge.model.deployable import to_unit_float
    from prn_edge.train.trainer import build_synthesizer

    size = _smallest_batch(n, synthesis)
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randint(len(data.normal), (size,), generator=gen)
    batch = build_synthesizer(data, synthesis)(to_unit_float(data.normal[idx]), data.foreground[idx].float(), gen)
    _, png = cv2.imencode(".png", cv2.cvtColor(preview_grid(batch, columns=4), cv2.COLOR_RGB2BGR))
    path = out / "preview.png"
    with atomic_write(path) as handle:
        handle.write(png.tobytes())
    counts: dict[str, Any] = dict(zip(("normal", "EA", "SA"), batch_composition(size, synthesis)))
    return TrainResult(out=out, preview=path, preview_counts=counts, calibration_images=len(data.calibration))


def _smallest_batch(n: int, synthesis) -> int:
    """The smallest batch of at least ``n`` images that holds the normal:EA:SA mix exactly."""
    from prn_edge.data.synthesis import batch_composition

    for size in range(n, n + 1024):
        try:
            batch_composition(size, synthesis)
            return size
        except PRNError:
            continue
    raise PRNError(f"no batch of {n} to {n + 1023} images holds the synthesis mix exactly")
