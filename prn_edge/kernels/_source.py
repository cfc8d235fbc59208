"""Where the CUDA sources live and how they are handed to a compiler.

The ``.cu`` files in the repository's ``kernels/`` folder are the single source of the fused
ops (DESIGN.md, Kernels). This package finds that folder relative to itself (``prn_edge/`` sits
beside ``kernels/`` in the repository, so an editable install finds it too), or at
``$PRN_EDGE_KERNELS_DIR``. No torch, no CuPy: importable anywhere.
"""
from __future__ import annotations

import os
import re
from functools import lru_cache
from pathlib import Path

from prn_edge.errors import PRNError

# The .cu files and the extern "C" entry points each one must define.
KERNEL_FILES: dict[str, tuple[str, ...]] = {
    "proto_residual.cu": (
        "prn_proto_dot_k8_f32", "prn_proto_dot_k4_f32", "prn_proto_dot_k8_f16", "prn_proto_dot_k4_f16",
        "prn_proto_argmin", "prn_proto_residual_f32", "prn_proto_residual_f16"),
    "multi_size_attention.cu": (
        "prn_msa_scores_f32", "prn_msa_scores_f16", "prn_msa_softmax", "prn_msa_output_f32",
        "prn_msa_output_f16"),
}

_ENV = "PRN_EDGE_KERNELS_DIR"
_INCLUDE = re.compile(r'^[ \t]*#[ \t]*include[ \t]+"([^"]+)"[ \t]*$', re.MULTILINE)
_CONSTANT = re.compile(r"^\s*(?:inline\s+)?constexpr\s+int\s+(\w+)\s*=\s*(-?\d+)\s*;", re.MULTILINE)


def kernels_dir() -> Path:
    """The folder with the ``.cu`` sources.

    Raises:
        PRNError: not found (say where it was looked for and how to point at it).
    """
    env = os.environ.get(_ENV)
    candidates = [Path(env)] if env else []
    candidates.append(Path(__file__).resolve().parents[2] / "kernels")
    for path in candidates:
        if all((path / name).is_file() for name in KERNEL_FILES):
            return path
    looked = ", ".join(str(p) for p in candidates)
    raise PRNError(f"the CUDA kernel sources were not found (looked in {looked}): use a source checkout "
                   f"(pip install -e .) or set {_ENV} to the repository's kernels/ folder")


@lru_cache(maxsize=None)
def _read(path: Path) -> str:
    return path.read_text()


def load_source(name: str, directory: Path | None = None) -> str:
    """The source of ``name`` with its local ``#include "..."`` files inlined (each once).

    Inlining makes the text self-contained for NVRTC (no include path) and makes a compile
    cache keyed on the text (CuPy's) see changes to the headers too. Angle-bracket includes
    are left alone; the kernels only use them in host code that NVRTC skips.
    """
    directory = directory or kernels_dir()
    seen: set[str] = set()

    def expand(file: str) -> str:
        path = directory / file
        if not path.is_file():
            raise PRNError(f"{file} is included by the kernels but missing from {directory}")
        seen.add(file)

        def include(match: re.Match) -> str:
            child = match.group(1)
            if child in seen:
                return f"// (already included: {child})"
            return f"// ---- begin {child} ----\n{expand(child)}\n// ---- end {child} ----"

        return _INCLUDE.sub(include, _read(path))

    return expand(name)


@lru_cache(maxsize=None)
def constants(directory: Path | None = None) -> dict[str, int]:
    """The ``constexpr int`` values of ``prn_constants.h`` (threads, tiles, plan targets)."""
    text = _read((directory or kernels_dir()) / "prn_constants.h")
    return {name: int(value) for name, value in _CONSTANT.findall(text)}
