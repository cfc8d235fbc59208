"""The import rules of docs/architecture.md: every package imports only the layers below it.

Every ``import`` statement counts, the lazy ones inside functions too (an import done late is
still a dependency), in ``prn_edge/`` and in ``export/`` (installed as ``prn_edge.export``).
Strict layering also rules out import cycles between packages.
"""
from __future__ import annotations

import ast
from pathlib import Path

from conftest import REPO

# docs/architecture.md, "Layers": a package may import packages of lower layers only.
LAYERS = [
    ("errors",),
    ("validate",),
    ("prn_edge", "io", "cli", "config", "defaults", "provenance"),      # "prn_edge": the package's __init__
    ("contract", "imaging"),
    ("model", "kernels"),
    ("data", "checkpoint"),
    ("runtime", "baseline"),
    ("eval", "train", "bench"),
    ("export", "serve"),
    ("demo", "api"),
]
LAYER_OF = {unit: i for i, units in enumerate(LAYERS) for unit in units}


def _unit(module: str) -> str:
    """``prn_edge.runtime.loader`` -> ``runtime``; ``prn_edge`` -> ``prn_edge``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def _modules():
    for root, prefix in ((REPO / "prn_edge", "prn_edge"), (REPO / "export", "prn_edge.export")):
        for path in sorted(root.rglob("*.py")):
            rel = path.relative_to(root).with_suffix("").parts
            name = ".".join((prefix, *rel)).removesuffix(".__init__")
            yield name, path


def _imports(name: str, path: Path):
    """(imported module, line) for every prn_edge import of a file, relative ones resolved."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "prn_edge":
                    yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] == "prn_edge":
                # "from prn_edge import errors" imports the submodule prn_edge.errors.
                if target == "prn_edge":
                    for alias in node.names:
                        yield (f"prn_edge.{alias.name}" if alias.name in LAYER_OF else target), node.lineno
                else:
                    yield target, node.lineno


def test_every_package_has_a_layer():
    units = {_unit(name) for name, _ in _modules()}
    assert units <= set(LAYER_OF), f"packages missing from docs/architecture.md's layers: {units - set(LAYER_OF)}"


def test_no_package_imports_upward_or_sideways():
    violations = []
    for name, path in _modules():
        source = _unit(name)
        for target, line in _imports(name, path):
            dest = _unit(target)
            if dest != source and LAYER_OF[dest] >= LAYER_OF[source]:
                violations.append(f"{path.relative_to(REPO)}:{line}: {source} (layer {LAYER_OF[source]}) "
                                  f"imports {target} (layer {LAYER_OF[dest]})")
    assert not violations, "imports against docs/architecture.md:\n" + "\n".join(violations)


def test_the_rule_catches_an_upward_import(tmp_path, monkeypatch):
    """The checker itself: a lazy upward import inside a function is found."""
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from prn_edge.eval.evaluate import evaluate\n    return evaluate\n")
    found = list(_imports("prn_edge.data.bad", bad))
    assert found == [("prn_edge.eval.evaluate", 2)]
    assert LAYER_OF[_unit(found[0][0])] > LAYER_OF["data"]
