"""FP32 PRN ONNX -> INT8 Q/DQ ONNX, calibrated, with an accuracy gate and a sensitivity search.

The INT8 model is what TensorRT 10 (``BuilderFlag.INT8`` on a Q/DQ network) and TensorRT 11
(strongly typed) both build from, and what ONNX Runtime runs on a CPU, so its accuracy is
measured here before any engine exists (docs/platform.md, "Precision lives in the ONNX").

Quantization (ONNX Runtime's ``quantize_static``, QDQ format):

* ``Conv`` only: weights per output channel, activations per tensor, both symmetric INT8
  (zero point 0), which is what TensorRT's Q/DQ fusion expects. Weights use 7 bits of the 8
  (``reduce_range``: [-64, 64]): ONNX Runtime's x86 kernels on CPUs without VNNI multiply
  u8 x s8 pairs with ``vpmaddubsw``, whose 16-bit sums saturate for full-range weights
  (255 * 127 * 2 > 32767, while 255 * 64 * 2 fits); the exported file must be right on any CPU it runs on, not only
  the one that exported it. Measured on the demo model (AMD EPYC, AVX2 without VNNI): all
  convolutions in INT8 lost 5.3 points of PRO with 8-bit weights, 0.4 with 7-bit (the worst
  of the gated metrics 0.8). Everything else (the
  ``prn`` calls' distance GEMM and softmax, resize, the score) stays float: the fused ops
  reduce in FP32 by design (plugin_spec.py).
* Static ranges from a stated number of normal images, drawn with a seed, by one of
  :data:`CALIBRATION_METHODS` (:func:`calibrate`), once per export: every trial of the gate
  search reuses them. MinMax is the default: on every model measured it kept the fewest
  convolutions in float (benchmarks/results/int8_calibration.md). Percentile and entropy ranges
  clip the tails of the normal images' activations, where an anomaly's evidence probably lies;
  they lower the all-INT8 drop on some models but make the stem and early blocks in float
  insufficient, and the search then keeps far more.
  Dynamic quantization is 4-5x slower on these CPUs (docs/platform.md, "CPU speed") and does not exist in
  TensorRT.

The gate (the caller's): image AUROC, pixel AUROC and PRO (AP too for the CPU flavour) each
within ``tolerance`` points of FP32. When the fully quantized model misses it,
:func:`search_keep_float` keeps parts of the network in float (a *group* of convolutions = one
part: the encoder's stem and three block ranges, each fusion, the attention projections, the
decoder stages, the head): the input side first, then, if that is not enough, the parts that
cost most on their own; the report names them.
"""
from __future__ import annotations

import os
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from prn_edge.errors import PRNError, first_line, require
from prn_edge.validate import check_number

DEFAULT_CALIBRATION_IMAGES = 32
CALIBRATION_BATCH = 4
CALIBRATION_METHODS = ("minmax", "percentile", "entropy")
DEFAULT_CALIBRATION_METHOD = "minmax"
DEFAULT_PERCENTILE = 99.999
FLOAT_ONLY_WEIGHT_PREFIX = "prn.smoothing."   # see float_only_convs
HISTOGRAM_BINS = 2048            # TensorRT's and pytorch-quantization's histogram calibrators use 2048 too


@dataclass(frozen=True)
class ConvGroup:
    """A named part of the network, as the set of ``Conv`` nodes whose weights live there."""

    name: str
    nodes: tuple[str, ...]     # ONNX node names
    modules: tuple[str, ...]   # the PyTorch modules they come from (report)


def float_only_convs(model) -> set[str]:
    """Names of the ``Conv`` nodes that never go to INT8: the anomaly map's Gaussian blur
    (``PRNConfig.map_smoothing``, weights ``prn.smoothing.*``).

    Its input is the map itself, probabilities in [0, 1]: 8 bits would leave 255 levels where the
    metrics rank millions of pixels, and its two 1-channel convolutions cost nothing in float.
    """
    return {n.name for n in model.graph.node
            if n.op_type == "Conv" and n.input[1].startswith(FLOAT_ONLY_WEIGHT_PREFIX)}


def conv_groups(model) -> list[ConvGroup]:
    """Group the ``Conv`` nodes of an exported PRN by the module their weight belongs to.

    The :func:`float_only_convs` belong to no group: no search may quantize them.

    Args:
        model: the FP32 ``onnx.ModelProto``.

    Returns:
        Groups in graph order; empty groups are left out.
    """
    never = float_only_convs(model)
    convs = [n for n in model.graph.node if n.op_type == "Conv" and n.name not in never]
    blocks = [_block_index(n.input[1]) for n in convs]
    last_block = max((b for b in blocks if b is not None), default=0)
    groups: dict[str, tuple[list[str], list[str]]] = {}
    for node, block in zip(convs, blocks):
        module = node.input[1].removeprefix("prn.").removesuffix(".weight")
        name = _group_name(module, block, last_block)
        names, modules = groups.setdefault(name, ([], []))
        names.append(node.name)
        modules.append(module)
    return [ConvGroup(name, tuple(n), tuple(m)) for name, (n, m) in groups.items()]


def matched_feature_convs(model) -> set[str]:
    """Names of the ``Conv`` nodes upstream of the ``prn.ProtoResidual`` calls' features.

    These compute what is matched against the FP32 prototypes: INT8 noise there reads as
    distance to every prototype, which a residual prior turns straight into anomaly score
    (benchmarks/results/cpu_profile.md: on the patch-matched bottle model, every convolution in
    INT8 took image AUROC from 100 to 27-66; the same with these in float lost 0.35 points).
    """
    producer = {o: n for n in model.graph.node for o in n.output}
    seen: set[str] = set()
    stack = [n.input[0] for n in model.graph.node if n.op_type == "ProtoResidual"]
    while stack:
        node = producer.get(stack.pop())
        if node is None or node.name in seen:
            continue
        seen.add(node.name)
        stack.extend(node.input)
    return {n.name for n in model.graph.node if n.op_type == "Conv" and n.name in seen}


def input_side_limit(groups: list[ConvGroup], matched: set[str], minimum: int = 2) -> int:
    """How many leading groups :func:`search_keep_float` keeps in float before it ranks: every
    group up to the last one holding a matched-feature convolution, at least ``minimum``."""
    holding = [i for i, g in enumerate(groups) if matched.intersection(g.nodes)]
    return max(minimum, holding[-1] + 1 if holding else 0)


def _block_index(weight: str) -> int | None:
    match = re.search(r"encoder\._blocks\.(\d+)\.", weight)
    return int(match.group(1)) if match else None


def _group_name(module: str, block: int | None, last_block: int) -> str:
    if block is not None:   # the encoder's blocks in thirds: early, middle, late features
        third = min(2, 3 * block // (last_block + 1))
        return f"encoder.blocks[{('early', 'middle', 'late')[third]}]"
    if module.startswith("encoder."):
        return "encoder.stem"
    parts = module.split(".")
    if parts[0] == "attention":
        return "attention"
    if parts[0] == "decoder":
        return f"decoder.{parts[1]}"
    return parts[0]   # fuse_features, fuse_residuals, fuse_attention, ...


class _Reader:
    """ORT's CalibrationDataReader protocol over uint8 (N, S, S, 3) images."""

    def __init__(self, images: np.ndarray, input_name: str) -> None:
        self._batches = iter([{input_name: images[i:i + CALIBRATION_BATCH]}
                              for i in range(0, len(images), CALIBRATION_BATCH)])

    def get_next(self):
        return next(self._batches, None)


@dataclass(frozen=True)
class Calibration:
    """Activation ranges of the FP32 model, computed once and reused by every quantization trial.

    The ranges depend on the FP32 model and the images only, not on which convolutions stay in
    float, so the gate search calibrates once (the histogram methods take a minute) and quantizes
    many times.
    """

    method: str
    percentile: float | None                   # the percentile method's only
    activations: str                           # s8 or u8: symmetric or not
    ranges: dict[str, tuple[float, float]]     # tensor -> (low, high)
    images: int
    seconds: float
    input_name: str = "image"
    image_shape: tuple[int, ...] = ()          # (S, S, 3) of one calibration image

    def record(self) -> dict:
        """What the export report says about it."""
        out: dict = {"method": self.method}
        if self.method == "percentile":
            out["percentile"] = self.percentile
        if self.method != "minmax":
            out["histogram_bins"] = HISTOGRAM_BINS
        out["seconds"] = round(self.seconds, 1)
        return out


def describe_calibration(record: dict) -> str:
    """How the report names the ranges of a :meth:`Calibration.record` (``MinMax ranges`` ...).

    A report written before ``--calib-method`` existed has no ``method``: its ranges were MinMax.
    """
    method = record.get("method", "minmax")
    bins = record.get("histogram_bins", HISTOGRAM_BINS)
    if method == "percentile":
        return f"{record['percentile']:g}th-percentile ranges ({bins}-bin histograms)"
    if method == "entropy":
        return f"entropy ranges (least KL divergence, {bins}-bin histograms)"
    return "MinMax ranges"


def check_calibration_method(method: str, percentile: float | None = None) -> tuple[str, float | None]:
    """``(method, percentile)`` checked, the percentile method's default filled in.

    Raises:
        PRNError: an unknown method, a percentile outside (0, 100], or one given to another method.
    """
    if method not in CALIBRATION_METHODS:
        raise PRNError(f"--calib-method expects one of {', '.join(CALIBRATION_METHODS)}, got {method!r}")
    if method != "percentile":
        if percentile is not None:
            raise PRNError(f"--calib-percentile applies to --calib-method percentile only, not {method}")
        return method, None
    if percentile is None:
        return method, DEFAULT_PERCENTILE
    return method, float(check_number("--calib-percentile", percentile, low=0, high=100, low_open=True,
                                      optional=False))


def calibrate(fp32_path: str | os.PathLike, images: np.ndarray, *, method: str = DEFAULT_CALIBRATION_METHOD,
              percentile: float | None = None, activations: str = "s8", threads: int = 0) -> Calibration:
    """Activation ranges of every ``Conv`` input and output, with ONNX Runtime's calibrators.

    * ``minmax``: the largest magnitude seen. One outlier pixel sets the step for the whole tensor.
    * ``percentile``: the ``percentile``-th percentile of ``|x|`` (S8) or of ``x`` at both ends (U8),
      from a 2048-bin histogram.
    * ``entropy``: the clipping threshold whose quantized histogram is closest (KL divergence) to
      the float one, from a 2048-bin histogram (ORT's default of 128 bins leaves a single candidate,
      the maximum: MinMax under another name; ``quantize_static`` cannot pass the bin count).

    The images go through the model one batch at a time and each batch is folded into the
    histograms before the next: ORT's own loop keeps every batch's activations until the end
    (on the demo model, 32 images at 256 px: 4.4 GB peak against 0.8 GB here).

    Args:
        fp32_path: the exported FP32 ONNX.
        images: uint8 ``(N, S, S, 3)`` normal images.
        method: one of :data:`CALIBRATION_METHODS`.
        percentile: the percentile method's percentile (default :data:`DEFAULT_PERCENTILE`).
        activations: ``s8`` or ``u8``, as :func:`quantize_int8`'s.
        threads: ONNX Runtime intra-op threads (0: its default).

    Raises:
        PRNError: bad arguments, onnxruntime missing, or the calibration failing.
    """
    quantization = require("onnxruntime.quantization", "INT8 quantization (pip install onnxruntime)")
    _check_images(images)
    _check_activations(activations)
    method, percentile = check_calibration_method(method, percentile)
    import contextlib
    import io
    import tempfile
    import time

    import onnxruntime as ort
    from onnxruntime.quantization.calibrate import create_calibrator

    symmetric = activations == "s8"
    kind, settings = {
        "minmax": (quantization.CalibrationMethod.MinMax, {"symmetric": symmetric}),
        "percentile": (quantization.CalibrationMethod.Percentile,
                       {"symmetric": symmetric, "percentile": percentile, "num_bins": HISTOGRAM_BINS}),
        "entropy": (quantization.CalibrationMethod.Entropy,
                    {"symmetric": symmetric, "num_bins": HISTOGRAM_BINS, "num_quantized_bins": 128}),
    }[method]
    start = time.perf_counter()
    try:
        # ORT prints progress on stdout for every batch; prn-export's stdout is its summary.
        with tempfile.TemporaryDirectory(prefix="prn-calibration-") as tmp, \
                contextlib.redirect_stdout(io.StringIO()):
            calibrator = create_calibrator(Path(fp32_path), ["Conv"], augmented_model_path=str(Path(tmp) / "aug.onnx"),
                                           calibrate_method=kind, extra_options=settings)
            session = ort.SessionOptions()   # create_calibrator's own session takes every core
            session.intra_op_num_threads = max(0, threads)
            session.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
            calibrator.infer_session = ort.InferenceSession(calibrator.augmented_model_path, session,
                                                            providers=["CPUExecutionProvider"])
            input_name = calibrator.infer_session.get_inputs()[0].name
            for i in range(0, len(images), CALIBRATION_BATCH):
                calibrator.collect_data(_Reader(images[i:i + CALIBRATION_BATCH], input_name))
            data = calibrator.compute_data()
            del calibrator, session
    except Exception as exc:  # ORT's calibrators raise plain Exceptions from deep inside
        raise PRNError(f"INT8 calibration ({method}) of {fp32_path} failed: {first_line(exc)}") from exc
    ranges = {name: (float(np.ravel(t.range_value[0])[0]), float(np.ravel(t.range_value[1])[0]))
              for name, t in data.data.items()}
    return Calibration(method, percentile, activations, ranges, len(images), time.perf_counter() - start,
                       input_name, tuple(images.shape[1:]))


def quantize_int8(fp32_path: str | os.PathLike, out_path: str | os.PathLike, calibration: np.ndarray | Calibration,
                  *, keep_float: Iterable[str] = (), activations: str = "s8",
                  calibration_method: str = DEFAULT_CALIBRATION_METHOD, percentile: float | None = None,
                  threads: int = 0) -> Path:
    """Write the INT8 Q/DQ model.

    Args:
        fp32_path: the exported FP32 ONNX.
        out_path: where to write (the caller makes it atomic: this writes the path given).
        calibration: uint8 ``(N, S, S, 3)`` normal images, calibrated here with
            ``calibration_method`` / ``percentile`` / ``threads`` (see :func:`calibrate`), or a
            :class:`Calibration` made before (those three are then its own).
        keep_float: ONNX node names of convolutions to leave in float (the
            :func:`float_only_convs` are left in float whatever it says).
        activations: ``s8`` symmetric INT8 (what TensorRT requires; the default) or ``u8``
            asymmetric UINT8 (faster in ONNX Runtime on x86 CPUs; not for TensorRT).

    Returns:
        ``out_path``.

    Raises:
        PRNError: onnxruntime's quantization tools missing, or quantization failing.
    """
    quantization = require("onnxruntime.quantization", "INT8 quantization (pip install onnxruntime)")
    _check_activations(activations)
    if not isinstance(calibration, Calibration):
        calibration = calibrate(fp32_path, calibration, method=calibration_method, percentile=percentile,
                                activations=activations, threads=threads)
    elif calibration.activations != activations:
        raise PRNError(f"the calibration was made for {calibration.activations} activations, not {activations}")
    symmetric = activations == "s8"
    onnx = require("onnx", "INT8 quantization (pip install onnx)")
    keep_float = set(keep_float) | float_only_convs(onnx.load(str(fp32_path), load_external_data=False))
    # The ranges go in as per-tensor overrides (a calibration cache file is newer than the ORT we
    # support); quantize_static still runs its own MinMax pass, so it gets one blank image: every
    # range it finds is overridden.
    overrides = {name: [{"rmin": np.float32(low), "rmax": np.float32(high)}]
                 for name, (low, high) in calibration.ranges.items()}
    probe = np.zeros((1, *calibration.image_shape), np.uint8)
    import logging

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)   # ORT logs a pre-processing hint on every call
    try:
        quantization.quantize_static(
            str(fp32_path), str(out_path), _Reader(probe, calibration.input_name),
            quant_format=quantization.QuantFormat.QDQ, per_channel=True,
            activation_type=quantization.QuantType.QInt8 if symmetric else quantization.QuantType.QUInt8,
            weight_type=quantization.QuantType.QInt8, reduce_range=True,
            op_types_to_quantize=["Conv"], nodes_to_exclude=sorted(keep_float),
            calibrate_method=quantization.CalibrationMethod.MinMax,
            extra_options={"ActivationSymmetric": symmetric, "WeightSymmetric": True,
                           "TensorQuantOverrides": overrides})
    except Exception as exc:  # ORT's quantizer raises plain Exceptions from deep inside
        raise PRNError(f"INT8 quantization of {fp32_path} failed: {first_line(exc)}") from exc
    finally:
        root.setLevel(level)
    _set_precision(out_path)
    return Path(out_path)


def _check_images(images) -> None:
    if not isinstance(images, np.ndarray) or images.ndim != 4 or images.dtype != np.uint8 or len(images) == 0:
        raise PRNError(f"calibration images must be a non-empty uint8 (N, S, S, 3) array, got "
                       f"{getattr(images, 'dtype', type(images).__name__)} {getattr(images, 'shape', '')}")


def _check_activations(activations: str) -> None:
    if activations not in ("s8", "u8"):
        raise PRNError(f"activations must be s8 or u8, got {activations!r}")


def _set_precision(path) -> None:
    from prn_edge.contract.metadata import set_metadata
    from prn_edge.export.onnx_export import save_model

    onnx = require("onnx", "INT8 quantization")
    model = onnx.load(str(path))
    set_metadata(model, "precision", "int8")
    save_model(model, path)


@dataclass(frozen=True)
class Sensitivity:
    """A group's own INT8 cost: the metrics with it alone in INT8 (the rest in float) and the largest drop."""

    group: ConvGroup
    metrics: dict[str, float]
    worst_drop: float   # max over the gated metrics of (FP32 - this), in points


#: Below this on any gated metric the FP32 model is close to chance, and INT8's rounding reorders its
#: scores at random: a gate of a fraction of a point then measures noise, not quantization.
NEAR_CHANCE = 0.6


def gate_warning(labels: np.ndarray, reference: dict[str, float], gated: tuple[str, ...],
                 tolerance: float) -> str | None:
    """Why a ``tolerance``-point gate cannot mean much on this model and evaluation set, or None.

    Args:
        labels: (N,) bool, True = defective, of the evaluation images.
        reference: the FP32 metrics (fractions).
        gated: the metric names the gate checks.
        tolerance: the gate, in points.
    """
    labels = np.asarray(labels, bool)
    pairs = int(labels.sum()) * int((~labels).sum())
    if "image_auroc" in gated and pairs and 100.0 / pairs > tolerance:
        return (f"the evaluation set has {int((~labels).sum())} normal and {int(labels.sum())} defective images: "
                f"one reordered pair moves image AUROC by {100.0 / pairs:.2f} points, more than the {tolerance:g}-point "
                "gate (give --data a category with more test images)")
    # AUROC and PRO sit near 0.5 (PRO lower) at chance; AP's chance level is the defect pixels' share, so a
    # low AP is no sign of a weak model.
    weak = {k: reference[k] for k in gated if k != "ap" and reference[k] < NEAR_CHANCE}
    if weak:
        shown = ", ".join(f"{k.replace('_', ' ')} {v:.3f}" for k, v in weak.items())
        return (f"the FP32 model itself is near chance ({shown}): INT8's rounding reorders its scores at random, so "
                f"a {tolerance:g}-point gate measures noise (train it longer first)")
    return None


def worst_drop(reference: dict[str, float], metrics: dict[str, float], gated: tuple[str, ...]) -> float:
    """The largest drop in points (100 x) of any gated metric from ``reference``."""
    return max(100.0 * (reference[k] - metrics[k]) for k in gated)


@dataclass(frozen=True)
class GateOutcome:
    """The end of the INT8 search: the last trial's metrics and what was kept in float."""

    passed: bool
    metrics: dict[str, float]
    worst_drop: float
    kept: tuple[ConvGroup, ...]
    ranked: tuple[Sensitivity, ...]   # costliest first; empty when no ranking ran (passed before it, or out of time)
    all_int8_drop: float              # worst drop with every convolution in INT8
    all_int8: dict[str, float] = field(default_factory=dict)   # that trial's metrics
    stopped_by_budget: bool = False   # the search ran out of time before the gate held


def search_keep_float(groups: list[ConvGroup], trial: Callable[[set[str]], dict[str, float]],
                      reference: dict[str, float], gated: tuple[str, ...], tolerance: float,
                      progress: Callable[[str], None] = print, *, prefix_limit: int = 2,
                      budget_s: float | None = None, clock: Callable[[], float] = time.monotonic) -> GateOutcome:
    """Find which parts of the network to keep in float so that INT8 holds the gate.

    1. All convolutions in INT8.
    2. The input side first: keep the first 1 .. ``prefix_limit`` groups (graph order) in
       float. Quantization error made early passes through everything after it, and on the
       models measured here (bottle, the demo) the stem and the early encoder blocks were the
       whole cost; this costs ``prefix_limit`` trials instead of one per group. The export sets
       it with :func:`input_side_limit`: through the groups that compute the matched features.
    3. Otherwise rank every group by its own cost: the drop with that group alone in INT8 and
       everything else in float (one trial each), and keep the costliest in float, one more at a
       time. Ranking by what keeping one group in float recovers, with the rest in INT8, misses
       a part whose error only shows once the others are clean: on the 20-minute bottle model (U8,
       all four metrics gated) the decoder cost 2.4 points of AP in INT8 and ranked last that way,
       so the search kept nine of ten parts in float and still failed; ranked by own cost it
       passed with four (stem, early blocks, decoder stages and head; benchmarks/results/cpu.md).

    Stops at the first trial within ``tolerance`` points, or with all groups but one in float
    (beyond that the model is not INT8 any more), or when ``budget_s`` seconds have passed (no
    new trial starts after that; the first, all-INT8 one always runs): then ``passed`` is False
    and ``kept`` names the groups that cost the accuracy, in order of how much (``ranked`` has
    every group ranked so far; stopped by the budget, ``kept`` is what the last trial, whose
    metrics these are, kept in float). Each progress line says the trial's number and the time spent.
    A set of float groups measured once (an input-side trial is often one of the later ones) is not
    quantized and scored again.
    """
    start = clock()
    trials = 0
    last_kept: list[ConvGroup] = []   # what the trial behind ``metrics`` kept in float
    measured: dict[frozenset[str], dict[str, float]] = {}

    def timed(keep: set[str]) -> dict[str, float]:
        nonlocal trials
        key = frozenset(keep)
        if key not in measured:
            trials += 1
            measured[key] = trial(keep)
        return measured[key]

    def spent() -> str:
        used = (clock() - start) / 60
        return f"{used:.1f} of {budget_s / 60:g} min" if budget_s is not None else f"{used:.1f} min"

    def out_of_time() -> bool:
        return budget_s is not None and clock() - start >= budget_s

    metrics = all_int8 = timed(set())
    drop = first = worst_drop(reference, metrics, gated)
    if drop <= tolerance:
        return GateOutcome(True, metrics, drop, (), (), first, all_int8)

    def attempt(kept: list[ConvGroup]) -> tuple[dict[str, float], float]:
        nonlocal last_kept
        keep = {n for g in kept for n in g.nodes}
        again = " (measured before)" if frozenset(keep) in measured else ""
        progress(f"INT8 trial {trials + (0 if again else 1)}{again} ({spent()}): "
                 f"{', '.join(g.name for g in kept)} in float")
        result = timed(keep)
        last_kept = list(kept)
        return result, worst_drop(reference, result, gated)

    def stopped(ranked) -> GateOutcome:
        progress(f"INT8 search stopped: its budget of {budget_s / 60:g} min was spent after {trials} trials, "
                 f"{drop:.2f} points still lost")
        ranked = sorted(ranked, key=lambda r: r.worst_drop, reverse=True)
        return GateOutcome(False, metrics, drop, tuple(last_kept), tuple(ranked), first, all_int8, True)

    progress(f"INT8 costs {drop:.2f} points (> {tolerance}): trying the input side in float first")
    for count in range(1, min(prefix_limit, len(groups) - 1) + 1):
        if out_of_time():
            return stopped(())
        metrics, drop = attempt(groups[:count])
        if drop <= tolerance:
            return GateOutcome(True, metrics, drop, tuple(groups[:count]), (), first, all_int8)

    progress(f"still {drop:.2f} points: ranking the network's {len(groups)} parts by their own cost "
             f"(each alone in INT8, one trial each; then the costliest kept in float, one more at a time)")
    every = {n for g in groups for n in g.nodes}
    ranked: list[Sensitivity] = []
    for i, group in enumerate(groups, 1):
        if out_of_time():
            return stopped(ranked)
        progress(f"INT8 sensitivity {i}/{len(groups)} ({spent()}): {group.name} alone in INT8")
        result = timed(every - set(group.nodes))
        ranked.append(Sensitivity(group, result, worst_drop(reference, result, gated)))
    ranked.sort(key=lambda r: r.worst_drop, reverse=True)
    kept: list[ConvGroup] = []
    for s in ranked[:len(ranked) - 1]:       # never every group: that would not be INT8
        if out_of_time():
            return stopped(ranked)
        kept.append(s.group)
        metrics, drop = attempt(kept)
        if drop <= tolerance:
            break
    return GateOutcome(drop <= tolerance, metrics, drop, tuple(kept), tuple(ranked), first, all_int8)
