"""Online anomaly synthesis (docs/model.md, "Anomaly synthesis") on real MVTec bottle images and DTD textures.

The central property: the mask of a sample is exactly the set of altered pixels. Outside it
the image is bit-identical to the input normal image; inside it the change is
``(1 - beta) * (S - N)`` for the blended-in source S (docs/model.md's formulas rearranged).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("kornia")
cv2 = pytest.importorskip("cv2")

from prn_edge.data.perlin import perlin_noise  # noqa: E402
from prn_edge.data.synthesis import (  # noqa: E402
    KIND_EA,
    KIND_NORMAL,
    KIND_SA,
    AnomalySynthesizer,
    SynthesisConfig,
    SynthesizedBatch,
    _grid_shuffle,
    batch_composition,
    load_textures,
    preview_grid,
    target_area,
)
from prn_edge.errors import DataError, PRNError  # noqa: E402

SIZE = 256


def _read_rgb(path: Path) -> np.ndarray:
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    assert bgr is not None, path
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB).astype(np.float32) / 255.0


def _to_tensor(images: list[np.ndarray]) -> torch.Tensor:
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()


def _otsu_foreground(image: np.ndarray) -> np.ndarray:
    """Rough object mask (the bottle is darker than its background); enough for these tests."""
    grey = cv2.GaussianBlur((image.mean(axis=2) * 255).astype(np.uint8), (7, 7), 0)
    _, mask = cv2.threshold(grey, 0, 1, cv2.THRESH_BINARY_INV + cv2.THRESH_OTSU)
    return mask.astype(np.float32)[..., None]


@pytest.fixture(scope="module")
def bottle(bottle_dir: Path) -> dict[str, torch.Tensor]:
    """16 normal bottle images with foregrounds, and 9 seen anomalies (3 per type) with masks."""
    files = sorted((bottle_dir / "train" / "good").glob("*.png"))[:16]
    normal = [_read_rgb(p) for p in files]
    seen, seen_masks = [], []
    for defect in ("broken_large", "broken_small", "contamination"):
        for path in sorted((bottle_dir / "test" / defect).glob("*.png"))[:3]:
            seen.append(_read_rgb(path))
            mask_path = bottle_dir / "ground_truth" / defect / f"{path.stem}_mask.png"
            seen_masks.append((cv2.imread(str(mask_path), cv2.IMREAD_GRAYSCALE) > 127)
                              .astype(np.float32)[..., None])
    assert normal[0].shape == (SIZE, SIZE, 3)
    return {
        "normal": _to_tensor(normal),                                   # (16, 3, H, W)
        "foreground": _to_tensor([_otsu_foreground(im) for im in normal]),  # (16, 1, H, W)
        "seen": _to_tensor(seen),                                       # (9, 3, H, W)
        "seen_masks": _to_tensor(seen_masks),                           # (9, 1, H, W)
    }


@pytest.fixture(scope="module")
def textures(dtd_dir: Path) -> torch.Tensor:
    return load_textures(dtd_dir, size=SIZE, limit=24)


@pytest.fixture(scope="module")
def synthesizer(bottle, textures) -> AnomalySynthesizer:
    return AnomalySynthesizer(bottle["seen"], bottle["seen_masks"], textures)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _check_batch(batch: SynthesizedBatch, normal: torch.Tensor, foreground: torch.Tensor,
                 cfg: SynthesisConfig) -> None:
    """Every invariant of a synthesized batch (see the module docstring)."""
    b = normal.shape[0]
    n_normal, n_ea, n_sa = batch_composition(b, cfg)
    assert batch.images.shape == normal.shape and batch.masks.shape == (b, 1, SIZE, SIZE)
    assert [int((batch.kind == k).sum()) for k in (KIND_NORMAL, KIND_EA, KIND_SA)] == [n_normal, n_ea, n_sa]
    assert torch.isfinite(batch.images).all()
    assert batch.images.min() >= 0.0 and batch.images.max() <= 1.0
    assert set(batch.masks.unique().tolist()) <= {0.0, 1.0}
    fg = foreground > 0.5
    m = batch.masks.bool()                                              # (B, 1, H, W)
    m3 = m.expand_as(normal)
    synthesized = batch.kind != KIND_NORMAL
    # Outside M: bit-identical to the input (normal rows: everywhere).
    assert torch.equal(batch.images[~m3], normal[~m3]), "pixels outside the mask changed"
    assert not m[~synthesized].any() and (batch.beta[~synthesized] == 0).all()
    assert (batch.beta[synthesized] >= 0).all() and (batch.beta[synthesized] < cfg.beta_max).all()
    sizes = m.flatten(1).sum(1)
    assert (sizes[synthesized] > 0).all(), f"synthesized sample with an empty mask: {sizes.tolist()}"
    assert not (m & ~fg).any(), "a mask leaves the foreground"
    # Inside M: E - N = (1 - beta) * (S - N)  (EA: S = C inside M; SA: S).
    weight = (1.0 - batch.beta).view(b, 1, 1, 1).expand_as(normal)
    change = batch.images[m3] - normal[m3]
    expected = weight[m3] * (batch.sources[m3] - normal[m3])
    torch.testing.assert_close(change, expected, atol=2e-6, rtol=0)


# ------------------------------------------------------------------ composition


def test_batch_composition_exact():
    cfg = SynthesisConfig()
    assert batch_composition(64, cfg) == (32, 16, 16)
    assert batch_composition(8, cfg) == (4, 2, 2)
    assert batch_composition(4, cfg) == (2, 1, 1)
    assert batch_composition(64) == (32, 16, 16)
    for bad in (0, 1, 2, 3, 6, 10, 63):
        with pytest.raises(DataError, match="multiple of 4"):
            batch_composition(bad, cfg)
    # Ablations: the removed kind's share goes to the other synthesized kind.
    assert batch_composition(64, SynthesisConfig(use_ea=False)) == (32, 0, 32)
    assert batch_composition(64, SynthesisConfig(use_sa=False)) == (32, 32, 0)
    assert batch_composition(2, SynthesisConfig(use_ea=False)) == (1, 0, 1)
    assert batch_composition(10, SynthesisConfig(ea_fraction=0.1, sa_fraction=0.2)) == (7, 1, 2)
    with pytest.raises(DataError, match="multiple of 10"):
        batch_composition(8, SynthesisConfig(ea_fraction=0.1, sa_fraction=0.2))


def test_config_validation():
    with pytest.raises(PRNError, match="both False"):
        SynthesisConfig(use_ea=False, use_sa=False)
    with pytest.raises(PRNError, match="beta_max"):
        SynthesisConfig(beta_max=1.5)
    with pytest.raises(PRNError, match="<= 1"):
        SynthesisConfig(ea_fraction=0.6, sa_fraction=0.6)
    with pytest.raises(PRNError, match="perlin"):
        SynthesisConfig(perlin_min_scale=4, perlin_max_scale=2)


# ------------------------------------------------------------------ full batches on real data


def test_batch_masks_are_exactly_the_altered_pixels(bottle, synthesizer):
    normal, fg = bottle["normal"], bottle["foreground"]
    batch = synthesizer(normal, fg, _gen(0), return_sources=True)
    _check_batch(batch, normal, fg, synthesizer.cfg)
    assert batch.kind_names.count("EA") == 4 and batch.kind_names.count("SA") == 4
    # The input is not modified in place.
    assert not torch.equal(batch.images, normal)


def test_full_64_batch(bottle, synthesizer):
    """The paper's batch: 64 images at 256x256, 32 normal + 16 EA + 16 SA."""
    normal = bottle["normal"].repeat(4, 1, 1, 1)
    fg = bottle["foreground"].repeat(4, 1, 1, 1)
    batch = synthesizer(normal, fg, _gen(1), return_sources=True)
    _check_batch(batch, normal, fg, synthesizer.cfg)
    sa = batch.kind == KIND_SA
    # Both SA sources occur in a batch of 16 SA (each with probability 0.5; fixed seed).
    assert batch.is_heterologous[sa].any() and (~batch.is_heterologous[sa]).any()
    assert not batch.is_heterologous[~sa].any()


def test_repeatable_under_a_seed(bottle, synthesizer):
    normal, fg = bottle["normal"][:8], bottle["foreground"][:8]
    a = synthesizer(normal, fg, _gen(7))
    b = synthesizer(normal, fg, _gen(7))
    c = synthesizer(normal, fg, _gen(8))
    for name in ("images", "masks", "kind", "beta", "is_heterologous"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    assert not torch.equal(a.images, c.images)
    assert not torch.equal(a.masks, c.masks)


def test_ablations(bottle, textures):
    normal, fg = bottle["normal"][:8], bottle["foreground"][:8]
    no_ea = SynthesisConfig(use_ea=False)
    # Without EA no seen anomalies are needed.
    batch = AnomalySynthesizer(None, None, textures, no_ea)(normal, fg, _gen(0), return_sources=True)
    _check_batch(batch, normal, fg, no_ea)
    assert int((batch.kind == KIND_SA).sum()) == 4
    no_sa = SynthesisConfig(use_sa=False)
    synth = AnomalySynthesizer(bottle["seen"], bottle["seen_masks"], None, no_sa)
    batch = synth(normal, fg, _gen(0), return_sources=True)
    _check_batch(batch, normal, fg, no_sa)
    assert int((batch.kind == KIND_EA).sum()) == 4


def test_hea_hoa_switch(bottle, textures):
    normal, fg = bottle["normal"][:8], bottle["foreground"][:8]
    synth = AnomalySynthesizer(None, None, textures, SynthesisConfig(use_ea=False, hea_probability=1.0))
    _, masks, het = synth.simulated_anomaly(normal, fg, _gen(0))
    assert het.all() and masks.flatten(1).sum(1).min() > 0
    # HOA only: no textures needed; with grid shuffling always on.
    cfg = SynthesisConfig(use_ea=False, hea_probability=0.0, grid_shuffle_probability=1.0)
    synth = AnomalySynthesizer(None, None, None, cfg)
    batch = synth(normal, fg, _gen(0), return_sources=True)
    _check_batch(batch, normal, fg, cfg)
    assert not batch.is_heterologous.any()


def test_direct_calls_with_known_beta(bottle, synthesizer):
    normal, fg = bottle["normal"][:4], bottle["foreground"][:4]
    beta = torch.tensor([0.0, 0.2, 0.5, 0.79])
    for images, masks in (synthesizer.extended_anomaly(normal, fg, _gen(3), beta=beta),
                          synthesizer.simulated_anomaly(normal, fg, _gen(3), beta=beta)[:2]):
        assert images.shape == normal.shape and masks.shape == fg.shape
        assert (masks.flatten(1).sum(1) > 0).all()
        outside = ~masks.bool().expand_as(normal)
        assert torch.equal(images[outside], normal[outside])
        assert not (masks.bool() & ~fg.bool()).any()
        assert images.min() >= 0 and images.max() <= 1


def test_tiny_and_empty_foregrounds_still_give_non_empty_masks(bottle, synthesizer):
    """Bounded redraws end in a deterministic fallback: never an empty (mislabelled) mask."""
    normal = bottle["normal"][:8]
    tiny = torch.zeros(8, 1, SIZE, SIZE)
    tiny[:, :, 2:5, 250:253] = 1.0                  # a 3x3 foreground in a corner
    batch = synthesizer(normal, tiny, _gen(5), return_sources=True)
    _check_batch(batch, normal, tiny, synthesizer.cfg)
    # An empty foreground means the whole image (as for texture classes).
    empty = torch.zeros(8, 1, SIZE, SIZE)
    batch = synthesizer(normal, empty, _gen(5), return_sources=True)
    _check_batch(batch, normal, torch.ones_like(empty), synthesizer.cfg)


# ------------------------------------------------------------------ parts


def test_target_area_inside_foreground(bottle):
    fg = bottle["foreground"]
    areas = target_area(16, SIZE, SIZE, fg, _gen(0))
    assert areas.shape == fg.shape and set(areas.unique().tolist()) <= {0.0, 1.0}
    sizes = areas.flatten(1).sum(1)
    assert (sizes > 0).all() and not (areas.bool() & ~fg.bool()).any()
    assert sizes.std() > 0                            # random shapes, not one template
    assert torch.equal(areas, target_area(16, SIZE, SIZE, fg, _gen(0)))
    with pytest.raises(DataError, match="foreground"):
        target_area(4, SIZE, SIZE, fg, _gen(0))


def test_perlin_noise_shape_and_range():
    noise = perlin_noise((3, 64, 96), _gen(0))
    assert noise.shape == (3, 64, 96) and noise.dtype == torch.float32
    assert noise.abs().max() <= 1.0 + 1e-5 and noise.std() > 0.05
    assert torch.equal(noise, perlin_noise((3, 64, 96), _gen(0)))
    with pytest.raises(PRNError):
        perlin_noise((2, 32, 32), _gen(0), min_scale=3, max_scale=1)


def test_perlin_threshold_gives_blobs_at_several_scales():
    """More lattice cells -> more, smaller blobs above the 0.5 threshold."""
    mean_blobs, mean_size = [], []
    for exponent in (1, 3, 5):
        noise = perlin_noise((8, SIZE, SIZE), _gen(exponent), exponents=torch.full((8, 2), exponent))
        masks = (noise > 0.5).numpy().astype(np.uint8)
        counts = [cv2.connectedComponents(m)[0] - 1 for m in masks]   # minus the background label
        fraction = masks.mean()
        assert 0.01 < fraction < 0.25, (exponent, fraction)
        mean_blobs.append(np.mean(counts))
        mean_size.append(masks.sum() / max(1, sum(counts)))
    assert mean_blobs[0] < mean_blobs[1] < mean_blobs[2], mean_blobs
    assert mean_size[0] > mean_size[1] > mean_size[2], mean_size
    # Non-square lattices (2^a x 2^b cells): 1 x 16 cells vary far faster along x than y.
    noise = perlin_noise((4, SIZE, SIZE), _gen(0), exponents=torch.tensor([[0, 4]] * 4))
    along_x = (noise[:, :, 1:] - noise[:, :, :-1]).abs().mean()
    along_y = (noise[:, 1:, :] - noise[:, :-1, :]).abs().mean()
    assert along_x > 4 * along_y


def test_grid_shuffle_permutes_cells():
    images = torch.rand(3, 3, 30, 32)
    grid = torch.tensor([2, 4, 4])
    keys = torch.rand(3, 64, generator=_gen(0))
    enabled = torch.tensor([True, True, False])
    out = _grid_shuffle(images, grid, keys, enabled)
    for i in range(3):
        assert torch.equal(out[i].flatten(1).sort(dim=1).values, images[i].flatten(1).sort(dim=1).values)
    assert not torch.equal(out[0], images[0]) and not torch.equal(out[1], images[1])
    assert torch.equal(out[2], images[2])                                # disabled row untouched
    # 30 rows in a 4x4 grid of 7-row cells: the last 2 rows are outside the grid and stay.
    assert torch.equal(out[1, :, 28:], images[1, :, 28:])
    # Each 2x2 cell of row 0 is a whole cell of the input.
    cells_in = {images[0, :, r:r + 15, c:c + 16].sum().item() for r in (0, 15) for c in (0, 16)}
    cells_out = {out[0, :, r:r + 15, c:c + 16].sum().item() for r in (0, 15) for c in (0, 16)}
    assert cells_in == cells_out


def test_load_textures(dtd_dir, tmp_path):
    tex = load_textures(dtd_dir, size=64, limit=5)
    assert tex.shape == (5, 3, 64, 64) and tex.dtype == torch.uint8
    as_float = load_textures(dtd_dir, size=64, limit=5, dtype=torch.float32)
    torch.testing.assert_close(as_float, tex.float() / 255.0)
    assert len({p.parent.name for p in sorted(Path(dtd_dir).rglob("*.jpg"))}) > 1
    with pytest.raises(DataError, match="no texture images"):
        load_textures(tmp_path)
    with pytest.raises(DataError, match="does not exist"):
        load_textures(tmp_path / "missing")


def test_constructor_and_call_errors(bottle, textures):
    seen, masks = bottle["seen"], bottle["seen_masks"]
    with pytest.raises(DataError, match="seen anomalies"):
        AnomalySynthesizer(None, None, textures)
    with pytest.raises(DataError, match="empty"):
        AnomalySynthesizer(seen, torch.zeros_like(masks), textures)
    with pytest.raises(DataError, match="DTD textures"):
        AnomalySynthesizer(seen, masks, None)
    synth = AnomalySynthesizer(seen, masks, textures)
    assert synth.to("cpu") is synth
    normal, fg = bottle["normal"], bottle["foreground"]
    with pytest.raises(DataError, match="multiple of 4"):
        synth(normal[:6], fg[:6], _gen(0))
    with pytest.raises(DataError, match="foreground"):
        synth(normal[:4], fg[:2], _gen(0))
    with pytest.raises(DataError, match="training size"):
        synth(normal[:4, :, :128, :128], fg[:4, :, :128, :128], _gen(0))


def test_preview_grid(bottle, synthesizer):
    batch = synthesizer(bottle["normal"][:12], bottle["foreground"][:12], _gen(0))
    grid = preview_grid(batch, columns=8)
    assert grid.dtype == np.uint8 and grid.shape == (2 * SIZE, 8 * 2 * SIZE, 3)
    # The mask tile of each sample shows its mask.
    for i in range(12):
        r, c = divmod(i, 8)
        tile = grid[r * SIZE:(r + 1) * SIZE, (2 * c + 1) * SIZE:(2 * c + 2) * SIZE, 0]
        assert np.array_equal(tile > 127, batch.masks[i, 0].numpy() > 0.5)
    assert preview_grid(batch, columns=5).shape == (3 * SIZE, 5 * 2 * SIZE, 3)
    assert preview_grid(batch, columns=100).shape == (SIZE, 12 * 2 * SIZE, 3)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_runs_on_cuda(bottle, synthesizer):
    """Synthesis on the GPU, driven by a CPU or a CUDA generator."""
    synth = AnomalySynthesizer(synthesizer.seen_images, synthesizer.seen_masks,
                               synthesizer.textures).to("cuda")
    normal, fg = bottle["normal"].cuda(), bottle["foreground"].cuda()
    for gen in (_gen(0), torch.Generator(device="cuda").manual_seed(0)):
        batch = synth(normal, fg, gen, return_sources=True)
        assert batch.images.is_cuda
        cpu = SynthesizedBatch(batch.images.cpu(), batch.masks.cpu(), batch.kind.cpu(),
                               batch.beta.cpu(), batch.is_heterologous.cpu(), batch.sources.cpu())
        _check_batch(cpu, normal.cpu(), fg.cpu(), synth.cfg)
