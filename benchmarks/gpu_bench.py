"""Timings of the fused kernels on a GPU: kernel vs PyTorch eager vs torch.compile.

Run by ``benchmarks/gpu_check.sh`` (after the correctness tests) on the GPU machine; writes a
Markdown table (and the same numbers as JSON) and prints it.

* proto_residual at PRN's scale 1 (C=64, 64x64, D = 262144) with K = 300 prototypes: time, and
  achieved bandwidth = (bank + features + chosen rows + residual bytes) / time against a measured
  device-to-device copy (read + write bytes / time). Target: >= 80 % of copy bandwidth at batch 1.
* multi_size_attention at PRN's three scales: time and speed-up over eager PyTorch (target >= 3x).

Timing: CUDA events around a loop of launches, median of several rounds, after warm-up. The
numbers are for the machine it ran on; nothing here asserts a time.

Usage: python benchmarks/gpu_bench.py [--out benchmarks/results/gpu_kernels.md] [--no-compile] [--quick]
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from prn_edge import kernels
from prn_edge.model.attention import multi_size_attention
from prn_edge.model.prototypes import prototype_residual

ROUNDS = 7


def timed(fn, min_time: float = 0.05) -> float:
    """Median seconds per call of ``fn`` (CUDA events, ROUNDS rounds of n calls)."""
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    fn()
    end.record()
    end.synchronize()
    n = max(1, min(1000, int(min_time / max(start.elapsed_time(end) / 1e3, 1e-6))))
    times = []
    for _ in range(ROUNDS):
        start.record()
        for _ in range(n):
            fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3 / n)
    return statistics.median(times)


def copy_bandwidth(nbytes: int = 1 << 30) -> float:
    """Device-to-device copy bandwidth, bytes/s counting read + write."""
    src = torch.empty(nbytes // 4, device="cuda")
    dst = torch.empty_like(src)
    t = timed(lambda: dst.copy_(src))
    return 2 * nbytes / t


def maybe_compile(fn, enabled: bool):
    if not enabled:
        return None
    try:
        return torch.compile(fn, dynamic=False)
    except Exception as exc:  # noqa: BLE001 - report, do not fail the benchmark
        print(f"torch.compile unavailable: {exc}", file=sys.stderr)
        return None


def time_compiled(compiled, *args) -> float | None:
    if compiled is None:
        return None
    try:
        t0 = time.perf_counter()
        compiled(*args)
        torch.cuda.synchronize()
        print(f"  (torch.compile warm-up {time.perf_counter() - t0:.1f} s)", file=sys.stderr)
        return timed(lambda: compiled(*args))
    except Exception as exc:  # noqa: BLE001
        print(f"  torch.compile failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return None


def bench_proto(batches, dtypes, copy_bw, compile_batches, use_compile):
    rows = []
    shape, k = (64, 64, 64), 300
    d = shape[0] * shape[1] * shape[2]
    compiled = maybe_compile(prototype_residual, use_compile)
    for dtype in dtypes:
        bank = torch.randn(k, d, device="cuda").to(dtype)
        sqnorm = bank.float().pow(2).sum(1)
        for b in batches:
            f = torch.randn(b, *shape, device="cuda").to(dtype)
            out = torch.empty_like(f)
            launch = kernels.prepare_proto_residual(f, bank, sqnorm, "abs", out=out)
            t_kernel = timed(launch)  # the 3 launches on prepared buffers
            t_call = timed(lambda f=f, bank=bank, sqnorm=sqnorm, out=out:  # + the Python checks
                           kernels.proto_residual(f, bank, sqnorm, "abs", out=out))
            # The reference on the stored values in FP32 math (what the kernel computes).
            f32, b32 = f.float(), bank.float()
            t_eager = timed(lambda f32=f32, b32=b32, sqnorm=sqnorm: prototype_residual(f32, b32, sqnorm, "abs"))
            t_compile = time_compiled(compiled, f32, b32, sqnorm, "abs") if b in compile_batches else None
            nbytes = (k + 3 * b) * d * bank.element_size()  # bank + features + chosen rows + residual
            rows.append({"op": "proto_residual", "dtype": str(dtype).split(".")[1], "batch": b, "K": k, "D": d,
                         "kernel_ms": t_kernel * 1e3, "call_ms": t_call * 1e3, "eager_ms": t_eager * 1e3,
                         "compile_ms": None if t_compile is None else t_compile * 1e3,
                         "GB_per_s": nbytes / t_kernel / 1e9, "copy_fraction": nbytes / t_kernel / copy_bw})
    return rows


def bench_attention(batches, dtypes, compile_batches, use_compile):
    rows = []
    compiled = maybe_compile(multi_size_attention, use_compile)
    for c, side, label in ((128, 64, "scale 1 (c=128, 64x64)"), (80, 32, "scale 2 (c=80, 32x32)"),
                           (224, 16, "scale 3 (c=224, 16x16)")):
        for dtype in dtypes:
            for b in batches:
                qkv = torch.randn(b, 12 * c, side, side, device="cuda").to(dtype)
                out = torch.empty(b, 4 * c, side, side, device="cuda", dtype=dtype)
                t_kernel = timed(kernels.prepare_multi_size_attention(qkv, 4, out=out))
                t_call = timed(lambda qkv=qkv, out=out: kernels.multi_size_attention(qkv, 4, out=out))
                t_eager = timed(lambda qkv=qkv: multi_size_attention(qkv, 4))
                t_compile = time_compiled(compiled, qkv, 4) if (b in compile_batches and c == 128) else None
                nbytes = 16 * c * side * side * b * qkv.element_size()  # read Q, K, V once, write out once
                rows.append({"op": "multi_size_attention", "shape": label, "dtype": str(dtype).split(".")[1],
                             "batch": b, "kernel_ms": t_kernel * 1e3, "call_ms": t_call * 1e3,
                             "eager_ms": t_eager * 1e3,
                             "compile_ms": None if t_compile is None else t_compile * 1e3,
                             "speedup_vs_eager": t_eager / t_kernel, "GB_per_s": nbytes / t_kernel / 1e9})
    return rows


def _ms(v):
    return "n/a" if v is None else f"{v:.3f}"


def markdown(device: str, copy_bw: float, proto, attn) -> str:
    lines = [f"# Fused kernels on {device}", "",
             f"Device-to-device copy: {copy_bw / 1e9:.0f} GB/s (read + write). Medians of {ROUNDS} rounds, "
             "CUDA events. Written by `benchmarks/gpu_bench.py`.", "",
             "## proto_residual (scale 1: C=64, 64x64, D=262144; K=300)", "",
             "Bytes = bank + features + chosen rows + residual. Target: >= 80 % of copy bandwidth at batch 1. "
             "kernel: the three launches on prepared buffers (`prepare_proto_residual`); call: the one-shot "
             "`proto_residual` with its Python checks; eager / compile: `prototype_residual` on the same values in "
             "FP32 (the kernel's arithmetic).", "",
             "| dtype | batch | kernel ms | call ms | eager ms | compile ms | GB/s (kernel) | % of copy |",
             "|---|---|---|---|---|---|---|---|"]
    for r in proto:
        lines.append(f"| {r['dtype']} | {r['batch']} | {_ms(r['kernel_ms'])} | {_ms(r['call_ms'])} | "
                     f"{_ms(r['eager_ms'])} | {_ms(r['compile_ms'])} | {r['GB_per_s']:.0f} | "
                     f"{100 * r['copy_fraction']:.0f} % |")
    lines += ["", "## multi_size_attention (4 heads; target >= 3x eager)", "",
              "Speed-up: eager `multi_size_attention` time / kernel time (prepared launches); compile: "
              "torch.compile of the reference (scale 1, batch 1 only).", "",
              "| shape | dtype | batch | kernel ms | call ms | eager ms | compile ms | speed-up vs eager | GB/s |",
              "|---|---|---|---|---|---|---|---|---|"]
    for r in attn:
        lines.append(f"| {r['shape']} | {r['dtype']} | {r['batch']} | {_ms(r['kernel_ms'])} | {_ms(r['call_ms'])} | "
                     f"{_ms(r['eager_ms'])} | {_ms(r['compile_ms'])} | {r['speedup_vs_eager']:.1f}x | "
                     f"{r['GB_per_s']:.0f} |")
    b1 = [r for r in proto if r["batch"] == 1]
    lines += ["", "## Targets", ""]
    for r in b1:
        ok = "met" if r["copy_fraction"] >= 0.8 else "NOT met"
        lines.append(f"- proto_residual {r['dtype']} batch 1: {100 * r['copy_fraction']:.0f} % of copy bandwidth "
                     f"(target 80 %: {ok})")
    worst = min(attn, key=lambda r: r["speedup_vs_eager"]) if attn else None
    if worst:
        ok = "met" if worst["speedup_vs_eager"] >= 3 else "NOT met"
        lines.append(f"- multi_size_attention: slowest speed-up {worst['speedup_vs_eager']:.1f}x "
                     f"({worst['shape']}, {worst['dtype']}, batch {worst['batch']}; target 3x: {ok})")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/gpu_kernels.md"))
    parser.add_argument("--no-compile", action="store_true", help="skip torch.compile (saves minutes)")
    parser.add_argument("--quick", action="store_true", help="batches 1 and 8 only (no 33)")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("no CUDA device: nothing to time", file=sys.stderr)
        return 2
    ok, why = kernels.fused_available()
    if not ok:
        print(f"fused kernels unavailable: {why}", file=sys.stderr)
        return 2
    torch.backends.cuda.matmul.allow_tf32 = False
    device = torch.cuda.get_device_name()
    t0 = time.perf_counter()
    copy_bw = copy_bandwidth()
    batches = [1, 8] if args.quick else [1, 8, 33]
    dtypes = [torch.float32, torch.float16]
    proto = bench_proto(batches, dtypes, copy_bw, compile_batches={1}, use_compile=not args.no_compile)
    attn = bench_attention(batches, dtypes, compile_batches={1}, use_compile=not args.no_compile)
    text = markdown(f"{device} ({why})", copy_bw, proto, attn)
    from prn_edge.provenance import provenance, provenance_line

    origin = provenance()
    text += f"\nTotal benchmark time: {time.perf_counter() - t0:.0f} s.\n\n{provenance_line(origin)}\n"
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    args.out.with_suffix(".json").write_text(json.dumps({"device": device, "copy_GB_per_s": copy_bw / 1e9,
                                                         "proto_residual": proto,
                                                         "multi_size_attention": attn, "provenance": origin},
                                                        indent=2))
    print(f"wrote {args.out} and {args.out.with_suffix('.json')}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
