"""One pipeline, frame -> preprocess -> :class:`Engine` -> postprocess -> :class:`Detection`.

The inspection loop, the benchmarks and the tests all go through :class:`Pipeline`, so a
score cannot differ between paths: the engine sees exactly what :func:`prepare_frame`
produces, and the decision, the regions and the overlay come from one set of functions.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from prn_edge.errors import PRNError
from prn_edge.runtime.engine import Engine
from prn_edge.runtime.postprocess import (
    Region,
    decide,
    find_regions,
    render_overlay,
    resolve_threshold,
)
from prn_edge.imaging.preprocess import (
    RESIZE_POLICIES,
    FrameGeometry,
    frame_geometry,
    prepare_frame,
)

__all__ = ["Detection", "InspectConfig", "Pipeline"]


@dataclass(frozen=True)
class InspectConfig:
    """How frames are prepared and judged (a JSON file for ``prn-inspect --config``).

    Attributes:
        resize: ``stretch``, ``center-crop`` or ``letterbox`` (see :func:`resize_image`).
        roi: region of interest (x, y, w, h) in frame pixels; None = the whole frame.
        threshold: decision threshold on the image score; None = the model's calibrated one.
        pixel_threshold: threshold on the map for defect regions; None = the decision threshold
            (the score is a mean of top map values, so an anomalous frame has pixels above it).
        min_region_area: smallest region kept, in model pixels.
    """

    resize: str = "stretch"
    roi: tuple[int, int, int, int] | None = None
    threshold: float | None = None
    pixel_threshold: float | None = None
    min_region_area: int = 16

    def __post_init__(self) -> None:
        if self.resize not in RESIZE_POLICIES:
            raise PRNError(f"unknown resize policy {self.resize!r}: choose one of {', '.join(RESIZE_POLICIES)}")
        if self.roi is not None:
            roi = tuple(int(v) for v in self.roi)
            if len(roi) != 4 or roi[2] <= 0 or roi[3] <= 0 or roi[0] < 0 or roi[1] < 0:
                raise PRNError(f"region of interest must be x,y,w,h with w, h > 0 and x, y >= 0, got {self.roi}")
            object.__setattr__(self, "roi", roi)
        if self.min_region_area < 1:
            raise PRNError(f"min_region_area must be >= 1, got {self.min_region_area}")

    @classmethod
    def from_file(cls, path: str | os.PathLike, **overrides) -> InspectConfig:
        """Read a JSON object with the attribute names as keys; ``overrides`` that are not None win.

        Raises:
            PRNError: the file is missing, not JSON, or has unknown keys or bad values.
        """
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise PRNError(f"{path}: no such config file (--config)") from None
        except (OSError, ValueError) as exc:
            raise PRNError(f"{path}: not a readable JSON config: {exc}") from exc
        if not isinstance(data, dict):
            raise PRNError(f"{path}: the config must be a JSON object")
        unknown = set(data) - set(cls.__dataclass_fields__)
        if unknown:
            raise PRNError(f"{path}: unknown config key(s) {sorted(unknown)}; known: "
                           f"{sorted(cls.__dataclass_fields__)}")
        data.update({k: v for k, v in overrides.items() if v is not None})
        try:
            return cls(**data)
        except TypeError as exc:
            raise PRNError(f"{path}: bad config value: {exc}") from exc

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Detection:
    """The result of one frame.

    Attributes:
        score: the image score.
        threshold: the decision threshold used.
        anomalous: ``score > threshold``.
        regions: defect regions in frame pixels (computed for every frame, so that a
            borderline normal frame still shows where it was closest to a defect).
        amap: the ``(S, S)`` anomaly map (not stored; for the overlay).
        geometry: where the map lies in the frame.
        latency_ms: milliseconds per stage (``preprocess``, ``infer``, ``postprocess``).
    """

    score: float
    threshold: float
    anomalous: bool
    regions: list[Region]
    amap: np.ndarray
    geometry: FrameGeometry
    latency_ms: dict[str, float] = field(default_factory=dict)


class Pipeline:
    """Preprocess, run and judge single frames with one engine.

    Args:
        engine: any :class:`~prn_edge.runtime.engine.Engine`.
        config: the :class:`InspectConfig` (default: stretch, whole frame, the model's threshold).

    Raises:
        PRNError: no threshold (uncalibrated model and none given).
    """

    def __init__(self, engine: Engine, config: InspectConfig | None = None) -> None:
        self.engine = engine
        self.config = config or InspectConfig()
        self.threshold = resolve_threshold(self.config.threshold, engine.threshold)
        self.pixel_threshold = (self.threshold if self.config.pixel_threshold is None
                                else float(self.config.pixel_threshold))
        self.size = int(engine.image_size)
        self._geometry: dict[tuple[int, int], FrameGeometry] = {}

    def geometry(self, height: int, width: int) -> FrameGeometry:
        """The (cached) geometry of a frame size."""
        key = (height, width)
        if key not in self._geometry:
            if len(self._geometry) > 16:   # a source changing size all the time: do not grow
                self._geometry.clear()
            self._geometry[key] = frame_geometry(height, width, self.size, policy=self.config.resize,
                                                 roi=self.config.roi)
        return self._geometry[key]

    def __call__(self, frame: np.ndarray) -> Detection:
        """Judge one BGR frame (any size, as OpenCV delivers it).

        Raises:
            PRNError: an unusable frame, a region of interest outside it, or an engine failure.
        """
        t0 = time.perf_counter()
        geometry = self.geometry(*frame.shape[:2])
        x = prepare_frame(frame, self.size, policy=self.config.resize, order="BGR", roi=self.config.roi)
        t1 = time.perf_counter()
        maps, scores = self.engine.predict(x[None])          # (1, S, S), (1,)
        t2 = time.perf_counter()
        score = float(scores[0])
        regions = find_regions(maps[0], self.pixel_threshold, geometry, min_area=self.config.min_region_area)
        t3 = time.perf_counter()
        return Detection(score=score, threshold=self.threshold, anomalous=decide(score, self.threshold),
                         regions=regions, amap=maps[0], geometry=geometry,
                         latency_ms={"preprocess": (t1 - t0) * 1e3, "infer": (t2 - t1) * 1e3,
                                     "postprocess": (t3 - t2) * 1e3})

    def overlay(self, frame: np.ndarray, detection: Detection) -> np.ndarray:
        """The overlay image of a frame and its detection (BGR, the frame's size)."""
        return render_overlay(frame, detection.amap, detection.geometry, detection.regions,
                              score=detection.score, threshold=detection.threshold,
                              anomalous=detection.anomalous)
