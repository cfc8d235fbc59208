"""The two sets of defaults ``prn-train`` chooses from (``--defaults``): ``measured`` and ``paper``.

``paper`` is PRN as published (PRNConfig's own defaults; Adam at a constant 1e-4, the final step
kept). ``measured`` is what issue 13 measured to beat the same-backbone PatchCore baseline beyond
centred, aligned objects, and what a user gets unless told otherwise:

* each position matched against its nearest of 1024 prototype *vectors* (not one prototype image,
  position against position), features averaged over 3x3 before matching, zeros beyond the border;
* the residual prior over scales 2 and 3, so that the untrained model is already a
  nearest-neighbour detector and training refines it;
* the map blurred with sigma 4 (PatchCore's smoothing) before the score;
* the decoder's correction weighed 0.75 against the prior in the map (``decoder_map_weight``): the
  correction, learnt from few and synthesized anomalies, overshoots on unlike defects;
* the image score half from the map, half from the prior's own map (``score_prior_share``): the
  correction also lifts a few normal images of unaligned parts, which the prior alone ranks right;
* Adam at 2e-5 with a cosine decay, and the step that scores best on held-out normal images and
  their synthesized anomalies kept (never the test set);
* crops of the bundled CC0 photos as the simulated anomalies' textures, whatever folders sit near
  the data (``--textures DIR`` still takes DTD): every user has them, and the result does not depend
  on finding a download (the paper's set-up found DTD near the data, or made every simulated anomaly
  homologous without it).

The evidence, per option, is in benchmarks/results/prototype_diagnosis.md (the match, the pooling
and the prior's scales, before training), match_ablation.md and match_ablation_20min.md (trained,
the learning rate and the textures included), map_smoothing.md, decoder_map_weight.md and
score_prior_share.md. One set for every dataset:
none of these is chosen per category.

Plain data only: no torch import here.
"""
from __future__ import annotations

from typing import Any

DEFAULT_SETS = ("measured", "paper")
DEFAULT_SET = "measured"

#: PRNConfig fields set on top of the preset (the presets themselves keep the paper's values).
MODEL: dict[str, dict[str, Any]] = {
    "measured": {"prototype_match": "patch", "match_pooling": 3, "match_pooling_border": "zeros",
                 "residual_prior": True, "prior_scales": (2, 3), "map_smoothing": 4.0,
                 "decoder_map_weight": 0.75, "score_prior_share": 0.5},
    "paper": {},
}

#: Training options: learning rate, its schedule, end-point selection, and the texture source when
#: --textures is not given (None: a ``dtd`` folder near the data, else no textures).
TRAINING: dict[str, dict[str, Any]] = {
    "measured": {"lr": 2e-5, "lr_schedule": "cosine", "select_best": True, "textures": "builtin"},
    "paper": {"lr": 1e-4, "lr_schedule": "constant", "select_best": False, "textures": None},
}
