"""``prn-bench --profile``: where an ONNX Runtime engine spends its time, per operator type.

Run after the timed rounds, on separate sessions built with ORT's profiler on (profiling adds
work to every call, so it never runs during timing). Each engine runs ``runs`` batch-1 calls
on the same input; the kernels' time is summed per operator type (Conv, QLinearConv,
Transpose, ...), which says which part of the graph to make cheaper.
"""
from __future__ import annotations

import tempfile
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from prn_edge.errors import PRNError, first_line

__all__ = ["PROFILE_RUNS", "profile_engines", "render_profile"]

PROFILE_RUNS = 20


def profile_engines(candidates: Sequence, *, threads: int = 0, runs: int = PROFILE_RUNS,
                    say: Callable[[str], None] = lambda _line: None) -> tuple[dict[str, Any], list[str]]:
    """Profile every ONNX Runtime candidate; returns ``({key: profile}, notes)``.

    A profile is ``{"runs", "ms_per_image", "ops": [{"op", "ms_per_image", "share", "nodes"}]}``
    with ``share`` of the kernels' total. Engines of other backends are named in the notes.
    """
    from prn_edge.runtime.backends.onnxruntime import PROVIDERS, OnnxRuntimeEngine

    profiles, notes = {}, []
    for c in candidates:
        if not c.backend.startswith("onnxruntime"):
            notes.append(f"{c.key}: no per-operator profile (ONNX Runtime engines only)")
            continue
        say(f"profiling {c.key} ({runs} batch-1 runs)")
        with tempfile.TemporaryDirectory(prefix="prn-bench-profile-") as tmp:
            try:
                engine = OnnxRuntimeEngine(c.path, providers=PROVIDERS[c.backend], threads=threads, profile_dir=tmp)
            except PRNError as exc:
                notes.append(f"{c.key}: not profiled ({first_line(exc)})")
                continue
            image = np.random.default_rng(0).integers(0, 256, (1, engine.image_size, engine.image_size, 3),
                                                      dtype=np.uint8)
            # ORT cannot pause its profiler, so the first call (which allocates) counts too: one in
            # ``runs``, a few percent at most.
            try:
                for _ in range(runs):
                    engine.predict(image)
                ops = engine.op_profile()
            finally:
                engine.close()
        total = sum(o["us"] for o in ops.values()) or 1.0
        calls = runs
        profiles[c.key] = {
            "runs": calls,
            "ms_per_image": round(total / calls / 1e3, 3),
            "ops": [{"op": op, "ms_per_image": round(o["us"] / calls / 1e3, 3), "share": round(o["us"] / total, 4),
                     "nodes": o["nodes"]} for op, o in ops.items()],
        }
    return profiles, notes


def render_profile(profiles: dict[str, Any], top: int = 12) -> str:
    """Markdown: one table per engine, the ``top`` operator types by time, the rest summed."""
    out = []
    for key, p in profiles.items():
        out.append(f"### {key}: {p['ms_per_image']:.2f} ms per image in kernels ({p['runs']} batch-1 runs)\n")
        out.append("| operator | ms/image | share | nodes |\n|---|---:|---:|---:|")
        for o in p["ops"][:top]:
            out.append(f"| {o['op']} | {o['ms_per_image']:.3f} | {100 * o['share']:.1f} % | {o['nodes']} |")
        rest = p["ops"][top:]
        if rest:
            out.append(f"| {len(rest)} other types | {sum(o['ms_per_image'] for o in rest):.3f} | "
                       f"{100 * sum(o['share'] for o in rest):.1f} % | {sum(o['nodes'] for o in rest)} |")
        out.append("")
    return "\n".join(out)
