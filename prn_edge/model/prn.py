"""The Prototypical Residual Network: the reference semantics every backend is tested against."""
from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from prn_edge.config import PRNConfig
from prn_edge.errors import PRNError
from prn_edge.model.attention import MSALayer
from prn_edge.model.backbones import Backbone, build_backbone
from prn_edge.model.decoder import Decoder, top_k_score
from prn_edge.model.fusion import MultiScaleFusion
from prn_edge.model.prototypes import PrototypeBank, feature_vectors, kmeans
from prn_edge.model.smoothing import MapSmoothing

log = logging.getLogger(__name__)

NUM_SCALES = 3  # prototype / attention scales (strides 4, 8, 16); stride 32 feeds the decoder
# Patch matching clusters feature vectors: 200 images give 800k at stride 4. A seeded sample of
# this many keeps k-means to seconds per iteration; 1024 centres see ~100 points each.
PATCH_KMEANS_POINTS = 131072
PATCH_KMEANS_ITERATIONS = 30   # Lloyd on 100k+ points moves little after this; each pass is a full GEMM


def _subsample(points: Tensor, limit: int, seed: int) -> Tensor:
    if points.shape[0] <= limit:
        return points
    order = torch.randperm(points.shape[0], generator=torch.Generator().manual_seed(seed))
    return points[order[:limit]]


class ResidualPrior(nn.Module):
    """``gain * (E - bias)``: the residuals' own evidence, added to the decoder's logits.

    ``E`` is the per-position residual magnitude (mean over channels: |F - P| for ``abs``,
    (F - P)^2 for ``square``), each scale divided by its mean on the normal training images,
    the scales of ``scales`` (1-based, ``PRNConfig.prior_scales``) averaged at image size. :meth:`calibrate` sets the means, ``bias`` (the
    typical peak of ``E`` on a normal image) and ``gain`` (normal positions start near logit -4)
    from the training images; with the decoder's last convolution at zero, an untrained PRN
    then ranks positions by their distance to the prototypes, as a nearest-neighbour detector.
    """

    def __init__(self, size: int, scales: tuple[int, ...] = (1, 2, 3)) -> None:
        super().__init__()
        self.size = size
        self.scales = tuple(scales)
        self.register_buffer("scale_means", torch.ones(NUM_SCALES))
        self.gain = nn.Parameter(torch.tensor(1.0))
        self.bias = nn.Parameter(torch.tensor(0.0))

    def evidence(self, residuals: list[Tensor]) -> Tensor:
        """(B, 1, S, S) evidence of the residuals (B, C_j, H_j, W_j) of the three scales."""
        maps = [F.interpolate(residuals[s - 1].mean(dim=1, keepdim=True) / self.scale_means[s - 1],
                              size=(self.size, self.size), mode="bilinear", align_corners=False)
                for s in self.scales]
        return sum(maps) / len(maps)

    def forward(self, residuals: list[Tensor]) -> Tensor:
        return self.gain * (self.evidence(residuals) - self.bias)

    @torch.no_grad()
    def calibrate(self, residual_batches: list[list[Tensor]]) -> dict[str, float]:
        """Set means, bias and gain from the residuals of the normal training images."""
        self.scale_means.fill_(1.0)
        channel_means = [torch.cat([r[j].mean(dim=1) for r in residual_batches]) for j in range(NUM_SCALES)]
        self.scale_means.copy_(torch.stack([m.mean() for m in channel_means]).clamp_min(1e-12))
        evidence = torch.cat([self.evidence(r) for r in residual_batches])       # (N, 1, S, S)
        peak = float(evidence.flatten(1).amax(dim=1).mean())
        typical = float(evidence.mean())
        self.bias.fill_(peak)
        self.gain.fill_(4.0 / max(peak - typical, 1e-6))
        return {"peak": peak, "mean": typical, "gain": float(self.gain)}


class PRNOutput(NamedTuple):
    logits: Tensor        # (B, 1, S, S) the loss's logits (the map's too unless config.decoder_map_weight < 1)
    anomaly_map: Tensor   # (B, 1, S, S) probabilities in [0, 1]
    score: Tensor         # (B,) mean of the top-K map values


class PRN(nn.Module):
    """PRN (Zhang et al., CVPR 2023) as fixed by docs/model.md.

    ``forward`` takes RGB images in [0, 1], (B, 3, S, S) with S = ``config.image_size``;
    the backbone normalises them itself. The encoder is frozen and always in eval mode;
    the prototype banks are buffers filled by :meth:`build_prototypes` (or a checkpoint).

    Args:
        config: architecture.
        backbone: a built encoder (else built from ``config.backbone`` and ``weights``).
        weights: backbone weights: None (default pretrained source), a path, or "random".
    """

    def __init__(self, config: PRNConfig, backbone: Backbone | None = None, weights=None):
        super().__init__()
        self.config = config
        self.encoder = backbone if backbone is not None else build_backbone(config.backbone, weights)
        if self.encoder.name != config.backbone:
            raise PRNError(f"backbone {self.encoder.name!r} does not match config.backbone {config.backbone!r}")
        channels = tuple(self.encoder.channels[:NUM_SCALES])       # C_1..C_3
        sides = [config.image_size // s for s in self.encoder.strides[:NUM_SCALES]]  # 64, 32, 16
        self.banks = nn.ModuleList(PrototypeBank(c, h, h, match=config.prototype_match)
                                   for c, h in zip(channels, sides))
        self.fuse_features = MultiScaleFusion(channels)
        self.fuse_residuals = self.fuse_features if config.share_fusion_weights else MultiScaleFusion(channels)
        cat_channels = tuple(2 * c for c in channels)               # Cat_j = [MF(F)_j, MF(R)_j]
        self.attention = nn.ModuleList(
            nn.Sequential(*(MSALayer(c, block=config.msa_block) for _ in range(config.msa_layers)))
            for c in cat_channels)
        self.fuse_attention = MultiScaleFusion(cat_channels)        # gives the skips T*_j
        self.decoder = Decoder(
            bottom_channels=self.encoder.channels[NUM_SCALES],
            skip_channels=cat_channels,
            stage_channels=config.decoder_channels or channels,
            head_channels=config.head_channels,
            full_resolution=config.decoder_resolution == config.image_size)
        self.prior = ResidualPrior(config.image_size, config.prior_scales) if config.residual_prior else None
        if self.prior is not None:       # the untrained model is the prior alone (ControlNet-style zero conv)
            nn.init.zeros_(self.decoder.head[-1].weight)
            nn.init.zeros_(self.decoder.head[-1].bias)
        self.smoothing = MapSmoothing(config.map_smoothing) if config.map_smoothing > 0 else None

    # -- prototypes ---------------------------------------------------------------------
    @property
    def num_prototypes(self) -> int:
        return self.banks[0].num_prototypes

    @torch.no_grad()
    def encode(self, images: Tensor) -> list[Tensor]:
        """Frozen encoder taps [F_1, F_2, F_3, F_4] of images in [0, 1]."""
        self._check_input(images)
        return self.encoder(images)

    @torch.no_grad()
    def build_prototypes(self, batches: Iterable[Tensor], seed: int = 0, k: int | None = None) -> dict:
        """Cluster the normal training images' features into K prototypes per scale.

        Args:
            batches: (B, 3, S, S) batches of un-augmented normal training images in [0, 1].
            seed: k-means seed.
            k: number of prototypes (default: ``config.num_prototypes(N)``).

        Returns:
            Per-scale k-means statistics (K, N, inertia, iterations, converged).
        """
        patch = self.config.prototype_match == "patch"
        features: list[list[Tensor]] = [[] for _ in range(NUM_SCALES)]
        n = 0
        kept: list[list[Tensor]] = []    # the matched features, for the prior's calibration (no second encoding)
        for batch in batches:
            batch = batch.to(self._device())
            taps = [self.pool(t) for t in self.encode(batch)[:NUM_SCALES]]
            n += batch.shape[0]
            if self.prior is not None:
                kept.append(taps)
            for j in range(NUM_SCALES):
                features[j].append((feature_vectors(taps[j]) if patch else taps[j].flatten(1)).cpu())
        if n == 0:
            raise PRNError("no normal images given to build the prototypes from")
        k = k or self.config.num_prototypes(n)
        stats = {"num_images": n, "k": k, "match": self.config.prototype_match, "scales": []}
        for j, bank in enumerate(self.banks):
            points = torch.cat(features[j])
            iterations = self.config.kmeans_iterations
            if patch:
                points = _subsample(points, PATCH_KMEANS_POINTS, seed)
                k = min(k, points.shape[0])
                iterations = min(iterations, PATCH_KMEANS_ITERATIONS)
            result = kmeans(points, k, max_iterations=iterations, seed=seed)
            bank.set(result.centers)
            stats["scales"].append({"inertia": result.inertia, "iterations": result.iterations,
                                    "converged": result.converged})
            log.info("scale %d: K=%d from N=%d, inertia %.4g after %d iterations%s", j + 1, k, n,
                     result.inertia, result.iterations, "" if result.converged else " (not converged)")
        if self.prior is not None:
            residuals = [[bank(f, self.config.residual).mean(dim=1, keepdim=True)   # all the prior reads
                          for bank, f in zip(self.banks, taps)] for taps in kept]
            stats["prior"] = self.prior.calibrate(residuals)
        return stats

    # -- forward ------------------------------------------------------------------------
    def forward(self, images: Tensor) -> PRNOutput:
        return self._forward(images, record=None)

    def stages(self, images: Tensor) -> dict[str, Tensor]:
        """Every intermediate tensor by stage name, for summaries and tests."""
        record: dict[str, Tensor] = {}
        out = self._forward(images, record)
        record.update(logits=out.logits, anomaly_map=out.anomaly_map, score=out.score)
        return record

    def _forward(self, images: Tensor, record: dict | None) -> PRNOutput:
        taps = self.encode(images)                                           # F_1..F_4
        feats = [self.pool(f) for f in taps[:NUM_SCALES]]
        residuals = [bank(f, self.config.residual) for bank, f in zip(self.banks, feats)]
        fused_f = self.fuse_features(feats)
        fused_r = self.fuse_residuals(residuals)
        cats = [torch.cat((a, b), dim=1) for a, b in zip(fused_f, fused_r)]  # (B, 2C_j, H_j, W_j)
        attended = [stack(x) for stack, x in zip(self.attention, cats)]
        skips = self.fuse_attention(attended)                                # T*_j
        if record is not None:
            for j in range(NUM_SCALES):
                s = j + 1
                record.update({f"encoder F{s}": feats[j], f"residual R{s}": residuals[j],
                               f"MF(F){s}": fused_f[j], f"MF(R){s}": fused_r[j], f"Cat{s}": cats[j],
                               f"MSA{s}": attended[j], f"skip T*{s}": skips[j]})
            record["encoder F4"] = taps[NUM_SCALES]
        logits = self.decoder(taps[NUM_SCALES], skips, record)
        map_logits = None
        share = self.config.score_prior_share
        if self.prior is not None:
            prior = self.prior(residuals)
            if record is not None:
                record["prior"] = prior
            weight = self.config.decoder_map_weight
            if weight != 1:     # the map takes the decoder's correction at ``weight``; the loss reads it whole
                map_logits = prior + weight * logits
            logits = logits + prior
            if share:           # channel 1: the prior's own map, for the image score only
                map_logits = torch.cat((logits if map_logits is None else map_logits, prior), dim=1)
        # One sigmoid and one blur over every channel: the export keeps exactly that tail in float.
        maps = torch.sigmoid(logits if map_logits is None else map_logits)
        if self.smoothing is not None:      # after the sigmoid: a blur of probabilities, as PatchCore blurs distances
            maps = self.smoothing(maps)
        if not share:
            return PRNOutput(logits, maps, top_k_score(maps, self.config.score_top_k))
        tops = top_k_score(maps, self.config.score_top_k)                    # (B, 2): the map's, the prior's
        score = (1 - share) * tops[:, 0] + share * tops[:, 1]
        return PRNOutput(logits, maps[:, :1], score)

    def pool(self, features: Tensor) -> Tensor:
        """The features as matched: each averaged over its ``match_pooling`` neighbourhood (borders as
        ``match_pooling_border`` says), or as they are."""
        side = self.config.match_pooling
        if side == 1:
            return features
        return F.avg_pool2d(features, side, stride=1, padding=side // 2,
                            count_include_pad=self.config.match_pooling_border == "zeros")

    def _check_input(self, images: Tensor) -> None:
        size = self.config.image_size
        if images.dim() != 4 or images.shape[1] != 3 or images.shape[-2:] != (size, size):
            raise PRNError(f"PRN expects (B, 3, {size}, {size}) RGB images in [0, 1], "
                           f"got {tuple(images.shape)}")

    def _device(self) -> torch.device:
        return next(self.parameters()).device

    # -- parameter bookkeeping ------------------------------------------------------------
    def parameter_counts(self) -> dict[str, int]:
        """Trainable and frozen parameter counts (shared modules counted once)."""
        trainable = sum(p.numel() for p in self.parameters() if p.requires_grad)
        frozen = sum(p.numel() for p in self.parameters() if not p.requires_grad)
        return {"trainable": trainable, "frozen": frozen}

    def prototype_bytes(self, k: int | None = None, bytes_per_value: int = 4) -> int:
        """Bytes of the three prototype banks for ``k`` prototypes (default: the current K)."""
        k = self.num_prototypes if k is None else k
        return sum(k * bank.dim * bytes_per_value for bank in self.banks)
