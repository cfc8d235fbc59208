"""PatchCore baseline: distances, coreset, and a small fit/predict on real MVTec bottle images."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from prn_edge.baseline.coreset import (
    greedy_coreset,
    greedy_coreset_reference,
    random_coreset,
    random_projection,
)
from prn_edge.baseline.patchcore import (
    PatchCoreConfig,
    PatchCorePredictor,
    nearest_neighbor_distance,
)
from prn_edge.contract.engine import Engine
from prn_edge.errors import PRNError
from prn_edge.model.nearest import nearest_neighbours

N_TRAIN = 30  # bottle training images the real-data tests fit on


# ------------------------------------------------------------------------- distances

@pytest.mark.parametrize("block_elements", [1 << 24, 7 * 500])  # one block; 7 queries per block
def test_nearest_neighbor_matches_cdist(block_elements):
    g = torch.Generator().manual_seed(0)
    queries = torch.randn(300, 32, generator=g)
    bank = torch.randn(500, 32, generator=g) + 0.5
    dist, index = nearest_neighbor_distance(queries, bank, block_elements=block_elements)
    ref = torch.cdist(queries.double(), bank.double())  # (300, 500) brute force, float64
    ref_dist, ref_index = ref.min(dim=1)
    assert dist.shape == (300,) and index.dtype == torch.long
    # float32 GEMM form vs float64: cancellation error ~ eps32 * ||a||^2 / ||a - b|| ~ 1e-6 here.
    torch.testing.assert_close(dist.double(), ref_dist, rtol=1e-5, atol=1e-5)
    assert torch.equal(index, ref_index)


def test_nearest_neighbor_identical_vectors_are_zero_not_nan():
    g = torch.Generator().manual_seed(1)
    bank = torch.randn(50, 64, generator=g) * 10  # large norms: worst cancellation
    dist, index = nearest_neighbor_distance(bank[[3, 17, 42]], bank)
    assert torch.isfinite(dist).all()
    assert index.tolist() == [3, 17, 42]
    # sqrt of a clamped float32 cancellation residue: at most ~sqrt(eps32 * ||b||^2) ~ 0.03.
    assert dist.max() < 0.05


def test_nearest_neighbours_ties_take_the_lowest_index_in_every_chunking():
    g = torch.Generator().manual_seed(2)
    bank = torch.randn(40, 16, generator=g)
    bank = torch.cat([bank, bank])  # entry i and i + 40 are identical: a tie for every query
    queries = torch.randn(123, 16, generator=g)
    dist, index = nearest_neighbours(queries, bank)
    assert (index < 40).all()
    for chunk in (1, 7, 500):
        d, i = nearest_neighbours(queries, bank, chunk=chunk)
        # The block's row count may change the GEMM's rounding (a 1-row block is a GEMV), not more.
        assert torch.equal(i, index)
        torch.testing.assert_close(d, dist, rtol=1e-6, atol=1e-6)
    sq, i = nearest_neighbours(queries, bank, squared=True, query_sqnorm=queries.pow(2).sum(dim=1))
    assert torch.equal(i, index) and torch.equal(sq.sqrt(), dist)


def test_nearest_neighbor_rejects_mismatched_shapes():
    with pytest.raises(PRNError, match="queries"):
        nearest_neighbor_distance(torch.zeros(4, 8), torch.zeros(5, 9))
    with pytest.raises(PRNError, match="empty"):
        nearest_neighbor_distance(torch.zeros(4, 8), torch.zeros(0, 8))


# ------------------------------------------------------------------------------ coreset

def _clustered(n: int = 3000, d: int = 16, seed: int = 0) -> torch.Tensor:
    """Points in 25 clusters of very different sizes (a few large, many small)."""
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(25, d, generator=g) * 8
    weights = torch.linspace(1.0, 0.02, 25) ** 2
    labels = torch.multinomial(weights, n, replacement=True, generator=g)
    return centers[labels] + torch.randn(n, d, generator=g)


def _covering_radius(points: torch.Tensor, index: torch.Tensor) -> float:
    return float(torch.cdist(points.double(), points[index].double()).min(dim=1).values.max())


@pytest.mark.parametrize("kind", ["gaussian", "clustered"])
def test_greedy_coreset_matches_reference(kind):
    # Isotropic Gaussian: concentrated distances, most steps take the dense branch.
    # Clustered: most steps read a few cells only.
    g = torch.Generator().manual_seed(5)
    points = torch.randn(2000, 32, generator=g) if kind == "gaussian" else _clustered(2000)
    fast, stats = greedy_coreset(points, 150, seed=1, return_stats=True)
    assert torch.equal(fast, greedy_coreset_reference(points, 150, seed=1))  # the pruning is exact
    if kind == "clustered":
        assert stats["mean_fraction_read"] < 0.5


def test_greedy_coreset_covers_better_than_random():
    points = _clustered()
    m = 100
    fast, stats = greedy_coreset(points, m, seed=0, return_stats=True)
    assert fast.dtype == torch.long and len(set(fast.tolist())) == m
    assert 0 < stats["mean_fraction_read"] < 1
    greedy_radius = _covering_radius(points, fast)
    assert stats["covering_radius"] == pytest.approx(greedy_radius, rel=1e-4)
    for seed in range(3):
        rand = random_coreset(points.shape[0], m, seed=seed)
        assert len(set(rand.tolist())) == m
        assert greedy_radius <= _covering_radius(points, rand)


def test_greedy_coreset_distinct_when_points_repeat():
    base = torch.randn(10, 4, generator=torch.Generator().manual_seed(0))
    points = base.repeat(5, 1)  # 50 points, 10 distinct vectors
    for fn in (greedy_coreset, greedy_coreset_reference):
        index = fn(points, 30, seed=2)
        assert len(set(index.tolist())) == 30
        assert len({tuple(v) for v in points[index[:10]].tolist()}) == 10  # first 10 cover all


def test_coreset_and_projection_are_seeded():
    points = _clustered(500)
    assert torch.equal(greedy_coreset(points, 20, seed=3), greedy_coreset(points, 20, seed=3))
    assert torch.equal(random_coreset(500, 20, seed=3), random_coreset(500, 20, seed=3))
    assert not torch.equal(random_coreset(500, 20, seed=3), random_coreset(500, 20, seed=4))
    assert torch.equal(random_projection(152, 128, 0), random_projection(152, 128, 0))
    with pytest.raises(PRNError, match="coreset"):
        greedy_coreset(points, 0)


def test_config_validation():
    with pytest.raises(PRNError, match="coreset"):
        PatchCoreConfig(coreset="kmeans")
    with pytest.raises(PRNError, match="coreset_fraction"):
        PatchCoreConfig(coreset_fraction=0.0)
    with pytest.raises(PRNError, match="layers"):
        PatchCoreConfig(layers=(1, 4))
    assert PatchCoreConfig(layers=[1, 2]).to_dict()["layers"] == [1, 2]


# ---------------------------------------------------------------------- real data (bottle)

@pytest.fixture(scope="module")
def bottle_small(bottle_dir):
    """Bottle: the first N_TRAIN training images, and 4 good + 6 defective test images."""
    from prn_edge.data.mvtec import load_sample, scan_category

    category = scan_category(bottle_dir)
    train = np.stack([load_sample(s, 256)[0] for s in category.train[:N_TRAIN]])
    good = [s for s in category.test if s.label == 0][:4]
    defects = [s for s in category.test if s.label == 1]
    defects = defects[:: max(1, len(defects) // 6)][:6]  # spread over the defect types
    loaded = [load_sample(s, 256) for s in good + defects]
    images = np.stack([im for im, _ in loaded])
    masks = np.stack([mk for _, mk in loaded])
    labels = np.array([0] * len(good) + [1] * len(defects))
    return train, images, masks, labels


@pytest.fixture(scope="module")
def lite0():
    from prn_edge.model.backbones import build_backbone

    try:
        return build_backbone("efficientnet_lite0")
    except PRNError as exc:
        pytest.skip(f"pretrained EfficientNet-Lite0 weights unavailable: {exc}")


@pytest.fixture(scope="module")
def fitted(bottle_small, lite0):
    torch.set_num_threads(min(torch.get_num_threads(), 2))
    train, images, _, _ = bottle_small
    # Greedy (not the default) here: the harder path; the default is checked below.
    predictor = PatchCorePredictor(PatchCoreConfig(coreset="greedy"), backbone=lite0)
    stats = predictor.fit(train[i:i + 10] for i in range(0, N_TRAIN, 10))
    maps, scores = predictor.predict(images)
    return predictor, stats, maps, scores


def test_fit_stats_and_output_contract(fitted, bottle_small):
    predictor, stats, maps, scores = fitted
    _, images, _, _ = bottle_small
    assert predictor.name == "patchcore" and predictor.image_size == 256
    assert stats["images"] == N_TRAIN
    assert stats["patches"] == N_TRAIN * 32 * 32  # stride-8 grid at 256 x 256
    assert stats["feature_dim"] == 40 + 112  # Lite0 taps 1 and 2
    assert stats["bank_size"] == round(0.1 * stats["patches"])
    assert stats["coreset"] == "greedy" and stats["selection_dim"] == 128
    assert predictor.model.memory_bank.shape == (stats["bank_size"], 152)
    assert maps.shape == (len(images), 256, 256) and maps.dtype == np.float32
    assert scores.shape == (len(images),) and scores.dtype == np.float32
    assert np.isfinite(maps).all() and (maps >= 0).all() and (scores > 0).all()
    assert isinstance(predictor, Engine) and predictor.backend == "patchcore" and predictor.threshold is None
    assert set(predictor.last_timings) == {"compute", "total"}
    one_map, one_score = predictor.predict(images[:1])  # a batch of one
    assert one_map.shape == (1, 256, 256) and one_score.shape == (1,)
    np.testing.assert_allclose(one_map[0], maps[0], rtol=1e-5, atol=1e-5)


def test_defects_score_higher_and_maps_localise(fitted, bottle_small):
    _, _, maps, scores = fitted
    _, _, masks, labels = bottle_small
    assert scores[labels == 1].mean() > scores[labels == 0].mean()
    inside_higher = [maps[i][masks[i]].mean() > maps[i][~masks[i]].mean() for i in np.flatnonzero(labels)]
    assert np.mean(inside_higher) >= 0.8, inside_higher


def test_fit_is_deterministic(fitted, bottle_small, lite0):
    predictor, _, maps, scores = fitted
    train, images, _, _ = bottle_small
    again = PatchCorePredictor(PatchCoreConfig(coreset="greedy"), backbone=lite0)
    again.fit(train[i:i + 10] for i in range(0, N_TRAIN, 10))  # the fixture's batches
    assert torch.equal(again.model.memory_bank, predictor.model.memory_bank)
    # Another batch size may change the convolution's rounding, not more.
    maps2, scores2 = again.predict(images[:2])
    np.testing.assert_allclose(scores2, scores[:2], rtol=1e-5)
    np.testing.assert_allclose(maps2, maps[:2], rtol=1e-5, atol=1e-5)


def test_random_coreset_fit_from_one_array(bottle_small, lite0):
    train = bottle_small[0][:2]  # one (B, S, S, 3) array instead of an iterable of batches
    banks = []
    for seed in (0, 0, 1):
        predictor = PatchCorePredictor(PatchCoreConfig(seed=seed), backbone=lite0)  # default: random
        stats = predictor.fit(train)
        assert stats["images"] == 2 and stats["coreset"] == "random" and stats["selection_dim"] is None
        assert stats["bank_size"] == round(0.1 * 2 * 32 * 32)
        banks.append(predictor.model.memory_bank)
    assert torch.equal(banks[0], banks[1]) and not torch.equal(banks[0], banks[2])


def test_predict_rejects_bad_input_and_unfitted(fitted, lite0):
    predictor = fitted[0]
    with pytest.raises(PRNError, match="uint8"):
        predictor.predict(np.zeros((1, 256, 256, 3), np.float32))
    with pytest.raises(PRNError, match="256, 256, 3"):
        predictor.predict(np.zeros((1, 128, 128, 3), np.uint8))
    with pytest.raises(PRNError, match="256, 256, 3"):  # the contract: a batch, even of one
        predictor.predict(np.zeros((256, 256, 3), np.uint8))
    with pytest.raises(PRNError, match="fit"):
        PatchCorePredictor(backbone=lite0).predict(np.zeros((1, 256, 256, 3), np.uint8))
    with pytest.raises(PRNError, match="no image"):
        PatchCorePredictor(backbone=lite0).fit([])
