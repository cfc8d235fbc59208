"""Architecture summary: stage shapes, parameter counts, FLOPs and prototype bank size."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch.utils.flop_counter import FlopCounterMode

from prn_edge.config import PRNConfig

# Top-level modules of PRN, in pipeline order, with the names a reader knows them by.
_PARTS = {
    "encoder": "encoder (frozen)",
    "banks": "nearest prototype + residual",
    "fuse_features": "MF(F)",
    "fuse_residuals": "MF(R)",
    "attention": "MSA stacks",
    "fuse_attention": "MF after MSA",
    "decoder": "decoder",
}


@dataclass
class ModelSummary:
    config: PRNConfig
    k: int
    batch: int
    stage_shapes: dict[str, tuple[int, ...]]
    trainable_params: int
    frozen_params: int
    gflops_total: float
    gflops_by_part: dict[str, float]
    prototype_bytes_fp32: int
    prototype_values_per_image: list[int] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            "config": self.config.preset, "backbone": self.config.backbone, "k": self.k, "batch": self.batch,
            "image_size": self.config.image_size,
            "stage_shapes": {k: list(v) for k, v in self.stage_shapes.items()},
            "trainable_params": self.trainable_params, "frozen_params": self.frozen_params,
            "gflops_total": round(self.gflops_total, 3),
            "gflops_by_part": {k: round(v, 3) for k, v in self.gflops_by_part.items()},
            "prototype_bytes_fp32": self.prototype_bytes_fp32,
            "prototype_values_per_image": self.prototype_values_per_image,
        }

    def format(self) -> str:
        cfg = self.config
        lines = [f"PRN summary: config {cfg.preset}, backbone {cfg.backbone}, input {self.batch}x3x"
                 f"{cfg.image_size}x{cfg.image_size}, K={self.k} prototypes per scale, "
                 f"{cfg.msa_layers} MSA layer(s) per scale ({cfg.msa_block} blocks), residual {cfg.residual}",
                 "", f"{'stage':<28} shape (C x H x W)"]
        for name, shape in self.stage_shapes.items():
            lines.append(f"{name:<28} {' x '.join(map(str, shape[1:])) if len(shape) > 1 else 'one value per image'}")
        lines += ["", f"parameters: trainable {self.trainable_params:,} ({self.trainable_params / 1e6:.2f} M), "
                      f"frozen encoder {self.frozen_params:,} ({self.frozen_params / 1e6:.2f} M)",
                  f"GFLOPs per image at {cfg.image_size}x{cfg.image_size}: {self.gflops_total:.2f} "
                  "(convolutions and matrix products; one multiply-add = 2 FLOPs)"]
        for part, value in self.gflops_by_part.items():
            lines.append(f"  {part:<30} {value:8.2f}")
        mb = self.prototype_bytes_fp32 / 1e6
        dims = " + ".join(f"{d:,}" for d in self.prototype_values_per_image)
        lines.append(f"prototype banks: K={self.k} x ({dims}) values = {mb:.1f} MB in FP32, {mb / 2:.1f} MB in FP16")
        return "\n".join(lines)


@torch.no_grad()
def summarize(model, k: int, batch: int = 1) -> ModelSummary:
    """Run ``model`` (a PRN) once on random input and measure it.

    The prototype banks are filled with ``k`` random prototypes if they hold a different
    number: shapes, FLOPs and bytes do not depend on their values.
    """
    model.eval()
    size = model.config.image_size
    if model.num_prototypes != k:
        for bank in model.banks:
            bank.set(torch.rand(k, bank.dim))
    images = torch.rand(batch, 3, size, size)
    stages = model.stages(images)
    counter = FlopCounterMode(display=False, depth=2)
    with counter:
        model(images)
    by_module = {name: sum(ops.values()) for name, ops in counter.get_flop_counts().items()}

    def part_flops(name: str) -> int:
        # A ModuleList is never called itself: add up its called children instead.
        if f"PRN.{name}" in by_module:
            return by_module[f"PRN.{name}"]
        return sum(v for k, v in by_module.items() if k.rsplit(".", 1)[0] == f"PRN.{name}")

    gflops_by_part = {label: part_flops(name) / 1e9 / batch for name, label in _PARTS.items()}
    counts = model.parameter_counts()
    return ModelSummary(
        config=model.config, k=k, batch=batch,
        stage_shapes={name: tuple(t.shape) for name, t in stages.items()},
        trainable_params=counts["trainable"], frozen_params=counts["frozen"],
        gflops_total=counter.get_total_flops() / 1e9 / batch,
        gflops_by_part=gflops_by_part,
        prototype_bytes_fp32=model.prototype_bytes(k),
        prototype_values_per_image=[bank.dim for bank in model.banks])
