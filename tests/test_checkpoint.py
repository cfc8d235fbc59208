"""checkpoint.pt: bit-exact round trip, and a one-line error for every unusable file."""
from __future__ import annotations

import os
import pickle
import zipfile

import pytest
import torch

from prn_edge.checkpoint import FORMAT, file_sha256, load_checkpoint, load_model, save_checkpoint
from prn_edge.config import get_config
from prn_edge.errors import CheckpointError, PRNError
from prn_edge.model import PRN
from prn_edge.model.backbones import build_backbone


@pytest.fixture(scope="module")
def model() -> PRN:
    torch.manual_seed(0)
    m = PRN(get_config("edge"), backbone=build_backbone("efficientnet_lite0", weights="none"))
    for bank in m.banks:
        bank.set(torch.randn(4, bank.dim))
    # Non-trivial BatchNorm statistics, so the round trip is tested on them too.
    for module in m.modules():
        if isinstance(module, torch.nn.BatchNorm2d) and module.weight.requires_grad:
            module.running_mean.uniform_(-1, 1)
            module.running_var.uniform_(0.5, 2)
    return m.eval()


@pytest.fixture(scope="module")
def saved(model, tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "checkpoint.pt"
    digest = save_checkpoint(path, model, threshold=0.42, metadata={"seed": 3, "data": "bottle", "steps": [1, 2]})
    return path, digest


def assert_one_line_error(path, match):
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    message = str(info.value)
    assert "\n" not in message and str(path) in message, message
    assert match in message, message
    return message


def test_round_trip_is_bit_exact(model, saved):
    path, digest = saved
    loaded, ckpt = load_model(path)
    assert ckpt.sha256 == digest == file_sha256(path)
    assert ckpt.threshold == pytest.approx(0.42) and ckpt.metadata["seed"] == 3
    assert ckpt.metadata["steps"] == [1, 2] and "torch_version" in ckpt.metadata
    assert ckpt.config == model.config and ckpt.num_prototypes == 4
    assert ckpt.normalization["mean"] == [0.5, 0.5, 0.5]
    original, restored = model.state_dict(), loaded.state_dict()
    assert original.keys() == restored.keys()
    for key in original:
        assert original[key].dtype == restored[key].dtype and torch.equal(original[key], restored[key]), key
    images = torch.rand(2, 3, 256, 256)
    with torch.no_grad():
        a, b = model(images), loaded(images)
    assert torch.equal(a.anomaly_map, b.anomaly_map) and torch.equal(a.score, b.score)


def test_save_is_atomic_and_refuses_non_plain_metadata(model, tmp_path):
    path = tmp_path / "checkpoint.pt"
    with pytest.raises(PRNError, match="only tensors and plain data"):
        save_checkpoint(path, model, metadata={"when": object()})
    assert os.listdir(tmp_path) == []  # nothing half-written, no temporary left
    with pytest.raises(PRNError, match="does not exist"):
        save_checkpoint(tmp_path / "missing" / "checkpoint.pt", model)


def test_missing_empty_and_directory(tmp_path):
    assert_one_line_error(tmp_path / "nope.pt", "no such checkpoint file")
    (tmp_path / "empty.pt").write_bytes(b"")
    assert_one_line_error(tmp_path / "empty.pt", "file is empty")
    assert_one_line_error(tmp_path, "not a file")


def test_truncated(saved, tmp_path):
    data = saved[0].read_bytes()
    for cut in (100, len(data) // 2, len(data) - 10):
        path = tmp_path / f"cut{cut}.pt"
        path.write_bytes(data[:cut])
        assert_one_line_error(path, "not a readable checkpoint")


def test_corrupted_tensor_bytes_are_caught_by_the_checksum(saved, tmp_path):
    src = saved[0]
    with zipfile.ZipFile(src) as archive:
        biggest = max(archive.infolist(), key=lambda info: info.file_size)
    data = bytearray(src.read_bytes())
    # Stored uncompressed: flip one byte in the middle of the largest tensor's data.
    offset = biggest.header_offset + 30 + len(biggest.filename.encode()) + len(biggest.extra) + biggest.file_size // 2
    data[offset] ^= 0x40
    path = tmp_path / "flipped.pt"
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    assert str(path) in str(info.value) and ("checksum" in str(info.value) or "readable" in str(info.value))


def test_foreign_files(model, tmp_path):
    plain = tmp_path / "state_dict.pt"
    torch.save(model.state_dict(), plain)
    assert_one_line_error(plain, "not a PRN Edge checkpoint")
    text = tmp_path / "notes.pt"
    text.write_text("hello, this is not a checkpoint\n" * 10)
    assert_one_line_error(text, "not a readable checkpoint")
    tensor = tmp_path / "tensor.pt"
    torch.save(torch.zeros(3), tensor)
    assert_one_line_error(tensor, "not a PRN Edge checkpoint")


def test_wrong_version_and_malformed_fields(saved, tmp_path):
    payload = torch.load(saved[0], weights_only=True)
    for version, hint in ((99, "upgrade prn-edge"), (0, "re-export")):
        bad = dict(payload, format_version=version)
        path = tmp_path / f"v{version}.pt"
        torch.save(bad, path)
        message = assert_one_line_error(path, f"format version {version}")
        assert hint in message
    path = tmp_path / "badconfig.pt"
    torch.save(dict(payload, config=dict(payload["config"], residual="cube")), path)
    assert_one_line_error(path, "invalid config")
    path = tmp_path / "nostate.pt"
    torch.save({k: v for k, v in payload.items() if k != "state_dict"}, path)
    assert_one_line_error(path, "'state_dict' is missing")


def test_weights_that_do_not_fit_the_config(saved, tmp_path):
    payload = torch.load(saved[0], weights_only=True)
    payload = dict(payload, config=dict(payload["config"], msa_layers=2))  # state dict has 1 layer
    path = tmp_path / "mismatch.pt"
    torch.save(payload, path)
    with pytest.raises(CheckpointError, match="weights do not fit the stored config"):
        load_model(path)


class _Exploit:
    """Unpickling this would create a marker file: a stand-in for arbitrary code."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_arbitrary_pickle_is_refused_and_never_executed(tmp_path):
    marker = tmp_path / "pwned"
    for name, payload in (("exploit.pt", {"format": FORMAT, "x": _Exploit(marker)}), ("bare.pkl", _Exploit(marker))):
        path = tmp_path / name
        if name.endswith(".pt"):
            torch.save(payload, path)
        else:
            path.write_bytes(pickle.dumps(payload))
        with pytest.raises(CheckpointError) as info:
            load_checkpoint(path)
        assert str(path) in str(info.value) and "\n" not in str(info.value)
        assert not marker.exists(), "the pickle was executed"
    assert "refused" in str(info.value) or "not a readable checkpoint" in str(info.value)


def test_a_threshold_that_is_not_a_score_is_never_saved_nor_loaded(model, tmp_path):
    """Issue 14, D4: a NaN threshold used to be saved, evaluated and exported (as invalid JSON)."""
    import math

    for bad in (float("nan"), float("inf"), -1.0, 2.0):
        with pytest.raises(PRNError, match="the decision threshold expects a number from 0 to 1"):
            save_checkpoint(tmp_path / "bad.pt", model, threshold=bad)
    assert not (tmp_path / "bad.pt").exists()
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, model, threshold=0.5)
    payload = torch.load(path, weights_only=True)
    payload["threshold"] = math.nan                  # written by an older version, or edited
    torch.save(payload, path)
    with pytest.raises(CheckpointError, match="threshold is nan, not a finite number"):
        load_checkpoint(path)
