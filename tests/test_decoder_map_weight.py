"""The decoder's weight in the anomaly map (``PRNConfig.decoder_map_weight``, issue 13): the map is
``sigmoid(prior + w * decoder)`` while the loss reads ``prior + decoder``; configs that predate it read 1."""
from __future__ import annotations

import pytest
import torch

from conftest import prior_model_pair

from prn_edge.config import PRNConfig, get_config
from prn_edge.errors import PRNError
from prn_edge.model.decoder import top_k_score

PRIOR = dict(prototype_match="patch", patch_prototypes=8, residual_prior=True, prior_scales=(2, 3))


def _pair(weight: float, head_gain: float):
    """Two edge models with the same state, one at decoder_map_weight 1 and one at ``weight``."""
    return prior_model_pair(PRIOR, {"decoder_map_weight": weight}, head_gain)


def test_the_map_takes_the_correction_at_its_weight_and_the_loss_reads_it_whole():
    whole, weighted, images = _pair(0.75, head_gain=0.5)
    with torch.no_grad():
        a, b = whole.stages(images), weighted.stages(images)
    torch.testing.assert_close(b["logits"], a["logits"])           # training is unchanged
    correction = a["logits"] - a["prior"]
    assert float(correction.abs().max()) > 0.1, "the test needs a non-zero correction"
    expected = torch.sigmoid(a["prior"] + 0.75 * correction)
    torch.testing.assert_close(b["anomaly_map"], expected)
    torch.testing.assert_close(b["score"], top_k_score(expected, weighted.config.score_top_k))
    assert not torch.allclose(b["anomaly_map"], a["anomaly_map"])
    torch.testing.assert_close(a["anomaly_map"], torch.sigmoid(a["logits"]))


def test_an_untrained_model_is_its_prior_at_any_weight():
    whole, weighted, images = _pair(0.5, head_gain=0.0)
    with torch.no_grad():
        a, b = whole(images), weighted(images)
    torch.testing.assert_close(b.anomaly_map, a.anomaly_map)
    torch.testing.assert_close(b.score, a.score)


def test_a_config_written_before_the_weight_existed_keeps_the_whole_correction():
    old = get_config("edge", **PRIOR, decoder_map_weight=0.75).to_dict()
    del old["decoder_map_weight"]
    assert PRNConfig.from_dict(old).decoder_map_weight == 1.0     # its threshold was calibrated on that map
    assert PRNConfig.from_dict(get_config("edge", **PRIOR, decoder_map_weight=0.75).to_dict()).decoder_map_weight == 0.75


@pytest.mark.parametrize("changes, message", [
    ({**PRIOR, "decoder_map_weight": 0.0}, r"decoder_map_weight must be in \(0, 1\], got 0.0"),
    ({**PRIOR, "decoder_map_weight": 1.5}, r"decoder_map_weight must be in \(0, 1\], got 1.5"),
    ({"decoder_map_weight": 0.75}, "decoder_map_weight 0.75 weighs the decoder against the residual prior"),
])
def test_bad_weights_are_refused(changes, message):
    with pytest.raises(PRNError, match=message):
        get_config("edge", **changes)
