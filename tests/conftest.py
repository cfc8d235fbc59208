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
