"""The anomaly map's Gaussian blur (``PRNConfig.map_smoothing``; PatchCore's map smoothing): its
kernel against scipy's, its place in PRN's forward, and the configs that predate it."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from prn_edge.config import PRNConfig, get_config
from prn_edge.errors import PRNError
from prn_edge.model import PRN
from prn_edge.model.backbones import build_backbone
from prn_edge.model.decoder import top_k_score
from prn_edge.model.smoothing import MapSmoothing, gaussian_blur, gaussian_kernel1d


def test_gaussian_blur_preserves_constants_and_mass():
    k = torch.tensor([0.25, 0.5, 0.25])
    const = torch.full((2, 1, 16, 16), 3.0)
    torch.testing.assert_close(gaussian_blur(const, k), const)
    spike = torch.zeros(1, 1, 16, 16)
    spike[0, 0, 8, 8] = 1.0
    out = gaussian_blur(spike, k)
    assert out.shape == spike.shape and out[0, 0, 8, 8] == pytest.approx(0.25)
    assert float(out.sum()) == pytest.approx(1.0)


@pytest.mark.parametrize("sigma", [1.0, 2.5, 4.0])
def test_map_smoothing_is_scipys_gaussian_filter_with_mirrored_borders(sigma):
    """torch's ``reflect`` padding is scipy's ``mirror`` (the edge pixel is not repeated); same truncation."""
    ndimage = pytest.importorskip("scipy.ndimage")
    maps = torch.rand(2, 1, 64, 48, generator=torch.Generator().manual_seed(0))
    expected = np.stack([ndimage.gaussian_filter(m[0].double().numpy(), sigma, mode="mirror", truncate=4.0)
                         for m in maps])[:, None]
    got = MapSmoothing(sigma)(maps)
    np.testing.assert_allclose(got.numpy(), expected, atol=1e-6)
    assert gaussian_kernel1d(4.0).numel() == 33


def test_prn_blurs_the_map_after_the_sigmoid_and_scores_the_blurred_map():
    """The logits (what the loss reads) do not change; the map is the blur of their sigmoid and
    the image score is taken from the blurred map."""
    backbone = build_backbone("efficientnet_lite0", weights="none")
    images = torch.rand(2, 3, 256, 256, generator=torch.Generator().manual_seed(1))
    torch.manual_seed(0)
    plain = PRN(get_config("edge"), backbone=backbone).eval()
    plain.build_prototypes([images], k=1)
    smoothed = PRN(get_config("edge", map_smoothing=4.0), backbone=backbone).eval()
    smoothed.build_prototypes([images], k=1)
    smoothed.load_state_dict(plain.state_dict())              # the blur adds no state
    with torch.no_grad():
        a, b = plain(images), smoothed(images)
    torch.testing.assert_close(b.logits, a.logits)
    expected = gaussian_blur(torch.sigmoid(a.logits), gaussian_kernel1d(4.0))
    torch.testing.assert_close(b.anomaly_map, expected)
    torch.testing.assert_close(b.score, top_k_score(expected, smoothed.config.score_top_k))
    assert not torch.allclose(b.anomaly_map, a.anomaly_map)
    assert plain.smoothing is None and "smoothing" not in "".join(smoothed.state_dict())


def test_a_config_written_before_map_smoothing_existed_keeps_the_unblurred_map():
    old = get_config("edge", map_smoothing=4.0).to_dict()
    del old["map_smoothing"]
    assert PRNConfig.from_dict(old).map_smoothing == 0.0    # its threshold was calibrated on unblurred scores
    assert PRNConfig.from_dict(get_config("edge", map_smoothing=4.0).to_dict()).map_smoothing == 4.0


@pytest.mark.parametrize("sigma", [-1.0, 33.0])
def test_map_smoothing_must_fit_the_image(sigma):
    with pytest.raises(PRNError, match="map_smoothing must be a sigma in \\[0, 32\\]"):
        get_config("edge", map_smoothing=sigma)
