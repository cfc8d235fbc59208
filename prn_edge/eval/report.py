"""The evaluation report: ``metrics.json``, ``report.md``, ``roc.png``, ``pr.png``, ``cases.png``.

Everything is rendered in memory first (:func:`render_report`) and written only afterwards
(:func:`write_report`), each file atomically, so a failure never leaves half a report.
matplotlib is imported lazily, with the Agg canvas and no pyplot (no global state, no
display needed).

Metric values are fractions in [0, 1] in ``metrics.json`` and percentages in ``report.md``.
The PRO limit (false-positive rates 0 to 0.3 by default) is stated in both.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from prn_edge import __version__
from prn_edge.data.mvtec import load_sample
from prn_edge.errors import PRNError, require
from prn_edge.eval.evaluate import EvaluationResult
from prn_edge.eval.metrics import Metrics, pr_curve_points, roc_curve_points
from prn_edge.io import atomic_write

__all__ = [
    "PAPER_REFERENCE",
    "REPORT_FILES",
    "metrics_dict",
    "render_markdown",
    "render_report",
    "select_cases",
    "summary_text",
    "write_report",
]

#: The files :func:`write_report` writes, in order.
REPORT_FILES = ("metrics.json", "report.md", "roc.png", "pr.png", "cases.png")

#: The paper's numbers (Zhang et al., CVPR 2023, Table 1-3), fractions: image AUROC,
#: pixel AUROC, PRO, AP. Keyed by category folder name.
PAPER_REFERENCE: dict[str, tuple[float, float, float, float]] = {
    "bottle": (1.000, 0.994, 0.970, 0.923),
}

_METRIC_KEYS = ("image_auroc", "pixel_auroc", "pro", "ap")
_MAX_CURVE_POINTS = 4000  # enough for a smooth line; a pixel curve has millions of points


# --------------------------------------------------------------------------- data

def _metric_values(m: Metrics) -> dict[str, float]:
    return {k: float(getattr(m, k)) for k in _METRIC_KEYS}


def _type_counts(result: EvaluationResult, defect_type: str) -> tuple[int, int]:
    """(defective images of ``defect_type``, good images): the images of its per-type metrics."""
    types = np.asarray(result.defect_types)
    return int(np.count_nonzero(types == defect_type)), int(np.count_nonzero(~result.labels))


def metrics_dict(result: EvaluationResult, notes: tuple[str, ...] | list[str] = ()) -> dict[str, Any]:
    """The content of ``metrics.json`` (plain JSON data; metrics as fractions in [0, 1]).

    Args:
        result: the evaluation.
        notes: warnings raised while preparing it (e.g. no seen-anomaly record).

    Returns:
        A dict with ``image_auroc``, ``pixel_auroc``, ``pro``, ``ap``, ``pro_fpr_limit``,
        ``per_type``, ``num_images``, ``excluded``, ``predictor``, ``images_per_second``,
        ``checkpoint_sha256`` (when known), provenance and ``per_image`` (path, type, label,
        score of every evaluated image).
    """
    per_type = {}
    for name, m in result.per_type.items():
        n_def, n_good = _type_counts(result, name)
        per_type[name] = {**_metric_values(m), "num_defective": n_def, "num_good": n_good}
    data: dict[str, Any] = {
        **_metric_values(result.metrics),
        "pro_fpr_limit": float(result.metrics.pro_fpr_limit),
        "per_type": per_type,
        "num_images": result.num_images,
        "num_defective": int(result.labels.sum()),
        "num_good": int((~result.labels).sum()),
        "excluded": list(result.excluded),
        "limit_per_type": result.limit_per_type,
        "category": result.category,
        "data_root": str(result.root),
        "image_size": result.image_size,
        "predictor": result.predictor,
    }
    if result.info.get("checkpoint_sha256"):
        data["checkpoint_sha256"] = result.info["checkpoint_sha256"]
    if result.info.get("device"):
        data["device"] = result.info["device"]
    extra = {k: v for k, v in result.info.items() if k not in ("checkpoint_sha256", "device")}
    if extra:  # e.g. a baseline's settings and fit statistics (plain data)
        data["predictor_info"] = extra
    data.update({
        "images_per_second": float(result.images_per_second),
        "images_per_second_excludes_first_batch": result.warmup_excluded,
        "batch_size": result.batch_size,
        "seconds_predict": float(result.seconds_predict),
        "seconds_total": float(result.seconds_total),
        "notes": list(notes),
        "prn_edge_version": __version__,
        # Per-image scores: enough to re-draw the image ROC or pick a threshold later.
        "per_image": [{"path": path, "type": kind, "label": int(label), "score": float(score)}
                      for path, kind, label, score in zip(result.paths, result.defect_types,
                                                          result.labels, result.scores)],
    })
    return data


def _pct(value: float) -> str:
    return f"{100.0 * value:.1f}"


def _rows(result: EvaluationResult) -> list[tuple[str, str, Metrics]]:
    """(name, images, metrics) for the overall row, then one per defect type."""
    n_good = int((~result.labels).sum())
    rows = [("overall", f"{int(result.labels.sum())} + {n_good} good", result.metrics)]
    for name, m in result.per_type.items():
        n_def, _ = _type_counts(result, name)
        rows.append((name, f"{n_def} + {n_good} good", m))
    return rows


def render_markdown(result: EvaluationResult, notes: tuple[str, ...] | list[str] = ()) -> str:
    """The text of ``report.md``: table overall and per type, PRO limit, exclusions, reference.

    Args:
        result: the evaluation.
        notes: warnings to state in the report.

    Returns:
        Markdown text.
    """
    limit = result.metrics.pro_fpr_limit
    lines = [f"# Evaluation: {result.category} with {result.predictor}", ""]
    lines += [f"- data: `{result.root}` ({result.num_images} test images scored at "
              f"{result.image_size}x{result.image_size}: {int(result.labels.sum())} defective, "
              f"{int((~result.labels).sum())} good)"]
    if result.info.get("checkpoint_sha256"):
        lines.append(f"- checkpoint SHA-256: `{result.info['checkpoint_sha256']}`")
    if result.limit_per_type is not None:
        lines.append(f"- **quick check**: only the first {result.limit_per_type} image(s) of each type "
                     "were evaluated (`--limit`); these numbers are not comparable with a full run")
    lines += ["", "## Metrics (percent)", "",
              f"PRO is the area under the per-region-overlap curve for false-positive rates from 0 "
              f"to **{limit:g}**, divided by {limit:g} (PRO FPR limit {limit:g}). Per-type rows use "
              "that type's defective images plus every good image.", "",
              f"| set | images | image AUROC | pixel AUROC | PRO (FPR <= {limit:g}) | AP |",
              "|---|---|---|---|---|---|"]
    for name, images, m in _rows(result):
        lines.append(f"| {name} | {images} | {_pct(m.image_auroc)} | {_pct(m.pixel_auroc)} | "
                     f"{_pct(m.pro)} | {_pct(m.ap)} |")
    ref = PAPER_REFERENCE.get(result.category)
    if ref is not None:
        lines.append("| *paper (PRN, CVPR 2023)* | full test set minus 10 seen | "
                     + " | ".join(_pct(v) for v in ref) + " |")
        lines += ["", f"Reference: the paper reports {' / '.join(_pct(v) for v in ref)} (image AUROC / "
                  f"pixel AUROC / PRO / AP) on MVTec AD {result.category}, with a ResNet-18 PRN trained "
                  "700 epochs with 10 seen anomalies (docs/model.md, 'Reference numbers')."]
    lines += ["", "## Seen anomalies excluded", ""]
    if result.excluded:
        lines.append(f"{len(result.excluded)} defective test image(s) trained the model (docs/model.md, 'Anomaly synthesis') "
                     "and were not evaluated:")
        lines.append("")
        lines += [f"- `{p}`" for p in result.excluded]
    else:
        lines.append("None excluded.")
    if notes:
        lines += ["", "## Warnings", ""] + [f"- {n}" for n in notes]
    lines += ["", "## Speed", "",
              f"{result.images_per_second:.2f} images/s inside the predictor (batch {result.batch_size}"
              + (f", device {result.info['device']}" if result.info.get("device") else "")
              + (", first batch (warm-up) left out" if result.warmup_excluded else
                 ", one batch only: warm-up included")
              + f"); {result.seconds_total:.1f} s for the whole "
              "evaluation (reading images and metrics included).",
              "", "## Figures", "",
              "- `roc.png`: image-level and pixel-level ROC",
              "- `pr.png`: pixel-level precision-recall",
              "- `cases.png`: lowest-scored defects, highest-scored good images, highest-scored defects "
              "(image | ground truth | anomaly-map overlay)", ""]
    return "\n".join(lines)


def select_cases(result: EvaluationResult, n: int = 4) -> list[tuple[str, int]]:
    """The cases shown in ``cases.png``, as (group, index into the result) pairs.

    Groups: the ``n`` lowest-scored defective images (the worst misses), the ``n``
    highest-scored good images (the worst false alarms), then the ``n`` highest-scored
    defective images not already shown (the best detections).
    """
    defective = np.flatnonzero(result.labels)
    good = np.flatnonzero(~result.labels)
    # Stable sorts: ties keep the evaluation order, so the figure is deterministic.
    by_score_def = defective[np.argsort(result.scores[defective], kind="stable")]
    by_score_good = good[np.argsort(-result.scores[good], kind="stable")]
    worst_def = [int(i) for i in by_score_def[:n]]
    cases = [("lowest-scored defect", i) for i in worst_def]
    cases += [("highest-scored good", int(i)) for i in by_score_good[:n]]
    best = [int(i) for i in by_score_def[::-1] if int(i) not in worst_def][:n]
    cases += [("highest-scored defect", i) for i in best]
    return cases


# --------------------------------------------------------------------------- figures

def _mpl():
    """matplotlib's Figure and Agg canvas, imported on first use (no pyplot, no display)."""
    require("matplotlib", "the report figures")
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    return Figure, FigureCanvasAgg


def _png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


def _thin(*arrays: np.ndarray, max_points: int = _MAX_CURVE_POINTS) -> tuple[np.ndarray, ...]:
    """Keep at most ``max_points`` evenly spaced points of a curve (end points included)."""
    n = len(arrays[0])
    if n <= max_points:
        return arrays
    idx = np.unique(np.linspace(0, n - 1, max_points).round().astype(np.int64))
    return tuple(a[idx] for a in arrays)


def render_roc(result: EvaluationResult) -> bytes:
    """``roc.png``: image-level and pixel-level ROC curves side by side."""
    Figure, Canvas = _mpl()
    fig = Figure(figsize=(10, 4.8), dpi=100, layout="constrained")
    Canvas(fig)
    curves = (("image level", roc_curve_points(result.scores, result.labels), result.metrics.image_auroc),
              ("pixel level", roc_curve_points(result.maps, result.masks), result.metrics.pixel_auroc))
    for ax, (title, (fpr, tpr, _), auc) in zip(fig.subplots(1, 2), curves):
        fpr, tpr = _thin(fpr, tpr)
        ax.plot(fpr, tpr, lw=2, label=f"AUROC {_pct(auc)}")
        ax.plot([0, 1], [0, 1], ls="--", lw=1, color="grey", label="chance")
        ax.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="false-positive rate", ylabel="true-positive rate",
               title=f"{title} ROC", aspect="equal")
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right")
    fig.suptitle(f"{result.category}: {result.predictor} ({result.num_images} images)")
    return _png(fig)


def render_pr(result: EvaluationResult) -> bytes:
    """``pr.png``: the pixel-level precision-recall curve, with AP and the chance level."""
    Figure, Canvas = _mpl()
    fig = Figure(figsize=(5.5, 5), dpi=100, layout="constrained")
    Canvas(fig)
    ax = fig.subplots()
    precision, recall, _ = pr_curve_points(result.maps, result.masks)
    recall, precision = _thin(recall, precision)
    prevalence = float(result.masks.mean())
    ax.plot(recall, precision, lw=2, label=f"AP {_pct(result.metrics.ap)}")
    ax.axhline(prevalence, ls="--", lw=1, color="grey", label=f"chance ({100 * prevalence:.2f}% defect pixels)")
    ax.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="recall", ylabel="precision",
           title=f"pixel-level PR: {result.category}, {result.predictor}")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper right")
    return _png(fig)


def render_cases(result: EvaluationResult, n: int = 4) -> bytes:
    """``cases.png``: rows of image | ground truth | anomaly-map overlay (see :func:`select_cases`).

    The heat-maps share one colour scale, the minimum to the maximum of all evaluated maps,
    so rows can be compared; the ground truth is outlined in white on the overlay.
    """
    Figure, Canvas = _mpl()
    import matplotlib

    cases = select_cases(result, n)
    lo, hi = float(result.maps.min()), float(result.maps.max())
    scale = hi - lo if hi > lo else 1.0
    cmap = matplotlib.colormaps["jet"]
    fig = Figure(figsize=(7.5, 2.5 * len(cases) + 0.6), dpi=80, layout="constrained")
    Canvas(fig)
    axes = np.asarray(fig.subplots(len(cases), 3, squeeze=False))
    for row, (group, i) in enumerate(cases):
        image, _ = load_sample(result.samples[i], result.image_size)       # (S, S, 3) uint8
        mask = result.masks[i]                                             # (S, S) bool
        heat = cmap((result.maps[i] - lo) / scale)[..., :3]                # (S, S, 3) in [0, 1]
        overlay = 0.5 * image.astype(np.float32) / 255.0 + 0.5 * heat
        ax_img, ax_gt, ax_map = axes[row]
        ax_img.imshow(image)
        ax_gt.imshow(mask, cmap="gray", vmin=0, vmax=1)
        ax_map.imshow(np.clip(overlay, 0, 1))
        if mask.any():
            ax_map.contour(mask.astype(np.float32), levels=[0.5], colors="white", linewidths=0.8)
        for ax in axes[row]:
            ax.set_xticks([])
            ax.set_yticks([])
        ax_img.set_ylabel(f"{group}\n{result.paths[i].removeprefix('test/')}", fontsize=8)
        ax_map.set_xlabel(f"score {result.scores[i]:.4g}", fontsize=8)
    for ax, title in zip(axes[0], ("image", "ground truth", "anomaly map")):
        ax.set_title(title, fontsize=10)
    fig.suptitle(f"{result.category}: {result.predictor}; colour scale {lo:.3g} to {hi:.3g} "
                 "(all maps)", fontsize=10)
    return _png(fig)


# --------------------------------------------------------------------------- writing

def render_report(result: EvaluationResult, notes: tuple[str, ...] | list[str] = ()) -> dict[str, bytes]:
    """Every report file as bytes, in memory (nothing touches the disk).

    Args:
        result: the evaluation.
        notes: warnings to state in ``metrics.json`` and ``report.md``.

    Returns:
        ``{file name: bytes}`` for each of :data:`REPORT_FILES`.

    Raises:
        PRNError: matplotlib missing, or images unreadable for ``cases.png``.
    """
    # numpy scalars a caller put into result.info become plain numbers, anything else text.
    text = json.dumps(metrics_dict(result, notes), indent=2,
                      default=lambda o: o.item() if hasattr(o, "item") else str(o)) + "\n"
    return {
        "metrics.json": text.encode(),
        "report.md": render_markdown(result, notes).encode(),
        "roc.png": render_roc(result),
        "pr.png": render_pr(result),
        "cases.png": render_cases(result),
    }


def write_report(result: EvaluationResult, out_dir: str | os.PathLike,
                 notes: tuple[str, ...] | list[str] = (),
                 rendered: dict[str, bytes] | None = None) -> list[Path]:
    """Render the report, then write it into ``out_dir`` (created if needed), file by file atomically.

    If a write fails, the files this call created are removed again (and ``out_dir`` too
    if this call created it), so no partial report is left behind.

    Args:
        result: the evaluation.
        out_dir: the output folder.
        notes: warnings to state in the report.
        rendered: the output of :func:`render_report`, if already rendered.

    Returns:
        The written paths, in :data:`REPORT_FILES` order.

    Raises:
        PRNError: ``out_dir`` is not a folder or cannot be written.
    """
    out = Path(out_dir)
    if out.exists() and not out.is_dir():  # before rendering: fail fast
        raise PRNError(f"{out}: output path exists and is not a folder")
    files = rendered if rendered is not None else render_report(result, notes)
    created_dir = not out.exists()
    written: list[Path] = []
    new_files: list[Path] = []
    try:
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise PRNError(f"{out}: cannot create the output folder ({exc.strerror or exc})") from exc
        for name in REPORT_FILES:
            path = out / name
            existed = path.exists()
            with atomic_write(path) as handle:
                handle.write(files[name])
            written.append(path)
            if not existed:
                new_files.append(path)
    except BaseException:
        for path in new_files:
            with contextlib.suppress(OSError):
                path.unlink()
        if created_dir:
            with contextlib.suppress(OSError):
                out.rmdir()  # only if empty: never remove anything else
        raise
    return written


def summary_text(result: EvaluationResult, written: list[Path] | None = None,
                 notes: tuple[str, ...] | list[str] = ()) -> str:
    """A one-screen console summary: the table, exclusions, speed and the written files."""
    limit = result.metrics.pro_fpr_limit
    head = f"{result.category}: {result.predictor}"
    if result.info.get("checkpoint_sha256"):
        head += f" (checkpoint {result.info['checkpoint_sha256'][:12]})"
    lines = [head,
             f"{result.num_images} images ({int(result.labels.sum())} defective, "
             f"{int((~result.labels).sum())} good), {len(result.excluded)} seen anomalies excluded"
             + (f", first {result.limit_per_type} per type only (--limit)" if result.limit_per_type else "")]
    name_w = max(12, *(len(name) for name, _, _ in _rows(result)))
    lines.append(f"{'':{name_w}}  {'images':>14}  {'img AUROC':>9}  {'px AUROC':>8}  "
                 f"{f'PRO@{limit:g}':>8}  {'AP':>5}")
    for name, images, m in _rows(result):
        lines.append(f"{name:{name_w}}  {images:>14}  {_pct(m.image_auroc):>9}  {_pct(m.pixel_auroc):>8}  "
                     f"{_pct(m.pro):>8}  {_pct(m.ap):>5}")
    ref = PAPER_REFERENCE.get(result.category)
    if ref is not None:
        lines.append(f"{'paper (ref.)':{name_w}}  {'':>14}  {_pct(ref[0]):>9}  {_pct(ref[1]):>8}  "
                     f"{_pct(ref[2]):>8}  {_pct(ref[3]):>5}")
    lines.append(f"PRO: area under the per-region-overlap curve up to FPR {limit:g}, divided by {limit:g}")
    device = f", {result.info['device']}" if result.info.get("device") else ""
    warmup = "first batch left out" if result.warmup_excluded else "warm-up included"
    lines.append(f"speed: {result.images_per_second:.2f} images/s in the predictor (batch "
                 f"{result.batch_size}{device}, {warmup}); {result.seconds_total:.1f} s in all")
    for note in notes:
        lines.append(f"warning: {note}")
    if written:
        folder = written[0].parent
        lines.append(f"wrote {folder}/: " + ", ".join(p.name for p in written))
    return "\n".join(lines)
