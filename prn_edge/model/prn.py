"""The Prototypical Residual Network: the reference semantics every backend is tested against."""
from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import NamedTuple

import torch
from torch import Tensor, nn

from prn_edge.config import PRNConfig
from prn_edge.errors import PRNError
from prn_edge.model.attention import MSALayer
from prn_edge.model.backbones import Backbone, build_backbone
from prn_edge.model.decoder import Decoder, top_k_score
from prn_edge.model.fusion import MultiScaleFusion
from prn_edge.model.prototypes import PrototypeBank, kmeans

log = logging.getLogger(__name__)

NUM_SCALES = 3  # prototype / attention scales (strides 4, 8, 16); stride 32 feeds the decoder


class PRNOutput(NamedTuple):
    logits: Tensor        # (B, 1, S, S) before the sigmoid (the loss works on logits)
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
        self.banks = nn.ModuleList(PrototypeBank(c, h, h) for c, h in zip(channels, sides))
        self.fuse_features = MultiScaleFusion(channels)
        self.fuse_residuals = self.fuse_features if config.share_fusion_weights else MultiScaleFusion(channels)
        cat_channels = tuple(2 * c for c in channels)               # Cat_j = [MF(F)_j, MF(R)_j]
        self.attention = nn.ModuleList(
            nn.Sequential(*(MSALayer(c) for _ in range(config.msa_layers))) for c in cat_channels)
        self.fuse_attention = MultiScaleFusion(cat_channels)        # gives the skips T*_j
        self.decoder = Decoder(
            bottom_channels=self.encoder.channels[NUM_SCALES],
            skip_channels=cat_channels,
            stage_channels=config.decoder_channels or channels,
            head_channels=config.head_channels,
            full_resolution=config.decoder_resolution == config.image_size)

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
        features: list[list[Tensor]] = [[] for _ in range(NUM_SCALES)]
        for batch in batches:
            taps = self.encode(batch.to(self._device()))
            for j in range(NUM_SCALES):
                features[j].append(taps[j].flatten(1).cpu())
        n = sum(f.shape[0] for f in features[0])
        if n == 0:
            raise PRNError("no normal images given to build the prototypes from")
        k = k or self.config.num_prototypes(n)
        stats = {"num_images": n, "k": k, "scales": []}
        for j, bank in enumerate(self.banks):
            result = kmeans(torch.cat(features[j]), k, max_iterations=self.config.kmeans_iterations, seed=seed)
            bank.set(result.centers)
            stats["scales"].append({"inertia": result.inertia, "iterations": result.iterations,
                                    "converged": result.converged})
            log.info("scale %d: K=%d from N=%d, inertia %.4g after %d iterations%s", j + 1, k, n,
                     result.inertia, result.iterations, "" if result.converged else " (not converged)")
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
        feats = taps[:NUM_SCALES]
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
        anomaly_map = torch.sigmoid(logits)
        score = top_k_score(anomaly_map, self.config.score_top_k)
        return PRNOutput(logits, anomaly_map, score)

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
