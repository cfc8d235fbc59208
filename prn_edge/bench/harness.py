"""The benchmark harness: every engine timed per stage, interleaved in short rounds.

One *iteration* of a cell (engine, batch size B) is one call of the runtime's batched
:class:`~prn_edge.runtime.pipeline.Pipeline` (the path ``prn-inspect`` runs) on B camera-sized
BGR frames (default 1280x720), timed by the pipeline's own stages:

- ``preprocess``: the frames -> one uint8 (B, S, S, 3) batch;
- ``compute``: ``engine.predict(batch)``. Where an engine separates host-to-device copy,
  compute and device-to-host copy (the contract's ``last_timings``) they are split out as
  ``h2d``, ``compute``, ``d2h``; on the CPU backends there is no transfer, so these stages do
  not exist and ``compute`` is the whole call;
- ``postprocess``: defect regions and the decision of every frame.

Interleaving: after each engine's warm-up, rounds visit every cell in turn (the starting
cell rotates by one each round), each visit lasting about ``round_s``; rounds repeat until
``duration_s`` is spent and every cell holds ``min_samples`` iterations (at most ``max_s``,
by default 4 x ``duration_s``). A slow spell of the machine then hits every backend alike, and ratios are
taken per round (:func:`prn_edge.bench.stats.paired_ratio`).

Memory: engines are loaded one at a time; each gets the growth of the process's resident set
(RSS) from just before it was loaded to the highest value seen during its warm-up. On a CPU
that is the honest measure available without one process per backend, but it is an
*attribution* within one process: memory the allocator kept from an earlier backend can be
reused by a later one (under-counting it), so run ``--backends X`` alone for an isolated number.
"""
from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from prn_edge.bench.stats import MIN_SAMPLES, instability, latency_stats, paired_ratio
from prn_edge.contract.engine import DEVICE_STAGES
from prn_edge.errors import PRNError
from prn_edge.runtime.pipeline import STAGES

__all__ = [
    "STAGES",
    "BenchRun",
    "BenchSettings",
    "CellResult",
    "EngineRun",
    "rss_bytes",
    "run_benchmark",
    "synthetic_frames",
]


COUNTED_MAX_S = 600.0   # BenchSettings.counted: the rounds stop on their count; this only guards a hang


@dataclass(frozen=True)
class BenchSettings:
    """How long and what to measure.

    Attributes:
        batches: batch sizes.
        warmup_s: warm-up seconds per engine (spread over its batch sizes; at least one
            iteration each).
        duration_s: measured seconds of the interleaved rounds (all cells together).
        round_s: seconds of one visit to a cell (at least one iteration).
        min_samples: iterations every cell needs before the run may stop.
        max_s: the hard stop of the rounds, even short of ``min_samples`` (None: 4 x ``duration_s``).
        frame_hw: the camera frame (height, width) that preprocessing resizes.
        resize: resize policy (``stretch``, ``center-crop``, ``letterbox``).
        reference: key of the engine that ratios refer to (``torch:fp32``); None or absent:
            the first engine.
        seed: seed of the synthetic frames.
        threshold: decision threshold (None: the model's calibrated one; an uncalibrated model
            needs one, as in prn-inspect).
        require_threshold: False only for timing the engines alone (prn-export's latency table):
            an uncalibrated model is then run without regions and decisions.
    """

    batches: tuple[int, ...] = (1, 8, 32)
    warmup_s: float = 2.0
    duration_s: float = 20.0
    round_s: float = 0.3
    min_samples: int = MIN_SAMPLES
    max_s: float | None = None
    frame_hw: tuple[int, int] = (720, 1280)
    resize: str = "stretch"
    reference: str | None = "torch:fp32"
    seed: int = 0
    threshold: float | None = None
    require_threshold: bool = True

    @classmethod
    def counted(cls, rounds: int, size: int, reference: str, batch: int = 1) -> "BenchSettings":
        """``rounds`` interleaved rounds of one call per engine on frames already at ``size`` (engine.predict
        alone, no warm-up, no decision): prn-export's latency table. The run stops on its count; ``max_s``
        only guards a hang (the default cap, 4 x a 1 ms duration, would stop it after the first round)."""
        return cls(batches=(batch,), warmup_s=0.0, duration_s=1e-3, round_s=1e-6, min_samples=rounds,
                   max_s=COUNTED_MAX_S, frame_hw=(size, size), reference=reference, require_threshold=False)

    def validate(self) -> None:
        if not self.batches or any(int(b) < 1 for b in self.batches):
            raise PRNError(f"batch sizes must be positive integers, got {list(self.batches)} (--batch)")
        if len(set(self.batches)) != len(self.batches):
            raise PRNError(f"batch sizes repeat: {list(self.batches)} (--batch)")
        if self.warmup_s < 0 or self.duration_s <= 0 or self.round_s <= 0:
            raise PRNError("--warmup must be >= 0 and --duration > 0 seconds")
        if self.min_samples < 1:
            raise PRNError(f"min_samples must be >= 1, got {self.min_samples}")
        if self.max_s is not None and self.max_s < self.duration_s:
            raise PRNError(f"max_s ({self.max_s}) must be >= duration_s ({self.duration_s})")
        h, w = self.frame_hw
        if h < 16 or w < 16:
            raise PRNError(f"camera frame must be at least 16x16, got {w}x{h} (--frame WxH)")

    def to_dict(self) -> dict[str, Any]:
        return {"batches": list(self.batches), "warmup_s": self.warmup_s, "duration_s": self.duration_s,
                "round_s": self.round_s, "min_samples": self.min_samples, "max_s": self.max_s,
                "frame": f"{self.frame_hw[1]}x{self.frame_hw[0]}", "resize": self.resize,
                "reference": self.reference, "seed": self.seed, "threshold": self.threshold}


def rss_bytes() -> int | None:
    """This process's resident set size now (Linux ``/proc/self/statm``), or None elsewhere."""
    try:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def peak_rss_bytes() -> int | None:
    """The process's peak RSS so far (``ru_maxrss``), or None where ``resource`` is missing."""
    try:
        import resource
    except ImportError:
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


def synthetic_frames(count: int, height: int, width: int, seed: int = 0) -> list[np.ndarray]:
    """``count`` seeded BGR uint8 camera frames: smooth colour fields with sensor noise.

    Resize and colour conversion cost does not depend on content; smooth frames keep the
    anomaly maps (and so the connected components) in a realistic range rather than pure noise.
    """
    import cv2

    rng = np.random.default_rng(seed)
    frames = []
    for _ in range(count):
        coarse = rng.integers(0, 256, (max(2, height // 64), max(2, width // 64), 3), dtype=np.uint8)
        smooth = cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC).astype(np.int16)
        noisy = smooth + rng.integers(-6, 7, smooth.shape, dtype=np.int16)
        frames.append(np.clip(noisy, 0, 255).astype(np.uint8))
    return frames


@dataclass
class CellResult:
    """The samples of one (engine, batch) cell: seconds per iteration, per stage."""

    engine: str
    batch: int
    samples: dict[str, list[float]] = field(default_factory=lambda: {s: [] for s in (*STAGES, "total")})
    round_totals: list[float] = field(default_factory=list)     # median total of each round's visit
    round_compute: list[float] = field(default_factory=list)    # median compute (h2d+compute+d2h) per round

    @property
    def n(self) -> int:
        return len(self.samples["total"])

    def summary(self) -> dict[str, Any]:
        """Latency in milliseconds per batch, per-stage medians, throughput, instability."""
        total = latency_stats([1e3 * t for t in self.samples["total"]])
        stages = {}
        for stage in STAGES:
            values = self.samples[stage]
            if values and any(not np.isnan(v) for v in values):
                st = latency_stats([1e3 * v for v in values])
                stages[stage] = {"median": st["median"], "mean": st["mean"], "p90": st["p90"]}
        infer = [sum(self.samples[s][i] for s in DEVICE_STAGES if not np.isnan(self.samples[s][i]))
                 for i in range(self.n)]
        infer_median = float(np.median(infer)) if infer else float("nan")
        flag = instability(total)
        return {
            "engine": self.engine, "batch": self.batch, "samples": self.n, "latency_ms": total,
            "per_image_ms": total["median"] / self.batch,
            "throughput_ips": 1e3 * self.batch / total["median"] if total["n"] else float("nan"),
            "compute_throughput_ips": self.batch / infer_median if infer else float("nan"),
            "infer_median_ms": 1e3 * infer_median, "stages_ms": stages,
            "unstable": flag.unstable, "instability": list(flag.reasons),
        }


@dataclass
class EngineRun:
    """One engine of a run: its label, description and memory."""

    key: str                  # backend:precision, e.g. onnxruntime:int8
    name: str                 # the engine's own label, e.g. onnxruntime-cpu:int8
    describe: dict[str, Any]
    memory: dict[str, Any]
    threshold: float


@dataclass
class BenchRun:
    """Everything a report needs: settings, engines, per-cell samples, order and notes."""

    settings: BenchSettings
    engines: list[EngineRun]
    cells: list[CellResult]
    rounds: int
    order: list[tuple[str, int]]           # the cell visits, in order (engine key, batch)
    measured_s: float
    reference: str
    notes: list[str] = field(default_factory=list)

    def cell(self, key: str, batch: int) -> CellResult:
        return next(c for c in self.cells if c.engine == key and c.batch == batch)

    def ratios(self) -> dict[tuple[str, int], dict[str, float]]:
        """Speed-up of every cell against the reference engine at the same batch size.

        ``paired``: median over rounds of reference/engine (end-to-end, interleaved rounds);
        ``compute``: the same on the compute stages only.
        """
        out = {}
        for c in self.cells:
            ref = self.cell(self.reference, c.batch)
            out[(c.engine, c.batch)] = {"paired": paired_ratio(ref.round_totals, c.round_totals),
                                        "compute": paired_ratio(ref.round_compute, c.round_compute)}
        return out


def _median(values: Sequence[float]) -> float:
    return float(np.median(values)) if len(values) else float("nan")


class _Runner:
    """Runs iterations of cells for one engine: the batched pipeline of prn-inspect."""

    def __init__(self, key: str, engine, frames: list[np.ndarray], settings: BenchSettings, clock) -> None:
        from prn_edge.runtime.pipeline import InspectConfig, Pipeline

        self.key = key
        self.engine = engine
        self.frames = frames
        self.size = int(engine.image_size)
        self.pipeline = Pipeline(engine, InspectConfig(resize=settings.resize, threshold=settings.threshold),
                                 require_threshold=settings.require_threshold, clock=clock)

    def iterate(self, batch: int) -> dict[str, float]:
        """One timed iteration; seconds per stage (NaN for stages that do not exist here)."""
        n = len(self.frames)
        timings = self.pipeline.run([self.frames[i % n] for i in range(batch)]).timings
        return {stage: float(timings.get(stage, float("nan"))) for stage in (*STAGES, "total")}


def run_benchmark(engines: Sequence[tuple[str, Callable[[], Any]]], settings: BenchSettings | None = None, *,
                  progress: Callable[[str], None] | None = None, clock: Callable[[], float] = time.perf_counter,
                  frames: list[np.ndarray] | None = None) -> BenchRun:
    """Load, warm up and time every engine, interleaved.

    Args:
        engines: ``(key, open)`` pairs: ``key`` is ``backend:precision`` (unique), ``open()``
            returns an :class:`~prn_edge.contract.engine.Engine` (loaded here, one at a time,
            so that its memory can be attributed).
        settings: durations and batch sizes (default :class:`BenchSettings`).
        progress: called with one line per phase (default: silent).
        clock: the timer (seconds).
        frames: camera frames to preprocess (default: :func:`synthetic_frames`).

    Returns:
        The :class:`BenchRun`; engines are closed.

    Raises:
        PRNError: no engine, duplicate keys, engines of different input sizes, an uncalibrated model
            without ``settings.threshold``, or an engine failing.
    """
    settings = settings or BenchSettings()
    settings.validate()
    say = progress or (lambda _line: None)
    keys = [k for k, _ in engines]
    if not keys:
        raise PRNError("nothing to benchmark: no backend is available (see the skipped list)")
    if len(set(keys)) != len(keys):
        raise PRNError(f"each backend:precision may appear once, got {keys}")
    batches = tuple(int(b) for b in settings.batches)
    if frames is None:
        frames = synthetic_frames(min(max(batches), 8), *settings.frame_hw, seed=settings.seed)

    runners: list[_Runner] = []
    runs: list[EngineRun] = []
    try:
        for key, opener in engines:
            before = rss_bytes()
            t0 = clock()
            engine = opener()
            load_s = clock() - t0
            after = rss_bytes()
            runner = _Runner(key, engine, frames, settings, clock)
            if runners and runner.size != runners[0].size:
                raise PRNError(f"{key} takes {runner.size}px frames but {runners[0].key} takes "
                               f"{runners[0].size}px: benchmark one model at a time")
            say(f"warming up {engine.name} ({settings.warmup_s:g} s, batches {', '.join(map(str, batches))})")
            peak = after
            for b in batches:
                t_start = clock()
                while True:
                    runner.iterate(b)
                    now = rss_bytes()
                    peak = max(peak, now) if peak is not None and now is not None else peak
                    if clock() - t_start >= settings.warmup_s / len(batches):
                        break
            mib = 1024 ** 2
            memory = {"load_s": round(load_s, 3),
                      "rss_load_mib": None if before is None else round((after - before) / mib, 1),
                      "rss_peak_delta_mib": None if before is None else round((peak - before) / mib, 1),
                      "method": "RSS growth (/proc/self/statm) from before loading to the peak seen during "
                                "warm-up; engines loaded one after another in one process"}
            runners.append(runner)
            runs.append(EngineRun(key=key, name=engine.name, describe=engine.describe(), memory=memory,
                                  threshold=runner.pipeline.threshold))

        cells = [CellResult(key, b) for key in keys for b in batches]
        runner_of = dict(zip(keys, runners))
        order: list[tuple[str, int]] = []
        say(f"measuring {len(cells)} cells interleaved for {settings.duration_s:g} s "
            f"(rounds of ~{settings.round_s:g} s per cell)")
        started = clock()
        rounds = 0
        while True:
            start = rounds % len(cells)
            for cell in cells[start:] + cells[:start]:
                runner = runner_of[cell.engine]
                order.append((cell.engine, cell.batch))
                visit: list[dict[str, float]] = []
                t_visit = clock()
                while not visit or clock() - t_visit < settings.round_s:
                    visit.append(runner.iterate(cell.batch))
                for sample in visit:
                    for stage, value in sample.items():
                        cell.samples[stage].append(value)
                cell.round_totals.append(_median([s["total"] for s in visit]))
                cell.round_compute.append(_median([sum(s[k] for k in DEVICE_STAGES if not np.isnan(s[k]))
                                                   for s in visit]))
            rounds += 1
            spent = clock() - started
            enough = all(c.n >= settings.min_samples for c in cells)
            cap = 4 * settings.duration_s if settings.max_s is None else settings.max_s
            if (spent >= settings.duration_s and enough) or spent >= cap:
                break
            if rounds % max(1, len(cells)) == 0:
                say(f"  {rounds} rounds, {spent:.0f} s")
        measured = clock() - started
    finally:
        for runner in runners:
            close = getattr(runner.engine, "close", None)
            if close is not None:
                close()

    reference = settings.reference if settings.reference in keys else keys[0]
    notes = []
    if settings.reference and settings.reference not in keys:
        notes.append(f"reference {settings.reference} was not measured; ratios refer to {reference}")
    if not any(r.memory["rss_load_mib"] is not None for r in runs):
        notes.append("resident memory is not readable on this platform (/proc/self/statm): no memory figures")
    return BenchRun(settings=settings, engines=runs, cells=cells, rounds=rounds, order=order,
                    measured_s=measured, reference=reference, notes=notes)
