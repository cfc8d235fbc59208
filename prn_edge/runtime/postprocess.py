"""Post-processing shared by every engine: defect regions and the overlay.

The engine's outputs (an anomaly map in [0, 1] and an image score) become defect regions (connected components of the map above
a pixel threshold, with boxes and areas in the frame's own pixels) and, for anomalous frames,
an overlay image. numpy + OpenCV only.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from prn_edge.errors import PRNError, require
from prn_edge.imaging.preprocess import FrameGeometry

__all__ = ["Region", "find_regions", "render_overlay"]


@dataclass(frozen=True)
class Region:
    """One defect region: an 8-connected component of the map above the pixel threshold.

    Attributes:
        x, y, w, h: its bounding box in frame pixels (clipped to the region of interest).
        area: its area in frame pixels (model pixels times the pixel scale).
        peak: the highest map value inside it.
    """

    x: int
    y: int
    w: int
    h: int
    area: float
    peak: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def find_regions(amap: np.ndarray, threshold: float, geometry: FrameGeometry | None = None, *,
                 min_area: int = 1, max_regions: int = 64) -> list[Region]:
    """Connected components of ``amap > threshold``, largest first.

    Args:
        amap: float ``(S, S)`` anomaly map of one frame.
        threshold: pixel threshold on the map.
        geometry: where the map lies in the frame; None reports model pixels.
        min_area: components smaller than this (model pixels) are ignored as noise.
        max_regions: keep at most this many (the largest), so one noisy frame cannot flood the log.

    Returns:
        The regions, boxes and areas in frame pixels.
    """
    cv2 = require("cv2", "defect regions")
    mask = (np.asarray(amap) > threshold).astype(np.uint8)
    if not mask.any():
        return []
    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    # One pass for every component's peak instead of a mask per component.
    peaks = np.zeros(count, np.float32)
    np.maximum.at(peaks, labels.ravel(), np.asarray(amap, np.float32).ravel())
    regions = []
    order = sorted(range(1, count), key=lambda i: -stats[i, cv2.CC_STAT_AREA])
    for i in order:
        x, y, w, h, area = (int(v) for v in stats[i, :5])
        if area < min_area:
            break
        if geometry is not None:
            x, y, w, h = geometry.box_to_frame(x, y, w, h)
            area = area * geometry.scale_x * geometry.scale_y
        regions.append(Region(x, y, w, h, round(float(area), 1), round(float(peaks[i]), 4)))
        if len(regions) == max_regions:
            break
    return regions


def render_overlay(frame: np.ndarray, amap: np.ndarray, geometry: FrameGeometry, regions: list[Region], *,
                   score: float, threshold: float, anomalous: bool, alpha: float = 0.45) -> np.ndarray:
    """The frame with the anomaly map as a heat map, the region boxes and the score.

    Args:
        frame: the original BGR uint8 frame (any size).
        amap: its ``(S, S)`` anomaly map in [0, 1].
        geometry: from :func:`~prn_edge.imaging.preprocess.frame_geometry`.
        regions: from :func:`find_regions` (frame pixels).
        score, threshold, anomalous: printed in the corner.
        alpha: heat-map opacity where the map is 1 (it fades with the map value).

    Returns:
        A new BGR uint8 image of the frame's size.
    """
    cv2 = require("cv2", "overlay rendering")
    if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
        raise PRNError(f"overlay needs a uint8 BGR frame, got {frame.dtype} {frame.shape}")
    full = np.clip(geometry.map_to_frame(amap), 0.0, 1.0)                     # (H, W)
    heat = cv2.applyColorMap((full * 255).astype(np.uint8), cv2.COLORMAP_JET)
    weight = (alpha * full)[..., None]
    out = (frame.astype(np.float32) * (1.0 - weight) + heat.astype(np.float32) * weight).astype(np.uint8)
    thickness = max(1, round(max(frame.shape[:2]) / 400))
    for r in regions:
        cv2.rectangle(out, (r.x, r.y), (r.x + r.w - 1, r.y + r.h - 1), (0, 0, 255), thickness)
    label = f"{'ANOMALY' if anomalous else 'ok'} score {score:.4f} (threshold {threshold:.4f})"
    scale = max(0.4, frame.shape[1] / 1200)
    colour = (0, 0, 255) if anomalous else (0, 200, 0)
    cv2.putText(out, label, (8, int(24 * scale) + 4), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), thickness + 2)
    cv2.putText(out, label, (8, int(24 * scale) + 4), cv2.FONT_HERSHEY_SIMPLEX, scale, colour, thickness)
    return out
