"""GStreamer pipeline sources under an OpenCV built with GStreamer (the distribution's, as on JetPack).

Run by ``/usr/bin/python3`` with Debian's python3-opencv and python3-numpy and
``PYTHONPATH=<repository>`` (the venv's pip OpenCV has no GStreamer, and Debian's cv2 is built
for Debian's numpy). It reports what it saw as one JSON line; tests/test_streams_real.py judges it.
Exit 3 with ``missing: ...`` lines when a piece is not there.

The pipelines have the shape of a Jetson CSI camera's
(``nvarguscamerasrc ! ... ! nvvidconv ! video/x-raw,format=BGRx ! videoconvert ! video/x-raw,format=BGR ! appsink``),
with videotestsrc standing in for the camera.
"""
from __future__ import annotations

import json
import sys

WIDTH, HEIGHT, COUNT = 320, 240, 6
CAMERA = (f"videotestsrc num-buffers={COUNT} pattern=red is-live=true "
          f"! video/x-raw,width={WIDTH},height={HEIGHT},framerate=30/1 ! videoconvert")
SPECS = {
    # The Jetson shape: BGRx out of the converter, BGR into appsink, with the gst: prefix.
    "gst_prefix_bgr": f"gst:{CAMERA} ! video/x-raw,format=BGRx ! videoconvert ! video/x-raw,format=BGR ! appsink",
    # No prefix: recognised by its "!" between elements.
    "bare_bgr": f"{CAMERA} ! video/x-raw,format=BGR ! appsink",
    # appsink given BGRx or GRAY8: OpenCV hands over 4 or 1 channels, the source must make BGR.
    "bare_bgrx": f"{CAMERA} ! video/x-raw,format=BGRx ! appsink",
    "gst_prefix_gray": f"gst:{CAMERA} ! video/x-raw,format=GRAY8 ! appsink",
}


def missing(line: str) -> int:
    print(f"missing: {line}", flush=True)
    return 3


def read_all(source, SourceError) -> dict:
    frames, end = [], None
    source.open()
    try:
        while len(frames) < COUNT + 5:          # bounded: a pipeline that never ends is a failure too
            frame = source.read()
            if frame is None:
                end = "None"
                break
            frames.append(frame)
    except SourceError as exc:
        end = f"SourceError: {exc}"
    finally:
        source.close()
    return {"kind": source.kind, "live": source.live, "name": source.name, "end": end,
            "sequences": [f.sequence for f in frames],
            "shapes": sorted({f.image.shape for f in frames}), "dtypes": sorted({str(f.image.dtype) for f in frames}),
            "contiguous": all(f.image.flags.c_contiguous for f in frames),
            "mean_bgr": [round(float(v), 2) for v in
                         (sum(f.image.reshape(-1, 3).mean(0) for f in frames) / max(1, len(frames)))]}


def loop_over_eos() -> dict:
    """The inspection loop over a pipeline that ends (EOS, a lost camera): reopened, numbered on."""
    import numpy as np

    from prn_edge.contract.engine import Engine
    from prn_edge.runtime.loop import Backoff, InspectionLoop
    from prn_edge.runtime.pipeline import Pipeline
    from prn_edge.runtime.sources import open_source

    class Brightness(Engine):
        name, image_size, threshold = "brightness", 32, 0.5

        def _predict(self, images):
            level = images.reshape(images.shape[0], -1).mean(1).astype(np.float32) / 255.0
            return np.broadcast_to(level[:, None, None], (len(level), 32, 32)).astype(np.float32), level

    seen = []
    source = open_source(SPECS["bare_bgr"])
    s = InspectionLoop(Pipeline(Brightness()), source, drop=False, max_frames=2 * COUNT + 2,
                       backoff=Backoff(initial=0.01, attempts=2),
                       on_result=lambda frame, det, lat: seen.append(frame.sequence)).run()
    return {"sequences": seen, "source_errors": s.source_errors, "reconnects": s.reconnects, "end": s.end}


def main() -> int:
    try:
        import cv2
        import numpy  # noqa: F401
    except ImportError as exc:
        return missing(f"python3-opencv / python3-numpy for {sys.executable}: {exc}")
    before = set(sys.modules)
    from prn_edge.runtime.sources import SourceError, gstreamer_available, open_source
    # Top-level packages the import pulled in beyond the standard library and prn_edge.
    pulled = sorted({m.split(".")[0] for m in set(sys.modules) - before}
                    - set(sys.stdlib_module_names) - {"prn_edge", "_distutils_hack"})
    if not gstreamer_available():
        return missing(f"GStreamer in the OpenCV {cv2.__version__} at {cv2.__file__}")
    report = {"cv2": cv2.__version__, "cv2_file": cv2.__file__, "pulled": pulled, "gstreamer_available": True,
              "sources": {name: read_all(open_source(spec), SourceError) for name, spec in SPECS.items()},
              "loop": loop_over_eos()}
    print(json.dumps(report), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
