"""``prn-serve`` as functions: :func:`repo` writes a Triton model repository, :func:`serve` serves a model here.

    from prn_edge.serve.api import repo, serve
    written = repo("runs/bottle/export", "runs/triton-repo", max_batch=8, queue_delay_us=2000)
    written.models                    # {"prn_onnxruntime": "onnxruntime", "prn_tensorrt": "tensorrt"}
    serve("runs/bottle/export", http_port=8000, grpc_port=8001, metrics_port=8002)   # until SIGTERM

Keyword arguments are named like the command's flags. Neither imports anything heavy until
called (``onnx`` for :func:`repo`; PyTriton, numpy and the engine's backend for :func:`serve`).
"""
from __future__ import annotations

from prn_edge.serve.repository import Repository
from prn_edge.serve.repository import write_repository as repo
from prn_edge.serve.triton import ServeResult, serve, stub_python_problem

__all__ = ["Repository", "ServeResult", "repo", "serve", "stub_python_problem"]
