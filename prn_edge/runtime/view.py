"""An optional live view for headless devices: the newest overlay as an MJPEG stream over HTTP.

Edge boxes rarely have a display (and pip's OpenCV has no GUI), so ``prn-inspect --view PORT``
serves ``http://HOST:PORT/`` (a small page: the newest overlay and the running counts, refreshed
by a few lines of JavaScript), ``/stream.mjpg`` (a ``multipart/x-mixed-replace`` JPEG stream any
browser, VLC or OpenCV plays), ``/latest.jpg`` and ``/status`` (the running counts as JSON). The loop only
hands over references to its newest frame and detection; rendering and encoding happen in
the server's threads, only while someone watches, at most ``max_fps`` times a second.
stdlib + OpenCV only.
"""
from __future__ import annotations

import contextlib
import http.server
import json
import threading
import time
from collections.abc import Callable
from typing import Any

from prn_edge.errors import PRNError, require

__all__ = ["LiveView"]

BOUNDARY = "prnframe"
# The page: polls /latest.jpg and /status (simpler and sturdier in every browser than an MJPEG
# <img>, which some never mark as loaded); data-frames / data-width let a test see it worked.
PAGE = b"""<!doctype html>
<html><head><meta charset="utf-8"><title>prn-inspect</title>
<style>body{font:14px sans-serif;margin:12px;background:#111;color:#eee}img{max-width:100%}</style></head>
<body><h1>prn-inspect live view</h1><p id="status">waiting for the first frame...</p>
<img id="frame" alt="newest frame with its anomaly overlay">
<script>
const img = document.getElementById("frame"), status = document.getElementById("status");
img.onload = () => { document.body.dataset.width = img.naturalWidth; };
async function tick() {
  try {
    const s = await (await fetch("/status", {cache: "no-store"})).json();
    status.textContent = Object.entries(s).map(([k, v]) => k + ": " + v).join(", ");
    document.body.dataset.frames = s.frames ?? "";
    img.src = "/latest.jpg?" + Date.now();
  } catch (e) { status.textContent = "no connection to prn-inspect"; }
  setTimeout(tick, 500);
}
tick();
</script></body></html>
"""


class LiveView:
    """Serve the newest overlay while the loop runs.

    Args:
        port: TCP port (0 = any free one; see :attr:`port`).
        host: address to listen on (default loopback only; ``0.0.0.0`` for the network).
        max_fps: stream rate cap per client.
        status: optional callable returning a JSON-able dict for ``/status``.

    Raises:
        PRNError: the port cannot be opened.
    """

    def __init__(self, port: int = 8080, host: str = "127.0.0.1", *, max_fps: float = 10.0,
                 status: Callable[[], dict[str, Any]] | None = None) -> None:
        self.max_fps = max_fps
        self.status = status
        self._latest = None                  # (sequence, render callable)
        self._cache: tuple[int, bytes] | None = None
        self._lock = threading.Lock()
        self._closed = threading.Event()
        view = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):    # no access log on stderr
                pass

            def do_GET(self):
                path = self.path.split("?", 1)[0]   # the page adds ?time to defeat caches
                if path == "/latest.jpg":
                    jpeg = view.jpeg()
                    if jpeg is None:
                        self.send_error(503, "no frame yet")
                        return
                    self._send(200, "image/jpeg", jpeg)
                elif path == "/status":
                    self._send(200, "application/json", json.dumps(view.status() if view.status else {}).encode())
                elif path in ("/", "/index.html"):
                    self._send(200, "text/html; charset=utf-8", PAGE)
                elif path == "/stream.mjpg":
                    view._stream(self)
                else:
                    self.send_error(404)

            def _send(self, code, kind, body):
                self.send_response(code)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Cache-Control", "no-store")
                self.end_headers()
                self.wfile.write(body)

        try:
            self.server = http.server.ThreadingHTTPServer((host, port), Handler)
        except OSError as exc:
            raise PRNError(f"cannot serve the live view on {host}:{port} ({exc.strerror}); choose another --view port") \
                from exc
        self.server.daemon_threads = True
        self.host, self.port = host, self.server.server_address[1]
        self._thread = threading.Thread(target=self.server.serve_forever, name="prn-view", daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/"

    def update(self, sequence: int, render: Callable[[], Any]) -> None:
        """Offer the newest frame: ``render()`` returns its BGR overlay (called only if watched)."""
        self._latest = (sequence, render)

    def jpeg(self) -> bytes | None:
        """The newest overlay as JPEG (rendered once per frame, on demand)."""
        latest = self._latest
        if latest is None:
            return None
        sequence, render = latest
        with self._lock:
            if self._cache is None or self._cache[0] != sequence:
                cv2 = require("cv2", "the live view")
                ok, buf = cv2.imencode(".jpg", render(), [cv2.IMWRITE_JPEG_QUALITY, 80])
                if not ok:
                    return None
                self._cache = (sequence, buf.tobytes())
            return self._cache[1]

    def _stream(self, handler) -> None:
        handler.send_response(200)
        handler.send_header("Content-Type", f"multipart/x-mixed-replace; boundary={BOUNDARY}")
        handler.send_header("Cache-Control", "no-store")
        handler.end_headers()
        last = None
        with contextlib.suppress(OSError):      # the viewer went away
            while not self._closed.is_set():
                latest = self._latest
                if latest is not None and latest[0] != last:
                    jpeg = self.jpeg()
                    if jpeg is not None:
                        last = latest[0]
                        handler.wfile.write(f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\n"
                                            f"Content-Length: {len(jpeg)}\r\n\r\n".encode() + jpeg + b"\r\n")
                        handler.wfile.flush()
                time.sleep(1.0 / self.max_fps)

    def close(self) -> None:
        """Stop serving (streams end within one frame period)."""
        self._closed.set()
        self.server.shutdown()
        self.server.server_close()
