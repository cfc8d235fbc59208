"""Anomaly-detection metrics: image AUROC, pixel AUROC, pixel AP and PRO (docs/model.md, "Metrics").

All functions take numpy arrays and return Python floats or numpy arrays; none needs torch.
scikit-learn (AUROC, AP, curves) and OpenCV (connected components for PRO) are imported
lazily with an install hint.

Conventions
-----------
* Image level: ``scores`` (N,) float, higher = more anomalous; ``labels`` (N,) 0/1 or bool,
  1 = anomalous.
* Pixel level: ``maps`` (N, H, W) float anomaly maps, ``masks`` (N, H, W) bool or 0/1
  ground truth. Every pixel of every image counts (good images contribute normal pixels).
  A model's (N, 1, H, W) output must be squeezed first (``maps[:, 0]``).
* Bad input (shape mismatch, non-binary masks, NaN/inf, a missing class) raises
  :class:`~prn_edge.errors.PRNError` with a one-line message.

PRO (per-region overlap, Bergmann et al., MVTec AD)
---------------------------------------------------
Regions are the 8-connected components of each ground-truth mask. At a threshold ``t``::

    PRO(t) = mean over all regions R of |R ∩ {map >= t}| / |R|
    FPR(t) = |{map >= t} ∩ normal pixels| / |normal pixels|     (all images together)

The curve runs from (0, 0) (threshold above every score) to (1, 1) (threshold at the
lowest score). :func:`pro_score` integrates it with the trapezoid rule from FPR 0 to
``fpr_limit`` (interpolating linearly at exactly ``fpr_limit``) and divides by
``fpr_limit``, so a perfect map scores 1.0 and a constant map scores ``fpr_limit / 2``
(its curve is the diagonal).

By default the curve is *exact*: one point per distinct score value, computed by one sort
of all pixels and cumulative sums of per-pixel increments (O(P log P), as the official
MVTec AD evaluation code does). Pixels with equal scores enter together, in one step
(the curve has no point "between" tied pixels; the trapezoid joins the neighbouring points
with a straight line, as ROC AUC does for ties). With ``num_thresholds=n`` the curve is
instead sampled at ``n`` thresholds evenly spaced between the lowest and highest score
(the older evaluation protocol): each grid point is a point of the exact curve, so the
area differs only by the corners cut between grid points (~3e-5 at n = 2000 on small
tests); cheaper in memory, offered for comparison with reports that used a grid.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from prn_edge.errors import PRNError, require

__all__ = [
    "Metrics",
    "compute_metrics",
    "compute_metrics_by_type",
    "image_auroc",
    "pixel_ap",
    "pixel_auroc",
    "pr_curve_points",
    "pro_curve",
    "pro_score",
    "roc_curve_points",
]

DEFAULT_FPR_LIMIT = 0.3


# --------------------------------------------------------------------------- validation

def _as_real(array, name: str) -> np.ndarray:
    """``array`` as a finite real-valued numpy array, without copying float input."""
    arr = np.asarray(array)
    if arr.dtype == bool:
        arr = arr.view(np.uint8)
    if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise PRNError(f"{name} must be a real-valued numeric array, got dtype {arr.dtype}")
    if arr.size == 0:
        raise PRNError(f"{name} is empty")
    if np.issubdtype(arr.dtype, np.floating) and not np.isfinite(arr).all():
        bad = int(np.count_nonzero(~np.isfinite(arr)))
        raise PRNError(f"{name} contains {bad} NaN or infinite value(s); check the model output")
    return arr


def _as_binary(array, name: str) -> np.ndarray:
    """``array`` as a bool array; values must be bool or exactly 0/1 (0/255 is refused)."""
    arr = np.asarray(array)
    if arr.dtype == bool:
        return arr
    if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise PRNError(f"{name} must be bool or 0/1, got dtype {arr.dtype}")
    if arr.size == 0:
        raise PRNError(f"{name} is empty")
    if not ((arr == 0) | (arr == 1)).all():
        lo, hi = np.nanmin(arr), np.nanmax(arr)
        raise PRNError(
            f"{name} must be binary (bool or 0/1), got values in [{lo}, {hi}]; "
            f"binarise it first, e.g. {name} > 0 for 0/255 PNG masks"
        )
    return arr.astype(bool, copy=False)


def _check_image_level(scores, labels) -> tuple[np.ndarray, np.ndarray]:
    scores = _as_real(scores, "scores")
    labels = _as_binary(labels, "labels")
    if scores.ndim != 1 or labels.ndim != 1 or scores.shape != labels.shape:
        raise PRNError(
            f"scores and labels must be 1-D arrays of the same length, "
            f"got shapes {scores.shape} and {labels.shape}"
        )
    n_pos = int(np.count_nonzero(labels))
    if n_pos == 0 or n_pos == labels.size:
        raise PRNError(
            f"image AUROC needs both normal and anomalous images, got {n_pos} anomalous "
            f"of {labels.size}"
        )
    return scores, labels


def _check_pixel_level(maps, masks) -> tuple[np.ndarray, np.ndarray]:
    maps = _as_real(maps, "maps")
    masks = _as_binary(masks, "masks")
    if maps.ndim != 3:
        hint = " (squeeze the channel: maps[:, 0])" if maps.ndim == 4 and maps.shape[1] == 1 else ""
        raise PRNError(f"maps must have shape (N, H, W), got {maps.shape}{hint}")
    if masks.shape != maps.shape:
        raise PRNError(f"masks shape {masks.shape} does not match maps shape {maps.shape}")
    return maps, masks


def _check_pixel_classes(masks: np.ndarray) -> None:
    n_pos = int(np.count_nonzero(masks))
    if n_pos == 0:
        raise PRNError("the masks have no anomalous pixel: pixel metrics need anomalous images")
    if n_pos == masks.size:
        raise PRNError("the masks have no normal pixel: pixel metrics need normal pixels")


def _check_fpr_limit(fpr_limit: float) -> float:
    fpr_limit = float(fpr_limit)
    if not 0.0 < fpr_limit <= 1.0:
        raise PRNError(f"fpr_limit must be in (0, 1], got {fpr_limit}")
    return fpr_limit


# --------------------------------------------------------------------------- AUROC / AP

def _sklearn_metrics():
    return require("sklearn.metrics", "AUROC and AP metrics")


def image_auroc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve of image scores against image labels.

    Args:
        scores: (N,) image anomaly scores, higher = more anomalous.
        labels: (N,) 1 (or True) for anomalous images, 0 for good ones.

    Returns:
        AUROC in [0, 1] (tied scores count half, as in scikit-learn).

    Raises:
        PRNError: shapes differ, NaN/inf scores, non-binary labels, or only one class.
    """
    scores, labels = _check_image_level(scores, labels)
    return float(_sklearn_metrics().roc_auc_score(labels, scores))


def pixel_auroc(maps: np.ndarray, masks: np.ndarray) -> float:
    """Area under the ROC curve over all pixels of all images.

    Args:
        maps: (N, H, W) anomaly maps (float32 recommended; not copied).
        masks: (N, H, W) ground truth, bool or 0/1.

    Returns:
        Pixel AUROC in [0, 1].

    Raises:
        PRNError: shapes differ, NaN/inf maps, non-binary masks, or the masks contain
            no anomalous (or no normal) pixel.
    """
    maps, masks = _check_pixel_level(maps, masks)
    _check_pixel_classes(masks)
    return float(_sklearn_metrics().roc_auc_score(masks.ravel(), maps.ravel()))


def pixel_ap(maps: np.ndarray, masks: np.ndarray) -> float:
    """Average precision (area under the precision-recall curve, step-wise) over all pixels.

    Args:
        maps: (N, H, W) anomaly maps.
        masks: (N, H, W) ground truth, bool or 0/1.

    Returns:
        Pixel AP in [0, 1] (scikit-learn's ``average_precision_score``).

    Raises:
        PRNError: as :func:`pixel_auroc`.
    """
    maps, masks = _check_pixel_level(maps, masks)
    _check_pixel_classes(masks)
    return float(_sklearn_metrics().average_precision_score(masks.ravel(), maps.ravel()))


def roc_curve_points(
    scores: np.ndarray, labels: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ROC curve points for plotting (scikit-learn's ``roc_curve``, collinear points dropped).

    Args:
        scores: scores of any shape (image scores (N,) or maps (N, H, W)); flattened.
        labels: binary labels of the same shape.

    Returns:
        ``(fpr, tpr, thresholds)``, as scikit-learn returns them.

    Raises:
        PRNError: shapes differ, NaN/inf scores, non-binary labels, or only one class.
    """
    scores, labels = _check_curve_input(scores, labels)
    fpr, tpr, thr = _sklearn_metrics().roc_curve(labels, scores)
    return fpr, tpr, thr


def pr_curve_points(
    scores: np.ndarray, labels: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Precision-recall curve points for plotting (scikit-learn's ``precision_recall_curve``).

    Args:
        scores: scores of any shape (image scores (N,) or maps (N, H, W)); flattened.
        labels: binary labels of the same shape.

    Returns:
        ``(precision, recall, thresholds)``, as scikit-learn returns them.

    Raises:
        PRNError: shapes differ, NaN/inf scores, non-binary labels, or no positive.
    """
    scores, labels = _check_curve_input(scores, labels)
    precision, recall, thr = _sklearn_metrics().precision_recall_curve(labels, scores)
    return precision, recall, thr


def _check_curve_input(scores, labels) -> tuple[np.ndarray, np.ndarray]:
    scores = _as_real(scores, "scores")
    labels = _as_binary(labels, "labels")
    if scores.shape != labels.shape:
        raise PRNError(f"labels shape {labels.shape} does not match scores shape {scores.shape}")
    n_pos = int(np.count_nonzero(labels))
    if n_pos == 0 or n_pos == labels.size:
        raise PRNError(f"a curve needs both classes, got {n_pos} positive of {labels.size}")
    return scores.ravel(), labels.ravel()


# --------------------------------------------------------------------------- PRO

def _label_regions(masks: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """Number the ground-truth regions of all images and weight them for PRO.

    Returns:
        ``(region, region_weight, n_normal)``: ``region`` (P,) int32 is 0 for a normal
        pixel and 1..R for a pixel of region R (8-connected components, numbered across
        images); ``region_weight`` (R + 1,) float64 is ``1 / (|R| * n_regions)`` per region
        and 0 for index 0, so that summing ``region_weight[region]`` over the pixels above
        a threshold gives PRO(t); ``n_normal`` is the number of normal pixels.

    Raises:
        PRNError: no anomalous region or no normal pixel.
    """
    cv2 = require("cv2", "PRO region labelling")
    region = np.zeros(masks.shape, dtype=np.int32)  # (N, H, W)
    sizes = [np.zeros(1, dtype=np.int64)]  # pixels per region; index 0 = normal (unused)
    n_regions = 0
    for i in range(masks.shape[0]):
        if not masks[i].any():
            continue  # a good image only contributes normal pixels (to the FPR)
        mask_u8 = np.ascontiguousarray(masks[i]).view(np.uint8)
        count, lab, stats, _ = cv2.connectedComponentsWithStats(
            mask_u8, connectivity=8, ltype=cv2.CV_32S
        )
        inside = lab > 0
        region[i][inside] = lab[inside] + n_regions
        sizes.append(stats[1:, cv2.CC_STAT_AREA].astype(np.int64))
        n_regions += count - 1
    if n_regions == 0:
        raise PRNError("PRO needs at least one anomalous region, but every mask is empty")
    n_normal = masks.size - int(np.count_nonzero(masks))
    if n_normal == 0:
        raise PRNError(
            "PRO needs normal pixels for its false-positive rate, but every pixel is anomalous"
        )
    region = region.reshape(-1)
    sizes = np.concatenate(sizes)
    region_weight = np.zeros(n_regions + 1, dtype=np.float64)
    region_weight[1:] = 1.0 / (sizes[1:] * float(n_regions))
    return region, region_weight, n_normal


def pro_curve(
    maps: np.ndarray, masks: np.ndarray, num_thresholds: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """The per-region-overlap curve: PRO against FPR, one point per threshold.

    Args:
        maps: (N, H, W) anomaly maps.
        masks: (N, H, W) ground truth, bool or 0/1; regions are its 8-connected components.
        num_thresholds: None (default) for the exact curve, one point per distinct score;
            an int >= 2 for that many thresholds evenly spaced between the lowest and
            highest score.

    Returns:
        ``(fpr, pro)``: float64 arrays of equal length, FPR non-decreasing, starting at
        (0, 0) and ending at (1, 1). Repeated FPR values (vertical steps) may occur.

    Raises:
        PRNError: bad shapes or values, no anomalous region, no normal pixel, or a bad
            ``num_thresholds``.
    """
    maps, masks = _check_pixel_level(maps, masks)
    if num_thresholds is not None and (
        isinstance(num_thresholds, bool)
        or not isinstance(num_thresholds, (int, np.integer))
        or num_thresholds < 2
    ):
        raise PRNError(f"num_thresholds must be None or an int >= 2, got {num_thresholds!r}")
    region, region_weight, n_normal = _label_regions(masks)
    scores = maps.reshape(-1)  # a view for contiguous maps
    if num_thresholds is None:
        fpr, pro = _pro_curve_exact(scores, region, region_weight, n_normal)
    else:
        fpr, pro = _pro_curve_grid(scores, region, region_weight, n_normal, int(num_thresholds))
    # The lowest threshold takes every pixel, so the last point is (1, 1) exactly; pin it
    # (and bound the rest) against the rounding of the running float sums.
    np.clip(pro, 0.0, 1.0, out=pro)
    pro[-1] = 1.0
    return fpr, pro


def _pro_curve_exact(scores, region, region_weight, n_normal) -> tuple[np.ndarray, np.ndarray]:
    """(0, 0), then one (FPR, PRO) point per distinct score, highest score first.

    Memory: about 28 bytes per pixel at peak beyond the inputs (sort indices, sorted
    scores and regions, running sums, kept points): ~150 MB for 83 images at 256x256.
    """
    p = scores.size
    order = np.argsort(scores)[::-1]  # descending; the order within ties is irrelevant
    sorted_scores = scores[order]
    sorted_region = region[order]
    del order
    # Slot 0 of every running-sum array is the (0, 0) anchor (threshold above all scores),
    # so that selecting the kept points yields the final arrays without another copy.
    keep = np.empty(p + 1, dtype=bool)
    keep[0] = True
    # Tied pixels enter together: keep only the last index of each run of equal scores,
    # whose running sums include the whole run.
    np.not_equal(sorted_scores[1:], sorted_scores[:-1], out=keep[1:-1])
    keep[-1] = True
    del sorted_scores
    pro = np.empty(p + 1)
    pro[0] = 0.0
    np.take(region_weight, sorted_region, out=pro[1:])  # per-pixel PRO increments
    np.cumsum(pro, out=pro)
    count_dtype = np.int32 if p < 2**31 else np.int64  # integer counts: FPR is exact
    fp = np.empty(p + 1, dtype=count_dtype)
    fp[0] = 0
    np.equal(sorted_region, 0, out=fp[1:], casting="unsafe")  # 1 for a normal pixel
    del sorted_region
    np.cumsum(fp, dtype=count_dtype, out=fp)
    pro = pro[keep]
    fpr = fp[keep] / float(n_normal)
    return fpr, pro


def _pro_curve_grid(
    scores, region, region_weight, n_normal, n: int
) -> tuple[np.ndarray, np.ndarray]:
    """(0, 0), then (FPR, PRO) at ``n`` thresholds evenly spaced in [min, max], highest first."""
    thresholds = np.linspace(float(scores.min()), float(scores.max()), n)  # ascending
    # A pixel of score s is above threshold j (s >= t_j) for every j < bin(s), where
    # bin(s) = number of thresholds <= s; totals per threshold are reverse cumulative sums.
    bins = np.searchsorted(thresholds, scores, side="right")
    pro_hist = np.bincount(bins, weights=region_weight[region], minlength=n + 1)
    fp_hist = np.bincount(bins[region == 0], minlength=n + 1)
    # Highest threshold first: entry k sums hist[n], ..., hist[n - k], i.e. the pixels
    # above threshold j = n - 1 - k.
    pro = np.concatenate(([0.0], np.cumsum(pro_hist[:0:-1])))  # (0, 0) anchor first
    fp = np.concatenate(([0.0], np.cumsum(fp_hist[:0:-1])))
    return fp / float(n_normal), pro


def _area_up_to(x: np.ndarray, y: np.ndarray, x_max: float) -> float:
    """Trapezoid area under (x, y) for x in [0, x_max]; y is interpolated linearly at x_max.

    ``x`` is non-decreasing and starts at 0; repeated x values (vertical steps) add no area.
    """
    inside = int(np.searchsorted(x, x_max, side="right"))  # points with x <= x_max
    xs, ys = x[:inside], y[:inside]
    area = float(np.sum((xs[1:] - xs[:-1]) * (ys[1:] + ys[:-1]) * 0.5))
    if inside < x.size and xs[-1] < x_max:
        # Close the area with the segment from the last point inside to x_max.
        x0, y0, x1, y1 = xs[-1], ys[-1], x[inside], y[inside]
        y_at = y0 + (y1 - y0) * (x_max - x0) / (x1 - x0)
        area += 0.5 * (y0 + y_at) * (x_max - x0)
    return area


def pro_score(
    maps: np.ndarray,
    masks: np.ndarray,
    fpr_limit: float = DEFAULT_FPR_LIMIT,
    num_thresholds: int | None = None,
) -> float:
    """Normalised area under the PRO curve for FPR in [0, ``fpr_limit``].

    Args:
        maps: (N, H, W) anomaly maps.
        masks: (N, H, W) ground truth, bool or 0/1. Images without anomalous pixels only
            contribute to the FPR.
        fpr_limit: upper FPR bound of the integration, in (0, 1]; 0.3 by the MVTec AD
            protocol. State it in every report.
        num_thresholds: None for the exact curve (default), or the number of evenly spaced
            thresholds (see :func:`pro_curve`).

    Returns:
        Area / ``fpr_limit``, in [0, 1]: 1.0 for a perfect map, ``fpr_limit / 2`` for a
        constant map.

    Raises:
        PRNError: as :func:`pro_curve`, or ``fpr_limit`` outside (0, 1].
    """
    fpr_limit = _check_fpr_limit(fpr_limit)
    fpr, pro = pro_curve(maps, masks, num_thresholds=num_thresholds)
    return float(min(max(_area_up_to(fpr, pro, fpr_limit) / fpr_limit, 0.0), 1.0))


# --------------------------------------------------------------------------- summaries

@dataclass(frozen=True)
class Metrics:
    """The four metrics of docs/model.md, "Metrics", each in [0, 1].

    Attributes:
        image_auroc: AUROC of image scores.
        pixel_auroc: AUROC over all pixels.
        pro: normalised PRO area up to ``pro_fpr_limit``.
        ap: pixel-level average precision.
        pro_fpr_limit: the FPR limit used for ``pro`` (0.3 by default).
    """

    image_auroc: float
    pixel_auroc: float
    pro: float
    ap: float
    pro_fpr_limit: float = DEFAULT_FPR_LIMIT

    def to_dict(self) -> dict[str, float]:
        """Plain ``{name: value}`` dict (JSON-serialisable), including ``pro_fpr_limit``."""
        return {k: float(v) for k, v in asdict(self).items()}

    def summary(self) -> str:
        """One line in percent, stating the PRO limit, e.g. for logs and reports."""
        return (
            f"image AUROC {100 * self.image_auroc:.1f} | "
            f"pixel AUROC {100 * self.pixel_auroc:.1f} | "
            f"PRO@{self.pro_fpr_limit:g} {100 * self.pro:.1f} | AP {100 * self.ap:.1f}"
        )


def compute_metrics(
    scores: np.ndarray,
    labels: np.ndarray,
    maps: np.ndarray,
    masks: np.ndarray,
    fpr_limit: float = DEFAULT_FPR_LIMIT,
) -> Metrics:
    """All four metrics on one evaluation set.

    Args:
        scores: (N,) image anomaly scores.
        labels: (N,) image labels, 1 = anomalous.
        maps: (N, H, W) anomaly maps.
        masks: (N, H, W) ground-truth masks, bool or 0/1.
        fpr_limit: PRO integration limit, in (0, 1].

    Returns:
        A :class:`Metrics`.

    Raises:
        PRNError: any input error of the individual metrics, a different number of images
            in scores and maps, or an image labelled good whose mask has anomalous pixels
            (labels and masks out of step).
    """
    fpr_limit = _check_fpr_limit(fpr_limit)
    scores, labels = _check_image_level(scores, labels)
    maps, masks = _check_pixel_level(maps, masks)
    if maps.shape[0] != scores.shape[0]:
        raise PRNError(f"{scores.shape[0]} image scores but {maps.shape[0]} anomaly maps")
    bad = np.flatnonzero(~labels & masks.any(axis=(1, 2)))
    if bad.size:
        raise PRNError(
            f"{bad.size} image(s) labelled good have anomalous mask pixels (first: index "
            f"{int(bad[0])}); labels and masks are out of step"
        )
    return Metrics(
        image_auroc=image_auroc(scores, labels),
        pixel_auroc=pixel_auroc(maps, masks),
        pro=pro_score(maps, masks, fpr_limit=fpr_limit),
        ap=pixel_ap(maps, masks),
        pro_fpr_limit=fpr_limit,
    )


def compute_metrics_by_type(
    scores: np.ndarray,
    labels: np.ndarray,
    maps: np.ndarray,
    masks: np.ndarray,
    defect_types: Sequence[str],
    good_name: str = "good",
    fpr_limit: float = DEFAULT_FPR_LIMIT,
) -> dict[str, Metrics]:
    """Metrics per defect type (that type's images plus all good images), and overall.

    Args:
        scores, labels, maps, masks: as :func:`compute_metrics`.
        defect_types: (N,) defect-type name per image (e.g. the MVTec test sub-folder);
            ``good_name`` marks good images.
        good_name: the name of good images.
        fpr_limit: PRO integration limit, in (0, 1].

    Returns:
        ``{type: Metrics}`` for each defect type in sorted order, then ``"overall"``
        (all images).

    Raises:
        PRNError: ``defect_types`` of the wrong length, no good image, no defect type, a
            defect type named ``"overall"``, or any error of :func:`compute_metrics`.
    """
    types = np.asarray([str(t) for t in defect_types])
    n = np.asarray(scores).shape[0] if np.ndim(scores) else 0
    if types.shape != (n,):
        raise PRNError(f"defect_types has {types.size} entries for {n} images")
    is_good = types == good_name
    if not is_good.any():
        raise PRNError(f"no image of type {good_name!r}: per-type metrics need good images")
    names = sorted(set(types[~is_good].tolist()))
    if not names:
        raise PRNError(f"every image is of type {good_name!r}: no defect type to evaluate")
    if "overall" in names:
        raise PRNError("a defect type is named 'overall', which is reserved for the total")
    scores, labels = np.asarray(scores), np.asarray(labels)
    maps, masks = np.asarray(maps), np.asarray(masks)
    result: dict[str, Metrics] = {}
    for name in names:
        idx = np.flatnonzero(is_good | (types == name))
        result[name] = compute_metrics(scores[idx], labels[idx], maps[idx], masks[idx], fpr_limit)
    result["overall"] = compute_metrics(scores, labels, maps, masks, fpr_limit)
    return result
