"""Evaluate any :class:`~prn_edge.contract.engine.Engine` on an MVTec-layout category.

One function, :func:`evaluate`, for every backend (the PyTorch model, ONNX Runtime, TensorRT,
the PatchCore baseline): it reads the test images at the engine's input size, judges them in
batches through the runtime's :class:`~prn_edge.runtime.pipeline.Pipeline` (so its decisions
are those prn-inspect would make), and computes the metrics of docs/model.md, "Metrics" overall and per
defect type. The seen anomalies a supervised model trained on (docs/model.md,
"Anomaly synthesis", recorded by training in ``checkpoint.metadata["data"]["seen_anomalies"]``) are removed
first: :func:`seen_anomalies_from` reads that record, and :func:`evaluate` refuses to score
an excluded sample.

Samples are named by their path relative to the category folder, ``test/<type>/<file>``
(POSIX separators), the same string training records.
"""
from __future__ import annotations

import time
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from prn_edge.contract.engine import Engine
from prn_edge.data.mvtec import MVTecCategory, Sample, load_sample
from prn_edge.errors import PRNError
from prn_edge.eval.metrics import DEFAULT_FPR_LIMIT, Metrics, compute_metrics_by_type

__all__ = [
    "EvaluationResult",
    "EvaluationWarning",
    "evaluate",
    "relative_path",
    "seen_anomalies_from",
    "select_samples",
]


class EvaluationWarning(UserWarning):
    """An evaluation that runs but whose numbers may not mean what they seem (e.g. a leak)."""


@dataclass
class EvaluationResult:
    """Everything one evaluation produced; arrays are in evaluation order.

    Attributes:
        predictor: the predictor's name.
        category: the category name (its folder name).
        root: the category folder.
        image_size: the side of the scored images and maps.
        samples: the evaluated samples.
        paths: their paths relative to ``root`` (``test/<type>/<file>``).
        scores: (N,) float32 image scores.
        labels: (N,) bool, True = defective.
        defect_types: (N,) defect-type names (``"good"`` for normal images).
        maps: (N, S, S) float32 anomaly maps.
        masks: (N, S, S) bool ground truth.
        metrics: the four metrics over all evaluated images.
        per_type: metrics per defect type (that type's images plus every good image).
        excluded: the excluded (seen) samples, sorted.
        limit_per_type: at most this many images per type were evaluated (None: all).
        batch_size: images per ``predict`` call.
        seconds_predict: time spent inside ``predictor.predict``, all batches.
        batch_seconds: time of each ``predict`` call, in order.
        seconds_total: wall time of the whole evaluation (reading images, scoring, metrics).
        info: extra facts about the predictor worth reporting, plain data (``device`` and
            ``checkpoint_sha256`` when the predictor has them; callers may add more, e.g. a
            baseline's settings: they go to ``metrics.json`` under ``predictor_info``).
        threshold: the decision threshold used (None: an uncalibrated scorer, no decisions).
        anomalous: (N,) bool decisions, ``score > threshold`` (None without a threshold).
    """

    predictor: str
    category: str
    root: Path
    image_size: int
    samples: list[Sample]
    paths: list[str]
    scores: np.ndarray
    labels: np.ndarray
    defect_types: list[str]
    maps: np.ndarray
    masks: np.ndarray
    metrics: Metrics
    per_type: dict[str, Metrics]
    excluded: list[str]
    limit_per_type: int | None
    batch_size: int
    seconds_predict: float
    seconds_total: float
    batch_seconds: list[float] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)
    threshold: float | None = None
    anomalous: np.ndarray | None = None

    @property
    def num_images(self) -> int:
        return len(self.samples)

    @property
    def warmup_excluded(self) -> bool:
        """Whether :attr:`images_per_second` leaves out the first batch (it does with 2+ batches)."""
        return len(self.batch_seconds) >= 2

    @property
    def images_per_second(self) -> float:
        """Steady throughput of the predictor alone: images / seconds inside ``predict``.

        The first batch is left out when there are several: it pays one-time costs
        (oneDNN primitive creation on CPU, cuDNN autotuning, lazy allocations) that would
        make short runs look several times slower than they are.
        """
        images, seconds = self.num_images, self.seconds_predict
        if self.warmup_excluded:
            images -= min(self.batch_size, self.num_images)
            seconds -= self.batch_seconds[0]
        return images / seconds if seconds > 0 else float("inf")


# --------------------------------------------------------------------------- sample names

def relative_path(sample: Sample, root: Path) -> str:
    """``sample``'s path relative to the category folder, POSIX style (``test/good/000.png``).

    Raises:
        PRNError: the sample is not inside ``root``.
    """
    try:
        return Path(sample.path).relative_to(root).as_posix()
    except ValueError as exc:
        raise PRNError(f"{sample.path}: not inside the category folder {root}") from exc


def _normalise(path: str) -> str:
    """A recorded sample name in the canonical form: POSIX separators, no ``./``."""
    return PurePosixPath(str(path).replace("\\", "/")).as_posix().removeprefix("./")


def _test_index(category: MVTecCategory) -> dict[str, Sample]:
    return {relative_path(s, category.root): s for s in category.test}


# --------------------------------------------------------------------------- seen anomalies

def seen_anomalies_from(checkpoint: Any, category: MVTecCategory) -> set[str]:
    """The seen anomalies a checkpoint trained on, to exclude from its evaluation.

    Training records ``metadata["data"] = {"category": name, "seen_anomalies": [paths]}``
    with paths relative to the category folder. The record applies when its category name
    equals ``category.name`` (the folder name).

    Args:
        checkpoint: a :class:`~prn_edge.checkpoint.Checkpoint` (or anything with a
            ``metadata`` mapping, or that mapping itself).
        category: the scanned category about to be evaluated.

    Returns:
        The relative paths to exclude; empty (with an :class:`EvaluationWarning`) when the
        checkpoint records no seen anomalies or was trained on another category, empty
        without a warning when it records an empty list.

    Raises:
        PRNError: a malformed record, or a recorded seen anomaly that is not a test image of
            ``category`` (wrong dataset or a changed folder: its evaluation could leak).
    """
    metadata = checkpoint if isinstance(checkpoint, Mapping) else getattr(checkpoint, "metadata", None)
    where = getattr(checkpoint, "path", None) or "checkpoint"
    data = metadata.get("data") if isinstance(metadata, Mapping) else None
    if not isinstance(data, Mapping) or "seen_anomalies" not in data:
        warnings.warn(
            f"{where}: records no seen anomalies (metadata['data']['seen_anomalies']); if the model "
            "trained on defective test images, this evaluation includes them and overstates its "
            "accuracy", EvaluationWarning, stacklevel=2)
        return set()
    recorded = data.get("category")
    seen = data["seen_anomalies"]
    if not isinstance(seen, (list, tuple)) or not all(isinstance(p, str) for p in seen):
        raise PRNError(f"{where}: metadata['data']['seen_anomalies'] must be a list of paths "
                       f"relative to the category folder, got {type(seen).__name__}")
    # The name may have been recorded as a folder path; compare its last component.
    recorded_name = PurePosixPath(str(recorded).replace("\\", "/")).name if recorded is not None else None
    if recorded_name != category.name:
        warnings.warn(
            f"{where}: trained on category {recorded!r}, evaluated on {category.name!r} "
            f"({category.root}): its {len(seen)} seen anomalies belong to the other category and "
            "nothing is excluded", EvaluationWarning, stacklevel=2)
        return set()
    index = _test_index(category)
    wanted = {_normalise(p) for p in seen}
    missing = sorted(wanted - index.keys())
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise PRNError(
            f"{category.root}: seen anomaly {missing[0]!r}{more} recorded by {where} is not a test "
            "image of this folder; evaluate on the dataset the model was trained on (a changed "
            "folder could let training images into the evaluation)")
    not_defective = sorted(p for p in wanted if index[p].label != 1)
    if not_defective:
        raise PRNError(f"{where}: recorded seen anomaly {not_defective[0]!r} is a good image, "
                       "not a defect; the checkpoint's record is inconsistent")
    return wanted


# --------------------------------------------------------------------------- selection

def select_samples(category: MVTecCategory, exclude: Iterable[str] = (),
                   limit_per_type: int | None = None) -> tuple[list[Sample], list[str]]:
    """The test samples to evaluate: all of them minus ``exclude``, at most N per type.

    Args:
        category: the scanned category.
        exclude: relative paths (``test/<type>/<file>``) never to evaluate.
        limit_per_type: keep only the first N remaining samples of each type (file order),
            for quick checks; None keeps all.

    Returns:
        ``(samples, paths)`` in the category's order (type, then file name).

    Raises:
        PRNError: an excluded path that is not a test image of the category, or a bad limit.
    """
    if limit_per_type is not None and (isinstance(limit_per_type, bool)
                                       or not isinstance(limit_per_type, (int, np.integer))
                                       or limit_per_type < 1):
        raise PRNError(f"the per-type limit must be a positive integer or None, got {limit_per_type!r}")
    index = _test_index(category)
    excluded = {_normalise(p) for p in exclude}
    unknown = sorted(excluded - index.keys())
    if unknown:
        # A typo here would silently evaluate the sample it meant to exclude.
        raise PRNError(f"{category.root}: excluded sample {unknown[0]!r} is not a test image of this "
                       "folder (give paths relative to it, e.g. test/<type>/<file>)")
    samples, paths, per_type = [], [], {}
    for path, sample in index.items():
        if path in excluded:
            continue
        count = per_type.get(sample.defect_type, 0)
        if limit_per_type is not None and count >= limit_per_type:
            continue
        per_type[sample.defect_type] = count + 1
        samples.append(sample)
        paths.append(path)
    return samples, paths


# --------------------------------------------------------------------------- evaluation

def _progress_bar(total: int, desc: str, enabled: bool):
    """A tqdm bar on stderr, or None (disabled, or tqdm missing: the bar is cosmetic)."""
    if not enabled:
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=total, desc=desc, unit="img", leave=False, dynamic_ncols=True)


def evaluate(predictor: Engine, category: MVTecCategory, *, exclude: Iterable[str] = (),
             batch_size: int = 8, progress: bool = True, limit_per_type: int | None = None,
             fpr_limit: float = DEFAULT_FPR_LIMIT, threshold: float | None = None) -> EvaluationResult:
    """Score the test images of ``category`` (minus ``exclude``) and compute the metrics.

    Args:
        predictor: any :class:`~prn_edge.contract.engine.Engine`.
        category: from :func:`~prn_edge.data.mvtec.scan_category`.
        exclude: relative paths never to evaluate, e.g. :func:`seen_anomalies_from`.
        batch_size: images per ``predict`` call.
        progress: show a tqdm progress bar on stderr.
        limit_per_type: evaluate only the first N images of each type (quick checks; the
            numbers are then not comparable with full runs).
        fpr_limit: PRO integration limit (0.3 by the MVTec AD protocol).
        threshold: decision threshold (default: the engine's calibrated one; none for an
            uncalibrated scorer, whose result then has no decisions).

    Returns:
        The :class:`EvaluationResult`.

    Raises:
        PRNError: unreadable images, a predictor breaking its contract, an unknown excluded
            path, or an evaluation set the metrics cannot use (no good or no defective image).
    """
    from prn_edge.runtime.pipeline import InspectConfig, Pipeline

    start = time.perf_counter()
    if not isinstance(predictor, Engine):
        raise PRNError(f"{type(predictor).__name__} is not an engine: subclass prn_edge.contract.Engine "
                       "(image_size, _predict(images) -> (maps, scores))")
    size = predictor.image_size
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1:
        raise PRNError(f"predictor {predictor.name!r} has a bad image_size {size!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise PRNError(f"batch size must be a positive integer, got {batch_size!r}")
    excluded = sorted({_normalise(p) for p in exclude})
    samples, paths = select_samples(category, excluded, limit_per_type)
    # The guard of docs/model.md, "Anomaly synthesis", kept as an explicit check (it must survive python -O):
    # a seen anomaly trained the model, so scoring it would inflate every metric.
    leaked = set(paths) & set(excluded)
    if leaked:
        raise AssertionError(f"internal error: excluded samples selected for evaluation: {sorted(leaked)}")
    n = len(samples)
    if n == 0:
        raise PRNError(f"{category.root}: no test image left to evaluate")

    maps = np.empty((n, size, size), dtype=np.float32)   # (N, S, S)
    masks = np.empty((n, size, size), dtype=bool)        # (N, S, S)
    scores = np.empty(n, dtype=np.float32)               # (N,)
    pipeline = Pipeline(predictor, InspectConfig(threshold=threshold), require_threshold=False)
    anomalous = None if pipeline.threshold is None else np.empty(n, dtype=bool)   # (N,)
    batch_seconds: list[float] = []
    bar = _progress_bar(n, f"{predictor.name} on {category.name}", progress)
    evaluated: list[str] = []
    try:
        for lo in range(0, n, batch_size):
            hi = min(lo + batch_size, n)
            images = np.empty((hi - lo, size, size, 3), dtype=np.uint8)   # (B, S, S, 3) RGB
            for i in range(lo, hi):
                images[i - lo], masks[i] = load_sample(samples[i], size)
            judged = pipeline.judge(images)                              # the engine checks the contract
            batch_seconds.append(judged.timings["infer"])
            maps[lo:hi], scores[lo:hi] = judged.maps, judged.scores
            if anomalous is not None:
                anomalous[lo:hi] = judged.anomalous
            evaluated.extend(paths[lo:hi])
            if bar is not None:
                bar.update(hi - lo)
    finally:
        if bar is not None:
            bar.close()
    # Check again on what was actually scored, not only on what was planned.
    leaked = set(evaluated) & set(excluded)
    if leaked or len(evaluated) != n:
        raise AssertionError(f"internal error: scored {len(evaluated)} of {n} planned images; "
                             f"excluded among them: {sorted(leaked)}")

    labels = np.array([s.label == 1 for s in samples], dtype=bool)
    types = [s.defect_type for s in samples]
    try:
        per_type = compute_metrics_by_type(scores, labels, maps, masks, types, fpr_limit=fpr_limit)
    except PRNError as exc:
        counts = f"{int(labels.sum())} defective, {int((~labels).sum())} good"
        raise PRNError(f"{category.root}: cannot compute metrics on the {n} evaluated images "
                       f"({counts}): {exc}") from exc
    overall = per_type.pop("overall")

    info = {}
    for key in ("device", "checkpoint_sha256"):
        value = getattr(predictor, key, None)
        if value is not None:
            info[key] = str(value)
    return EvaluationResult(
        predictor=str(predictor.name), category=category.name, root=category.root, image_size=int(size),
        samples=samples, paths=paths, scores=scores, labels=labels, defect_types=types, maps=maps,
        masks=masks, metrics=overall, per_type=per_type, excluded=excluded,
        limit_per_type=None if limit_per_type is None else int(limit_per_type),
        batch_size=int(batch_size), seconds_predict=float(sum(batch_seconds)),
        seconds_total=time.perf_counter() - start, batch_seconds=batch_seconds, info=info,
        threshold=pipeline.threshold, anomalous=anomalous)
