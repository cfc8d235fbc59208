"""Model configuration: one dataclass, two presets (``paper`` and ``edge``).

Plain data only (str, int, float, bool, tuples), so it round-trips through a
``weights_only`` checkpoint and an ONNX metadata string. No torch import here.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from prn_edge.errors import PRNError

BACKBONE_NAMES = ("resnet18", "efficientnet_lite0")
RESIDUAL_MODES = ("abs", "square")
PROTOTYPE_MATCHES = ("image", "patch")
MSA_BLOCKS = ("conv3x3", "separable")   # the first convolution of an MSA residual block
POOLING_BORDERS = ("zeros", "inside")


@dataclass(frozen=True)
class PRNConfig:
    """Every architectural choice of docs/model.md, with the paper's values as defaults.

    ``prn-train`` sets the matching and scoring fields from :data:`prn_edge.defaults.MODEL` on top of
    a preset unless told otherwise (``--defaults paper`` keeps these values).

    Attributes:
        backbone: frozen ImageNet encoder, one of ``BACKBONE_NAMES``.
        image_size: square input side in pixels (the paper and all metrics use 256).
        prototype_ratio: K = max(1, round(ratio * number of normal training images)).
        kmeans_iterations: k-means iteration cap.
        residual: ``abs`` (|F - P|, the paper's wording) or ``square`` ((F - P)^2, public versions).
        prototype_match: ``image`` (the paper: each image takes the nearest of K prototype
            *images*, compared position by position) or ``patch`` (each position takes the
            nearest of ``patch_prototypes`` prototype *feature vectors*, wherever they came from:
            tolerant to shifted, rotated and textured parts).
        patch_prototypes: prototypes per scale with ``prototype_match="patch"`` (k-means
            centres of the training images' feature vectors).
        match_pooling: side of the neighbourhood each feature is averaged over before it is
            matched (1: none; 3: each position with its 8 neighbours, PatchCore's "locally aware"
            features), for the prototypes and at inference alike.
        match_pooling_border: how ``match_pooling`` averages positions at the map's border.
            ``zeros`` (PatchCore's ``AvgPool2d``): the map is padded with zeros, so a border
            feature shrinks towards zero (by 1/3 on an edge, 5/9 in a corner). That damps the
            backbone's own zero-padding artefacts, which otherwise make the border the most
            "anomalous" part of every normal image: on magnetic tile it lifts the untrained prior's
            image AUROC from 71 to 86 (benchmarks/results/prototype_diagnosis.md). ``inside``: the mean
            of the neighbours inside the map (what checkpoints without this field were trained with).
        prior_scales: the scales (1 = stride 4, 2 = stride 8, 3 = stride 16) whose residuals the
            residual prior averages. The stride-4 residuals are fine-grained but noisy (24 channels
            of early features): in the prior they cost image AUROC on textures and unaligned parts
            (magnetic tile 86 with them, 88 without), but they carry the finest defects (the demo's
            bricks: AP 57 with them, 44 without).
        residual_prior: add the residuals' own evidence to the logits: ``gain * (E - bias)``,
            E the per-position residual magnitude (each scale divided by its mean on the normal
            training images, the scales averaged), gain and bias learnt and initialised from the
            training images, the decoder's last convolution initialised to zero. An untrained
            model then scores like a nearest-prototype detector; training only has to improve it.
        decoder_map_weight: with the residual prior, the anomaly map is
            ``sigmoid(prior + w * decoder)``: the decoder's learnt correction enters the map at
            ``w`` of its trained strength (the loss still reads ``prior + decoder``). 1 = as trained
            (the paper, and what checkpoints without this field were calibrated with). Learnt from ten
            seen anomalies and synthesized ones, the correction overshoots on defects unlike them: on
            the demo's bricks the trained map lost 4.3 points of PRO to its own prior alone. At 0.75 no
            metric of any trained 20-minute model fell by more than 0.8 points and bricks rose by 5
            points of PRO (benchmarks/results/decoder_map_weight.md). W was chosen on those test sets;
            on bottle-rotated, which it was not chosen on, a run trained with it scored 100/99.1/96.4/86.8
            against PatchCore's 100/98.4/94.5/74.9 (decoder_map_weight_trained.md). Needs ``residual_prior``.
        share_fusion_weights: one MF module for features and residuals instead of two.
        msa_layers: multi-size attention layers per scale (paper 3, edge 1).
        msa_block: the first convolution of each MSA layer's residual block (4c -> c channels):
            ``conv3x3`` (the paper) or ``separable`` (depthwise 3x3 then pointwise 1x1, about 1/8
            of the multiply-adds; the edge model's heaviest convolutions on a CPU: 5.6 -> 3.7 GFLOPs).
            Not a default: with the measured defaults at 20 minutes (seed 0) it cost bottle 1.3 points
            of PRO and 3.3 of AP and magnetic tile 1.3 of image AUROC and 0.9 of AP
            (benchmarks/results/match_ablation_20min.md against the conv3x3 run blurred in map_smoothing.md),
            beyond the 0.5-point gate of issue 16; one seed, and bottle's seed-to-seed spread is wider.
        decoder_resolution: side at which the decoder predicts logits. ``image_size`` is the
            paper's decoder (x4 upsampling, then two convolutions at full size); a smaller value
            (edge: 64) predicts there and upsamples the logits bilinearly.
        decoder_channels: channels of the decoder stage at scales 3, 2, 1 (None: the
            encoder's tap channels, as in a U-Net that mirrors its encoder).
        head_channels: channels of the last conv3x3-BN-ReLU before the 1-channel logits.
        map_smoothing: sigma in pixels (at ``image_size``) of a Gaussian blur of the anomaly map,
            before the image score is taken from it; 0 = none (the paper, and what checkpoints
            without this field were calibrated with). Sigma 4 is PatchCore's smoothing: on the
            trained 20-minute models it raised all four metrics on bottle and magnetic tile
            (benchmarks/results/map_smoothing.md), while sigma 8 started to cost bottle's PRO.
            The loss still reads the unsmoothed logits.
        score_top_k: image score = mean of the top-K anomaly map values.
        score_prior_share: with the residual prior, the image score is
            ``(1 - s) * top-K(map) + s * top-K(prior's own map)``, the prior's map being
            ``sigmoid(prior)`` blurred as the anomaly map is; the map itself is unchanged. 0 = the
            map's score alone (what checkpoints without this field were calibrated with). The decoder's
            correction sharpens the map but, learnt from ten seen anomalies, also lifts a few normal
            images of unaligned parts: with it the 20-minute models lost image AUROC to PatchCore by
            0.1 to 0.4 on bottle-unaligned, -darker and -shifted, where their prior alone scored 100,
            while on magnetic tile the prior alone lost 3.4 points. Half and half kept every set at
            or above PatchCore (benchmarks/results/score_prior_share.md). Needs ``residual_prior``.
    """

    backbone: str = "resnet18"
    image_size: int = 256
    prototype_ratio: float = 0.1
    kmeans_iterations: int = 300
    residual: str = "abs"
    prototype_match: str = "image"
    patch_prototypes: int = 1024
    match_pooling: int = 1
    match_pooling_border: str = "zeros"
    residual_prior: bool = False
    decoder_map_weight: float = 1.0
    prior_scales: tuple[int, ...] = (1, 2, 3)
    share_fusion_weights: bool = False
    msa_layers: int = 3
    msa_block: str = "conv3x3"
    decoder_resolution: int = 256
    decoder_channels: tuple[int, int, int] | None = None
    head_channels: int = 32
    map_smoothing: float = 0.0
    score_top_k: int = 100
    score_prior_share: float = 0.0
    preset: str = field(default="custom", compare=False)

    def __post_init__(self) -> None:
        # Tuples arrive as lists from JSON/ONNX metadata; keep the dataclass hashable.
        if isinstance(self.decoder_channels, list):
            object.__setattr__(self, "decoder_channels", tuple(self.decoder_channels))
        if isinstance(self.prior_scales, list):
            object.__setattr__(self, "prior_scales", tuple(self.prior_scales))
        self.validate()

    def validate(self) -> None:
        """Raise :class:`PRNError` naming the first invalid field."""
        if self.backbone not in BACKBONE_NAMES:
            raise PRNError(f"unknown backbone {self.backbone!r}: choose one of {', '.join(BACKBONE_NAMES)}")
        if self.residual not in RESIDUAL_MODES:
            raise PRNError(f"unknown residual {self.residual!r}: choose one of {', '.join(RESIDUAL_MODES)}")
        # Four heads with patch sides H, H/2, H/4, H/8 at scale 3 (H = size/16) need size % 128 == 0.
        if self.image_size < 128 or self.image_size % 128:
            raise PRNError(f"image_size must be a multiple of 128 (got {self.image_size}): "
                           "the smallest attention patch at stride 16 is image_size/128 pixels")
        if self.prototype_match not in PROTOTYPE_MATCHES:
            raise PRNError(f"unknown prototype_match {self.prototype_match!r}: choose one of "
                           f"{', '.join(PROTOTYPE_MATCHES)}")
        if self.match_pooling < 1 or self.match_pooling % 2 == 0:
            raise PRNError(f"match_pooling must be an odd side >= 1, got {self.match_pooling}")
        if self.match_pooling_border not in POOLING_BORDERS:
            raise PRNError(f"unknown match_pooling_border {self.match_pooling_border!r}: choose one of "
                           f"{', '.join(POOLING_BORDERS)}")
        scales = self.prior_scales
        if (not isinstance(scales, tuple) or not scales or any(s not in (1, 2, 3) for s in scales)
                or tuple(sorted(set(scales))) != scales):
            raise PRNError(f"prior_scales must be distinct scales of 1, 2, 3 in increasing order, got {scales}")
        if not 0 < self.decoder_map_weight <= 1:
            raise PRNError(f"decoder_map_weight must be in (0, 1], got {self.decoder_map_weight}")
        if self.decoder_map_weight != 1 and not self.residual_prior:
            raise PRNError(f"decoder_map_weight {self.decoder_map_weight:g} weighs the decoder against the "
                           "residual prior: it needs residual_prior (or a weight of 1)")
        if self.patch_prototypes < 1:
            raise PRNError(f"patch_prototypes must be >= 1, got {self.patch_prototypes}")
        if not 0 < self.prototype_ratio <= 1:
            raise PRNError(f"prototype_ratio must be in (0, 1], got {self.prototype_ratio}")
        if self.kmeans_iterations < 1:
            raise PRNError(f"kmeans_iterations must be >= 1, got {self.kmeans_iterations}")
        if self.msa_block not in MSA_BLOCKS:
            raise PRNError(f"unknown msa_block {self.msa_block!r}: choose one of {', '.join(MSA_BLOCKS)}")
        if self.msa_layers < 0:
            raise PRNError(f"msa_layers must be >= 0, got {self.msa_layers}")
        stride1 = self.image_size // 4
        if self.decoder_resolution not in (stride1, self.image_size):
            raise PRNError(f"decoder_resolution must be {stride1} (predict at stride 4) or "
                           f"{self.image_size} (full size), got {self.decoder_resolution}")
        if self.decoder_channels is not None and (
                len(self.decoder_channels) != 3 or min(self.decoder_channels) < 1):
            raise PRNError(f"decoder_channels must be three positive ints, got {self.decoder_channels}")
        # The blur pads by reflection, which needs the kernel's radius below the map's side.
        if not 0 <= self.map_smoothing <= self.image_size / 8:
            raise PRNError(f"map_smoothing must be a sigma in [0, {self.image_size / 8:g}] pixels "
                           f"(image_size / 8), got {self.map_smoothing}")
        if not 1 <= self.score_top_k <= self.image_size ** 2:
            raise PRNError(f"score_top_k must be in [1, {self.image_size ** 2}], got {self.score_top_k}")
        if not 0 <= self.score_prior_share <= 1:
            raise PRNError(f"score_prior_share must be in [0, 1], got {self.score_prior_share}")
        if self.score_prior_share and not self.residual_prior:
            raise PRNError(f"score_prior_share {self.score_prior_share:g} mixes the residual prior's score into "
                           "the image score: it needs residual_prior (or a share of 0)")

    def num_prototypes(self, num_normal: int) -> int:
        """K for a training set of ``num_normal`` normal images (docs/model.md, "Prototypes").

        Patch matching clusters feature vectors, not images: K is ``patch_prototypes``.
        """
        if num_normal < 1:
            raise PRNError("cannot build prototypes from zero normal images")
        if self.prototype_match == "patch":
            return self.patch_prototypes
        return max(1, round(self.prototype_ratio * num_normal))

    def replace(self, **changes: Any) -> "PRNConfig":
        """A copy with ``changes`` applied (``None`` values are ignored: they mean 'keep')."""
        changes = {k: v for k, v in changes.items() if v is not None}
        unknown = set(changes) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise PRNError(f"unknown config field(s): {', '.join(sorted(unknown))}")
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """Plain-data dict (lists for tuples), safe for weights_only checkpoints and JSON."""
        out = dataclasses.asdict(self)
        if out["decoder_channels"] is not None:
            out["decoder_channels"] = list(out["decoder_channels"])
        out["prior_scales"] = list(out["prior_scales"])
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "PRNConfig":
        """Inverse of :meth:`to_dict`; unknown keys are an error, missing keys take defaults
        (except ``match_pooling_border``: ``inside``, and ``map_smoothing``: 0, the behaviour
        before each field existed)."""
        if not isinstance(data, dict):
            raise PRNError(f"config must be a dict, got {type(data).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - names
        if unknown:
            raise PRNError(f"unknown config field(s): {', '.join(sorted(unknown))}")
        # Written before the field existed: those models averaged the neighbours inside the map.
        data = {"match_pooling_border": "inside", "map_smoothing": 0.0, **data}
        return cls(**data)


PRESETS: dict[str, PRNConfig] = {
    # docs/model.md as written: ResNet-18, three MSA layers per scale, full-size decoder.
    "paper": PRNConfig(preset="paper"),
    # Cheaper for Jetson-class devices: offline Lite0 weights, one MSA layer per scale,
    # logits predicted at stride 4 (64x64) and upsampled.
    "edge": PRNConfig(backbone="efficientnet_lite0", msa_layers=1, decoder_resolution=64, preset="edge"),
}


def get_config(preset: str = "paper", **overrides: Any) -> PRNConfig:
    """The named preset with ``overrides`` applied (``None`` overrides are ignored).

    Raises:
        PRNError: unknown preset or field, or an invalid value.
    """
    if preset not in PRESETS:
        raise PRNError(f"unknown config {preset!r}: choose one of {', '.join(PRESETS)}")
    return PRESETS[preset].replace(**overrides)
