"""prn-train: a real (tiny) run on bottle images, resume, DDP with gloo, preview, bad input."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import REPO
from prn_edge.checkpoint import load_checkpoint, load_model
from prn_edge.config import get_config
from prn_edge.defaults import MODEL
from prn_edge.train.cli import main as train_main

FAST = ["--config", "edge", "--batch-size", "4", "--calibration-fraction", "0.2", "--seen", "3",
        "--threads", "2", "--cache", "none-cache", "--quiet"]


@pytest.fixture(scope="module")
def tiny_category(bottle_dir, dtd_dir, tmp_path_factory) -> Path:
    """A small MVTec-layout category made of links to real bottle images (nothing copied)."""
    root = tmp_path_factory.mktemp("data")
    cat = root / "bottle"
    (cat / "train" / "good").mkdir(parents=True)
    for src in sorted((bottle_dir / "train" / "good").iterdir())[:10]:
        (cat / "train" / "good" / src.name).symlink_to(src)
    for defect in ("broken_large", "contamination"):
        (cat / "test" / defect).mkdir(parents=True)
        (cat / "ground_truth" / defect).mkdir(parents=True)
        for src in sorted((bottle_dir / "test" / defect).iterdir())[:3]:
            (cat / "test" / defect / src.name).symlink_to(src)
            mask = bottle_dir / "ground_truth" / defect / f"{src.stem}_mask.png"
            (cat / "ground_truth" / defect / mask.name).symlink_to(mask)
    (cat / "test" / "good").mkdir(parents=True)
    for src in sorted((bottle_dir / "test" / "good").iterdir())[:2]:
        (cat / "test" / "good" / src.name).symlink_to(src)
    textures = root / "dtd" / "banded"
    textures.mkdir(parents=True)
    for src in sorted((dtd_dir / "banded").iterdir())[:4]:
        (textures / src.name).symlink_to(src)
    return cat


def train(args: list[str], tmp_path: Path) -> int:
    args = [a if a != "none-cache" else str(tmp_path / "cache") for a in args]
    return train_main(args)


def test_train_writes_a_calibrated_checkpoint_with_provenance(tiny_category, tmp_path, capsys):
    out = tmp_path / "run"
    assert train(["--data", str(tiny_category), "--out", str(out), "--steps", "2", *FAST], tmp_path) == 0
    ckpt = load_checkpoint(out / "checkpoint.pt")
    data, training = ckpt.metadata["data"], ckpt.metadata["training"]
    assert data["category"] == "bottle" and len(data["seen_anomalies"]) == 3
    assert all(name.startswith("test/") and "good" not in name for name in data["seen_anomalies"])
    assert len(data["calibration_images"]) == 2 and data["num_train_normal"] == 8
    assert all(name.startswith("train/good/") for name in data["calibration_images"])
    assert data["textures"] == "builtin"           # the measured defaults ignore the dtd folder beside the data
    assert training["steps"] == 2 and training["batch_size"] == 4 and training["world_size"] == 1
    # The measured defaults (prn_edge.defaults): patch match over 1024 vectors, the prior, the blur, lr 2e-5
    # cosine and the best validated step; the checkpoint records which set it was trained with.
    assert ckpt.num_prototypes == 1024 and ckpt.metadata["defaults"] == "measured"
    assert {k: ckpt.config.to_dict()[k] for k in MODEL["measured"]} == {**MODEL["measured"], "prior_scales": [2, 3]}
    assert (training["lr"], training["lr_schedule"]) == (2e-5, "cosine")
    assert training["selection"]["method"].startswith("best validation score")
    cal = ckpt.metadata["calibration"]
    assert cal["num_images"] == 2 and ckpt.threshold == pytest.approx(max(cal["scores"]), abs=1e-6)
    # Issue 14, D10: the loss curve ends at the last step, and "final loss" is that step's loss
    # (it used to be the last *logged* one: step 1 of 2 here, since the log keeps every 10th).
    curve = training["loss_curve"]
    assert curve["step"] == [1, 2]
    printed = capsys.readouterr().out
    assert "wrote" in printed and f"final loss {curve['loss'][-1]:.4f}" in printed
    # The threshold reproduces: the held-out images score at most the threshold.
    model, _ = load_model(out / "checkpoint.pt")
    from prn_edge.data.mvtec import load_image
    images = torch.stack([torch.from_numpy(load_image(tiny_category / n)).permute(2, 0, 1)
                          for n in data["calibration_images"]]).float() / 255
    with torch.no_grad():
        scores = model(images).score
    assert float(scores.max()) == pytest.approx(ckpt.threshold, abs=1e-5)


def test_interrupted_run_resumes_to_the_same_weights(tiny_category, tmp_path):
    straight, split = tmp_path / "straight", tmp_path / "split"
    assert train(["--data", str(tiny_category), "--out", str(straight), "--steps", "2", *FAST], tmp_path) == 0
    assert train(["--data", str(tiny_category), "--out", str(split), "--steps", "1", *FAST], tmp_path) == 0
    # Without --resume an existing run is protected.
    assert train(["--data", str(tiny_category), "--out", str(split), "--steps", "2", *FAST], tmp_path) == 2
    stale = split / ".train_state.pt.k9x2.tmp"      # what a kill -9 inside a state save leaves (D9)
    stale.write_bytes(b"")
    assert train(["--data", str(tiny_category), "--out", str(split), "--steps", "2", "--resume", *FAST],
                 tmp_path) == 0
    assert not stale.exists()
    a = load_checkpoint(straight / "checkpoint.pt")
    b = load_checkpoint(split / "checkpoint.pt")
    assert b.metadata["training"]["steps"] == 2
    for key, tensor in a.state_dict.items():
        assert torch.equal(tensor, b.state_dict[key]), f"{key} differs after resume"


def test_no_prior_drops_the_measured_options_that_are_relative_to_it(tiny_category, tmp_path):
    out = tmp_path / "no-prior"
    assert train(["--data", str(tiny_category), "--out", str(out), "--steps", "1", "--no-prior", *FAST], tmp_path) == 0
    config = load_checkpoint(out / "checkpoint.pt").config
    assert not config.residual_prior and config.decoder_map_weight == 1.0 and config.score_prior_share == 0.0
    assert MODEL["measured"]["decoder_map_weight"] < 1 and MODEL["measured"]["score_prior_share"] > 0


def test_a_state_from_before_a_config_field_resumes_when_the_field_keeps_its_old_value(tiny_category, tmp_path, capsys):
    """A state written before ``decoder_map_weight`` existed reads as weight 1: resuming it under the measured
    defaults (0.75) names that field, and resuming with --decoder-map-weight 1 goes on."""
    out = tmp_path / "old"
    assert train(["--data", str(tiny_category), "--out", str(out), "--steps", "1", *FAST], tmp_path) == 0
    state_path = out / "train_state.pt"
    state = torch.load(state_path, weights_only=True)
    del state["config"]["decoder_map_weight"]
    torch.save(state, state_path)
    capsys.readouterr()
    assert train(["--data", str(tiny_category), "--out", str(out), "--steps", "2", "--resume", *FAST], tmp_path) == 2
    assert "decoder_map_weight (saved 1.0, now 0.75)" in capsys.readouterr().err
    assert train(["--data", str(tiny_category), "--out", str(out), "--steps", "2", "--resume",
                  "--decoder-map-weight", "1", *FAST], tmp_path) == 0
    assert load_checkpoint(out / "checkpoint.pt").metadata["training"]["steps"] == 2


def test_preview_writes_a_grid(tiny_category, tmp_path):
    import cv2
    out = tmp_path / "preview"
    assert train(["--data", str(tiny_category), "--out", str(out), "--preview", "6", *FAST], tmp_path) == 0
    grid = cv2.imread(str(out / "preview.png"))
    assert grid is not None and grid.shape[0] >= 256 and grid.shape[1] >= 512
    assert not (out / "checkpoint.pt").exists()


@pytest.mark.parametrize("change, message", [
    ({"--data": "/nonexistent/folder"}, "data folder does not exist"),
    ({"--batch-size": "6"}, "multiple of 4"),
    ({"--steps": "0"}, "argument --steps: expected a positive integer"),
    ({"--lr": "nan"}, "argument --lr: expected a learning rate > 0"),
    ({"--resume": None}, "nothing to resume"),
    ({"--prior-scales": "2,4"}, "--prior-scales '2,4': give distinct scales of 1, 2, 3"),
    ({"--prior-scales": "two"}, "--prior-scales 'two': give scales of 1, 2, 3 separated by commas"),
    ({"--match-pooling-border": "reflect"}, "argument --match-pooling-border: invalid choice"),
    ({"--map-smoothing": "-1"}, "argument --map-smoothing: expected a sigma >= 0"),
    ({"--map-smoothing": "40"}, "map_smoothing must be a sigma in [0, 32] pixels (image_size / 8), got 40.0"),
    ({"--decoder-map-weight": "0"}, "argument --decoder-map-weight: expected a weight from 0 to 1 (not 0)"),
    ({"--no-prior": None, "--decoder-map-weight": "0.5"},
     "decoder_map_weight 0.5 weighs the decoder against the residual prior: it needs residual_prior"),
    ({"--score-prior-share": "1.5"}, "argument --score-prior-share: expected a share from 0 to 1"),
    ({"--no-prior": None, "--score-prior-share": "0.5"},
     "score_prior_share 0.5 mixes the residual prior's score into the image score: it needs residual_prior"),
])
def test_bad_input_is_one_line_and_exit_2(tiny_category, tmp_path, capsys, change, message):
    options = dict(zip(FAST[:-1:2], FAST[1:-1:2]))  # FAST ends with the flag --quiet
    options.update({"--data": str(tiny_category), "--out": str(tmp_path / "bad"), "--steps": "1",
                    "--cache": str(tmp_path / "cache")})
    options.update(change)
    argv = [x for key, value in options.items() for x in ((key,) if value is None else (key, value))]
    try:
        code = train_main(argv + ["--quiet"])
    except SystemExit as exc:            # argparse usage errors (bad numbers)
        code = exc.code
    assert code == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("prn-train: error:")]
    assert len(err) == 1 and message in err[0], err
    assert not (tmp_path / "bad" / "checkpoint.pt").exists()


def test_ddp_two_processes_with_gloo(tiny_category, tmp_path):
    out = tmp_path / "ddp"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    argv = [a if a != "none-cache" else str(tmp_path / "cache") for a in FAST]
    argv[argv.index("--threads") + 1] = "1"
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
         "-m", "prn_edge.train.cli", "--data", str(tiny_category), "--out", str(out), "--steps", "2",
         "--device", "cpu", *argv],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ckpt = load_checkpoint(out / "checkpoint.pt")
    assert ckpt.metadata["training"]["world_size"] == 2 and ckpt.metadata["training"]["steps"] == 2
    assert ckpt.metadata["training"]["epochs"] == pytest.approx(2 * 4 * 2 / 8)


def test_sigterm_saves_the_state_as_ctrl_c_does(tiny_category, tmp_path):
    """Issue 14, D10: a service manager's stop (SIGTERM) used to lose the run; now it saves the state."""
    import signal
    import time

    out = tmp_path / "run"
    args = [a if a != "none-cache" else str(tmp_path / "cache") for a in FAST]
    # --save-every 0.001 min: the first periodic save shows that the optimisation loop runs.
    proc = subprocess.Popen([sys.executable, "-m", "prn_edge.train.cli", "--data", str(tiny_category), "--out",
                             str(out), "--steps", "100000", "--save-every", "0.001", *args], cwd=REPO,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 240
        while not (out / "train_state.pt").exists():
            assert proc.poll() is None and time.monotonic() < deadline, "training did not start"
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        err = proc.stderr.read()
        assert proc.wait(timeout=120) == 2
    finally:
        proc.kill()
    assert "interrupted at step" in err and "--resume" in err and "Traceback" not in err, err
    assert (out / "train_state.pt").is_file() and not list(out.glob("*.tmp"))


# -- issue 13: learning-rate schedule and end-point selection ---------------------------------------
def test_cosine_schedule_decays_over_the_budget_in_steps_or_minutes():
    from prn_edge.train.trainer import TrainSettings

    assert TrainSettings(steps=100).lr_schedule == "constant"      # the paper's, until measured otherwise
    by_steps = TrainSettings(steps=100, lr=1e-3, lr_schedule="cosine")
    lrs = [by_steps.lr_at(by_steps.progress(step, 0.0)) for step in range(0, 101, 10)]
    assert lrs[0] == pytest.approx(1e-3) and lrs[-1] == pytest.approx(5e-5)
    assert all(a > b for a, b in zip(lrs, lrs[1:]))
    by_minutes = TrainSettings(minutes=2.0, lr=1e-3, lr_schedule="cosine")
    assert by_minutes.lr_at(by_minutes.progress(0, 60.0)) == pytest.approx(by_steps.lr_at(0.5))
    assert by_minutes.progress(0, 500.0) == 1.0
    constant = TrainSettings(steps=10, lr=1e-3, lr_schedule="constant")
    assert constant.lr_at(0.7) == 1e-3
    with pytest.raises(Exception, match="schedule"):
        TrainSettings(steps=10, lr_schedule="step").validate()


def test_validation_set_is_held_out_normals_plus_their_synthesized_copies(tiny_category, tmp_path):
    from prn_edge.data.synthesis import SynthesisConfig
    from prn_edge.train.data import load_training_data
    from prn_edge.train.selection import make_validation_set
    from prn_edge.train.trainer import build_synthesizer

    data = load_training_data(tiny_category, image_size=256, num_seen=3, seed=0, calibration_fraction=0.2,
                              cache_dir=tmp_path / "cache")
    synthesizer = build_synthesizer(data, SynthesisConfig())
    first = make_validation_set(data.calibration, data.calibration_foreground, synthesizer, seed=0)
    again = make_validation_set(data.calibration, data.calibration_foreground, synthesizer, seed=0)
    normal, anomalous = first.counts
    assert normal == len(data.calibration) == 2 and anomalous >= 2
    assert torch.equal(first.images, again.images) and torch.equal(first.masks, again.masks)
    # The normal copies are the held-out images themselves, with empty masks.
    assert torch.equal((first.images[:2] * 255).round().to(torch.uint8), data.calibration)
    assert not first.masks[:2].any() and first.masks[2:].flatten(1).any(dim=1).all()


def test_validation_score_ranks_a_perfect_map_above_a_blind_one():
    from prn_edge.model.prn import PRNOutput
    from prn_edge.train.selection import ValidationSet, validation_score

    masks = torch.zeros(6, 1, 64, 64)
    masks[3:, :, 10:30, 20:40] = 1
    validation = ValidationSet(torch.rand(6, 3, 64, 64), masks)

    class Oracle(torch.nn.Module):      # sees the masks: the map is the defect itself
        def forward(self, images):
            index = [int(torch.nonzero((validation.images == i).all(-1).all(-1).all(-1))[0]) for i in images]
            m = masks[index]
            return PRNOutput(m, m, m.flatten(1).mean(1))

    class Blind(torch.nn.Module):
        def forward(self, images):
            m = torch.full((len(images), 1, 64, 64), 0.5)
            return PRNOutput(m, m, m.flatten(1).mean(1))

    assert validation_score(Oracle(), validation, torch.device("cpu")) == pytest.approx(1.0)
    assert validation_score(Blind(), validation, torch.device("cpu")) < 0.6


def test_the_best_validated_step_is_what_the_checkpoint_holds(tiny_category, tmp_path, monkeypatch):
    """Validation peaks at step 2 of 4: the checkpoint holds step 2's weights (the snapshot's) and says so."""
    import prn_edge.train.trainer as trainer

    peak = {0: 0.1, 1: 0.3, 2: 0.9, 3: 0.5, 4: 0.4}
    monkeypatch.setattr(trainer, "validation_score", lambda model, validation, device: peak[current["step"]])
    current = {"step": 0}
    real_validate = trainer.Trainer._validate

    def validate(self):
        current["step"] = self.step
        real_validate(self)

    monkeypatch.setattr(trainer.Trainer, "_validate", validate)
    out = tmp_path / "run"
    assert train(["--data", str(tiny_category), "--out", str(out), "--steps", "4", "--snapshot-steps", "2",
                  "--select-best", *FAST], tmp_path) == 0
    ckpt = load_checkpoint(out / "checkpoint.pt")
    selection = ckpt.metadata["training"]["selection"]
    assert selection["selected_step"] == 2 and selection["final_step"] == 4
    assert [s for s, _ in selection["scores"]] == [0, 1, 2, 3, 4]
    snapshot = load_checkpoint(out / "snapshots" / "checkpoint_step000002.pt")
    for key, tensor in snapshot.state_dict.items():
        assert torch.equal(tensor, ckpt.state_dict[key]), key
    # --defaults paper: PRN as published keeps the last step (and the paper's match, K = round(0.1 * 8), lr).
    last = tmp_path / "last"
    assert train(["--data", str(tiny_category), "--out", str(last), "--steps", "4", "--defaults", "paper", *FAST],
                 tmp_path) == 0
    paper = load_checkpoint(last / "checkpoint.pt")
    assert paper.metadata["training"]["selection"]["method"].startswith("final")
    assert paper.num_prototypes == 1 and paper.metadata["defaults"] == "paper"
    assert paper.metadata["data"]["num_textures"] == 4          # the 4 of the dtd folder beside the data
    assert paper.config == get_config("edge") and paper.metadata["training"]["lr"] == 1e-4
