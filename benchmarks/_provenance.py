"""The benchmark scripts' one Markdown line of :func:`prn_edge.provenance.provenance` (their JSON holds the dict)."""
from __future__ import annotations

from typing import Any


def provenance_line(origin: dict[str, Any]) -> str:
    """``provenance()`` as one Markdown line: commit, package versions, machine."""
    git = origin.get("git") or {}
    if git.get("commit"):
        commit = f"`{git['commit'][:12]}`" + (" (with uncommitted changes)" if git.get("dirty") else "")
    else:
        commit = "not a git checkout"
    packages = ", ".join(f"{k} {v}" for k, v in (origin.get("packages") or {}).items() if v)
    m = origin.get("machine") or {}
    return (f"Provenance: commit {commit}; {packages}; {m.get('cpu')}, {m.get('cores')} cores, "
            f"{m.get('system')}, Python {m.get('python')}.")
