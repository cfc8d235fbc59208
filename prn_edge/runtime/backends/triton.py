"""The Triton client backend: the model runs in a Triton Inference Server, this engine only sends frames.

``prn-inspect --server grpc://HOST:PORT`` (or ``http://HOST:PORT``) judges frames with a model served by
``prn-serve`` (PyTriton) or by NVIDIA's container from a ``prn-serve repo`` repository. The names are
:mod:`prn_edge.contract.serving`'s: uint8 NHWC ``image`` in, ``anomaly_map`` and ``score`` out, and the
model's metadata as its config's ``parameters``. The engine reads the input size and the threshold from
there when it is built, so the :class:`~prn_edge.runtime.pipeline.Pipeline` prepares, finds regions and
decides exactly as it does with a local engine: only the network runs elsewhere.

A server that cannot answer (refused or reset connections, timeouts, a model that is still loading
after a restart) raises :class:`~prn_edge.contract.engine.EngineUnavailable`, which the inspection loop
retries with back-off on the same frame; the next call connects afresh (gRPC's own reconnection
back-off would otherwise hold a dead channel for up to two minutes) and checks that the server still
serves the same model (input size, threshold, checkpoint) before sending frames again. Anything else
the server refuses is a plain :class:`~prn_edge.errors.PRNError`. ``tritonclient`` is imported when an
engine is built, with an install hint if it is missing.
"""
from __future__ import annotations

import contextlib
import http.client
import urllib.parse
from typing import Any

import numpy as np

from prn_edge.contract.engine import Engine, EngineUnavailable
from prn_edge.contract.metadata import parse_metadata
from prn_edge.contract.serving import INPUT, MAP, MODEL_NAME, SCORE
from prn_edge.errors import PRNError, first_line, require

__all__ = ["DEFAULT_PORTS", "TritonEngine", "parse_server_url"]

#: Triton's default port of each protocol (``tritonserver``, ``prn-serve``).
DEFAULT_PORTS = {"grpc": 8001, "http": 8000}
# gRPC status codes and server messages that mean "not now" rather than "never": the server is
# down, overloaded, stopping or restarting (its model not loaded yet).
_TRANSIENT_CODES = ("UNAVAILABLE", "DEADLINE_EXCEEDED", "CANCELLED", "ABORTED", "RESOURCE_EXHAUSTED")
_TRANSIENT_TEXT = ("unknown model", "is not found", "not ready", "unavailable", "is stopping", "exiting",
                   "socket closed", "connection reset", "broken pipe", "timed out", "timeout")


def parse_server_url(url: str) -> tuple[str, str, int]:
    """``grpc://HOST[:PORT]`` or ``http://HOST[:PORT]`` -> (scheme, host, port); the port defaults to Triton's.

    Raises:
        PRNError: anything else, in one line naming ``--server``.
    """
    hint = f"--server {url!r}: expected grpc://HOST:PORT or http://HOST:PORT (Triton's gRPC or HTTP endpoint)"
    if not isinstance(url, str) or not url:
        raise PRNError(hint)
    parts = urllib.parse.urlsplit(url.strip())
    try:
        port = parts.port
    except ValueError:
        raise PRNError(f"{hint}: the port must be from 1 to 65535") from None
    if parts.scheme not in DEFAULT_PORTS or not parts.hostname or parts.path not in ("", "/") or parts.query \
            or parts.fragment or parts.username or parts.password:
        raise PRNError(hint)
    if port == 0:
        raise PRNError(f"{hint}: the port must be from 1 to 65535")
    return parts.scheme, parts.hostname, port or DEFAULT_PORTS[parts.scheme]


def _parameters(config: dict[str, Any]) -> dict[str, str]:
    return {k: str(v.get("string_value", "")) if isinstance(v, dict) else str(v)
            for k, v in (config.get("parameters") or {}).items()}


def _dims(tensor: dict[str, Any]) -> tuple[int, ...]:
    return tuple(int(d) for d in tensor.get("dims") or ())


class TritonEngine(Engine):
    """A PRN model served by Triton Inference Server, reached over gRPC or HTTP.

    Args:
        url: ``grpc://HOST:PORT`` or ``http://HOST:PORT``.
        model: the model's name on the server (``prn-serve``'s default; ``prn_onnxruntime`` or
            ``prn_tensorrt`` in a ``prn-serve repo`` repository).
        timeout: seconds one request (or the connection) may take before it counts as unavailable.

    Raises:
        PRNError: a bad URL, tritonclient missing, a model the server does not have or that is not a
            PRN model; :class:`EngineUnavailable` (a PRNError too) when the server cannot be reached.
    """

    backend = "triton"

    def __init__(self, url: str, model: str = MODEL_NAME, *, timeout: float = 30.0) -> None:
        scheme, host, port = parse_server_url(url)
        self.scheme, self.model_name, self.timeout = scheme, str(model), float(timeout)
        self.address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        self.url = f"{scheme}://{self.address}"
        self.where = f"Triton server {self.url} (model {self.model_name!r})"
        self._triton = require(f"tritonclient.{scheme}", "inspecting through a Triton server (--server)")
        self._client = None
        self._stale = False
        self.path = None
        try:
            self._read_model(first=True)
        except BaseException:
            self.close()
            raise
        self.name = f"triton-{scheme}:{self.precision}"

    # -- connection ------------------------------------------------------------------------
    def _connect(self):
        if self._client is None:
            if self.scheme == "grpc":
                self._client = self._triton.InferenceServerClient(self.address)
            else:
                self._client = self._triton.InferenceServerClient(
                    self.address, connection_timeout=self.timeout, network_timeout=self.timeout)
        return self._client

    def _timeout(self) -> dict[str, float]:
        """Per-call deadline: gRPC takes one per call; the HTTP client has its timeouts from :meth:`_connect`."""
        return {"client_timeout": self.timeout} if self.scheme == "grpc" else {}

    def _drop_connection(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(Exception):
                client.close()

    def _call(self, what: str, call):
        """``call(client)``; a failure of the server becomes EngineUnavailable, any other a PRNError."""
        from tritonclient.utils import InferenceServerException

        try:
            return call(self._connect())
        except InferenceServerException as exc:
            status = str(exc.status() or "")
            text = first_line(exc, 300)
            if any(code in status for code in _TRANSIENT_CODES) or any(t in text.lower() for t in _TRANSIENT_TEXT):
                self._lost()
                raise EngineUnavailable(f"{self.where} unavailable ({what}): {text}") from exc
            raise PRNError(f"{self.where} refused {what}: {text}") from exc
        except (OSError, EOFError, http.client.HTTPException) as exc:   # HTTP: refused, reset, cut off, timed out
            self._lost()
            raise EngineUnavailable(f"{self.where} unavailable ({what}): {first_line(exc, 300)}") from exc
        except Exception as exc:  # geventhttpclient's own kinds for a connection cut mid-response
            if self.scheme != "http" or type(exc).__module__.split(".")[0] not in ("geventhttpclient", "gevent"):
                raise
            self._lost()
            raise EngineUnavailable(f"{self.where} unavailable ({what}): {first_line(exc, 300)}") from exc

    def _lost(self) -> None:
        """After a failure: connect afresh next time, and check the model before trusting it again."""
        self._drop_connection()
        self._stale = True

    # -- the model -------------------------------------------------------------------------
    def _read_model(self, *, first: bool) -> None:
        """Read the model's config from the server: input size, batch limit, threshold, metadata."""
        if first:
            try:
                self._call("a connection", lambda c: c.is_server_live(**self._timeout()))
            except EngineUnavailable as exc:
                raise EngineUnavailable(f"cannot reach the {self.where}: {str(exc).split('): ', 1)[-1]} "
                                        "(is prn-serve or tritonserver running there? --server)") from exc
            try:
                ready = self._call("a readiness check", lambda c: c.is_model_ready(self.model_name, **self._timeout()))
            except PRNError as exc:       # an unknown model is "unavailable" mid-run (a restart), not here
                ready, why = False, f": {str(exc).split(': ', 1)[-1]}"
            else:
                why = ""
            if not ready:
                raise PRNError(f"the {self.where} is not ready: no such model on the server, or it is loading or "
                               f"failed to load{why} (--server-model; prn-serve names its model "
                               f"{MODEL_NAME!r}, a prn-serve repo repository NAME_onnxruntime and NAME_tensorrt)")
        elif not self._call("a readiness check", lambda c: c.is_model_ready(self.model_name, **self._timeout())):
            raise EngineUnavailable(f"{self.where} unavailable: its model is not ready")
        if self.scheme == "grpc":
            reply = self._call("its model config", lambda c: c.get_model_config(
                self.model_name, as_json=True, **self._timeout()))
            config = reply.get("config", reply)
        else:
            config = self._call("its model config", lambda c: c.get_model_config(self.model_name))
        params = _parameters(config)
        try:
            metadata = parse_metadata(params)
            size = int(metadata["input_size"])
        except (KeyError, TypeError, ValueError) as exc:
            raise PRNError(f"the {self.where} has no PRN Edge metadata in its config's parameters (input_size, "
                           f"threshold ...): serve an exported model with prn-serve or prn-serve repo") from exc
        inputs = {t.get("name"): t for t in config.get("input") or ()}
        outputs = {t.get("name"): t for t in config.get("output") or ()}
        image = inputs.get(INPUT)
        if image is None or image.get("data_type") != "TYPE_UINT8" or _dims(image) != (size, size, 3) \
                or set(inputs) != {INPUT}:
            raise PRNError(f"the {self.where} does not take what a PRN export takes (uint8 {INPUT!r} "
                           f"[batch, {size}, {size}, 3]); its inputs: {sorted(inputs)}")
        if MAP not in outputs or SCORE not in outputs or _dims(outputs[MAP]) != (1, size, size):
            raise PRNError(f"the {self.where} does not return a PRN export's {MAP!r} [batch, 1, {size}, {size}] and "
                           f"{SCORE!r}; its outputs: {sorted(outputs)}")
        max_batch = int(config.get("max_batch_size") or 0)
        if max_batch < 1:
            raise PRNError(f"the {self.where} does not batch (max_batch_size 0): serve it with prn-serve or "
                           "prn-serve repo, which give the model a batch axis")
        threshold = metadata.get("threshold")
        identity = (size, threshold, metadata.get("checkpoint_sha256"), params.get("precision"))
        if first:
            self.image_size, self.threshold, self.max_batch = size, threshold, max_batch
            self.metadata = metadata
            self.precision = params.get("precision") or "fp32"
            self.served_by = params.get("engine")
            self._identity = identity
        elif identity != self._identity:
            raise PRNError(f"the {self.where} came back with another model (input size, threshold, checkpoint, "
                           f"precision {identity[0]}, {identity[1]}, {identity[2]}, {identity[3]}; was "
                           f"{', '.join(map(str, self._identity))}): its results would not be this run's; "
                           "start prn-inspect again to use it")
        else:
            self.max_batch = max_batch

    def _predict(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self._stale:     # the server failed before: the same model must be back before frames are sent
            self._read_model(first=False)
            self._stale = False
        if images.shape[0] <= self.max_batch:   # a camera's frame: one request, no copy
            return self._infer(images)
        maps, scores = [], []
        for start in range(0, images.shape[0], self.max_batch):
            chunk_maps, chunk_scores = self._infer(images[start:start + self.max_batch])
            maps.append(chunk_maps)
            scores.append(chunk_scores)
        return np.concatenate(maps), np.concatenate(scores)

    def _infer(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        t = self._triton
        feed = t.InferInput(INPUT, list(images.shape), "UINT8")
        feed.set_data_from_numpy(images)
        wanted = [t.InferRequestedOutput(MAP), t.InferRequestedOutput(SCORE)]
        result = self._call("a request", lambda c: c.infer(self.model_name, [feed], outputs=wanted,
                                                            **self._timeout()))
        b, s = images.shape[0], self.image_size
        maps, scores = result.as_numpy(MAP), result.as_numpy(SCORE)
        if maps is None or scores is None or maps.size != b * s * s or scores.size != b:
            got = [None if a is None else a.shape for a in (maps, scores)]
            raise PRNError(f"the {self.where} answered {b} frame(s) with {MAP} and {SCORE} of shapes {got}")
        return maps.reshape(b, s, s), scores.reshape(b)

    def _describe(self) -> dict[str, Any]:
        return {"server": self.url, "server_model": self.model_name, "served_by": self.served_by,
                "max_batch": self.max_batch}

    def close(self) -> None:
        """Close the connection (the server and its model stay)."""
        self._drop_connection()

    def __repr__(self) -> str:
        return f"TritonEngine({self.url!r}, model={self.model_name!r}, name={getattr(self, 'name', '?')!r})"
