"""The PRN training loop: prototypes, online anomaly synthesis, Adam, resume, calibration.

One process trains on one device; under ``torchrun`` every process runs this same loop
on its own device and DistributedDataParallel averages the gradients (gloo on CPU,
NCCL on GPUs). Rank 0 alone writes files and shows progress.
"""
from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from prn_edge.checkpoint import save_checkpoint, save_torch_atomic
from prn_edge.config import PRNConfig
from prn_edge.contract.model_folder import CHECKPOINT
from prn_edge.data.synthesis import (
    AnomalySynthesizer,
    SynthesisConfig,
    batch_composition,
)
from prn_edge.errors import CheckpointError, PRNError, first_line
from prn_edge.io import remove_stale_temporaries
from prn_edge.model import PRN
from prn_edge.model.deployable import to_unit_float
from prn_edge.model.loss import prn_loss
from prn_edge.train.api import LR_SCHEDULES
from prn_edge.train.data import TrainingData
from prn_edge.train.selection import (
    ValidationSet,
    make_validation_set,
    validation_score,
)

log = logging.getLogger(__name__)

STATE_FORMAT = "prn-edge-train-state"
STATE_FILE = "train_state.pt"
PAPER_EPOCHS = 700


@dataclass
class TrainSettings:
    """Optimisation and bookkeeping of one run (docs/model.md, "Training" defaults).

    Exactly one budget applies: ``steps`` or ``minutes`` (wall clock of the loop).
    ``batch_size`` is per process; under torchrun the global batch is world_size times it.
    """

    steps: int | None = None
    minutes: float | None = None
    batch_size: int = 64
    lr: float = 1e-4
    weight_decay: float = 1e-2
    seed: int = 0
    save_every_minutes: float = 5.0
    snapshot_steps: tuple[int, ...] = ()
    threshold_quantile: float = 1.0
    log_every: int = 10
    lr_schedule: str = "constant"     # the paper's; prn-train's measured defaults (prn_edge.defaults) say cosine
    select_best: bool = False
    validations: int = 10

    def validate(self) -> None:
        if (self.steps is None) == (self.minutes is None):
            raise PRNError("give exactly one training budget: --steps N or --minutes M")
        if self.steps is not None and self.steps < 1:
            raise PRNError(f"--steps must be >= 1, got {self.steps}")
        if self.minutes is not None and self.minutes <= 0:
            raise PRNError(f"--minutes must be > 0, got {self.minutes}")
        if not 0 < self.threshold_quantile <= 1:
            raise PRNError(f"threshold quantile must be in (0, 1], got {self.threshold_quantile}")
        if self.lr <= 0 or self.weight_decay < 0:
            raise PRNError("learning rate must be > 0 and weight decay >= 0")
        if self.lr_schedule not in LR_SCHEDULES:
            raise PRNError(f"unknown learning-rate schedule {self.lr_schedule!r}: choose one of "
                           f"{', '.join(LR_SCHEDULES)}")
        if self.validations < 1:
            raise PRNError(f"validations must be >= 1, got {self.validations}")

    def progress(self, step: int, elapsed: float) -> float:
        """Share of the budget spent, in [0, 1]."""
        spent = step / self.steps if self.steps is not None else elapsed / (self.minutes * 60)
        return min(max(spent, 0.0), 1.0)

    def lr_at(self, progress: float) -> float:
        """``constant``, or ``cosine``: from ``lr`` down to 5 % of it at the end of the budget (the
        budget is known in advance, in steps or minutes, so the decay needs no epoch count)."""
        if self.lr_schedule == "constant":
            return self.lr
        return self.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress)))


def paper_schedule_steps(num_normal: int, batch_size: int, epochs: int = PAPER_EPOCHS) -> int:
    """Steps of the paper schedule: an epoch is one pass over the normal images, and every
    image of a batch (normal, or turned into EA/SA) starts as one normal image."""
    return epochs * math.ceil(num_normal / batch_size)


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls) -> "DistInfo":
        world = int(os.environ.get("WORLD_SIZE", "1"))
        return cls(rank=int(os.environ.get("RANK", "0")), world_size=world,
                   local_rank=int(os.environ.get("LOCAL_RANK", "0")))


@dataclass
class History:
    steps: list[int] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    loss: list[float] = field(default_factory=list)

    def add(self, step: int, seconds: float, loss: float) -> None:
        self.steps.append(step)
        self.seconds.append(round(seconds, 2))
        self.loss.append(round(loss, 6))

    def thinned(self, max_points: int = 400) -> dict[str, list]:
        stride = max(1, math.ceil(len(self.steps) / max_points))
        return {"step": self.steps[::stride], "seconds": self.seconds[::stride], "loss": self.loss[::stride]}


class Trainer:
    """Trains ``model`` on ``data``; call :meth:`run`.

    Args:
        model: a PRN whose encoder is built (prototypes are built here unless resuming).
        data: the loaded category.
        settings: budget and optimiser.
        synthesis: anomaly synthesis settings (ablations: ``use_ea``/``use_sa``).
        out_dir: where the state, snapshots and the final checkpoint go (rank 0).
        device: torch device of this process.
        dist_info: rank and world size (single process by default).
        progress: True to show a tqdm bar (rank 0 only).
    """

    def __init__(self, model: PRN, data: TrainingData, settings: TrainSettings, synthesis: SynthesisConfig,
                 out_dir: Path, device: torch.device, dist_info: DistInfo | None = None, progress: bool = True,
                 extra_metadata: dict[str, Any] | None = None):
        settings.validate()
        batch_composition(settings.batch_size, synthesis)  # fail early on a batch that can't hold the mix
        self.model = model.to(device)
        self.data = data
        self.settings = settings
        self.synthesis = synthesis
        self.out_dir = Path(out_dir)
        self.device = device
        self.dist = dist_info or DistInfo()
        self.progress = progress and self.dist.is_main
        self.extra_metadata = extra_metadata or {}
        self.synthesizer = build_synthesizer(data, synthesis).to(device)
        self.normal = data.normal.to(device)             # (N, 3, S, S) uint8
        self.foreground = data.foreground.to(device)     # (N, 1, S, S) bool
        # Per-rank streams: different batches on every rank, repeatable for a seed.
        self.sampler_gen = torch.Generator().manual_seed(settings.seed * 1009 + self.dist.rank)
        self.synth_gen = torch.Generator().manual_seed(settings.seed * 7919 + self.dist.rank + 1)
        self.optimizer: torch.optim.Optimizer | None = None
        self.step = 0
        self.elapsed = 0.0
        self.history = History()
        self.prototype_stats: dict[str, Any] = {}
        self._order: list[int] = []
        self._snapshots_done: set[int] = set()
        self.last_calibration: dict[str, Any] = {}
        self.last_loss: float | None = None        # the last step's loss (history keeps every log_every-th)
        self.saved_step: int | None = None         # the step of the last training state on disk
        # End-point selection (prn_edge.train.selection): validation scores by step, the best state.
        self.validation: ValidationSet | None = None
        self.validated: list[tuple[int, float]] = []
        self.best_state: dict[str, torch.Tensor] | None = None
        self.best_step: int | None = None

    # -- state -----------------------------------------------------------------------------
    def _state(self) -> dict[str, Any]:
        return {
            "format": STATE_FORMAT, "config": self.model.config.to_dict(),
            "settings": _plain(asdict(self.settings)), "synthesis": asdict(self.synthesis),
            "train_names": self.data.train_names, "seen_names": self.data.seen_names,
            "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "step": self.step, "elapsed": self.elapsed, "order": self._order,
            "sampler_gen": self.sampler_gen.get_state(), "synth_gen": self.synth_gen.get_state(),
            "history": asdict(self.history), "prototype_stats": self.prototype_stats,
            "snapshots_done": sorted(self._snapshots_done),
            "validated": [list(v) for v in self.validated], "best_state": self.best_state, "best_step": self.best_step,
        }

    def save_state(self) -> None:
        if not self.dist.is_main:
            return
        save_torch_atomic(self.out_dir / STATE_FILE, self._state())
        self.saved_step = self.step

    def load_state(self, path: Path) -> None:
        """Resume from ``path``; refuses a state from a different model, data or budget."""
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # truncated, corrupted or unsafe: all mean "cannot resume"
            raise CheckpointError(f"{path}: cannot resume from it ({type(exc).__name__}: {first_line(exc)})") from exc
        if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
            raise CheckpointError(f"{path}: not a PRN Edge training state")
        try:      # read as a config, so a state from before a field existed takes that field's old value
            saved = PRNConfig.from_dict(state["config"])
        except PRNError as exc:
            raise CheckpointError(f"{path}: its model config does not read: {exc}") from None
        if saved != self.model.config:
            now = self.model.config.to_dict()
            changed = ", ".join(f"{k} (saved {v!r}, now {now[k]!r})" for k, v in saved.to_dict().items()
                                if k != "preset" and v != now[k])
            raise CheckpointError(f"{path}: saved with a different model config: {changed}; resume with the same "
                                  "options, or start a new --out folder")
        if state["train_names"] != self.data.train_names or state["seen_names"] != self.data.seen_names:
            raise CheckpointError(f"{path}: saved for different training data or seed; resume with the same "
                                  "--data and --seed, or start a new --out folder")
        self.model.load_state_dict(state["model"])
        self._make_optimizer()
        self.optimizer.load_state_dict(state["optimizer"])
        self.step, self.elapsed, self._order = state["step"], state["elapsed"], list(state["order"])
        self.sampler_gen.set_state(state["sampler_gen"])
        self.synth_gen.set_state(state["synth_gen"])
        self.history = History(**state["history"])
        self.prototype_stats = state["prototype_stats"]
        self._snapshots_done = set(state["snapshots_done"])
        self.validated = [(int(a), float(b)) for a, b in state.get("validated", [])]
        self.best_state, self.best_step = state.get("best_state"), state.get("best_step")
        if self.history.steps and self.history.steps[-1] == self.step:
            self.last_loss = self.history.loss[-1]
        log.info("resumed from %s at step %d (%.1f min trained)", path, self.step, self.elapsed / 60)

    def _make_optimizer(self) -> None:
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.Adam(params, lr=self.settings.lr, weight_decay=self.settings.weight_decay)

    # -- data ------------------------------------------------------------------------------
    def _next_indices(self, n: int) -> torch.Tensor:
        """The next ``n`` normal images of a shuffled pass (a new shuffle each epoch)."""
        out: list[int] = []
        while len(out) < n:
            if not self._order:
                self._order = torch.randperm(len(self.normal), generator=self.sampler_gen).tolist()
            take = min(n - len(out), len(self._order))
            out += self._order[:take]
            self._order = self._order[take:]
        return torch.tensor(out, device=self.device)

    def make_batch(self):
        """One synthesized training batch (images, masks) on the device."""
        idx = self._next_indices(self.settings.batch_size)
        normal = to_unit_float(self.normal[idx])
        return self.synthesizer(normal, self.foreground[idx].float(), self.synth_gen)

    # -- the run ---------------------------------------------------------------------------
    def build_prototypes(self) -> None:
        batches = (to_unit_float(self.normal[i:i + 16]) for i in range(0, len(self.normal), 16))
        self.prototype_stats = self.model.build_prototypes(batches, seed=self.settings.seed)

    def run(self, resume: bool = False) -> Path | None:
        """Train to the budget and write ``checkpoint.pt``; returns its path (rank 0).

        Raises:
            PRNError: bad settings or data, an interrupt (after saving the state), or a write that
                failed (a full disk): one line with the step reached and the last saved state.
        """
        try:
            return self._run(resume)
        except OSError as exc:
            where = exc.filename or self.out_dir
            saved = (f"the last saved state is step {self.saved_step} in {self.out_dir / STATE_FILE}: make room "
                     "and continue with the same command and --resume" if self.saved_step is not None
                     else "no training state was saved")
            raise PRNError(f"{where}: {exc.strerror or exc} at step {self.step}; {saved}") from exc

    def _run(self, resume: bool) -> Path | None:
        state_path = self.out_dir / STATE_FILE
        if self.dist.is_main:   # what a killed run's atomic writes left behind (issue 14, D9)
            remove_stale_temporaries(self.out_dir, STATE_FILE, CHECKPOINT)
        if resume:
            if not state_path.exists():
                raise PRNError(f"{state_path}: nothing to resume (no training state in {self.out_dir})")
            self.load_state(state_path)
            self.saved_step = self.step
        else:
            t0 = time.perf_counter()
            self.build_prototypes()
            self.prototype_stats["seconds"] = round(time.perf_counter() - t0, 2)
            self._make_optimizer()
        if self.settings.select_best:
            self.validation = make_validation_set(self.data.calibration, self.data.calibration_foreground,
                                                  self.synthesizer, self.settings.seed, device=self.device)
            if self.validation is None:
                log.warning("fewer than 2 held-out normal images: the final state is kept (no end-point selection)")
            elif not self.validated:
                self._validate()                 # step 0: the prototypes (and the prior) alone
        train_model = self._wrap_ddp()
        self.model.train()
        bar = self._progress_bar()
        last_save = time.perf_counter()
        started = time.perf_counter() - self.elapsed
        try:
            while not self._budget_spent():
                batch = self.make_batch()
                out = train_model(batch.images)
                loss = prn_loss(out.logits, batch.masks)
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                lr = self.settings.lr_at(self.settings.progress(self.step, self.elapsed))
                for group in self.optimizer.param_groups:
                    group["lr"] = lr
                self.optimizer.step()
                self.step += 1
                self.elapsed = time.perf_counter() - started
                value = self.last_loss = float(loss.detach())
                if not math.isfinite(value):
                    raise PRNError(f"the loss became {value} at step {self.step}; lower --lr or check the data")
                if self.step % self.settings.log_every == 0 or self.step == 1:
                    self.history.add(self.step, self.elapsed, value)
                self._update_bar(bar, value)
                self._maybe_snapshot()
                self._maybe_validate()
                if time.perf_counter() - last_save > self.settings.save_every_minutes * 60:
                    self.save_state()
                    last_save = time.perf_counter()
        except KeyboardInterrupt:
            self.save_state()
            if bar is not None:
                bar.close()
            raise PRNError(f"interrupted at step {self.step}; state saved to {state_path}: "
                           "continue with the same command and --resume") from None
        if bar is not None:
            bar.close()
        if self.last_loss is not None and (not self.history.steps or self.history.steps[-1] != self.step):
            self.history.add(self.step, self.elapsed, self.last_loss)   # the curve ends at the last step
        if self.validation is not None and (not self.validated or self.validated[-1][0] != self.step):
            self._validate()
        self.save_state()
        self._keep_best()
        if not self.dist.is_main:
            return None
        return self.write_checkpoint(self.out_dir / CHECKPOINT)

    def _wrap_ddp(self):
        if self.dist.world_size == 1:
            return self.model
        from torch.nn.parallel import DistributedDataParallel

        ids = [self.device.index] if self.device.type == "cuda" else None
        # broadcast_buffers=False: the prototype banks are identical on every rank (same
        # data, same seed) and need no re-broadcast each step; BatchNorm keeps per-rank
        # statistics, and rank 0's are saved.
        return DistributedDataParallel(self.model, device_ids=ids, broadcast_buffers=False)

    def _budget_spent(self) -> bool:
        s = self.settings
        done = self.step >= s.steps if s.steps is not None else self.elapsed >= s.minutes * 60
        if self.dist.world_size > 1:  # every rank must stop at the same step
            flag = torch.tensor([1.0 if done else 0.0], device=self.device)
            dist.broadcast(flag, src=0)
            done = bool(flag.item())
        return done

    def _maybe_snapshot(self) -> None:
        """Full checkpoints at the requested steps (learning curves: metrics against time)."""
        if self.step in self.settings.snapshot_steps and self.step not in self._snapshots_done:
            self._snapshots_done.add(self.step)
            if self.dist.is_main:
                (self.out_dir / "snapshots").mkdir(exist_ok=True)
                self.write_checkpoint(self.out_dir / "snapshots" / f"checkpoint_step{self.step:06d}.pt")
                self.model.train()

    # -- end-point selection ---------------------------------------------------------------------
    def _maybe_validate(self) -> None:
        if self.validation is None:
            return
        done = len(self.validated) - 1            # validations after step 0
        due = self.settings.progress(self.step, self.elapsed) * self.settings.validations
        if due >= done + 1 and self.settings.progress(self.step, self.elapsed) < 1.0:
            self._validate()

    def _validate(self) -> None:
        score = validation_score(self.model, self.validation, self.device)
        self.model.train()
        self.validated.append((self.step, round(score, 6)))
        if self.best_step is None or score > max(v for s, v in self.validated if s == self.best_step):
            self.best_step = self.step
            self.best_state = {k: v.detach().clone().cpu() for k, v in self.model.state_dict().items()}
        log.info("validation at step %d: %.4f (best: step %d)", self.step, score, self.best_step)

    def _keep_best(self) -> None:
        """Load the best validated state into the model (the checkpoint's weights)."""
        if self.best_state is not None and self.best_step != self.step:
            self.model.load_state_dict(self.best_state)
            log.info("keeping step %d of %d: its validation score %.4f is the best", self.best_step, self.step,
                     dict(self.validated)[self.best_step])

    def selection_record(self) -> dict[str, Any]:
        if self.validation is None:
            return {"method": "final step" + (" (fewer than 2 held-out images to validate on)"
                                              if self.settings.select_best else "")}
        normal, anomalous = self.validation.counts
        return {"method": "best validation score (mean of image AUROC and pixel AP)",
                "validation_images": {"normal": normal, "synthesized_anomalous": anomalous},
                "selected_step": self.best_step, "final_step": self.step,
                "scores": [list(v) for v in self.validated]}

    # -- calibration and the checkpoint ----------------------------------------------------------
    @torch.no_grad()
    def calibrate(self) -> dict[str, Any]:
        """Decision threshold from held-out normal images (never trained on).

        threshold = the ``threshold_quantile`` quantile of their image scores (1.0: the
        largest, so no calibration image is flagged).
        """
        self.model.eval()
        if len(self.data.calibration) == 0:
            log.warning("no held-out normal images: no threshold calibrated (pass one at deployment)")
            return {"threshold": None, "num_images": 0}
        scores = []
        for i in range(0, len(self.data.calibration), 16):
            batch = to_unit_float(self.data.calibration[i:i + 16].to(self.device))
            scores.append(self.model(batch).score.cpu())
        scores = torch.cat(scores)
        threshold = float(torch.quantile(scores.double(), self.settings.threshold_quantile))
        return {"threshold": threshold, "num_images": len(scores), "quantile": self.settings.threshold_quantile,
                "scores": [round(float(s), 6) for s in scores]}

    def write_checkpoint(self, path: Path) -> Path:
        calibration = self.last_calibration = self.calibrate()
        device_name = torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else "cpu"
        s = self.settings
        metadata = {
            "data": self.data.record(),
            "training": {
                "steps": self.step, "seconds": round(self.elapsed, 1), "batch_size": s.batch_size,
                "world_size": self.dist.world_size, "lr": s.lr, "weight_decay": s.weight_decay, "seed": s.seed,
                "budget": {"steps": s.steps, "minutes": s.minutes},
                "epochs": round(self.step * s.batch_size * self.dist.world_size / len(self.normal), 2),
                "device": device_name, "synthesis": asdict(self.synthesis), "loss_curve": self.history.thinned(),
                # What the floats depend on besides the versions: the thread count that split each CPU
                # reduction and the kernels' instruction set (AVX512, AVX2 ...).
                "threads": torch.get_num_threads(), "cpu_capability": torch.backends.cpu.get_cpu_capability(),
                "prototypes": self.prototype_stats, "lr_schedule": s.lr_schedule,
                "selection": self.selection_record(),
            },
            "calibration": calibration,
            **self.extra_metadata,
        }
        save_checkpoint(path, self.model, threshold=calibration["threshold"], metadata=_plain(metadata))
        return path

    # -- progress --------------------------------------------------------------------------
    def _progress_bar(self):
        if not self.progress:
            return None
        from tqdm import tqdm

        s = self.settings
        if s.steps is not None:
            return tqdm(total=s.steps, initial=self.step, desc="training", unit="step", dynamic_ncols=True)
        return tqdm(total=round(s.minutes * 60), initial=round(self.elapsed), desc="training", unit="s",
                    dynamic_ncols=True, bar_format="{l_bar}{bar}| {n:.0f}/{total:.0f}s [{elapsed}<{remaining}{postfix}]")

    def _update_bar(self, bar, loss: float) -> None:
        if bar is None:
            return
        rate = self.step * self.settings.batch_size * self.dist.world_size / max(self.elapsed, 1e-9)
        bar.set_postfix_str(f"step {self.step}, loss {loss:.4f}, {rate:.1f} img/s", refresh=False)
        if self.settings.steps is not None:
            bar.update(1)
        else:
            bar.update(min(round(self.elapsed), bar.total) - bar.n)


def build_synthesizer(data: TrainingData, cfg: SynthesisConfig) -> AnomalySynthesizer:
    """The run's anomaly synthesizer. Without textures there is no heterologous source, so
    every simulated anomaly becomes homologous (load_training_data has logged why)."""
    if data.textures is None and cfg.hea_probability > 0:
        from dataclasses import replace
        cfg = replace(cfg, hea_probability=0.0)
    seen_images, seen_masks = (data.seen_images, data.seen_masks) if cfg.use_ea else (None, None)
    return AnomalySynthesizer(seen_images, seen_masks, data.textures, cfg)


def _plain(value: Any) -> Any:
    """Tuples to lists, recursively (checkpoint metadata is plain JSON-like data)."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value
