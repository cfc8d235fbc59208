"""The CUDA sources travel in the wheel and are found from an installed copy, not only from a checkout.

setup.py installs the top-level ``kernels/`` folder as the package ``prn_edge.cuda``; the one
locator, :func:`prn_edge.kernels.kernels_dir` (``importlib.resources``), must point inside the
installation. Built offline (``--no-build-isolation``: setuptools from this environment) from a
copy of the source tree, so the checkout gets no ``build/`` or ``egg-info`` from this test.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest

from conftest import REPO

pytestmark = pytest.mark.slow

# What setup.py needs to build the wheel (the packages, their mapped folders, its README).
SOURCE_TREE = ("setup.py", "MANIFEST.in", "README.md", "prn_edge", "export", "kernels")
_IGNORE = shutil.ignore_patterns("__pycache__", "*.pyc", "*.so", "*.egg-info", "build")


def _checkout_sources() -> list[str]:
    """Every file of kernels/ the GPU paths and the emulator need, relative to kernels/."""
    root = REPO / "kernels"
    files = [p for p in root.rglob("*") if p.is_file() and "__pycache__" not in p.parts
             and p.suffix in (".cu", ".cuh", ".h", ".cpp", ".ld")]
    return sorted(str(p.relative_to(root)) for p in files)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    src = tmp_path_factory.mktemp("src")
    for name in SOURCE_TREE:
        path = REPO / name
        if path.is_dir():
            shutil.copytree(path, src / name, ignore=_IGNORE)
        elif path.is_file():
            shutil.copy2(path, src / name)
    out = tmp_path_factory.mktemp("wheel")
    env = dict(os.environ, PIP_NO_INDEX="1", PIP_DISABLE_PIP_VERSION_CHECK="1")  # offline
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                           "-w", str(out), str(src)], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    wheels = list(out.glob("prn_edge-*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


def test_wheel_holds_the_cuda_sources(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = _checkout_sources()
    assert any(n.endswith(".cu") for n in expected) and any(n.startswith("plugins/") for n in expected)
    missing = [n for n in expected if f"prn_edge/cuda/{n}" not in names]
    assert not missing, f"not in the wheel: {missing}"
    assert "prn_edge/cuda/__init__.py" in names
    assert "prn_edge/kernels/_source.py" in names and "prn_edge/export/__init__.py" in names


def test_installed_wheel_finds_its_own_sources(wheel, tmp_path):
    target = tmp_path / "site"
    proc = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "-q",
                           "--disable-pip-version-check", "--target", str(target), str(wheel)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    script = textwrap.dedent("""
        import json
        import prn_edge
        from prn_edge.kernels import KERNEL_FILES, constants, kernels_dir, load_source
        root = kernels_dir()
        print(json.dumps({
            "package": prn_edge.__file__,
            "kernels_dir": str(root),
            "files": sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()),
            "inlined": all("prn_device.cuh" in load_source(name) for name in KERNEL_FILES),
            "constants": len(constants()),
        }))
    """)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PRN_EDGE_KERNELS_DIR")}
    env["PYTHONPATH"] = str(target)
    # PYTHONPATH comes before site-packages and the editable install's finder (appended to
    # sys.meta_path), so the installed copy wins; the asserts below check that it did.
    proc = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    found = json.loads(proc.stdout.strip().splitlines()[-1])
    assert Path(found["package"]).resolve().is_relative_to(target.resolve()), found["package"]
    root = Path(found["kernels_dir"]).resolve()
    assert root == (target / "prn_edge" / "cuda").resolve(), root
    missing = sorted(set(_checkout_sources()) - set(found["files"]))
    assert not missing, f"not installed: {missing}"
    assert found["inlined"] and found["constants"] > 0
