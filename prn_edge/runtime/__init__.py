"""The edge runtime: numpy, OpenCV and one inference engine; never torch.

Importing this package must work on a device where only numpy and OpenCV are installed
(OpenCV itself is imported on first use, with an install hint if it is missing). Engines
import their own dependency (onnxruntime, tensorrt + cupy, torch) when they are built.

* backends (:mod:`.backends`, one module each behind :class:`prn_edge.contract.Engine`) and
  :func:`load_engine` to pick one (:mod:`.loader`);
* one batched pipeline: prepare -> engine -> regions -> decision (:class:`Pipeline`);
* sources (:func:`open_source`), the loop (:class:`InspectionLoop`), stores (:class:`SQLiteStore`,
  :class:`JsonlStore`, :class:`AnomalyImageWriter`), an optional MJPEG live view (:mod:`.view`);
  ``prn-inspect`` is :mod:`.cli`.
"""
from prn_edge.contract.decision import decide
from prn_edge.contract.engine import Engine
from prn_edge.contract.model_folder import find_model_files
from prn_edge.imaging.preprocess import (
    RESIZE_POLICIES,
    FrameGeometry,
    crop_roi,
    frame_geometry,
    prepare_frame,
    resize_image,
    to_rgb,
)
from prn_edge.runtime.backends.onnxruntime import OnnxRuntimeEngine
from prn_edge.runtime.loader import BACKENDS, load_engine, plan_engines
from prn_edge.runtime.loop import (
    Backoff,
    InspectionLoop,
    LatestQueue,
    Summary,
    stop_on_signals,
)
from prn_edge.runtime.pipeline import Batch, Detection, InspectConfig, Pipeline
from prn_edge.runtime.postprocess import Region, find_regions, render_overlay
from prn_edge.runtime.sources import (
    Frame,
    Source,
    SourceError,
    SyntheticSource,
    open_source,
)
from prn_edge.runtime.store import (
    AnomalyImageWriter,
    JsonlStore,
    SQLiteStore,
    open_store,
    read_jsonl,
)

__all__ = ["BACKENDS", "RESIZE_POLICIES", "AnomalyImageWriter", "Backoff", "Batch", "Detection", "Engine", "Frame",
           "FrameGeometry", "InspectConfig", "InspectionLoop", "JsonlStore", "LatestQueue", "OnnxRuntimeEngine",
           "Pipeline", "Region", "SQLiteStore", "Source", "SourceError", "Summary", "SyntheticSource", "crop_roi",
           "decide", "find_model_files", "find_regions", "frame_geometry", "load_engine", "open_source",
           "open_store", "plan_engines", "prepare_frame", "read_jsonl", "render_overlay", "resize_image",
           "stop_on_signals", "to_rgb"]
