"""The anomaly synthesizer: normal batches -> normal + EA + SA training batches (docs/model.md, "Anomaly synthesis")."""
from __future__ import annotations

import torch

from prn_edge.data.perlin import perlin_noise
from prn_edge.data.synthesis.augment import (
    _COLOUR_OP_FNS,
    _EA_OP_FNS,
    _apply_random_ops,
    _grid_shuffle,
    _warp,
    kornia,
)
from prn_edge.data.synthesis.config import (
    COLOUR_OPS,
    COLOUR_OPS_PER_SAMPLE,
    EA_OPS,
    EA_OPS_PER_SAMPLE,
    GRID_SIZES,
    KIND_EA,
    KIND_NORMAL,
    KIND_SA,
    MAX_TRIES,
    ROTATE_DEGREES,
    SHEAR_DEGREES,
    SynthesisConfig,
    SynthesizedBatch,
    batch_composition,
)
from prn_edge.data.synthesis.masks import _target_area
from prn_edge.data.synthesis.sampling import _rand, _randint, _sample_pixels, _uniform
from prn_edge.errors import DataError
from prn_edge.model.deployable import to_unit_float


class AnomalySynthesizer:
    """Turns batches of normal images into PRN training batches (docs/model.md, "Anomaly synthesis").

    Args:
        seen_images: ``(S, 3, H, W)`` float [0, 1] seen anomalous images (removed from the
            evaluation set by the caller); required when ``cfg.use_ea``.
        seen_masks: ``(S, 1, H, W)`` their defect masks (> 0.5 is defect), each non-empty.
        textures: ``(T, 3, H, W)`` DTD textures, uint8 (as :func:`load_textures` returns,
            4x smaller) or float [0, 1]; required when SA may draw a heterologous source.
        cfg: synthesis config (None: defaults).

    Raises:
        DataError: missing, empty or mis-shaped seen anomalies or textures.
    """

    def __init__(self, seen_images: torch.Tensor | None, seen_masks: torch.Tensor | None,
                 textures: torch.Tensor | None, cfg: SynthesisConfig | None = None) -> None:
        self.cfg = cfg if cfg is not None else SynthesisConfig()
        self.cfg.validate()
        ea_share, sa_share = self.cfg.fractions()
        self.seen_images = self.seen_masks = self.textures = None
        self._anchor = self._centroid = None
        if ea_share > 0:
            self._set_seen(seen_images, seen_masks)
        if sa_share > 0 and self.cfg.hea_probability > 0:
            if textures is None or textures.shape[0] == 0:
                raise DataError("no DTD textures for heterologous simulated anomalies: pass textures "
                                "(load_textures(<dtd folder>); CLI: --textures) or set "
                                "SynthesisConfig.hea_probability=0")
            if textures.dim() != 4 or textures.shape[1] != 3:
                raise DataError(f"textures must be (T, 3, H, W), got {tuple(textures.shape)}")
            self.textures = textures

    def _set_seen(self, images: torch.Tensor | None, masks: torch.Tensor | None) -> None:
        if images is None or masks is None or images.shape[0] == 0:
            raise DataError("extended anomalies need seen anomalies: pass seen_images and seen_masks "
                            "or set SynthesisConfig.use_ea=False (the 'without EA' ablation)")
        if images.dim() != 4 or images.shape[1] != 3 or tuple(masks.shape) != (
                images.shape[0], 1, *images.shape[2:]):
            raise DataError(f"seen_images must be (S, 3, H, W) and seen_masks (S, 1, H, W), got "
                            f"{tuple(images.shape)} and {tuple(masks.shape)}")
        binary = masks > 0.5
        empty = (~binary.flatten(1).any(dim=1)).nonzero().flatten().tolist()
        if empty:
            raise DataError(f"seen anomaly masks {empty} are empty: every seen anomaly needs its "
                            "defect mask (MVTec ground_truth/<type>/<stem>_mask.png)")
        self.seen_images = images.float()
        self.seen_masks = binary.float()
        # Defect centroid (the point Aug2 rotates about and moves) and, for the fallback,
        # the defect pixel nearest to it (a centroid may fall outside a ring-shaped defect).
        s, _, height, width = masks.shape
        ys = torch.arange(height, device=masks.device, dtype=torch.float32).view(1, height, 1)
        xs = torch.arange(width, device=masks.device, dtype=torch.float32).view(1, 1, width)
        m = self.seen_masks[:, 0]
        count = m.flatten(1).sum(1)
        cy = (m * ys).flatten(1).sum(1) / count
        cx = (m * xs).flatten(1).sum(1) / count
        self._centroid = torch.stack([cx, cy], dim=1)                     # (S, 2) as (x, y)
        dist = (ys - cy.view(s, 1, 1)) ** 2 + (xs - cx.view(s, 1, 1)) ** 2
        nearest = torch.where(m > 0, dist, torch.full_like(dist, float("inf"))).flatten(1).argmin(1)
        self._anchor = torch.stack([nearest % width, nearest // width], dim=1).float()  # (S, 2)

    def to(self, device: torch.device | str) -> AnomalySynthesizer:
        """Move the seen anomalies and textures to ``device`` (e.g. the training GPU); returns self."""
        for name in ("seen_images", "seen_masks", "textures", "_centroid", "_anchor"):
            value = getattr(self, name)
            if value is not None:
                setattr(self, name, value.to(device))
        return self

    # ---------------------------------------------------------------- checks

    def _check_batch(self, normal: torch.Tensor, foreground: torch.Tensor) -> None:
        if normal.dim() != 4 or normal.shape[1] != 3 or not normal.is_floating_point():
            raise DataError(f"normal images must be a float (B, 3, H, W) tensor in [0, 1], got "
                            f"{normal.dtype} {tuple(normal.shape)}")
        if tuple(foreground.shape) != (normal.shape[0], 1, *normal.shape[2:]):
            raise DataError(f"foreground must be (B, 1, H, W) = ({normal.shape[0]}, 1, "
                            f"{normal.shape[2]}, {normal.shape[3]}), got {tuple(foreground.shape)}")
        for name in ("seen_images", "textures"):
            ref = getattr(self, name)
            if ref is not None and tuple(ref.shape[-2:]) != tuple(normal.shape[-2:]):
                raise DataError(f"{name} are {ref.shape[-2]}x{ref.shape[-1]} but the batch is "
                                f"{normal.shape[2]}x{normal.shape[3]}: load them at the training size")

    def _draw_beta(self, n: int, device: torch.device, generator: torch.Generator) -> torch.Tensor:
        return _uniform(generator, (n,), 0.0, self.cfg.beta_max, device)

    # ---------------------------------------------------------------- EA

    def extended_anomaly(self, normal: torch.Tensor, foreground: torch.Tensor,
                         generator: torch.Generator, beta: torch.Tensor | None = None
                         ) -> tuple[torch.Tensor, torch.Tensor]:
        """Extended anomalies (EA): a seen defect, augmented, moved and cropped by a target area.

        Per sample: a random seen anomaly; Aug1 = two distinct random ops of ``EA_OPS`` on
        its image; Aug2 = random rotation (about the defect centroid), shear and shift
        (the centroid moves to a random pixel of the target area) of image and mask
        together, redrawn up to ``MAX_TRIES`` times until the defect overlaps the target
        area, then a deterministic pure shift that puts the defect pixel nearest its
        centroid on the target area's centre; ``M`` = binarised defect mask ∩ target area,
        ``C = M * Aug2(Aug1(image))`` and ``E = (1 - M) N + (1 - beta) C + beta (M N)``.

        Args:
            normal: ``(n, 3, H, W)`` float [0, 1] normal images N.
            foreground: ``(n, 1, H, W)`` their foreground masks (empty: whole image).
            generator: source of every random choice.
            beta: ``(n,)`` blend weights (None: drawn from U(0, beta_max)).

        Returns:
            ``(images, masks)``: ``(n, 3, H, W)`` in [0, 1] and ``(n, 1, H, W)`` non-empty {0, 1}.

        Raises:
            DataError: mis-shaped inputs, or the synthesizer has no seen anomalies.
        """
        images, masks, _ = self._extended(normal, foreground, generator, beta)
        return images, masks

    def _extended(self, normal: torch.Tensor, foreground: torch.Tensor, generator: torch.Generator,
                  beta: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if self.seen_images is None:
            raise DataError("this synthesizer has no seen anomalies (built with use_ea=False)")
        self._check_batch(normal, foreground)
        n, _, height, width = normal.shape
        device, dtype = normal.device, normal.dtype
        if beta is None:
            beta = self._draw_beta(n, device, generator)
        pick = _randint(generator, 0, self.seen_images.shape[0], (n,), self.seen_images.device)
        seen = self.seen_images[pick].to(device=device, dtype=dtype)       # (n, 3, H, W)
        seen_mask = self.seen_masks[pick].to(device=device, dtype=dtype)   # (n, 1, H, W)
        centroid = self._centroid[pick].to(device)                          # (n, 2) (x, y)
        anchor = self._anchor[pick].to(device)
        seen = _apply_random_ops(seen, EA_OPS, _EA_OP_FNS, EA_OPS_PER_SAMPLE, generator)  # Aug1
        area, area_center = _target_area(n, height, width, foreground, generator)

        moved = torch.zeros_like(seen)
        mask = torch.zeros((n, 1, height, width), dtype=torch.bool, device=device)
        pending = torch.arange(n, device=device)
        for _ in range(MAX_TRIES):                                          # Aug2, redrawn
            k = pending.numel()
            angle = _uniform(generator, (k,), -ROTATE_DEGREES, ROTATE_DEGREES, device)
            shear = _uniform(generator, (k, 2), -SHEAR_DEGREES, SHEAR_DEGREES, device).deg2rad()
            dest = _sample_pixels(area[pending].flatten(1).float(), _rand(generator, (k,), device))
            dest_xy = torch.stack([dest % width, dest // width], dim=1).float()
            matrix = kornia.geometry.transform.get_affine_matrix2d(
                dest_xy - centroid[pending], centroid[pending], torch.ones((k, 2), device=device),
                angle, shear[:, 0], shear[:, 1])
            img_w, mask_w = _warp(seen[pending], seen_mask[pending], matrix)
            crop = (mask_w > 0.5) & area[pending]
            ok = crop.flatten(1).any(dim=1)
            done = pending[ok]
            moved[done], mask[done] = img_w[ok], crop[ok]
            pending = pending[~ok]
            if pending.numel() == 0:
                break
        if pending.numel():
            # Fallback: an integer shift (no rotation/shear) putting the anchor defect pixel
            # exactly on the area's centre pixel, so the overlap cannot be empty.
            k = pending.numel()
            center = area_center[pending]
            center_xy = torch.stack([center % width, center // width], dim=1).float()
            matrix = torch.eye(3, device=device).repeat(k, 1, 1)
            matrix[:, :2, 2] = center_xy - anchor[pending]
            img_w, mask_w = _warp(seen[pending], seen_mask[pending], matrix)
            moved[pending], mask[pending] = img_w, (mask_w > 0.5) & area[pending]

        m = mask.to(dtype)                                                  # (n, 1, H, W)
        b = beta.to(device=device, dtype=dtype).view(n, 1, 1, 1)
        crop_image = m * moved                                              # C
        blended = (1 - m) * normal + (1 - b) * crop_image + b * (m * normal)
        # Outside M the formula already returns N exactly; the where makes it explicit and
        # clamps rounding (1 + 1 ulp) only where pixels were altered.
        images = torch.where(mask, blended.clamp(0.0, 1.0), normal)
        return images, m, moved.clamp(0.0, 1.0)

    # ---------------------------------------------------------------- SA

    def simulated_anomaly(self, normal: torch.Tensor, foreground: torch.Tensor,
                          generator: torch.Generator, beta: torch.Tensor | None = None
                          ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Simulated anomalies (SA): Perlin blobs ∩ a target area, filled from a source S.

        ``M`` = (Perlin noise > threshold) ∩ target area, both redrawn up to ``MAX_TRIES``
        times while empty, then the target area itself (never empty). ``S`` = a DTD texture
        (HEA, probability ``hea_probability``) or the normal image (HOA, grid-shuffled with
        probability ``grid_shuffle_probability``), after three distinct random ops of
        ``COLOUR_OPS``. ``I = (1 - M) N + (1 - beta) (M S) + beta (M N)``.

        Args:
            normal: ``(n, 3, H, W)`` float [0, 1] normal images N.
            foreground: ``(n, 1, H, W)`` their foreground masks (empty: whole image).
            generator: source of every random choice.
            beta: ``(n,)`` blend weights (None: drawn from U(0, beta_max)).

        Returns:
            ``(images, masks, is_heterologous)``: ``(n, 3, H, W)`` in [0, 1], ``(n, 1, H, W)``
            non-empty {0, 1}, and ``(n,)`` bool (True: DTD source).

        Raises:
            DataError: mis-shaped inputs.
        """
        images, masks, is_het, _ = self._simulated(normal, foreground, generator, beta)
        return images, masks, is_het

    def _simulated(self, normal: torch.Tensor, foreground: torch.Tensor, generator: torch.Generator,
                   beta: torch.Tensor | None
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        self._check_batch(normal, foreground)
        cfg = self.cfg
        n, _, height, width = normal.shape
        device, dtype = normal.device, normal.dtype
        if beta is None:
            beta = self._draw_beta(n, device, generator)

        # Source S. Draws are made for every sample, used or not, to keep the stream fixed.
        is_het = _rand(generator, (n,), device) < cfg.hea_probability
        if self.textures is None:
            is_het = torch.zeros_like(is_het)
            source = normal
        else:
            tex_id = _randint(generator, 0, self.textures.shape[0], (n,), self.textures.device)
            tex = self.textures[tex_id].to(device)
            tex = to_unit_float(tex).to(dtype) if not tex.is_floating_point() else tex.to(dtype)
            source = torch.where(is_het.view(n, 1, 1, 1), tex, normal)
        source = _apply_random_ops(source, COLOUR_OPS, _COLOUR_OP_FNS, COLOUR_OPS_PER_SAMPLE, generator)
        shuffle = (_rand(generator, (n,), device) < cfg.grid_shuffle_probability) & ~is_het
        grid = torch.tensor(GRID_SIZES, device=device)[_randint(generator, 0, len(GRID_SIZES), (n,), device)]
        keys = _rand(generator, (n, max(GRID_SIZES) ** 2), device)
        source = _grid_shuffle(source, grid, keys, shuffle)

        # Mask M: Perlin blobs ∩ target area, redrawn while empty.
        mask = torch.zeros((n, 1, height, width), dtype=torch.bool, device=device)
        pending = torch.arange(n, device=device)
        for _ in range(MAX_TRIES):
            k = pending.numel()
            noise = perlin_noise((k, height, width), generator, cfg.perlin_min_scale,
                                 cfg.perlin_max_scale, device=device)
            area, _ = _target_area(k, height, width, foreground[pending], generator)
            m = (noise.unsqueeze(1) > cfg.perlin_threshold) & area
            ok = m.flatten(1).any(dim=1)
            mask[pending[ok]] = m[ok]
            pending = pending[~ok]
            if pending.numel() == 0:
                break
        if pending.numel():
            # Fallback: the target area alone (centred on a foreground pixel, never empty).
            area, _ = _target_area(pending.numel(), height, width, foreground[pending], generator)
            mask[pending] = area

        m = mask.to(dtype)
        b = beta.to(device=device, dtype=dtype).view(n, 1, 1, 1)
        blended = (1 - m) * normal + (1 - b) * (m * source) + b * (m * normal)
        images = torch.where(mask, blended.clamp(0.0, 1.0), normal)
        return images, m, is_het, source

    # ---------------------------------------------------------------- batch

    def __call__(self, normal: torch.Tensor, foreground: torch.Tensor, generator: torch.Generator,
                 *, return_sources: bool = False) -> SynthesizedBatch:
        """Synthesize one training batch with the exact normal:EA:SA mix of :func:`batch_composition`.

        Which rows become EA or SA is a random permutation; row i of the result is always
        made from ``normal[i]``.

        Args:
            normal: ``(B, 3, H, W)`` float [0, 1] normal images.
            foreground: ``(B, 1, H, W)`` their foreground masks (empty: whole image).
            generator: source of every random choice (same seed and inputs: same batch).
            return_sources: also return the blended-in images (for tests and debugging).

        Returns:
            :class:`SynthesizedBatch` on ``normal.device``.

        Raises:
            DataError: mis-shaped inputs or a batch size that cannot hold the mix exactly.
        """
        self._check_batch(normal, foreground)
        b, _, height, width = normal.shape
        device, dtype = normal.device, normal.dtype
        n_normal, n_ea, n_sa = batch_composition(b, self.cfg)
        perm = torch.randperm(b, generator=generator, device=generator.device).to(device)
        ea_rows, sa_rows = perm[n_normal:n_normal + n_ea], perm[n_normal + n_ea:]
        kind = torch.full((b,), KIND_NORMAL, dtype=torch.long, device=device)
        kind[ea_rows], kind[sa_rows] = KIND_EA, KIND_SA
        beta = self._draw_beta(b, device, generator)
        beta = torch.where(kind == KIND_NORMAL, torch.zeros_like(beta), beta)

        images = normal.clone()
        masks = torch.zeros((b, 1, height, width), dtype=dtype, device=device)
        is_het = torch.zeros((b,), dtype=torch.bool, device=device)
        sources = normal.clone() if return_sources else None
        if n_ea:
            img, m, src = self._extended(normal[ea_rows], foreground[ea_rows], generator, beta[ea_rows])
            images[ea_rows], masks[ea_rows] = img, m
            if sources is not None:
                sources[ea_rows] = src
        if n_sa:
            img, m, het, src = self._simulated(normal[sa_rows], foreground[sa_rows], generator,
                                               beta[sa_rows])
            images[sa_rows], masks[sa_rows], is_het[sa_rows] = img, m, het
            if sources is not None:
                sources[sa_rows] = src
        return SynthesizedBatch(images=images, masks=masks, kind=kind, beta=beta,
                                is_heterologous=is_het, sources=sources)
