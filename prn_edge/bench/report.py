"""A benchmark run as JSON, a terminal table, Markdown and a plot (all files written atomically)."""
from __future__ import annotations

import datetime as _dt
import io
import math
import os
import platform
import sys
from pathlib import Path
from typing import Any

from prn_edge import __version__
from prn_edge.bench.cost import bytes_per_batch
from prn_edge.bench.harness import STAGES, BenchRun, peak_rss_bytes
from prn_edge.bench.stats import CV_LIMIT, MIN_SAMPLES, REL_IQR_LIMIT
from prn_edge.errors import require
from prn_edge.io import atomic_write, write_json_atomic, write_text_atomic
from prn_edge.provenance import provenance, provenance_line

__all__ = [
    "FORMAT",
    "build_report",
    "machine_info",
    "render_markdown",
    "render_table",
    "write_outputs",
    "write_plot",
]

FORMAT = "prn-edge-bench"
FORMAT_VERSION = 1


def machine_info() -> dict[str, Any]:
    """What a reader needs to know about where the numbers came from."""
    info: dict[str, Any] = {
        "platform": platform.platform(), "machine": platform.machine(),
        "processor": _cpu_model() or platform.processor() or "unknown",
        "cpus": os.cpu_count(), "python": sys.version.split()[0], "prn_edge": __version__,
    }
    if hasattr(os, "sched_getaffinity"):
        info["cpus_usable"] = len(os.sched_getaffinity(0))
    if hasattr(os, "getloadavg"):
        info["load_average_at_start"] = [round(v, 2) for v in os.getloadavg()]
    for module in ("numpy", "cv2", "onnxruntime", "torch"):
        mod = sys.modules.get(module)
        if mod is not None:
            info[module] = getattr(mod, "__version__", "?")
    return info


def _cpu_model() -> str | None:
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        return None
    return None


def _finite(value) -> float | None:
    return None if value is None or (isinstance(value, float) and not math.isfinite(value)) else value


def build_report(run: BenchRun, *, cost: dict[str, Any], skipped: list[dict[str, str]], model: dict[str, Any],
                 machine: dict[str, Any] | None = None) -> dict[str, Any]:
    """The JSON document of a run (plain data; NaN becomes null)."""
    ratios = run.ratios()
    gflops = cost.get("gflops_per_image")
    results, warnings = [], []
    for cell in run.cells:
        row = cell.summary()
        ratio = ratios[(cell.engine, cell.batch)]
        row["speedup_vs_reference"] = _finite(ratio["paired"])
        row["compute_speedup_vs_reference"] = _finite(ratio["compute"])
        infer_s = row["infer_median_ms"] / 1e3
        moved = bytes_per_batch(cost, cell.engine, cell.batch)
        row["achieved_gflops_per_s"] = _finite(gflops * cell.batch / infer_s) if gflops and infer_s > 0 else None
        row["bytes_per_batch"] = moved
        row["achieved_gb_per_s"] = _finite(moved / infer_s / 1e9) if moved and infer_s > 0 else None
        if row["unstable"]:
            warnings.append(f"{cell.engine} batch {cell.batch}: unstable ({'; '.join(row['instability'])})")
        results.append(_clean(row))
    peak = peak_rss_bytes()
    return _clean({
        "format": FORMAT, "format_version": FORMAT_VERSION,
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "machine": machine or machine_info(), "provenance": provenance(), "model": model,
        "settings": run.settings.to_dict(),
        "reference": run.reference, "rounds": run.rounds, "measured_s": round(run.measured_s, 2),
        "first_round_order": [f"{k}/b{b}" for k, b in run.order[:len(run.cells)]],
        "engines": [{"key": e.key, "name": e.name, "threshold": e.threshold, "describe": e.describe,
                     "memory": e.memory} for e in run.engines],
        "process_peak_rss_mib": None if peak is None else round(peak / 1024 ** 2, 1),
        "skipped": skipped, "cost": cost, "results": results, "warnings": warnings,
        "notes": [*run.notes, *_stage_notes(run)],
        "instability_rule": f"unstable when the coefficient of variation > {CV_LIMIT}, the IQR > "
                            f"{100 * REL_IQR_LIMIT:.0f}% of the median, or fewer than {MIN_SAMPLES} samples",
    })


def _stage_notes(run: BenchRun) -> list[str]:
    split = [c.engine for c in run.cells if any(not math.isnan(v) for v in c.samples["h2d"])]
    missing = sorted({c.engine for c in run.cells} - set(split))
    if not missing:
        return []
    return [(f"no host-to-device / device-to-host stages for {', '.join(missing)}: they run on the CPU "
            "(no transfer) or do not report it; their compute stage is the whole engine call")]


def _clean(value):
    """NaN/inf -> None, tuples -> lists, recursively (strict JSON)."""
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _fmt(value, digits: int = 1, suffix: str = "") -> str:
    if value is None:
        return "-"
    return f"{value:.{digits}f}{suffix}"


_COLUMNS = ("engine", "batch", "median ms", "p90", "p99", "ms/image", "img/s", "x ref", "pre", "compute", "post",
            "GFLOP/s", "GB/s", "")


def _rows(report: dict[str, Any]) -> list[list[str]]:
    rows = []
    for r in report["results"]:
        lat, st = r["latency_ms"], r["stages_ms"]
        compute = sum(st[s]["median"] for s in ("h2d", "compute", "d2h") if s in st)
        rows.append([r["engine"], str(r["batch"]), _fmt(lat["median"]), _fmt(lat["p90"]), _fmt(lat["p99"]),
                     _fmt(r["per_image_ms"], 2), _fmt(r["throughput_ips"]), _fmt(r["speedup_vs_reference"], 2, "x"),
                     _fmt(st.get("preprocess", {}).get("median"), 2), _fmt(compute, 1),
                     _fmt(st.get("postprocess", {}).get("median"), 2), _fmt(r["achieved_gflops_per_s"], 1),
                     _fmt(r["achieved_gb_per_s"], 2), "UNSTABLE" if r["unstable"] else ""])
    return rows


def render_table(report: dict[str, Any]) -> str:
    """The terminal summary: one line per (engine, batch), then memory, skipped, warnings."""
    rows = [list(_COLUMNS), *_rows(report)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(_COLUMNS))]
    lines = []
    for j, row in enumerate(rows):
        lines.append("  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in
                               enumerate(zip(row, widths))).rstrip())
        if j == 0:
            lines.append("-" * len(lines[0]))
    lines += _tail_lines(report)
    return "\n".join(lines)


def _tail_lines(report: dict[str, Any]) -> list[str]:
    lines = [(f"times per batch in ms (preprocess + compute + postprocess); x ref = speed-up against "
             f"{report['reference']} (median of per-round ratios, {report['rounds']} interleaved rounds, "
             f"{report['measured_s']:.0f} s)")]
    cost = report["cost"]
    if cost.get("gflops_per_image") is not None:
        lines.append(f"model: {cost['gflops_per_image']:.2f} GFLOPs per image at {cost['image_size']}px; "
                     "rates use the compute stage")
    mem = ", ".join(f"{e['key']} {_fmt(e['memory']['rss_load_mib'], 0)}/{_fmt(e['memory']['rss_peak_delta_mib'], 0)}"
                    for e in report["engines"])
    lines.append(f"memory (MiB RSS growth: after load / peak in warm-up): {mem}")
    for s in report["skipped"]:
        lines.append(f"not run: {s['backend']}:{s['precision']}: {s['reason']}")
    for w in report["warnings"]:
        lines.append(f"warning: {w}")
    for n in report["notes"]:
        lines.append(f"note: {n}")
    return lines


def render_markdown(report: dict[str, Any], *, plot_name: str | None = None) -> str:
    """The Markdown report: machine, model, the full latency table, stages, memory, notes."""
    m, model, cost = report["machine"], report["model"], report["cost"]
    out = io.StringIO()
    w = out.write
    w("# prn-bench\n\n")
    w(f"{report['created']}, prn_edge {m.get('prn_edge')}. Machine: {m.get('processor')}, {m.get('cpus_usable', m.get('cpus'))} "
      f"usable CPU(s), {m.get('platform')}, Python {m.get('python')}")
    for lib in ("onnxruntime", "torch"):
        if lib in m:
            w(f", {lib} {m[lib]}")
    w(f"; load average at start {m.get('load_average_at_start')}.")
    if report.get("provenance"):
        w(f"\n\n{provenance_line(report['provenance'])}")
    w("\n\n")
    w(f"Model: `{model.get('dir')}` ({model.get('image_size')}px input, checkpoint sha256 "
      f"`{str(model.get('checkpoint_sha256'))[:12]}`). Settings: batches {report['settings']['batches']}, "
      f"warm-up {report['settings']['warmup_s']} s per engine, {report['measured_s']} s measured in "
      f"{report['rounds']} interleaved rounds, camera frame {report['settings']['frame']} ({report['settings']['resize']}).\n\n")
    w("## Latency and throughput\n\n")
    w("Milliseconds per batch, end to end (preprocess + compute + postprocess). "
      f"x ref: speed-up against `{report['reference']}` at the same batch (median of per-round ratios).\n\n")
    w("| engine | batch | n | mean | median | p90 | p95 | p99 | min | max | ms/image | img/s | x ref | GFLOP/s | GB/s | stable |\n")
    w("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|\n")
    for r in report["results"]:
        lat = r["latency_ms"]
        w(f"| {r['engine']} | {r['batch']} | {r['samples']} | " + " | ".join(
            _fmt(lat[k]) for k in ("mean", "median", "p90", "p95", "p99", "min", "max")) +
          f" | {_fmt(r['per_image_ms'], 2)} | {_fmt(r['throughput_ips'])} | {_fmt(r['speedup_vs_reference'], 2, 'x')} | "
          f"{_fmt(r['achieved_gflops_per_s'])} | {_fmt(r['achieved_gb_per_s'], 2)} | "
          f"{'**unstable**: ' + '; '.join(r['instability']) if r['unstable'] else 'yes'} |\n")
    w("\n## Stages\n\nMedian milliseconds per batch; '-' where the stage does not exist on that backend.\n\n")
    w("| engine | batch | " + " | ".join(STAGES) + " |\n|---|---:|" + "---:|" * len(STAGES) + "\n")
    for r in report["results"]:
        w(f"| {r['engine']} | {r['batch']} | " + " | ".join(
            _fmt(r["stages_ms"].get(s, {}).get("median"), 2) for s in STAGES) + " |\n")
    w("\n## Memory\n\n| engine | load s | RSS after load MiB | RSS peak in warm-up MiB |\n|---|---:|---:|---:|\n")
    for e in report["engines"]:
        mem = e["memory"]
        w(f"| {e['key']} | {mem['load_s']} | {_fmt(mem['rss_load_mib'])} | {_fmt(mem['rss_peak_delta_mib'])} |\n")
    w(f"\n{report['engines'][0]['memory']['method'] if report['engines'] else ''}; memory the allocator kept "
      "from an earlier engine may be reused by a later one. Process peak RSS: "
      f"{_fmt(report['process_peak_rss_mib'])} MiB.\n\n")
    w("## Arithmetic and traffic\n\n")
    if cost.get("gflops_per_image") is not None:
        w(f"{cost['gflops_per_image']:.2f} GFLOPs per image. ")
    w(f"{cost['counted']}\n\n")
    if cost.get("weight_bytes"):
        w("Weight bytes: " + ", ".join(f"{k} {v / 1e6:.1f} MB" for k, v in cost["weight_bytes"].items()) + ".\n\n")
    if report.get("profile"):
        from prn_edge.bench.profile import render_profile

        w("## Where the time goes (ONNX Runtime, per operator type)\n\n"
          "Kernel time summed per operator type over batch-1 runs of ORT's profiler, on separate sessions "
          "after the timed rounds (profiling slows every call). Preprocessing and postprocessing are not in "
          "the graph; see the stages above.\n\n")
        w(render_profile(report["profile"]) + "\n")
    if report["skipped"]:
        w("## Not run\n\n" + "".join(f"- {s['backend']}:{s['precision']}: {s['reason']}\n" for s in report["skipped"]) + "\n")
    if report["warnings"] or report["notes"] or cost.get("notes"):
        w("## Warnings and notes\n\n")
        for line in report["warnings"]:
            w(f"- warning: {line}\n")
        for line in [*report["notes"], *cost.get("notes", [])]:
            w(f"- {line}\n")
        w(f"- {report['instability_rule']}\n\n")
    if plot_name:
        w(f"![latency and throughput]({plot_name})\n")
    return out.getvalue()


def write_plot(report: dict[str, Any], run: BenchRun, path: str | os.PathLike) -> None:
    """Left: per-image latency distribution per engine at the smallest batch; right: throughput
    against batch size. PNG, written atomically."""
    matplotlib = require("matplotlib", "the benchmark plot")
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    keys = [e.key for e in run.engines]
    batches = list(run.settings.batches)
    smallest = min(batches)
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    data = [[1e3 * t / smallest for t in run.cell(k, smallest).samples["total"]] for k in keys]
    left.boxplot(data, showfliers=True, whis=(1, 99))
    left.set_xticks(range(1, len(keys) + 1), keys, rotation=15, fontsize=8)
    left.set_ylabel(f"ms per image (batch {smallest}, end to end)")
    left.set_title("latency distribution (whiskers p1-p99)")
    left.grid(axis="y", alpha=0.3)
    by = {(r["engine"], r["batch"]): r for r in report["results"]}
    for k in keys:
        right.plot(batches, [by[(k, b)]["throughput_ips"] or float("nan") for b in batches], marker="o", label=k)
    right.set_xscale("log", base=2)
    right.set_xticks(batches, [str(b) for b in batches])
    right.set_xlabel("batch size")
    right.set_ylabel("images / s (end to end)")
    right.set_title("throughput")
    right.grid(alpha=0.3)
    right.legend(fontsize=8)
    fig.suptitle(f"prn-bench: {report['machine'].get('processor')}, {report['machine'].get('cpus_usable', '?')} CPU(s)",
                 fontsize=9)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    with atomic_write(path) as handle:
        handle.write(buffer.getvalue())


def write_outputs(report: dict[str, Any], run: BenchRun, *, json_path: Path | None = None,
                  md_path: Path | None = None, plot_path: Path | None = None) -> list[Path]:
    """Write the requested files (each atomically); returns what was written."""
    written = []
    if plot_path is not None:
        write_plot(report, run, plot_path)
        written.append(plot_path)
    if json_path is not None:
        write_json_atomic(json_path, report)
        written.append(json_path)
    if md_path is not None:
        plot_name = None
        if plot_path is not None:
            plot_name = os.path.relpath(plot_path, md_path.parent) if plot_path.is_absolute() == md_path.is_absolute() \
                else str(plot_path)
        write_text_atomic(md_path, render_markdown(report, plot_name=plot_name))
        written.append(md_path)
    return written
