"""Where a result came from: the commit, the package versions and the machine.

Every committed benchmark result and every report a tool writes records :func:`provenance`,
so a number can always be traced to the code and the machine that produced it. stdlib only.
"""
from __future__ import annotations

import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

__all__ = ["PACKAGES", "git_commit", "machine", "package_versions", "provenance", "provenance_line"]

#: The packages whose versions decide a result (missing ones are recorded as None).
PACKAGES = ("prn-edge", "numpy", "torch", "onnx", "onnxruntime", "opencv-python-headless", "kornia",
            "scikit-learn", "tensorrt", "cupy-cuda12x")
_REPO = Path(__file__).resolve().parent.parent


def git_commit(repo: str | os.PathLike = _REPO) -> dict[str, Any] | None:
    """``{"commit": sha, "dirty": bool}`` of the checkout this package runs from, or None outside git."""
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, timeout=10,
                              check=True).stdout.strip()

    try:
        # Only the checkout this package is part of: an installed copy inside some other repository
        # (a virtualenv in a project folder) must not report that repository's commit.
        if Path(git("rev-parse", "--show-toplevel")).resolve() != Path(repo).resolve():
            return None
        sha = git("rev-parse", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": sha, "dirty": dirty}


def package_versions(names: tuple[str, ...] = PACKAGES) -> dict[str, str | None]:
    """The installed version of each package (None where it is not installed)."""
    out: dict[str, str | None] = {}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def machine() -> dict[str, Any]:
    """CPU, core count, OS and Python of this machine."""
    return {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
            "system": f"{platform.system()} {platform.release()}", "python": platform.python_version()}


def provenance() -> dict[str, Any]:
    """Commit (None outside a git checkout), package versions and machine, as one JSON-able dict."""
    return {"git": git_commit(), "packages": package_versions(), "machine": machine()}


def provenance_line(origin: dict[str, Any]) -> str:
    """A :func:`provenance` record as one Markdown line: commit, package versions, machine."""
    git = origin.get("git") or {}
    if git.get("commit"):
        commit = f"`{git['commit'][:12]}`" + (" (with uncommitted changes)" if git.get("dirty") else "")
    else:
        commit = "not a git checkout"
    packages = ", ".join(f"{k} {v}" for k, v in (origin.get("packages") or {}).items() if v)
    m = origin.get("machine") or {}
    return (f"Provenance: commit {commit}; {packages}; {m.get('cpu')}, {m.get('cores')} cores, "
            f"{m.get('system')}, Python {m.get('python')}.")
