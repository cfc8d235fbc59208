"""A small RTSP server for the stream tests: a folder of PNG frames, looped, as H.264 over RTSP.

Run by the distribution's Python (``/usr/bin/python3``), which has GStreamer's RTSP server
through GObject introspection; the project's venv does not. Not part of the package.

    /usr/bin/python3 tests/support/rtsp_server.py --check [--encoder E]
        prints what is missing (one line each) and exits 3, or exits 0 when it can serve;
    /usr/bin/python3 tests/support/rtsp_server.py --frames DIR --port PORT [--path /bottles] [--fps 10]
            [--encoder x264enc|openh264enc]
        serves DIR/000.png, 001.png, ... in a loop on rtsp://127.0.0.1:PORT/bottles and prints
        ``READY <url> <encoder>`` once it listens; SIGTERM or SIGINT stops it.

Each client gets its own pipeline (not shared), so a new connection starts at the first frame
with a key frame and the tests know what to expect.
"""
from __future__ import annotations

import argparse
import signal
import sys

# x264enc (plugins-ugly) first: it is what most deployments use; openh264enc (plugins-bad) if
# only that one is there. Both give baseline-compatible H.264 that FFmpeg (OpenCV's RTSP
# reader) decodes. Small GOP: a reconnecting client waits at most a second for a key frame.
ENCODERS = {
    "x264enc": "x264enc tune=zerolatency speed-preset=ultrafast key-int-max={gop} bframes=0",
    "openh264enc": "openh264enc gop-size={gop} complexity=low bitrate=2000000",
}
ELEMENTS = ("multifilesrc", "pngdec", "videoconvert", "rtph264pay")


def _gst():
    """(Gst, GstRtspServer, GLib), or SystemExit(3) naming what is missing."""
    try:
        import gi
    except ImportError:
        sys.exit(_missing(["python3-gi: no 'gi' module in this Python"]))
    try:
        gi.require_version("Gst", "1.0")
        gi.require_version("GstRtspServer", "1.0")
        from gi.repository import GLib, Gst, GstRtspServer
    except (ValueError, ImportError) as exc:
        sys.exit(_missing([f"gir1.2-gst-rtsp-server-1.0: {exc}"]))
    Gst.init(None)
    return Gst, GstRtspServer, GLib


def _missing(lines: list[str]) -> int:
    for line in lines:
        print(f"missing: {line}", flush=True)
    return 3


def pick_encoder(Gst, wanted: str | None = None) -> tuple[str | None, list[str]]:
    """The H.264 encoder (``wanted``, else the first present), and the missing elements (one line each)."""
    missing = [f"GStreamer element {e} (gstreamer1.0-plugins-base/good)" for e in ELEMENTS
               if Gst.ElementFactory.find(e) is None]
    encoder = next((e for e in ([wanted] if wanted else ENCODERS) if Gst.ElementFactory.find(e) is not None), None)
    if encoder is None and wanted:
        missing.append(f"GStreamer element {wanted} "
                       f"({'gstreamer1.0-plugins-ugly' if wanted == 'x264enc' else 'gstreamer1.0-plugins-bad'})")
    elif encoder is None:
        missing.append("an H.264 encoder: x264enc (gstreamer1.0-plugins-ugly) or openh264enc "
                       "(gstreamer1.0-plugins-bad)")
    return encoder, missing


def launch_line(frames: str, fps: int, encoder: str) -> str:
    # multifilesrc loops back to 000.png after the last file; pngdec is lossless, so the only
    # loss between the bottle images and the client is the H.264 encoding.
    return (f"multifilesrc location={frames}/%03d.png index=0 loop=true caps=image/png,framerate={fps}/1 "
            f"! pngdec ! videoconvert ! video/x-raw,format=I420 ! {ENCODERS[encoder].format(gop=fps)} "
            f"! rtph264pay name=pay0 pt=96 config-interval=1")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--check", action="store_true", help="report missing pieces and exit")
    p.add_argument("--frames", help="folder of 000.png, 001.png, ...")
    p.add_argument("--port", type=int)
    p.add_argument("--path", default="/bottles")
    p.add_argument("--fps", type=int, default=10)
    p.add_argument("--encoder", choices=ENCODERS, help="default: the first one present, in this order")
    args = p.parse_args(argv)

    Gst, GstRtspServer, GLib = _gst()
    encoder, missing = pick_encoder(Gst, args.encoder)
    if missing:
        return _missing(missing)
    if args.check:
        print(f"ok: {encoder}", flush=True)
        return 0
    if not args.frames or not args.port:
        p.error("--frames and --port are required")

    line = launch_line(args.frames, args.fps, encoder)
    Gst.parse_launch(line).set_state(Gst.State.NULL)   # a bad line fails here, not at a client's DESCRIBE

    server = GstRtspServer.RTSPServer()
    server.set_address("127.0.0.1")
    server.set_service(str(args.port))
    factory = GstRtspServer.RTSPMediaFactory()
    factory.set_launch(f"( {line} )")
    factory.set_shared(False)
    server.get_mount_points().add_factory(args.path, factory)
    if server.attach(None) == 0:
        print(f"error: cannot listen on 127.0.0.1:{args.port}", file=sys.stderr, flush=True)
        return 2

    loop = GLib.MainLoop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        GLib.unix_signal_add(GLib.PRIORITY_DEFAULT, sig, loop.quit)
    print(f"READY rtsp://127.0.0.1:{args.port}{args.path} {encoder}", flush=True)
    loop.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
