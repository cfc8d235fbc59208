"""Where the CUDA sources live and how they are handed to a compiler.

The ``.cu`` files in the repository's top-level ``kernels/`` folder are the single source of the
fused ops. setup.py installs that folder as the package ``prn_edge.cuda`` (package data: the
``.cu``/``.cuh``/``.h`` files, ``plugins/``, ``emulator/``), so :func:`kernels_dir`, the one place
that locates them, finds them with ``importlib.resources`` from a wheel and from an editable
install alike (a bare checkout on ``sys.path`` has no ``prn_edge.cuda``, as it has no
``prn_edge.export``); ``$PRN_EDGE_KERNELS_DIR`` overrides it (a mutated copy, say).
No torch, no CuPy: importable anywhere.
"""
from __future__ import annotations

import importlib.resources
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
_PACKAGE = "prn_edge.cuda"  # the top-level kernels/ folder, mapped by setup.py
_INCLUDE = re.compile(r'^[ \t]*#[ \t]*include[ \t]+"([^"]+)"[ \t]*$', re.MULTILINE)
_CONSTANT = re.compile(r"^\s*(?:inline\s+)?constexpr\s+int\s+(\w+)\s*=\s*(-?\d+)\s*;", re.MULTILINE)


def kernels_dir() -> Path:
    """The folder with the ``.cu`` sources: ``$PRN_EDGE_KERNELS_DIR``, else the ``prn_edge.cuda`` package.

    Raises:
        PRNError: not found (say where it was looked for and how to point at it).
    """
    env = os.environ.get(_ENV)
    candidates = [Path(env)] if env else []
    package = _package_dir()
    if package is not None:
        candidates.append(package)
    for path in candidates:
        if all((path / name).is_file() for name in KERNEL_FILES):
            return path
    looked = ", ".join(str(p) for p in candidates) or f"the package {_PACKAGE}, not importable"
    raise PRNError(f"the CUDA kernel sources were not found (looked in {looked}): reinstall prn-edge "
                   f"(pip install . or pip install -e . from a checkout) or set {_ENV} to a kernels/ folder")


def _package_dir() -> Path | None:
    """The directory of the ``prn_edge.cuda`` package (``kernels/`` in a checkout), or None.

    The compilers need a real directory (``-I``, file paths), so a package that is not on the
    file system (imported from a zip) counts as not found.
    """
    try:
        root = importlib.resources.files(_PACKAGE)
    except (ModuleNotFoundError, TypeError):
        return None
    return root if isinstance(root, Path) else None


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
