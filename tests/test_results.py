"""Every committed result says where it came from and which `make` target regenerates it."""
from __future__ import annotations

import json
import re

from conftest import REPO

RESULTS = REPO / "benchmarks" / "results"


def test_every_result_records_its_commit():
    for path in sorted(RESULTS.glob("*.json")):
        record = json.loads(path.read_text()).get("provenance")
        assert record and re.fullmatch(r"[0-9a-f]{40}", record["git"]["commit"]), f"{path.name}: no provenance"
    for path in sorted(RESULTS.glob("*.md")):
        line = next((ln for ln in path.read_text().splitlines() if ln.startswith("Provenance:")), None)
        assert line and re.search(r"[0-9a-f]{12}", line), f"{path.name}: no 'Provenance:' line with a commit"


def test_every_result_has_a_make_target():
    makefile = (REPO / "Makefile").read_text()
    stems = {path.name.split(".")[0].removesuffix("_curves") for path in RESULTS.iterdir()}
    for stem in sorted(stems):
        target = "results-" + {"bench_bottle": "bench"}.get(stem, stem).replace("_", "-")
        assert re.search(rf"^{re.escape(target)}:", makefile, re.MULTILINE), f"{stem}: no `make {target}`"
