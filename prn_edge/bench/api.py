"""Benchmarking as a function: :func:`bench` does what ``prn-bench`` does, without argv.

    from prn_edge.api import bench
    result = bench("runs/bottle/export", batch=(1, 8), duration=30, out="runs/bottle/bench")
    result.report["results"], result.written

It runs the harness's public pieces::

    candidates, checkpoint = discover(model_dir, checkpoint=..., threads=...)   # the runtime's loader
    run = run_benchmark([(c.key, c.open) for c in chosen], BenchSettings(batches=..., duration_s=...))
    report = build_report(run, cost=model_cost(checkpoint, weight_files), skipped=..., model=...)
    write_outputs(report, run, json_path=..., md_path=..., plot_path=...)

With no model it benchmarks the demo's (``python -m prn_edge.demo`` makes it).
"""
from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prn_edge.errors import PRNError
from prn_edge.imaging.preprocess import check_frame_size
from prn_edge.io import check_output_dir, make_output_dir
from prn_edge.validate import MAX_THREADS, check_number

__all__ = ["DEMO_MODEL", "DEMO_ROOT", "BenchResult", "bench", "demo_model"]

#: Where ``python -m prn_edge.demo`` puts its exported model (and so the default model).
DEMO_ROOT = Path(os.environ.get("PRN_EDGE_DEMO", Path.home() / ".cache" / "prn-edge" / "demo"))
DEMO_MODEL = DEMO_ROOT / "model"


@dataclass
class BenchResult:
    """What :func:`bench` did.

    Attributes:
        model_dir: the model folder benchmarked.
        report: the report (as written to the JSON file): engines, results per cell, cost, machine.
        written: the files written (JSON, Markdown, plot).
        run: the harness's raw :class:`~prn_edge.bench.harness.BenchRun` (every sample).
    """

    model_dir: Path
    report: dict[str, Any]
    written: list[Path] = field(default_factory=list)
    run: Any = None

    def table(self) -> str:
        """The table ``prn-bench`` prints."""
        from prn_edge.bench.report import render_table

        return render_table(self.report)


def demo_model(path: str | os.PathLike = DEMO_MODEL) -> Path:
    """The demo's model folder, or a one-line PRNError saying to run the demo first."""
    path = Path(path)
    if not path.is_dir():
        raise PRNError(f"no model given and no demo model at {path}: run the demo first "
                       "(python -m prn_edge.demo) or pass --model DIR")
    return path


def _names(kind: str, value, choices: Sequence[str]) -> list[str] | None:
    if value is None:
        return None
    items = [t.strip() for t in value.split(",")] if isinstance(value, str) else [str(t) for t in value]
    items = [t for t in items if t]
    if not items:
        raise PRNError(f"expected a list of {kind}s, got {value!r}")
    for item in items:
        if item not in choices:
            raise PRNError(f"unknown {kind} {item!r} (choose from {', '.join(choices)})")
    return items


def _batches(value) -> tuple[int, ...]:
    items = value.split(",") if isinstance(value, str) else ([value] if isinstance(value, int) else list(value))
    out = []
    for item in items:
        try:
            number = int(item)
        except (TypeError, ValueError):
            raise PRNError(f"{item!r} is not a valid batch size (--batch)") from None
        if number < 1 or isinstance(item, bool):
            raise PRNError(f"batch size must be >= 1, got {item!r} (--batch)")
        out.append(number)
    return tuple(out)


def _frame(value) -> tuple[int, int]:
    """``"1280x720"`` or ``(1280, 720)`` (width, height) -> (height, width)."""
    try:
        w, h = (int(v) for v in value.lower().split("x")) if isinstance(value, str) else (int(v) for v in value)
    except (TypeError, ValueError):
        raise PRNError(f"expected WIDTHxHEIGHT like 1280x720, got {value!r} (--frame)") from None
    w, h = check_frame_size("--frame", w, h, low=16)
    return h, w


def _seconds(flag: str, value) -> float:
    return float(check_number(flag, value, low=0, optional=False))


def _outputs(out, json_path, md_path, plot_path, model_dir: Path) -> tuple[Path | None, ...]:
    """``(json, md, plot, folder to create)``: every place is checked before any work; ``out`` is
    created only when the results are written, so a failed run leaves no empty folder."""
    named = [None if p is None else Path(p) for p in (json_path, md_path, plot_path)]
    if out is None and not any(named):
        out = model_dir / "bench"
    if out is not None:
        out = check_output_dir(out)
        named = [p or out / name for p, name in zip(named, ("bench.json", "bench.md", "bench.png"))]
    for flag, path in zip(("--json", "--md", "--plot"), named):
        if path is None:
            continue
        path = path.expanduser()
        if out is not None and path.parent == out:
            continue                               # checked above, created after the run
        if not path.parent.is_dir():
            raise PRNError(f"{path}: its folder does not exist ({flag})")
        if path.is_dir():
            raise PRNError(f"{path}: is a folder; name a file ({flag})")
        check_output_dir(path.parent, flag)      # a read-only folder fails now, not after the run
    first, second, third = (None if p is None else p.expanduser() for p in named)
    return first, second, third, out


def _choose(candidates, backends, precisions):
    """(chosen, skipped) from the discovered candidates and the user's filters."""
    from prn_edge.bench.engines import matches

    chosen, skipped = [], []
    for c in candidates:
        if not matches(c, backends, precisions):
            continue
        if not c.available or not c.default and precisions is None:
            skipped.append({"backend": c.backend, "precision": c.precision, "reason": c.reason})
        else:
            chosen.append(c)
    return chosen, skipped


def bench(model: str | os.PathLike | None = None, *, checkpoint: str | os.PathLike | None = None,
          backends: str | Sequence[str] | None = None, precisions: str | Sequence[str] | None = None,
          batch: str | int | Sequence[int] = (1, 8, 32), warmup: float = 2.0, duration: float = 20.0,
          round: float = 0.3, reference: str = "torch:fp32", threads: int = 0, device: str | None = None,
          frame: str | Sequence[int] = "1280x720", resize: str = "stretch", threshold: float | None = None,
          out: str | os.PathLike | None = None, json: str | os.PathLike | None = None,
          md: str | os.PathLike | None = None, plot: str | os.PathLike | None = None, quiet: bool = False,
          profile: bool = False, say: Callable[[str], None] | None = None) -> BenchResult:
    """Benchmark an exported PRN on every available backend and precision, interleaved (``prn-bench``).

    The arguments are ``prn-bench``'s flags with the same defaults (see its ``--help``); lists
    take a sequence or a comma-separated string, ``frame`` is ``"WxH"`` or ``(width, height)``.
    ``model`` None: the demo's model (:data:`DEMO_MODEL`). ``threshold`` overrides the decision
    threshold of an uncalibrated model (default: the model's calibrated one). ``out`` None and
    no ``json`` / ``md`` / ``plot``: the reports go to ``MODEL/bench/``. ``say`` receives progress
    lines (default: none when ``quiet``, else stderr). ``profile``: after the timed rounds, time
    every ONNX Runtime engine's operators (:mod:`prn_edge.bench.profile`).

    Returns:
        A :class:`BenchResult`.

    Raises:
        PRNError: a missing model or checkpoint, nothing to benchmark, bad arguments, an output
            folder that cannot be written (one-line messages), all before any measurement.
    """
    import sys

    from prn_edge.bench.cost import model_cost
    from prn_edge.bench.engines import BACKENDS, PRECISIONS, discover
    from prn_edge.bench.harness import BenchSettings, run_benchmark
    from prn_edge.bench.report import build_report, machine_info, write_outputs

    if say is None:
        say = (lambda _line: None) if quiet else (lambda line: print(f"prn-bench: {line}", file=sys.stderr,
                                                                        flush=True))
    model_dir = demo_model() if model is None else Path(model).expanduser()
    backends = _names("backend", backends, BACKENDS)
    precisions = _names("precision", precisions, PRECISIONS)
    check_number("--threshold", threshold, low=0, high=1)      # a score is in [0, 1]
    check_number("--threads", threads, low=0, high=MAX_THREADS, integer=True)
    settings = BenchSettings(batches=_batches(batch), warmup_s=_seconds("--warmup", warmup),
                             duration_s=_seconds("--duration", duration), round_s=_seconds("--round", round),
                             frame_hw=_frame(frame), resize=resize, reference=reference,
                             threshold=None if threshold is None else float(threshold))
    settings.validate()
    candidates, ckpt = discover(model_dir, checkpoint=checkpoint, threads=threads, device=device)
    json_path, md_path, plot_path, out_dir = _outputs(out, json, md, plot, model_dir)
    chosen, skipped = _choose(candidates, backends, precisions)
    if not chosen:
        why = "; ".join(f"{s['backend']}:{s['precision']}: {s['reason']}" for s in skipped) or "nothing matches"
        raise PRNError(f"no backend to benchmark in {model_dir} ({why})")
    say(f"benchmarking {', '.join(c.key for c in chosen)} on {model_dir}")

    run = run_benchmark([(c.key, c.open) for c in chosen], settings, progress=say)
    say("counting FLOPs and bytes")
    cost = model_cost(ckpt, {c.key: c.path for c in chosen if c.backend != "torch" and c.path is not None})
    first = run.engines[0].describe
    model_info = {"dir": str(model_dir), "image_size": first.get("image_size"),
                  "checkpoint": None if ckpt is None else str(ckpt),
                  "checkpoint_sha256": next((e.describe.get("checkpoint_sha256") for e in run.engines
                                             if e.describe.get("checkpoint_sha256")), None)}
    report = build_report(run, cost=cost, skipped=skipped, model=model_info, machine=machine_info())
    if profile:
        from prn_edge.bench.profile import profile_engines

        report["profile"], profile_notes = profile_engines(chosen, threads=threads, say=say)
        report["notes"].extend(profile_notes)
    if out_dir is not None:
        make_output_dir(out_dir)
    written = write_outputs(report, run, json_path=json_path, md_path=md_path, plot_path=plot_path)
    return BenchResult(model_dir=model_dir, report=report, written=list(written or []), run=run)
