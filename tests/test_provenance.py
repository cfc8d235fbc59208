"""Provenance of results: the commit of this checkout, package versions, the machine."""
from __future__ import annotations

import json
import subprocess

import numpy as np
from conftest import REPO

from prn_edge.provenance import git_commit, package_versions, provenance


def test_commit_is_this_checkouts_head():
    head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True)
    if head.returncode != 0:
        assert git_commit() is None
        return
    record = git_commit()
    assert record["commit"] == head.stdout.strip() and isinstance(record["dirty"], bool)


def test_a_folder_inside_another_repository_reports_no_commit(tmp_path):
    # An installed copy in a virtualenv inside some project must not claim that project's commit.
    assert git_commit(REPO / "tests") is None
    assert git_commit(tmp_path) is None


def test_versions_and_machine_are_plain_json():
    versions = package_versions(("numpy", "surely-not-an-installed-package"))
    assert versions == {"numpy": np.__version__, "surely-not-an-installed-package": None}
    record = provenance()
    assert set(record) == {"git", "packages", "machine"} and record["machine"]["cores"] >= 1
    json.dumps(record)
