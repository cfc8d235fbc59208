"""PRN Edge as Python functions: one per command-line tool, same arguments, no argv.

    from prn_edge import api

    trained = api.train("../shared/data/mvtec_ad/bottle", "runs/bottle", config="edge", steps=360)
    scored = api.evaluate(checkpoint=trained.checkpoint, data="../shared/data/mvtec_ad/bottle",
                          out="runs/bottle/eval")
    exported = api.export(trained.checkpoint, fp16=True, int8=True)      # exported.status: 1 = INT8 gate failed
    inspected = api.inspect(exported.out, "video.mp4", out="runs/line1")
    measured = api.bench(exported.out, batch=(1, 8), duration=30)
    written = api.serve_repo(exported.out, "runs/triton-repo")      # for NVIDIA's tritonserver container
    api.serve(exported.out, http_port=8000)                         # PyTriton's tritonserver, until SIGTERM

=========== ============================================ =========================
function    does what                                    is
=========== ============================================ =========================
train       ``prn-train``                                :func:`prn_edge.train.api.train`
evaluate    ``prn-eval``                                 :func:`prn_edge.eval.api.evaluate_checkpoint`
export      ``prn-export``                               :func:`prn_edge.export.api.export`
inspect     ``prn-inspect``                              :func:`prn_edge.runtime.api.inspect`
bench       ``prn-bench``                                :func:`prn_edge.bench.api.bench`
serve       ``prn-serve``                                :func:`prn_edge.serve.api.serve`
serve_repo  ``prn-serve repo``                           :func:`prn_edge.serve.api.repo`
=========== ============================================ =========================

Each takes keyword arguments named like its tool's flags (``--batch-size`` -> ``batch_size``)
with the same defaults, raises :class:`prn_edge.errors.PRNError` (one-line message) for bad
input, and returns a small result object (paths written, summary numbers, an exit status
where the tool has one). The tools themselves only parse argv, call these and print.

Importing this module imports nothing heavy (no torch, no onnx): each function imports its
implementation on first call.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs; at run time see __getattr__
    from prn_edge.bench.api import bench
    from prn_edge.eval.api import evaluate_checkpoint as evaluate
    from prn_edge.export.api import export
    from prn_edge.runtime.api import inspect
    from prn_edge.serve.api import repo as serve_repo
    from prn_edge.serve.api import serve
    from prn_edge.train.api import train

__all__ = ["bench", "evaluate", "export", "inspect", "serve", "serve_repo", "train"]

#: name -> (module, function) of each tool's API, imported on first use (PEP 562).
_TOOLS = {
    "train": ("prn_edge.train.api", "train"),
    "evaluate": ("prn_edge.eval.api", "evaluate_checkpoint"),
    "export": ("prn_edge.export.api", "export"),
    "inspect": ("prn_edge.runtime.api", "inspect"),
    "bench": ("prn_edge.bench.api", "bench"),
    "serve": ("prn_edge.serve.api", "serve"),
    "serve_repo": ("prn_edge.serve.api", "repo"),
}


def __getattr__(name: str) -> Any:
    if name not in _TOOLS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module, function = _TOOLS[name]
    value = getattr(importlib.import_module(module), function)
    globals()[name] = value       # the next access is a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_TOOLS))
