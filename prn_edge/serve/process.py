"""``prn-serve`` in a child process, on loopback ports: what the tests and ``benchmarks/serving.py`` run.

    with ServeProcess("runs/bottle/export", "--max-batch", "8", python=".venv-serve/bin/python") as server:
        engine = TritonEngine(server.url("grpc"))
        ...
        server.statistics()        # Triton's /v2/models/NAME/stats: the batches it formed

The server runs in a session of its own with its tritonserver and backend stubs, so :meth:`kill` takes
all of them down at once, as a crash of the serving machine would. Only the standard library is used
here: readiness and statistics come from Triton's HTTP endpoints.
"""
from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from typing import Any

from prn_edge.contract.serving import MODEL_NAME
from prn_edge.errors import PRNError

__all__ = ["ServeProcess", "free_tcp_ports"]


def free_tcp_ports(n: int) -> list[int]:
    """``n`` distinct TCP ports that are free on 127.0.0.1 now (the system picks them)."""
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


class ServeProcess:
    """``python -m prn_edge.serve.cli --model MODEL ARGS`` on 127.0.0.1, returned once its model is ready.

    Args:
        model: the model folder (or file) to serve.
        *args: more ``prn-serve`` flags (``--max-batch 8``, ``--no-dynamic-batching`` ...).
        python: the interpreter (the serving environment's; default this one).
        ports: HTTP, gRPC and metrics ports (default: free ones).
        name: the model's name (``--name``).
        env: the child's environment (default this one's).
        ready_timeout: seconds to wait for the model to be ready.

    Raises:
        PRNError: prn-serve ended before it was ready (its last error lines), or was not ready in time.
    """

    def __init__(self, model: str | os.PathLike, *args: str, python: str | os.PathLike | None = None,
                 ports: tuple[int, int, int] | None = None, name: str = MODEL_NAME,
                 env: dict[str, str] | None = None, ready_timeout: float = 90.0) -> None:
        self.http, self.grpc, self.metrics = ports or free_tcp_ports(3)
        self.name = name
        command = [str(python or sys.executable), "-m", "prn_edge.serve.cli", "--model", str(model), "--name", name,
                   "--http-port", str(self.http), "--grpc-port", str(self.grpc), "--metrics-port", str(self.metrics),
                   *args]
        self.proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                                     start_new_session=True)
        deadline = time.monotonic() + ready_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                err = self.proc.stderr.read()
                raise PRNError(f"prn-serve ended with status {self.proc.returncode} before it was ready: "
                               + " | ".join(err.strip().splitlines()[-3:]))
            if self._ok("/v2/health/ready") and self._ok(f"/v2/models/{name}/ready"):
                return
            time.sleep(0.3)
        self.stop()
        raise PRNError(f"prn-serve was not ready within {ready_timeout:g} s")

    def __enter__(self) -> ServeProcess:
        return self

    def __exit__(self, *exc) -> None:
        if self.proc.poll() is None:
            self.stop()

    @property
    def ports(self) -> tuple[int, int, int]:
        """HTTP, gRPC and metrics ports (to start a server again where clients look for it)."""
        return self.http, self.grpc, self.metrics

    def url(self, scheme: str = "grpc") -> str:
        """``grpc://127.0.0.1:PORT`` or ``http://127.0.0.1:PORT``, as ``prn-inspect --server`` takes it."""
        return f"{scheme}://127.0.0.1:{self.grpc if scheme == 'grpc' else self.http}"

    def _get(self, path: str, timeout: float = 5.0) -> bytes:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.http}{path}", timeout=timeout) as answer:
            return answer.read()

    def _ok(self, path: str) -> bool:
        with contextlib.suppress(OSError, urllib.error.URLError):
            self._get(path, timeout=2.0)
            return True
        return False

    def statistics(self) -> dict[str, Any]:
        """The model's statistics (Triton's ``/v2/models/NAME/stats``: counts, batches, times)."""
        stats = json.loads(self._get(f"/v2/models/{self.name}/stats"))
        return stats["model_stats"][0]

    def kill(self) -> None:
        """``kill -9`` prn-serve, its tritonserver and the backend stubs (its process group) at once."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.communicate(timeout=60)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> tuple[int, str]:
        """Send ``sig`` and wait; returns (exit status, stderr).

        Raises:
            PRNError: it had not stopped after ``timeout`` seconds (it is then killed).
        """
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            _, err = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise PRNError(f"prn-serve did not stop within {timeout:g} s after signal {sig}") from None
        return self.proc.returncode, err

    def __repr__(self) -> str:
        return f"ServeProcess(pid={self.proc.pid}, http={self.http}, grpc={self.grpc}, metrics={self.metrics})"

