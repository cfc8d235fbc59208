"""``prn-serve``: serve an exported model from Triton Inference Server, or write a Triton model repository.

    prn-serve --model DIR [--backend B] [--max-batch N] [--queue-delay-us US] [--http-port P] ...
    prn-serve repo --model DIR --out REPO [--max-batch N] [--preferred-batch 4,8] [--kind gpu] ...

Both are thin views of :mod:`prn_edge.serve.api`. Errors are one line and exit status 2; SIGINT
and SIGTERM stop the server cleanly with status 0 (130 before the server has started).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from prn_edge.cli import (
    ArgumentParser,
    bounded_float,
    non_negative_int,
    positive_int,
    run_cli,
    tcp_port,
    thread_count,
)
from prn_edge.contract.serving import MODEL_NAME

PROG = "prn-serve"

__all__ = ["build_parser", "build_repo_parser", "main"]



def _sizes(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        values = ()
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected batch sizes like 4,8, got {text!r}")
    return values


def _backends(text: str) -> tuple[str, ...]:
    from prn_edge.serve.repository import BACKENDS

    values = tuple(v for v in text.split(",") if v)
    if not values or set(values) - set(BACKENDS):
        raise argparse.ArgumentTypeError(f"expected a list of {', '.join(BACKENDS)}, got {text!r}")
    return values


def _batching_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--max-batch", type=positive_int, default=8, metavar="N",
                   help="largest batch Triton forms from concurrent requests (max_batch_size; default 8)")
    p.add_argument("--preferred-batch", type=_sizes, default=None, metavar="N,N",
                   help="batch sizes the dynamic batcher aims for (default: half the largest and the largest)")
    from prn_edge.serve.repository import DEFAULT_QUEUE_DELAY_US

    p.add_argument("--queue-delay-us", type=non_negative_int, default=DEFAULT_QUEUE_DELAY_US, metavar="US",
                   help="how long a request may wait for others to join its batch, in microseconds "
                        f"(max_queue_delay_microseconds; default {DEFAULT_QUEUE_DELAY_US}; 0 = send what is there)")
    p.add_argument("--no-dynamic-batching", dest="dynamic_batching", action="store_false",
                   help="run each request as it came instead of joining concurrent ones into batches "
                        "(clients may still send batches; --preferred-batch and --queue-delay-us then do nothing)")
    p.add_argument("--instances", type=positive_int, default=1, metavar="N",
                   help="model instances, each running its own batches (default 1)")
    p.add_argument("--name", default=MODEL_NAME, help=f"model name clients use (default {MODEL_NAME})")


def build_parser() -> argparse.ArgumentParser:
    """The parser of ``prn-serve`` (serving)."""
    from prn_edge.runtime.loader import BACKENDS, PRECISIONS

    p = ArgumentParser(
        prog=PROG,
        description="Serve an exported PRN model from Triton Inference Server (the tritonserver that PyTriton "
                    "ships), with this runtime's engine behind it and dynamic batching on: many cameras, one "
                    "inference server. Clients send uint8 NHWC RGB frames at the model's input size ('image', "
                    "prepared as prn-inspect prepares them) over HTTP or gRPC and get 'anomaly_map', 'score' and "
                    "'anomalous' back. Health and metadata: /v2/health/ready, /v2/models/NAME, "
                    "/v2/models/NAME/config; batch statistics: /v2/models/NAME/stats; Prometheus metrics on "
                    "--metrics-port. Runs until SIGINT or SIGTERM. Needs the environment 'make serve-env' "
                    "builds (PyTriton's backend stub runs only under the distribution's own Python).",
        epilog="examples:\n"
               "  prn-serve --model runs/bottle/export\n"
               "  prn-serve --model DIR --host 0.0.0.0 --max-batch 16 --queue-delay-us 5000 --instances 2\n"
               "  prn-serve repo --model DIR --out triton-repo     (a repository for NVIDIA's container;\n"
               "                                                   see prn-serve repo --help)\n\n"
               "exit status: 0 stopped by SIGINT/SIGTERM, 2 user error or a server that failed,\n"
               "130 interrupted before the server started\n"
               "Python: prn_edge.serve.api.serve",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, type=Path, metavar="DIR",
                   help="model folder written by prn-export (or one .onnx / .engine / checkpoint .pt file)")
    p.add_argument("--backend", default="auto", choices=BACKENDS, metavar="B",
                   help=f"engine: {', '.join(BACKENDS)} (default auto: the best that loads here)")
    p.add_argument("--precision", choices=PRECISIONS, default=None,
                   help="model precision (default: FP16 for TensorRT, FP32 otherwise)")
    p.add_argument("--threads", type=thread_count, default=0, metavar="N",
                   help="CPU threads of each engine (0 = the library's default)")
    p.add_argument("--device", default=None, help="torch device for the torch / cupy-fused backends")
    p.add_argument("--threshold", type=bounded_float("a score threshold", 0, 1), default=None, metavar="T",
                   help="decision threshold for 'anomalous' (default: the model's calibrated one)")
    _batching_flags(p)
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1; 0.0.0.0 to serve the network)")
    p.add_argument("--http-port", type=tcp_port, default=8000, metavar="PORT", help="HTTP port (default 8000)")
    p.add_argument("--grpc-port", type=tcp_port, default=8001, metavar="PORT", help="gRPC port (default 8001)")
    p.add_argument("--metrics-port", type=tcp_port, default=8002, metavar="PORT",
                   help="Prometheus metrics port (default 8002)")
    p.add_argument("-v", "--verbose", action="store_true", help="print tritonserver's own log")
    return p


def build_repo_parser() -> argparse.ArgumentParser:
    """The parser of ``prn-serve repo``."""
    from prn_edge.contract.model_folder import PRECISIONS
    from prn_edge.serve.repository import BACKENDS, KINDS

    p = ArgumentParser(
        prog=f"{PROG} repo",
        description="Write a standard Triton model repository for NVIDIA's tritonserver container from an "
                    "exported model folder: NAME_onnxruntime (the ONNX model, onnxruntime backend) and, where the "
                    "folder has a TensorRT engine, NAME_tensorrt (the plan, tensorrt backend, with the PRN plugin "
                    "library beside it). Each config.pbtxt is taken from the model file: uint8 NHWC input, "
                    "dynamic batch, dynamic_batching, instance_group, model_warmup, and the threshold and "
                    "metadata as parameters. REPO/README.md has the docker run line. Written beside REPO and "
                    "swapped in at once, so a running Triton never sees half of it.",
        epilog="examples:\n"
               "  prn-serve repo --model runs/bottle/export --out triton-repo\n"
               "  prn-serve repo --model DIR --out REPO --kind gpu --max-batch 16 --preferred-batch 8,16 "
               "--instances 2\n\n"
               "exit status: 0 written, 2 user error\n"
               "Python: prn_edge.serve.api.repo",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, type=Path, metavar="DIR", help="model folder written by prn-export")
    p.add_argument("--out", required=True, type=Path, metavar="REPO",
                   help="the repository folder (replaced if prn-serve repo wrote it; refused otherwise)")
    p.add_argument("--backends", type=_backends, default=None, metavar="LIST",
                   help=f"models to write, from {', '.join(BACKENDS)} (default: every one the folder has)")
    p.add_argument("--precision", choices=PRECISIONS, default=None,
                   help="precision (default: FP32 for ONNX Runtime, FP16 first for TensorRT)")
    _batching_flags(p)
    p.add_argument("--kind", choices=KINDS, default="cpu",
                   help="where the ONNX Runtime model's instances run (default cpu; a plan always runs on a GPU)")
    p.add_argument("--threads", type=thread_count, default=0, metavar="N",
                   help="ONNX Runtime intra-op threads per instance (0 = the backend's default)")
    p.add_argument("--plugin-library", type=Path, default=None, metavar="FILE",
                   help="the PRN TensorRT plugin library for the plan (default: the one its engine was built with)")
    return p


def _repo(args: argparse.Namespace) -> int:
    from prn_edge.serve.api import repo

    written = repo(args.model, args.out, name=args.name, backends=args.backends, precision=args.precision,
                   max_batch=args.max_batch, preferred_batch=args.preferred_batch,
                   queue_delay_us=args.queue_delay_us, instances=args.instances, kind=args.kind,
                   threads=args.threads, plugin_library=args.plugin_library,
                   dynamic_batching=args.dynamic_batching)
    for note in written.notes:
        print(f"{PROG} repo: note: {note}", file=sys.stderr)
    models = ", ".join(f"{m} ({b})" for m, b in written.models.items())
    print(f"{PROG} repo: wrote {written.out}: {models}; how to serve it: {written.out / 'README.md'}")
    return 0


def _serve(args: argparse.Namespace) -> int:
    from prn_edge.serve.api import serve

    result = serve(args.model, backend=args.backend, precision=args.precision, threads=args.threads,
                   device=args.device, name=args.name, threshold=args.threshold, max_batch=args.max_batch,
                   preferred_batch=args.preferred_batch, queue_delay_us=args.queue_delay_us,
                   instances=args.instances, dynamic_batching=args.dynamic_batching, host=args.host, http_port=args.http_port, grpc_port=args.grpc_port,
                   metrics_port=args.metrics_port, verbose=args.verbose,
                   say=lambda line: print(f"{PROG}: {line}", file=sys.stderr, flush=True))
    print(f"{PROG}: stopped after {result.seconds:.1f} s of serving '{result.model_name}' with {result.engine}",
          file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``prn-serve``; returns the exit status (0; 2 user error).

    Args:
        argv: the arguments (default: ``sys.argv[1:]``); ``repo`` first selects the repository writer.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["repo"]:
        args = build_repo_parser().parse_args(argv[1:])
        return run_cli(f"{PROG} repo", lambda: _repo(args))
    args = build_parser().parse_args(argv)
    return run_cli(PROG, lambda: _serve(args))


if __name__ == "__main__":
    sys.exit(main())
