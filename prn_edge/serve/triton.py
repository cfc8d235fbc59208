"""``prn-serve``: a model folder served by the ``tritonserver`` that PyTriton ships, the runtime's engine behind it.

The ``nvidia-pytriton`` wheel carries a real Triton Inference Server (HTTP, gRPC, Prometheus
metrics, dynamic batching) with its Python backend; the model is a PyTriton binding whose
function runs the engine :func:`~prn_edge.runtime.loader.load_engine` picks (ONNX Runtime on a
CPU, TensorRT or the CuPy-fused model on a GPU) and decides each score with the contract's rule.
Triton forms the batches; each call judges one batch. Defect regions are the client's work (its
:class:`~prn_edge.runtime.pipeline.Pipeline` finds them in the map in frame pixels), so the
server does not find them too.

The model takes what the exported ONNX takes and returns what it returns, so a client works
against this server and against the NGC repository of ``prn-serve repo`` alike:

* ``image``: uint8 ``[N, S, S, 3]`` RGB (prepared as ``prn-inspect`` prepares frames);
* ``anomaly_map``: float32 ``[N, 1, S, S]``; ``score``: float32 ``[N, 1]``;
* ``anomalous``: bool ``[N, 1]``, the decision (``score > threshold``), made here;
* the model's metadata as ``parameters`` of its config (input size, checkpoint hash ..., and
  ``threshold``: the one ``anomalous`` is decided with), as ``prn-serve repo`` writes them, so that
  ``prn-inspect --server`` prepares and decides as locally (:mod:`prn_edge.contract.serving`).

The one catch: PyTriton's Python-backend stub is linked against the system's ``libpython``
and imports the standard library of the interpreter that runs ``prn-serve``. Another build of
the same Python version (pyenv, conda) fails deep inside multiprocessing (``'_thread.RLock'
object has no attribute '_recursion_count'``); :func:`stub_python_problem` finds that before
the server starts and says so in one line. ``make serve-env`` builds the right environment.
"""
from __future__ import annotations

import contextlib
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import sysconfig
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from prn_edge.contract.serving import (
    DECISION,
    INPUT,
    MAP,
    MODEL_NAME,
    SCORE,
    served_parameters,
)
from prn_edge.errors import PRNError, first_line
from prn_edge.serve.repository import DEFAULT_QUEUE_DELAY_US

__all__ = ["SERVE_ENV", "ServeResult", "serve", "stub_python_problem"]

log = logging.getLogger(__name__)

#: Where ``make serve-env`` builds the environment that can run the server (relative to the checkout).
SERVE_ENV = ".venv-serve"
# PyTriton guards these endpoints with a token it makes up; statistics stay open here (read-only
# counts, what a benchmark or a dashboard reads), the rest (model loading, shared memory) stay closed.
_OPEN_ENDPOINTS = {"statistics"}
#: Seconds tritonserver waits at SIGTERM for in-flight requests and open client connections (Triton's
#: default, 30, would hold a stop for as long as any camera keeps its keep-alive connection).
EXIT_TIMEOUT_S = 5
_HINT = (f"make serve-env (a venv of the distribution's own python3 with nvidia-pytriton) and run "
         f"{SERVE_ENV}/bin/prn-serve")


@dataclass
class ServeResult:
    """How a :func:`serve` run ended.

    Attributes:
        engine: the engine's name (``onnxruntime-cpu:fp32`` ...).
        model_name: the name clients use.
        seconds: how long it served.
        stopped_by: ``signal`` (SIGINT or SIGTERM) or ``server`` (tritonserver ended by itself).
    """

    engine: str
    model_name: str
    seconds: float
    stopped_by: str


def _linked_libpython(binary: Path) -> Path | None:
    """The ``libpython`` the dynamic loader gives ``binary`` in this environment (``ldd``), or None."""
    try:
        out = subprocess.run(["ldd", str(binary)], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    found = re.search(r"libpython[\d.]+\.so[\d.]*\s*=>\s*(\S+)", out)
    return Path(found.group(1)) if found and found.group(1) != "not" else None


def _own_libpython() -> Path | None:
    """The shared ``libpython`` of the running interpreter, or None for a static build."""
    name = sysconfig.get_config_var("INSTSONAME") or ""
    libdir = sysconfig.get_config_var("LIBDIR") or ""
    path = Path(libdir) / name
    return path if ".so" in name and path.is_file() else None


def stub_python_problem(stub: str | os.PathLike | None = None) -> str | None:
    """Why PyTriton's backend stub cannot run models from this interpreter, or None when it can.

    Args:
        stub: the stub binary (default: PyTriton's, for this Python version).

    Returns:
        A one-line reason: no stub for this Python version, or the stub loads another build's
        ``libpython`` than this interpreter's (the ``_thread.RLock`` failure).
    """
    version = f"{sys.version_info[0]}.{sys.version_info[1]}"
    if stub is None:
        from pytriton.utils.distribution import get_stub_path

        stub = get_stub_path(version)
    stub = Path(stub)
    if not stub.is_file():
        return f"PyTriton ships no Python-backend stub for Python {version} ({stub}): {_HINT}"
    theirs, ours = _linked_libpython(stub), _own_libpython()
    if theirs is None:
        return None   # cannot tell (no ldd): the server says it if it fails
    if ours is None or os.path.realpath(theirs) != os.path.realpath(ours):
        return (f"PyTriton's backend stub runs the system's {theirs}, not the Python running prn-serve "
                f"({sys.executable}, {sys.version.split()[0]}, {ours or 'a static build'}), and fails with a "
                f"'_thread.RLock' mismatch: {_HINT}")
    return None


def _check_port(host: str, port: int, flag: str) -> None:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        # As tritonserver binds: connections of a server that just died (TIME_WAIT) do not block a restart
        # on its ports; a listening server still does.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise PRNError(f"cannot listen on {host}:{port} ({exc.strerror or exc}); choose another {flag}") from exc


def _import_pytriton():
    try:
        import pytriton.triton as triton
        from pytriton.decorators import batch
        from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
    except ImportError as exc:
        raise PRNError(f"nvidia-pytriton is not installed (needed to run tritonserver): {_HINT}") from exc
    return triton, batch, DynamicBatcher, ModelConfig, Tensor


def serve(model: str | os.PathLike, *, backend: str = "auto", precision: str | None = None, threads: int = 0,
          device: str | None = None, name: str = MODEL_NAME, threshold: float | None = None, max_batch: int = 8,
          preferred_batch: Sequence[int] | None = None, queue_delay_us: int = DEFAULT_QUEUE_DELAY_US, instances: int = 1,
          dynamic_batching: bool = True, host: str = "127.0.0.1", http_port: int = 8000, grpc_port: int = 8001,
          metrics_port: int = 8002, verbose: bool = False, say: Callable[[str], None] = lambda line: None) -> ServeResult:
    """Serve ``model`` until SIGINT or SIGTERM (or until tritonserver ends by itself).

    Args:
        model: a model folder written by ``prn-export`` (or one model file, as ``prn-inspect`` takes).
        backend, precision, threads, device: the engine, as :func:`~prn_edge.runtime.loader.load_engine`.
        name: the model's name for clients.
        threshold: the decision threshold (default: the model's calibrated one).
        max_batch: the largest batch Triton forms (``max_batch_size``).
        preferred_batch: batch sizes the dynamic batcher aims for (default: half the largest and the largest).
        queue_delay_us: how long a request may wait for others to join its batch.
        instances: model instances, each with its own engine (parallel batches).
        dynamic_batching: join concurrent requests into batches (False: each request runs as it came).
        host: the address to listen on (127.0.0.1: this machine only; 0.0.0.0: the network).
        http_port, grpc_port, metrics_port: Triton's HTTP, gRPC and Prometheus ports.
        verbose: print tritonserver's own log.
        say: called with each progress line.

    Returns:
        A :class:`ServeResult`.

    Raises:
        PRNError: a bad option or model, pytriton missing, an interpreter the stub cannot use, a
            port in use, or a server that does not start (its first error line).
    """
    from prn_edge.contract.model_folder import find_model_files
    from prn_edge.runtime.loader import load_engine
    from prn_edge.contract.decision import decide, resolve_threshold
    from prn_edge.serve.repository import check_batching, check_model_name

    check_model_name(name)
    preferred = check_batching(max_batch, preferred_batch, queue_delay_us, instances)
    ports = {"--http-port": http_port, "--grpc-port": grpc_port, "--metrics-port": metrics_port}
    for flag, port in ports.items():
        if not 1 <= int(port) <= 65535:
            raise PRNError(f"expected a TCP port from 1 to 65535, got {port} ({flag})")
    if len(set(ports.values())) != len(ports):
        raise PRNError(f"the HTTP, gRPC and metrics ports must differ, got {sorted(ports.values())}")
    find_model_files(model)   # a wrong --model is named before anything about the environment
    triton_mod, batch, DynamicBatcher, ModelConfig, Tensor = _import_pytriton()
    problem = stub_python_problem()
    if problem:
        raise PRNError(problem)
    for flag, port in ports.items():
        _check_port(host, int(port), flag)

    import numpy as np

    # ONNX Runtime's threads do not spin between ops here: tritonserver and the Python-backend stub
    # need the cores while a request moves (benchmarks/results/serving.md).
    engines = [load_engine(model, backend, precision=precision, threads=threads, device=device, spinning=False)
               for _ in range(instances)]
    served_threshold = resolve_threshold(threshold, engines[0].threshold)
    size = engines[0].image_size

    def infer_function(engine):
        @batch
        def infer(image):
            maps, scores = engine.predict(image)
            # The ONNX model's own output shapes, so one client serves both servers.
            return {MAP: maps[:, None], SCORE: scores[:, None], DECISION: decide(scores, served_threshold)[:, None]}
        return infer

    parameters = served_parameters(engines[0].metadata, precision=engines[0].precision,
                                   threshold=served_threshold, engine=engines[0].name)

    config = triton_mod.TritonConfig(http_address=host, http_port=int(http_port), grpc_address=host,
                                     grpc_port=int(grpc_port), metrics_address=host, metrics_port=int(metrics_port),
                                     exit_on_error=True, strict_readiness=True, log_verbose=1 if verbose else 0,
                                     exit_timeout_secs=EXIT_TIMEOUT_S)
    extra = {}
    if hasattr(triton_mod, "TritonSecurityConfig"):   # PyTriton >= 0.7 guards endpoints by token
        extra["security_config"] = triton_mod.TritonSecurityConfig(
            restricted_endpoints=[e for e in triton_mod.DEFAULT_PROTECTED_ENDPOINTS if e not in _OPEN_ENDPOINTS])
    if not verbose:
        logging.getLogger("pytriton").setLevel(logging.WARNING)
    start = time.monotonic()
    server = triton_mod.Triton(config=config, **extra)
    stopped_by = "server"
    try:
        try:
            server.run()
            with _config_parameters(name, parameters):
                server.bind(model_name=name, infer_func=[infer_function(e) for e in engines],
                            inputs=[Tensor(name=INPUT, dtype=np.uint8, shape=(size, size, 3))],
                            outputs=[Tensor(name=MAP, dtype=np.float32, shape=(1, size, size)),
                                     Tensor(name=SCORE, dtype=np.float32, shape=(1,)),
                                     Tensor(name=DECISION, dtype=np.bool_, shape=(1,))],
                            config=ModelConfig(max_batch_size=int(max_batch), batcher=DynamicBatcher(
                                max_queue_delay_microseconds=int(queue_delay_us),
                                preferred_batch_size=list(preferred)) if dynamic_batching else None))
        except KeyboardInterrupt:   # stopped while starting: as cleanly as when serving
            stopped_by = "signal"
        except Exception as exc:  # pytriton and tritonclient raise their own kinds; the log says why
            raise PRNError(f"tritonserver did not start: {_reason(server, exc)}") from exc
        if stopped_by == "server":
            batching = (f"batches up to {max_batch} (preferred {list(preferred)}, queue delay {queue_delay_us} us)"
                        if dynamic_batching else f"no dynamic batching (client batches up to {max_batch})")
            shown = "0.0.0.0 (all interfaces)" if host == "0.0.0.0" else host
            say(f"serving {model} with {engines[0].name} as model '{name}' on {shown}: HTTP :{http_port}, "
                f"gRPC :{grpc_port}, metrics http://{host}:{metrics_port}/metrics; {batching}, {instances} instance(s), "
                f"threshold {served_threshold:g}")
            try:
                with _stop_on_signals() as stop:
                    while server.is_alive() and not stop.wait(0.2):
                        pass
                if stop.is_set():
                    stopped_by = "signal"
            except KeyboardInterrupt:
                stopped_by = "signal"
    finally:
        if stopped_by == "signal" and not verbose:
            # tritonserver reports connections still open at its exit timeout as a failure; not one here.
            logging.getLogger("pytriton").setLevel(logging.ERROR)
        with contextlib.suppress(Exception):
            server.stop()
        for engine in engines:
            engine.close()
    if stopped_by == "server":
        raise PRNError(f"tritonserver ended by itself after {time.monotonic() - start:.0f} s: "
                       f"{_reason(server, None)}")
    return ServeResult(engines[0].name, name, time.monotonic() - start, stopped_by)


@contextlib.contextmanager
def _stop_on_signals():
    """While serving, SIGINT and SIGTERM set the yielded event instead of raising KeyboardInterrupt.

    An exception raised wherever the main thread happens to be can land inside PyTriton's health
    check, which logs it with a traceback (CI, once in a few runs); an event is read where we wait.
    """
    stop = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return
    previous = {sig: signal.signal(sig, lambda _signum, _frame: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@contextlib.contextmanager
def _config_parameters(name: str, parameters: dict[str, str]):
    """While inside, the model ``name`` that PyTriton binds carries ``parameters`` in its config.pbtxt.

    PyTriton has no public way to set a model's ``parameters``; it writes its own backend parameters
    (``workspace-path`` ...) there, from the config its ``Model`` builds once and keeps. Ours join them,
    where ``prn-serve repo`` puts them too and a client reads them (``get_model_config``).

    Raises:
        PRNError: a PyTriton without that hook (the client could not read the threshold).
    """
    from pytriton.models.model import Model

    original = getattr(Model, "_get_triton_model_config", None)
    if original is None:
        raise PRNError("this nvidia-pytriton cannot carry the model's metadata in its config (no "
                       "Model._get_triton_model_config): install the version setup.py names (make serve-env)")

    def with_parameters(model):
        config = original(model)
        if model.model_name == name:
            own = config.backend_parameters     # built once and kept: ours may be there already
            clash = sorted(k for k in parameters if k in own and own[k] != parameters[k])
            if clash:
                raise PRNError(f"PyTriton's own model parameters {clash} clash with the model's metadata")
            config.backend_parameters.update(parameters)
        return config

    Model._get_triton_model_config = with_parameters
    try:
        yield
    finally:
        Model._get_triton_model_config = original


def _reason(server, exc: BaseException | None) -> str:
    """The first error line of tritonserver's log (else the exception's), as one line."""
    logs = ""
    with contextlib.suppress(Exception):
        logs = server._triton_server.logs()   # PyTriton keeps the server's output; no public accessor
    if "_recursion_count" in logs:
        return ("its Python-backend stub failed with a '_thread.RLock' mismatch (another Python build than the "
                f"system's libpython): {_HINT}")
    errors = [ln for ln in logs.splitlines() if ln[:1] == "E" and "CudaDriverHelper" not in ln]
    if errors:
        return first_line(Exception(re.sub(r"^E\d+ [\d:.]+ +\d+ \S+\] ", "", errors[0])), 300)
    return first_line(exc, 300) if exc is not None else "no error in its log"
