"""Shared fixtures: the real data beside the clone (``../shared/data``) and small helpers."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("PRN_SHARED_DATA", REPO.parent / "shared" / "data"))


def _require_dir(path: Path) -> Path:
    if not path.is_dir():
        pytest.skip(f"real data not found at {path} (set PRN_SHARED_DATA to ../shared/data)")
    return path


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data``: MVTec bottle, magnetic tile, DTD (read-only, never copied)."""
    return _require_dir(SHARED_DATA)


@pytest.fixture(scope="session")
def bottle_dir(shared_data: Path) -> Path:
    return _require_dir(shared_data / "mvtec_ad" / "bottle")


@pytest.fixture(scope="session")
def magnetic_tile_dir(shared_data: Path) -> Path:
    return _require_dir(shared_data / "magnetic_tile")


@pytest.fixture(scope="session")
def dtd_dir(shared_data: Path) -> Path:
    return _require_dir(shared_data / "dtd")


@pytest.fixture(autouse=True)
def _few_threads():
    """Tests run on 2-core machines; keep torch from oversubscribing them."""
    try:
        import torch
    except ImportError:
        yield
        return
    prev = torch.get_num_threads()
    torch.set_num_threads(min(prev, 2))
    yield
    torch.set_num_threads(prev)


def small_checkpoint(path: Path, seed: int) -> Path:
    """A small PRN checkpoint (128 px, untrained EfficientNet-Lite0 encoder, random prototypes and head).

    For tests of what the tools do with files (export, publish, kill, full disks), where what the
    model has learnt does not matter; two seeds give two different checkpoints.
    """
    import torch

    from prn_edge.checkpoint import save_checkpoint
    from prn_edge.config import get_config
    from prn_edge.model import PRN
    from prn_edge.model.backbones import build_backbone
    from prn_edge.model.random_head import randomize_head

    torch.manual_seed(seed)
    model = PRN(get_config("edge", image_size=128, decoder_resolution=32),
                backbone=build_backbone("efficientnet_lite0", weights="none")).eval()
    for bank in model.banks:
        bank.set(torch.rand(2, bank.dim))
    randomize_head(model, seed=seed, gain=1.0)
    save_checkpoint(path, model, threshold=0.5)
    return path


def prior_model_pair(config: dict, changes: dict, head_gain: float):
    """Two edge models with the same state, built from ``config`` and from ``config`` plus ``changes``
    (options that add no state, such as how the map or the score reads the prior), and the images they see.

    Their prototypes come from those images; the decoder's head gets a trained-looking correction of
    ``head_gain`` (it starts at zero beside the residual prior; 0 keeps the untrained model).
    """
    import torch

    from prn_edge.config import get_config
    from prn_edge.model import PRN
    from prn_edge.model.backbones import build_backbone

    backbone = build_backbone("efficientnet_lite0", weights="none")
    images = torch.rand(2, 3, 256, 256, generator=torch.Generator().manual_seed(1))
    torch.manual_seed(0)
    base = PRN(get_config("edge", **config), backbone=backbone).eval()
    base.build_prototypes([images])
    head = base.decoder.head[-1]
    with torch.no_grad():
        head.weight.copy_(head_gain * torch.randn(head.weight.shape, generator=torch.Generator().manual_seed(2)))
        head.bias.fill_(-head_gain)
    changed = PRN(get_config("edge", **config, **changes), backbone=backbone).eval()
    changed.load_state_dict(base.state_dict())
    return base, changed, images


def record_outcome(category: str, case: str, tool: str, status: int | None, message: str) -> None:
    """Append one observed outcome to ``$PRN_RELIABILITY_LOG`` (JSON lines), when it is set.

    ``benchmarks/reliability.py`` runs the chaos tests with it set and renders the table of
    ``benchmarks/results/reliability.md`` from what the tests saw, never from a list typed by hand.
    """
    import json

    log = os.environ.get("PRN_RELIABILITY_LOG")
    if log:
        with open(log, "a", encoding="utf-8") as handle:
            handle.write(json.dumps({"category": category, "case": case, "tool": tool, "status": status,
                                     "message": message}) + "\n")
