"""Tests for :mod:`prn_edge.eval.metrics` (docs/model.md, "Metrics").

AUROC/AP are checked against scikit-learn and hand-computed values; PRO against a
brute-force reference written here (a Python loop over thresholds, regions labelled with
scipy instead of OpenCV, integration with ``np.trapezoid``).
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

# The references need the training extras (scikit-learn, scipy); skip in a runtime-only env.
ndimage = pytest.importorskip("scipy.ndimage")
sk_metrics = pytest.importorskip("sklearn.metrics")
average_precision_score, roc_auc_score = sk_metrics.average_precision_score, sk_metrics.roc_auc_score

from prn_edge.errors import PRNError  # noqa: E402
from prn_edge.eval import metrics as M  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------- helpers

def brute_pro_curve(maps, masks, thresholds):
    """Reference PRO curve: (0, 0), then one point per threshold, highest first."""
    regions = []  # (image index, boolean mask of one 8-connected region)
    for i in range(maps.shape[0]):
        lab, n = ndimage.label(masks[i], structure=np.ones((3, 3), dtype=int))
        regions += [(i, lab == k) for k in range(1, n + 1)]
    normal = ~masks.astype(bool)
    fprs, pros = [0.0], [0.0]
    for t in sorted(set(np.asarray(thresholds).tolist()), reverse=True):
        above = maps >= t
        fprs.append((above & normal).sum() / normal.sum())
        pros.append(np.mean([(above[i] & r).sum() / r.sum() for i, r in regions]))
    return np.array(fprs), np.array(pros)


def brute_integrate(fpr, pro, limit):
    """Trapezoid area for FPR in [0, limit], the curve cut (linearly) at ``limit``, / limit."""
    inside = fpr <= limit
    x, y = list(fpr[inside]), list(pro[inside])
    if x[-1] < limit:
        j = int(np.argmax(fpr > limit))
        y.append(y[-1] + (pro[j] - y[-1]) * (limit - x[-1]) / (fpr[j] - x[-1]))
        x.append(limit)
    return np.trapezoid(y, x) / limit


def random_case(seed, n=6, size=24, quantize=None):
    """Maps and masks with several irregular regions per defective image, some good images.

    Masks are sparse random pixels grown once (so regions touch diagonally, exercising
    8-connectivity); maps are noise raised inside the defects. ``quantize`` rounds the maps
    to that many levels to create many ties.
    """
    rng = np.random.default_rng(seed)
    masks = np.zeros((n, size, size), dtype=bool)
    for i in range(n):
        if i % 3 == 0:
            continue  # good image
        seeds = rng.random((size, size)) < 0.02
        grown = ndimage.binary_dilation(seeds, structure=rng.random((3, 3)) < 0.5)
        masks[i] = grown | seeds
        if not masks[i].any():
            masks[i, 3:6, 3:6] = True
    maps = rng.random(masks.shape).astype(np.float32) + 0.6 * masks * rng.random(masks.shape)
    if quantize:
        maps = np.round(maps * quantize) / quantize
    return maps.astype(np.float32), masks


# --------------------------------------------------------------------------- AUROC / AP

def test_image_auroc_matches_sklearn_random():
    rng = np.random.default_rng(0)
    scores = rng.random(50)
    labels = rng.random(50) < 0.4
    assert M.image_auroc(scores, labels) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    ties = np.round(scores * 4)  # many ties: counted half, as sklearn does
    expected = roc_auc_score(labels, ties)
    assert M.image_auroc(ties, labels.astype(int)) == pytest.approx(expected, abs=1e-12)


def test_image_auroc_hand_computed():
    labels = np.array([0, 0, 1, 1])
    assert M.image_auroc(np.array([0.1, 0.4, 0.35, 0.8]), labels) == pytest.approx(0.75)
    assert M.image_auroc(np.array([0.1, 0.2, 0.8, 0.9]), labels) == 1.0
    assert M.image_auroc(np.array([0.9, 0.8, 0.2, 0.1]), labels) == 0.0
    assert M.image_auroc(np.ones(4), labels) == 0.5


@pytest.mark.parametrize("quantize", [None, 8])
def test_pixel_auroc_and_ap_match_sklearn(quantize):
    maps, masks = random_case(1, quantize=quantize)
    y, s = masks.ravel(), maps.ravel()
    assert M.pixel_auroc(maps, masks) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    expected_ap = average_precision_score(y, s)
    assert M.pixel_ap(maps, masks.astype(np.uint8)) == pytest.approx(expected_ap, abs=1e-12)


def test_pixel_metrics_perfect_and_inverted():
    _, masks = random_case(2)
    perfect = masks.astype(np.float32)
    assert M.pixel_auroc(perfect, masks) == 1.0
    assert M.pixel_ap(perfect, masks) == 1.0
    assert M.pixel_auroc(1.0 - perfect, masks) == 0.0
    # AP of the inverted map: every anomalous pixel ranks last -> precision = prevalence.
    assert M.pixel_ap(1.0 - perfect, masks) == pytest.approx(masks.mean())


def test_curve_points_wrap_sklearn():
    maps, masks = random_case(3)
    fpr, tpr, thr = M.roc_curve_points(maps, masks)
    assert fpr[0] == 0 and fpr[-1] == 1 and tpr[-1] == 1 and len(fpr) == len(tpr) == len(thr)
    precision, recall, thr = M.pr_curve_points(maps, masks)
    assert recall[0] == 1 and recall[-1] == 0 and len(precision) == len(thr) + 1
    fpr, tpr, _ = M.roc_curve_points(np.array([0.1, 0.9]), np.array([0, 1]))
    assert np.trapezoid(tpr, fpr) == 1.0


# --------------------------------------------------------------------------- PRO

def test_pro_curve_hand_computed():
    # Image 0: region A = 1 pixel, region B = 2x2 pixels (not 8-adjacent to A).
    # Image 1: good. 32 pixels, 5 anomalous -> 27 normal.
    masks = np.zeros((2, 4, 4), dtype=bool)
    masks[0, 0, 0] = True
    masks[0, 2:4, 2:4] = True
    maps = np.zeros((2, 4, 4), dtype=np.float32)
    maps[0, 0, 0] = 0.9                                 # A fully found first
    maps[1, 0, 0] = 0.85                                # one false positive
    maps[0, 2, 2:4] = 0.8                               # half of B (tied pixels enter together)
    maps[0, 3, 2:4] = 0.1                               # rest of B
    fpr, pro = M.pro_curve(maps, masks)
    f = 1 / 27
    np.testing.assert_allclose(fpr, [0, 0, f, f, f, 1], atol=1e-15)
    np.testing.assert_allclose(pro, [0, 0.5, 0.5, 0.75, 1, 1], atol=1e-15)
    expected = (0.5 * f + (0.3 - f) * 1.0) / 0.3
    assert M.pro_score(maps, masks) == pytest.approx(expected, abs=1e-12)
    assert M.pro_score(maps, masks, fpr_limit=f) == pytest.approx(0.5, abs=1e-12)


def test_pro_regions_use_8_connectivity():
    # (0,0) touches (1,1) diagonally: one region of 4 pixels, a quarter found -> PRO 0.25
    # at FPR 0 (4-connectivity would give two regions and mean(1, 0) = 0.5).
    masks = np.zeros((1, 5, 5), dtype=bool)
    masks[0, 0, 0] = True
    masks[0, 1, 1:4] = True
    maps = np.zeros((1, 5, 5), dtype=np.float32)
    maps[0, 0, 0] = 1.0
    fpr, pro = M.pro_curve(maps, masks)
    np.testing.assert_allclose(fpr[:2], [0, 0])
    np.testing.assert_allclose(pro[:2], [0, 0.25])


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("quantize", [None, 6])
def test_pro_exact_matches_brute_force_on_all_thresholds(seed, quantize):
    # Continuous maps give one threshold per pixel: a smaller image keeps the loop short.
    maps, masks = random_case(seed, size=24 if quantize else 18, quantize=quantize)
    ref_fpr, ref_pro = brute_pro_curve(maps, masks, np.unique(maps))
    fpr, pro = M.pro_curve(maps, masks)
    # Same points: one per distinct score (tied pixels enter together), plus (0, 0).
    np.testing.assert_allclose(fpr, ref_fpr, atol=1e-12)
    np.testing.assert_allclose(pro, ref_pro, atol=1e-12)
    for limit in (0.3, 0.05, 1.0):
        assert M.pro_score(maps, masks, fpr_limit=limit) == pytest.approx(
            brute_integrate(ref_fpr, ref_pro, limit), abs=1e-9)


@pytest.mark.parametrize("seed", range(3))
def test_pro_grid_matches_brute_force_on_same_thresholds(seed):
    maps, masks = random_case(seed + 10, n=5, size=20)
    n = 57
    thresholds = np.linspace(maps.min(), maps.max(), n)
    ref_fpr, ref_pro = brute_pro_curve(maps, masks, thresholds)
    fpr, pro = M.pro_curve(maps, masks, num_thresholds=n)
    np.testing.assert_allclose(fpr, ref_fpr, atol=1e-12)
    np.testing.assert_allclose(pro, ref_pro, atol=1e-12)
    assert M.pro_score(maps, masks, num_thresholds=n) == pytest.approx(
        brute_integrate(ref_fpr, ref_pro, 0.3), abs=1e-9)


def test_pro_grid_points_lie_on_exact_curve_and_converge():
    maps, masks = random_case(20, n=8, size=32)
    exact = set(zip(*(np.round(a, 12) for a in M.pro_curve(maps, masks))))
    grid = set(zip(*(np.round(a, 12) for a in M.pro_curve(maps, masks, num_thresholds=300))))
    assert grid <= exact  # a grid threshold picks out the exact curve's point at that score
    # A dense grid cuts corners between its points only: with 2000 thresholds for 8192
    # pixels the chord error is well under 1e-3 (measured 3e-5).
    assert M.pro_score(maps, masks, num_thresholds=2000) == pytest.approx(
        M.pro_score(maps, masks), abs=1e-3)


def test_pro_single_region_full_range_equals_pixel_auroc():
    # With one region PRO(t) is the TPR, so the full-range area is the ROC AUC (ties too).
    rng = np.random.default_rng(5)
    masks = np.zeros((3, 16, 16), dtype=bool)
    masks[1, 4:9, 5:12] = True
    maps = np.round(rng.random(masks.shape) + 0.5 * masks, 1).astype(np.float32)
    auroc = M.pixel_auroc(maps, masks)
    assert M.pro_score(maps, masks, fpr_limit=1.0) == pytest.approx(auroc, abs=1e-12)


def test_pro_perfect_inverted_and_constant_maps():
    _, masks = random_case(6)
    perfect = masks.astype(np.float32)
    # Running float sums of 1 / (|R| * n_regions): exact up to rounding, not bit-exact.
    assert M.pro_score(perfect, masks) == pytest.approx(1.0, abs=1e-12)
    assert M.pro_score(perfect, masks, num_thresholds=2) == pytest.approx(1.0, abs=1e-12)
    assert M.pro_score(1 - perfect, masks) == 0.0
    constant = np.full(masks.shape, 0.7, dtype=np.float32)
    # All pixels tie: the curve is the diagonal (0,0)-(1,1) -> area limit^2/2, / limit.
    for limit in (0.3, 1.0):
        assert M.pro_score(constant, masks, fpr_limit=limit) == pytest.approx(limit / 2)
        grid = M.pro_score(constant, masks, fpr_limit=limit, num_thresholds=10)
        assert grid == pytest.approx(limit / 2)
    fpr, pro = M.pro_curve(constant, masks)
    np.testing.assert_array_equal(fpr, [0, 1])
    np.testing.assert_array_equal(pro, [0, 1])


def test_pro_respects_fpr_limit():
    # Every anomalous pixel scores 0.5; normal scores are spread evenly over [0, 1], so
    # anomalies are only found after half the normal pixels: FPR ~0.5 > 0.3.
    _, masks = random_case(7)
    n_normal = int((~masks).sum())
    maps = np.full(masks.shape, 0.5, dtype=np.float32)
    maps[~masks] = np.random.default_rng(7).permutation(np.linspace(0, 1, n_normal))
    assert M.pro_score(maps, masks, fpr_limit=0.3) == 0.0
    assert M.pro_score(maps, masks, fpr_limit=1.0) == pytest.approx(0.5, abs=0.01)
    # Monotone in the limit here: the curve only rises after FPR 0.5.
    assert M.pro_score(maps, masks, fpr_limit=0.6) < M.pro_score(maps, masks, fpr_limit=0.9)


def test_pro_good_images_only_add_false_positives():
    maps, masks = random_case(8)
    good = ~masks.any(axis=(1, 2))
    assert good.any()
    base = M.pro_score(maps, masks)
    # Raising a good image's map adds false positives only: PRO can only drop.
    hot = maps.copy()
    hot[np.flatnonzero(good)[0]] += 10
    assert M.pro_score(hot, masks) < base
    # Dropping the good images changes the FPR axis only: the overlap values reached are
    # the same (a good-image-only threshold repeats the previous PRO value).
    full = set(np.round(M.pro_curve(maps, masks)[1], 12))
    sub = set(np.round(M.pro_curve(maps[~good], masks[~good])[1], 12))
    assert full == sub


def test_pro_curve_is_monotone_and_anchored():
    maps, masks = random_case(9, quantize=5)
    fpr, pro = M.pro_curve(maps, masks)
    assert fpr[0] == 0 and pro[0] == 0 and fpr[-1] == 1 and pro[-1] == 1
    assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(pro) >= 0)
    assert len(fpr) == len(np.unique(maps)) + 1


# --------------------------------------------------------------------------- summaries

def _dataset():
    """4 good, 3 'crack' (scored high, well localised), 2 'hole' (scored below all good)."""
    rng = np.random.default_rng(11)
    types = ["good", "crack", "good", "hole", "crack", "good", "crack", "hole", "good"]
    n = len(types)
    masks = np.zeros((n, 16, 16), dtype=bool)
    scores = np.zeros(n)
    for i, t in enumerate(types):
        if t != "good":
            masks[i, 2 + i % 5:8 + i % 5, 3:9] = True
        scores[i] = {"good": 0.5, "crack": 0.9, "hole": 0.1}[t] + 0.01 * i
    labels = masks.any(axis=(1, 2)).astype(int)
    maps = rng.random(masks.shape).astype(np.float32) * 0.5
    for i, t in enumerate(types):
        if t == "crack":
            maps[i][masks[i]] += 0.6  # perfectly separated
    return scores, labels, maps, masks, types


def test_compute_metrics_and_dataclass():
    scores, labels, maps, masks, _ = _dataset()
    m = M.compute_metrics(scores, labels, maps, masks)
    assert m.image_auroc == pytest.approx(M.image_auroc(scores, labels))
    assert m.pixel_auroc == pytest.approx(M.pixel_auroc(maps, masks))
    assert m.pro == pytest.approx(M.pro_score(maps, masks))
    assert m.ap == pytest.approx(M.pixel_ap(maps, masks))
    d = m.to_dict()
    assert set(d) == {"image_auroc", "pixel_auroc", "pro", "ap", "pro_fpr_limit"}
    assert d["pro_fpr_limit"] == 0.3 and all(isinstance(v, float) for v in d.values())
    assert "PRO@0.3" in m.summary()
    assert M.compute_metrics(scores, labels, maps, masks, fpr_limit=0.1).pro_fpr_limit == 0.1


def test_compute_metrics_by_type_selects_images():
    scores, labels, maps, masks, types = _dataset()
    res = M.compute_metrics_by_type(scores, labels, maps, masks, types)
    assert list(res) == ["crack", "hole", "overall"]
    assert res["crack"].image_auroc == 1.0 and res["crack"].pixel_auroc == 1.0
    assert res["crack"].pro == pytest.approx(1.0, abs=1e-12)
    assert res["hole"].image_auroc == 0.0
    idx = [i for i, t in enumerate(types) if t in ("good", "hole")]
    assert res["hole"] == M.compute_metrics(scores[idx], labels[idx], maps[idx], masks[idx])
    assert res["overall"] == M.compute_metrics(scores, labels, maps, masks)
    renamed = ["ok" if t == "good" else t for t in types]
    assert M.compute_metrics_by_type(scores, labels, maps, masks, renamed, good_name="ok") == res


# --------------------------------------------------------------------------- bad input

def test_bad_input_raises_prn_error():
    scores, labels, maps, masks, types = _dataset()
    cases = {
        "shape": lambda: M.pixel_auroc(maps[:, :8], masks),
        "4d maps": lambda: M.pro_score(maps[:, None], masks[:, None]),
        "score length": lambda: M.image_auroc(scores[:-1], labels),
        "maps vs scores": lambda: M.compute_metrics(scores[:-1], labels[:-1], maps, masks),
        "mask 0/255": lambda: M.pixel_ap(maps, masks.astype(np.uint8) * 255),
        "labels 0/2": lambda: M.image_auroc(scores, labels * 2),
        "nan map": lambda: M.pro_score(np.where(masks, np.nan, maps), masks),
        "inf map": lambda: M.pixel_auroc(np.where(masks, np.inf, maps), masks),
        "nan score": lambda: M.image_auroc(np.full(len(scores), np.nan), labels),
        "no positive image": lambda: M.image_auroc(scores, np.zeros_like(labels)),
        "no anomalous pixel (auroc)": lambda: M.pixel_auroc(maps, np.zeros_like(masks)),
        "no anomalous pixel (pro)": lambda: M.pro_score(maps, np.zeros_like(masks)),
        "no normal pixel": lambda: M.pro_score(maps, np.ones_like(masks)),
        "fpr_limit 0": lambda: M.pro_score(maps, masks, fpr_limit=0),
        "fpr_limit > 1": lambda: M.pro_score(maps, masks, fpr_limit=1.5),
        "num_thresholds 1": lambda: M.pro_score(maps, masks, num_thresholds=1),
        "num_thresholds float": lambda: M.pro_score(maps, masks, num_thresholds=2.5),
        "string maps": lambda: M.pixel_auroc(maps.astype(str), masks),
        "good label, defect mask": lambda: M.compute_metrics(scores, np.r_[labels[:-1], 0], maps,
                                                             np.r_[masks[:-1], masks[1:2]]),
        "types length": lambda: M.compute_metrics_by_type(scores, labels, maps, masks, types[:-1]),
        "no good type": lambda: M.compute_metrics_by_type(scores, labels, maps, masks, types,
                                                          good_name="none"),
    }
    for name, call in cases.items():
        with pytest.raises(PRNError) as info:
            call()
        assert "\n" not in str(info.value), name


def test_binary_masks_accepted_in_any_numeric_form():
    maps, masks = random_case(12)
    ref = M.pro_score(maps, masks)
    assert M.pro_score(maps, masks.astype(np.uint8)) == ref
    assert M.pro_score(maps.astype(np.float64), masks.astype(np.float32)) == ref


def test_non_contiguous_inputs():
    maps, masks = random_case(13)
    flipped_maps, flipped_masks = maps[:, ::-1, ::2], masks[:, ::-1, ::2]  # strided views
    copies = np.ascontiguousarray(flipped_maps), np.ascontiguousarray(flipped_masks)
    assert M.pro_score(flipped_maps, flipped_masks) == M.pro_score(*copies)
    assert M.pixel_auroc(flipped_maps, flipped_masks) == M.pixel_auroc(*copies)


def test_metrics_need_no_torch_and_sklearn_only_for_auroc_ap():
    # Block torch and scikit-learn imports: the module imports, PRO runs (numpy + OpenCV),
    # and AUROC says in one line what to install.
    code = (
        "import sys, numpy as np\n"
        "class Blocker:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('torch', 'sklearn'):\n"
        "            raise ImportError(name + ' is blocked for this test')\n"
        "sys.meta_path.insert(0, Blocker())\n"
        "from prn_edge.errors import PRNError\n"
        "from prn_edge.eval import metrics as M\n"
        "m = np.zeros((2, 4, 4), bool); m[1, 1:3, 1:3] = True\n"
        "assert M.pro_score(m.astype(np.float32), m) == 1.0\n"
        "try:\n"
        "    M.image_auroc(np.array([0., 1.]), np.array([0, 1]))\n"
        "except PRNError as exc:\n"
        "    print(exc)\n"
    )
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, timeout=120,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "sklearn.metrics is not installed (needed for AUROC and AP metrics)" in proc.stdout
