"""One batched pipeline: frames -> prepare -> :class:`Engine` -> regions -> decision, with stage timings.

``prn-inspect`` (one frame at a time), ``prn-bench`` (batches of camera frames), ``prn-eval``
and ``prn-export``'s decision check (batches of dataset images already at the model's size)
all judge through :class:`Pipeline`, so they cannot disagree: the engine sees exactly what
:func:`~prn_edge.imaging.preprocess.prepare_frame` produces (or the dataset reader, which uses
the same functions), and regions and decisions come from one set of functions
(:mod:`prn_edge.runtime.postprocess`, :mod:`prn_edge.contract.decision`).
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from prn_edge.contract.decision import decide, resolve_threshold
from prn_edge.contract.engine import DEVICE_STAGES, Engine
from prn_edge.errors import PRNError
from prn_edge.imaging.preprocess import (
    RESIZE_POLICIES,
    FrameGeometry,
    frame_geometry,
    prepare_frame,
)
from prn_edge.runtime.postprocess import Region, find_regions, render_overlay

__all__ = ["STAGES", "Batch", "Detection", "InspectConfig", "Pipeline"]

#: Stages of :attr:`Batch.timings` (seconds): ``h2d`` and ``d2h`` only where the engine moves data to a device.
STAGES = ("preprocess", "h2d", "compute", "d2h", "postprocess")


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


@dataclass
class Batch:
    """The result of one batch.

    Attributes:
        maps: ``(B, S, S)`` anomaly maps.
        scores: ``(B,)`` image scores.
        threshold: the decision threshold (None: an uncalibrated scorer judged without one).
        anomalous: ``(B,)`` bool decisions (None without a threshold).
        regions: defect regions per frame, in frame pixels (empty lists without a pixel threshold).
        geometries: where each map lies in its frame (None for images given at the model's size).
        timings: seconds per stage of the whole batch (:data:`STAGES` that apply, and ``total``).
    """

    maps: np.ndarray
    scores: np.ndarray
    threshold: float | None
    anomalous: np.ndarray | None
    regions: list[list[Region]]
    geometries: list[FrameGeometry | None]
    timings: dict[str, float]

    def __len__(self) -> int:
        return len(self.scores)


class Pipeline:
    """Prepare, run and judge frames with one engine, a batch or one frame at a time.

    Args:
        engine: any :class:`~prn_edge.contract.engine.Engine`.
        config: the :class:`InspectConfig` (default: stretch, whole frame, the model's threshold).
        require_threshold: refuse a model without a threshold (tools that must decide); with
            False, an uncalibrated scorer (the PatchCore baseline) is judged without decisions.
        clock: the timer, seconds (injectable for tests).

    Raises:
        PRNError: no threshold although one is required, or a bad one.
    """

    def __init__(self, engine: Engine, config: InspectConfig | None = None, *, require_threshold: bool = True,
                 clock=time.perf_counter) -> None:
        self.engine = engine
        self.config = config or InspectConfig()
        self.threshold = resolve_threshold(self.config.threshold, engine.threshold, required=require_threshold)
        self.pixel_threshold = (self.threshold if self.config.pixel_threshold is None
                                else float(self.config.pixel_threshold))
        self.size = int(engine.image_size)
        self.clock = clock
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

    def prepare(self, frames, order: str = "BGR") -> tuple[np.ndarray, list[FrameGeometry]]:
        """Camera frames (any size, BGR as OpenCV delivers them) -> the uint8 ``(B, S, S, 3)`` RGB batch.

        Raises:
            PRNError: an unusable frame, or a region of interest outside it.
        """
        if isinstance(frames, (str, bytes)) or not hasattr(frames, "__len__") or len(frames) == 0:
            raise PRNError(f"give a non-empty list of frames, got {type(frames).__name__}")
        batch = np.empty((len(frames), self.size, self.size, 3), np.uint8)
        geometries = []
        for i, frame in enumerate(frames):
            batch[i] = prepare_frame(frame, self.size, policy=self.config.resize, order=order, roi=self.config.roi)
            geometries.append(self.geometry(*frame.shape[:2]))
        return batch, geometries

    def judge(self, images: np.ndarray, geometries: list[FrameGeometry | None] | None = None, *,
              timings: dict[str, float] | None = None) -> Batch:
        """Run and judge a batch already at the model's input: uint8 ``(B, S, S, 3)`` RGB.

        Args:
            images: the batch (dataset images, or :meth:`prepare`'s output).
            geometries: where each image lies in its frame (None: report model pixels).
            timings: stages already timed (``preprocess``), merged into the result's.

        Raises:
            PRNError: the engine refuses the batch or returns broken outputs.
        """
        clock = self.clock
        t0 = clock()
        maps, scores = self.engine.predict(images)                            # (B, S, S), (B,)
        t1 = clock()
        geometries = list(geometries) if geometries is not None else [None] * len(scores)
        if self.pixel_threshold is None:
            regions: list[list[Region]] = [[] for _ in scores]
        else:
            regions = [find_regions(maps[i], self.pixel_threshold, geometries[i],
                                    min_area=self.config.min_region_area) for i in range(len(scores))]
        anomalous = None if self.threshold is None else decide(scores, self.threshold)
        t2 = clock()
        stages = dict(timings or {})
        split = getattr(self.engine, "last_timings", None)
        if isinstance(split, dict) and all(k in split for k in DEVICE_STAGES):
            stages.update({k: float(split[k]) for k in DEVICE_STAGES})
        else:
            stages["compute"] = t1 - t0
        stages["infer"] = t1 - t0
        stages["postprocess"] = t2 - t1
        stages["total"] = stages.get("preprocess", 0.0) + (t2 - t0)
        return Batch(maps=maps, scores=scores, threshold=self.threshold, anomalous=anomalous, regions=regions,
                     geometries=geometries, timings=stages)

    def run(self, frames, order: str = "BGR") -> Batch:
        """:meth:`prepare` then :meth:`judge` a batch of camera frames, timed per stage."""
        t0 = self.clock()
        images, geometries = self.prepare(frames, order)
        return self.judge(images, geometries, timings={"preprocess": self.clock() - t0})

    def __call__(self, frame: np.ndarray) -> Detection:
        """Judge one BGR frame (any size, as OpenCV delivers it).

        Raises:
            PRNError: an unusable frame, a region of interest outside it, an engine failure, or a
                pipeline built without a threshold.
        """
        if self.threshold is None:
            raise PRNError("this pipeline has no decision threshold: build it with one to judge frames")
        batch = self.run([frame])
        t = batch.timings
        return Detection(score=float(batch.scores[0]), threshold=self.threshold,
                         anomalous=bool(batch.anomalous[0]), regions=batch.regions[0], amap=batch.maps[0],
                         geometry=batch.geometries[0],
                         latency_ms={"preprocess": t["preprocess"] * 1e3, "infer": t["infer"] * 1e3,
                                     "postprocess": t["postprocess"] * 1e3})

    def overlay(self, frame: np.ndarray, detection: Detection) -> np.ndarray:
        """The overlay image of a frame and its detection (BGR, the frame's size)."""
        return render_overlay(frame, detection.amap, detection.geometry, detection.regions,
                              score=detection.score, threshold=detection.threshold,
                              anomalous=detection.anomalous)
