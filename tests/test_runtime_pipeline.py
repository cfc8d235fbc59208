"""Pre- and post-processing of the runtime: geometry of the resize policies, regions, decision, overlay.

No model here: a fake engine returns a map chosen by the test, so every number is known.
"""
from __future__ import annotations

import json

import numpy as np
import pytest

from prn_edge.errors import PRNError
from prn_edge.runtime import (
    Engine,
    InspectConfig,
    Pipeline,
    decide,
    find_regions,
    frame_geometry,
    prepare_frame,
)
from prn_edge.contract.decision import resolve_threshold

cv2 = pytest.importorskip("cv2")


class MapEngine(Engine):
    """An Engine whose map is a fixed square blob (model pixels) and whose score is the map's max."""

    name = "fake"

    def __init__(self, size=64, box=(10, 20, 8, 4), value=0.9, threshold=0.5):
        self.image_size, self.threshold = size, threshold
        self.metadata = {}
        self.amap = np.zeros((size, size), np.float32)
        x, y, w, h = box
        self.amap[y:y + h, x:x + w] = value
        self.seen = []

    def _predict(self, images):
        self.seen.append(images)
        b = images.shape[0]
        return np.repeat(self.amap[None], b, 0), np.full(b, self.amap.max(), np.float32)

    def describe(self):
        return {"backend": "fake"}

    def close(self):
        pass


def test_fake_engine_is_an_engine():
    assert isinstance(MapEngine(), Engine)


@pytest.mark.parametrize("policy", ["stretch", "center-crop", "letterbox"])
@pytest.mark.parametrize("roi", [None, (30, 10, 200, 100)])
def test_geometry_maps_model_boxes_back_onto_the_frame(policy, roi):
    """A white box drawn in the frame is found where it is, for every policy and region of interest."""
    h, w, size = 240, 320, 64
    frame = np.zeros((h, w, 3), np.uint8)
    fx, fy = (roi[0], roi[1]) if roi else (0, 0)
    box = (fx + 80, fy + 40, 40, 30)         # inside the centre crop of either frame / roi
    frame[box[1]:box[1] + box[3], box[0]:box[0] + box[2]] = 255
    x = prepare_frame(frame, size, policy=policy, roi=roi)
    geometry = frame_geometry(h, w, size, policy=policy, roi=roi)
    regions = find_regions(x[..., 0].astype(np.float32) / 255.0, 0.5, geometry)
    assert len(regions) == 1
    r = regions[0]
    tol = max(geometry.scale_x, geometry.scale_y) + 1      # one model pixel of resampling blur
    assert abs(r.x - box[0]) <= tol and abs(r.y - box[1]) <= tol
    assert abs(r.x + r.w - box[0] - box[2]) <= tol and abs(r.y + r.h - box[1] - box[3]) <= tol
    assert r.area == pytest.approx(box[2] * box[3], rel=0.25)
    # The map back in frame pixels lights the box and nothing outside the region of interest.
    full = geometry.map_to_frame(x[..., 0].astype(np.float32) / 255.0)
    assert full.shape == (h, w)
    assert full[box[1] + 5:box[1] + box[3] - 5, box[0] + 5:box[0] + box[2] - 5].min() > 0.9
    if roi is not None:
        outside = np.ones((h, w), bool)
        outside[roi[1]:roi[1] + roi[3], roi[0]:roi[0] + roi[2]] = False
        assert full[outside].max() == 0


def test_regions_are_components_largest_first_with_peaks():
    amap = np.zeros((32, 32), np.float32)
    amap[1:3, 1:3] = 0.7             # 4 px
    amap[10:20, 10:15] = 0.6         # 50 px
    amap[12, 12] = 0.95
    amap[30, 30] = 0.8               # 1 px: below min_area
    regions = find_regions(amap, 0.5, min_area=2)
    assert [(r.x, r.y, r.w, r.h, r.area) for r in regions] == [(10, 10, 5, 10, 50.0), (1, 1, 2, 2, 4.0)]
    assert regions[0].peak == pytest.approx(0.95) and regions[1].peak == pytest.approx(0.7)
    assert find_regions(np.zeros((8, 8), np.float32), 0.5) == []
    json.dumps([r.to_dict() for r in regions])


def test_decision_and_threshold():
    assert decide(0.51, 0.5) and not decide(0.5, 0.5)       # calibrated as the max normal score
    assert resolve_threshold(None, 0.4) == 0.4
    assert resolve_threshold(0.7, 0.4) == 0.7
    with pytest.raises(PRNError, match="no calibrated decision threshold.*--threshold"):
        resolve_threshold(None, None)
    with pytest.raises(PRNError, match="finite"):
        resolve_threshold(float("nan"), None)


def test_pipeline_judges_a_frame_and_renders_an_overlay():
    engine = MapEngine(threshold=0.5)
    pipe = Pipeline(engine, InspectConfig(resize="letterbox"))
    frame = np.full((120, 160, 3), 100, np.uint8)
    frame[..., 0] = 30                                    # BGR: blue channel differs
    det = pipe(frame)
    assert det.anomalous and det.score == pytest.approx(0.9) and len(det.regions) == 1
    assert set(det.latency_ms) == {"preprocess", "infer", "postprocess"}
    x = engine.seen[0]
    assert x.shape == (1, 64, 64, 3) and x.dtype == np.uint8
    assert x[0, 32, 32].tolist() == [100, 100, 30]         # RGB for the model
    assert x[0, 0, 0].tolist() == [0, 0, 0]                # letterbox padding
    overlay = pipe.overlay(frame, det)
    assert overlay.shape == frame.shape and overlay.dtype == np.uint8 and not np.array_equal(overlay, frame)
    # Threshold override: the same frame is normal at 0.95.
    assert not Pipeline(engine, InspectConfig(threshold=0.95))(frame).anomalous


def test_config_validation_and_file(tmp_path):
    with pytest.raises(PRNError, match="unknown resize policy"):
        InspectConfig(resize="zoom")
    with pytest.raises(PRNError, match="region of interest"):
        InspectConfig(roi=(0, 0, 0, 10))
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"resize": "center-crop", "roi": [1, 2, 30, 40], "threshold": 0.3}))
    cfg = InspectConfig.from_file(path, threshold=0.6, resize=None)
    assert cfg.resize == "center-crop" and cfg.roi == (1, 2, 30, 40) and cfg.threshold == 0.6
    path.write_text(json.dumps({"rezise": "stretch"}))
    with pytest.raises(PRNError, match="unknown config key"):
        InspectConfig.from_file(path)
    with pytest.raises(PRNError, match="no such config file"):
        InspectConfig.from_file(tmp_path / "missing.json")
    # A region of interest outside the frame is a clear error, not a crash.
    pipe = Pipeline(MapEngine(), InspectConfig(roi=(100, 100, 50, 50)))
    with pytest.raises(PRNError, match="does not fit a 120x90 frame"):
        pipe(np.zeros((90, 120, 3), np.uint8))


@pytest.mark.parametrize("frame, needle", [
    (np.zeros((0, 0, 3), np.uint8), "non-empty"),
    (np.zeros((0, 64, 3), np.uint8), "non-empty"),
    (None, "got NoneType"),
    ([[0, 0, 0]], "got list"),
    ("frame.png", "got str"),
    (np.full((48, 64, 3), np.nan, np.float32), "NaN or infinite"),
    (np.full((48, 64, 3), 200.0), "values in \\[0, 1\\]"),     # float64 in 0..255: refused, not clipped
])
def test_unusable_frames_are_one_line_errors(frame, needle):
    """Issue 14, D8: the runtime API promises PRNError for any frame it cannot judge."""
    pipe = Pipeline(MapEngine())
    with pytest.raises(PRNError, match=needle) as info:
        pipe(frame)
    assert "\n" not in str(info.value)
    assert pipe.engine.seen == []                     # nothing reached the engine


def test_float_frames_in_unit_range_are_judged_like_uint8():
    frame = np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    pipe = Pipeline(MapEngine())
    pipe(frame.astype(np.float64) / 255.0)
    pipe(frame)
    np.testing.assert_array_equal(pipe.engine.seen[0], pipe.engine.seen[1])
