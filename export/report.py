"""``export_report.md``: the export report for a person (``export_report.json`` holds the same facts)."""
from __future__ import annotations

from typing import Any

from prn_edge.export.int8 import describe_calibration

LABELS = {"image_auroc": "image AUROC", "pixel_auroc": "pixel AUROC", "pro": "PRO@0.3", "ap": "AP"}


def _pct(value) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


def _delta(value) -> str:
    return "-" if value is None else f"{value:+.2f}"


def render_markdown(report: dict[str, Any]) -> str:
    """The Markdown report: files, accuracy per precision with deltas, INT8 details, latency, notes."""
    lines = ["# PRN Edge export report", ""]
    lines += [f"- checkpoint: `{report['checkpoint']}` (sha256 `{(report.get('checkpoint_sha256') or '-')[:16]}…`)",
              f"- status: **{report['status']}**",
              f"- opset {report.get('opset')}, input uint8 NHWC {report.get('input_size')}², "
              f"threshold {report.get('threshold')}",
              f"- machine: {report['machine']['cpu']}, {report['machine']['cores']} cores, "
              f"{report['threads']} threads used; created {report['created']}",
              f"- command: `{report.get('command') or '-'}`", ""]

    lines += accuracy_table(report)
    if report.get("int8"):
        lines += _int8_section("INT8", report["int8"], report["status"], "symmetric INT8 (TensorRT's form)")
    cpu = report.get("cpu_int8")
    if cpu:
        lines += _int8_section("CPU flavour (model.int8.cpu.onnx)", cpu, report["status"],
                               "asymmetric UINT8 (ONNX Runtime's fast x86 form; TensorRT cannot use it)")
        if "speedup_vs_fp32" in cpu:
            verdict = ("written: --backend auto runs it on a CPU" if cpu.get("written")
                       else "not written: FP32 stays the CPU model")
            lines += ["", f"Measured {cpu['speedup_vs_fp32']}x the FP32 ONNX in the latency table below "
                          f"(kept from {cpu['min_speedup']}x): {verdict}."]

    latency = report.get("latency")
    if latency:
        lines += ["", f"## CPU latency (batch {latency['batch']}, median of {latency['rounds']} interleaved rounds, "
                      f"{latency['threads']} threads)", "",
                  "| backend | median ms | p90 ms | speed-up vs PyTorch eager |", "|---|---:|---:|---:|"]
        for name, med in latency["median_ms"].items():
            lines.append(f"| {name} | {med} | {latency['p90_ms'][name]} | {latency['speedup_vs_pytorch'][name]}x |")

    engines = report.get("engines")
    if engines is not None:
        lines += ["", "## TensorRT engines", ""]
        if not engines.get("built"):
            lines.append(f"Not built: {engines['reason']}")
        else:
            lines += ["| precision | TensorRT | GPU | compute capability | build s | MB |", "|---|---|---|---|---:|---:|"]
            for precision, e in engines["engines"].items():
                lines.append(f"| {precision} | {e['tensorrt_version']} | {e['gpu_name']} | {e['compute_capability']} "
                             f"| {e['build_seconds']} | {e['bytes'] / 1e6:.1f} |")
    lines += ["", "## Files", "", "| file | MB |", "|---|---:|"]
    lines += [f"| {name} | {size / 1e6:.1f} |" for name, size in report["files"].items()]
    if report.get("notes"):
        lines += ["", "## Notes", ""] + [f"- {n}" for n in report["notes"]]
    return "\n".join(lines) + "\n"


def _int8_section(title: str, int8: dict[str, Any], status: str, activations: str) -> list[str]:
    """One quantized model's section: calibration, gate, search, what stayed in float."""
    lines = ["", f"## {title}", "",
             f"Static Q/DQ (ONNX Runtime quantizer): Conv weights per output channel (7 bits: no 16-bit "
             f"saturation on CPUs without VNNI) and activations per tensor, {activations}; "
             f"{describe_calibration(int8['calibration'])} from "
             f"{int8['calibration']['images']} normal images "
             f"({int8['calibration']['source']}, seed {int8['calibration']['seed']}). Gate: "
             f"{', '.join(LABELS[k] for k in int8['gated'])} each within {int8['tolerance_points']} points "
             f"of the FP32 ONNX. All convolutions in INT8 cost "
             f"{int8['all_int8_worst_drop_points']} points at worst; {int8['trials']} quantization trial(s)"
             + (f" in {int8['seconds']} s" if "seconds" in int8 else "")
             + (f"; the search stopped at its budget of {int8['budget_minutes']:g} min before the gate held"
                if int8.get("stopped_by_budget") else "") + "."]
    if int8.get("warning"):
        lines += ["", f"**Warning**: {int8['warning']}."]
    if int8.get("sensitivity"):
        lines += ["", "Sensitivity (each part alone in INT8, the rest in float; costliest first):", "",
                  "| part of the network | convolutions | worst drop with it alone in INT8 (points) |",
                  "|---|---:|---:|"]
        lines += [f"| {s['group']} | {s['convs']} | {s['worst_drop_points_alone_in_int8']} |"
                  for s in int8["sensitivity"]]
    if int8.get("keep_float"):
        kept = int8["keep_float"]
        lines += ["", f"Kept in float: {', '.join(g['group'] for g in kept)} "
                      f"({sum(len(g['nodes']) for g in kept)} convolutions; worst drop then "
                      f"{int8.get('worst_drop_points')} points)."]
        if status != "ok":
            lines += ["", "The nodes that cost the accuracy (ONNX node: module):", ""]
            lines += [f"- `{n}`: {m}" for g in kept for n, m in zip(g["nodes"], g["modules"])]
    return lines


def accuracy_table(report: dict[str, Any]) -> list[str]:
    """The per-precision table (also used by benchmarks/results/export.md)."""
    ref = report.get("reference")
    lines = ["## Accuracy and size per precision", ""]
    if not ref:
        return lines + ["Not measured: no evaluation set (see notes)."]
    first = next(iter(report["precisions"].values()))
    lines += [f"On {first.get('images', '?')} evaluation images (ONNX Runtime, CPU). Deltas are in points "
              "against the PyTorch model; map and score differences are the maximum over all images and pixels.",
              "", "| model | MB | image AUROC | pixel AUROC | PRO@0.3 | AP | Δ image | Δ pixel | Δ PRO | Δ AP "
              "| max map diff | max score diff | decisions equal |",
              "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
              f"| PyTorch (reference) | - | {_pct(ref['image_auroc'])} | {_pct(ref['pixel_auroc'])} | "
              f"{_pct(ref['pro'])} | {_pct(ref['ap'])} | | | | | | | |"]
    rows = list(report["precisions"].items())
    if (report.get("cpu_int8") or {}).get("metrics"):
        rows.append(("int8, CPU flavour", report["cpu_int8"]["metrics"]))
    for precision, r in rows:
        d = r.get("delta_points", {})
        size = f"{r['bytes'] / 1e6:.1f}" if "bytes" in r else "-"
        decisions = f"{r['decisions_equal']}/{r['images']}" if "decisions_equal" in r else "-"
        lines.append(f"| {r['file']} ({precision}) | {size} | {_pct(r.get('image_auroc'))} | "
                     f"{_pct(r.get('pixel_auroc'))} | {_pct(r.get('pro'))} | {_pct(r.get('ap'))} | "
                     f"{_delta(d.get('image_auroc'))} | {_delta(d.get('pixel_auroc'))} | {_delta(d.get('pro'))} | "
                     f"{_delta(d.get('ap'))} | {r.get('max_map_diff', 0):.2e} | {r.get('max_score_diff', 0):.2e} | "
                     f"{decisions} |")
    return lines

