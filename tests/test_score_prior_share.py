"""The residual prior's share of the image score (``PRNConfig.score_prior_share``, issue 13): the score is
``(1 - s) * top-K(map) + s * top-K(blur(sigmoid(prior)))`` while the map and the loss's logits are unchanged;
configs that predate it read 0."""
from __future__ import annotations

import pytest
import torch

from conftest import prior_model_pair

from prn_edge.config import PRNConfig, get_config
from prn_edge.errors import PRNError
from prn_edge.model.decoder import top_k_score
from prn_edge.model.smoothing import MapSmoothing

PRIOR = dict(prototype_match="patch", patch_prototypes=8, residual_prior=True, prior_scales=(2, 3),
             map_smoothing=4.0, decoder_map_weight=0.75)


def _pair(share: float, head_gain: float):
    """Two edge models with the same state, one scoring from the map alone and one at ``share``."""
    return prior_model_pair(PRIOR, {"score_prior_share": share}, head_gain)


def test_the_score_mixes_the_priors_top_k_and_the_map_is_unchanged():
    alone, shared, images = _pair(0.5, head_gain=0.5)
    with torch.no_grad():
        a, b = alone.stages(images), shared.stages(images)
    torch.testing.assert_close(b["logits"], a["logits"])             # training is unchanged
    torch.testing.assert_close(b["anomaly_map"], a["anomaly_map"])   # so is the map
    assert b["anomaly_map"].shape == (2, 1, 256, 256)
    k = shared.config.score_top_k
    prior_map = MapSmoothing(4.0)(torch.sigmoid(a["prior"]))
    prior_score = top_k_score(prior_map, k)
    torch.testing.assert_close(a["score"], top_k_score(a["anomaly_map"], k))
    torch.testing.assert_close(b["score"], 0.5 * a["score"] + 0.5 * prior_score)
    assert float((a["score"] - prior_score).abs().min()) > 1e-3, "the test needs the two scores apart"


def test_share_one_is_the_priors_score_alone():
    alone, shared, images = _pair(1.0, head_gain=0.5)
    with torch.no_grad():
        a, b = alone.stages(images), shared(images)
    torch.testing.assert_close(b.score, top_k_score(MapSmoothing(4.0)(torch.sigmoid(a["prior"])), 100))


def test_an_untrained_model_scores_the_same_at_any_share():
    alone, shared, images = _pair(0.5, head_gain=0.0)
    with torch.no_grad():
        a, b = alone(images), shared(images)
    torch.testing.assert_close(b.anomaly_map, a.anomaly_map)
    torch.testing.assert_close(b.score, a.score)


def test_per_channel_blur_and_score_equal_one_channel_at_a_time():
    maps = torch.rand(3, 2, 64, 64, generator=torch.Generator().manual_seed(3))
    blur = MapSmoothing(2.0)
    both = blur(maps)
    for c in range(2):
        torch.testing.assert_close(both[:, c:c + 1], blur(maps[:, c:c + 1]))
        torch.testing.assert_close(top_k_score(both, 10)[:, c], top_k_score(both[:, c:c + 1], 10))


def test_a_config_written_before_the_share_existed_scores_from_the_map_alone():
    old = get_config("edge", **PRIOR, score_prior_share=0.5).to_dict()
    del old["score_prior_share"]
    assert PRNConfig.from_dict(old).score_prior_share == 0.0     # its threshold was calibrated on that score
    assert PRNConfig.from_dict(get_config("edge", **PRIOR, score_prior_share=0.5).to_dict()).score_prior_share == 0.5


@pytest.mark.parametrize("changes, message", [
    ({**PRIOR, "score_prior_share": -0.1}, r"score_prior_share must be in \[0, 1\], got -0.1"),
    ({**PRIOR, "score_prior_share": 1.5}, r"score_prior_share must be in \[0, 1\], got 1.5"),
    ({"score_prior_share": 0.5}, "score_prior_share 0.5 mixes the residual prior's score into the image score"),
])
def test_bad_shares_are_refused(changes, message):
    with pytest.raises(PRNError, match=message):
        get_config("edge", **changes)
