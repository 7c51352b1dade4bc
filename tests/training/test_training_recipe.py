"""The training recipe: warm-up, step-counted plateau schedule with a floor, early stopping,
the final stage, and max_time cutting an epoch short (resumable, not recorded as an epoch)."""

from __future__ import annotations

import csv
import math

import pytest
import torch
from training_helpers import tiny_config, write_ethanol

from forcefield.model.serialization import read_checkpoint
from forcefield.training.config import load_config
from forcefield.training.schedule import Schedule
from forcefield.training.trainer import Trainer


def _training(**over):
    cfg = load_config(tiny_config("unused.xyz", training=over))
    return cfg.training


def test_warmup_is_linear_then_flat():
    tr = _training(lr=0.01, warmup_steps=4, max_epochs=10)
    s = Schedule(tr, steps_per_epoch=2)
    lrs = [s.lr] + [s.after_step(0.0) for _ in range(6)]
    assert lrs == pytest.approx([0.0025, 0.005, 0.0075, 0.01, 0.01, 0.01, 0.01])


def test_plateau_patience_counts_steps_and_stops_at_floor():
    tr = _training(
        lr=0.01,
        warmup_steps=0,
        patience_steps=10,
        plateau_factor=0.5,
        lr_min_ratio=0.25,
        final_stage={"enabled": False},
    )
    s = Schedule(tr, steps_per_epoch=5)
    notes = []
    for epoch in range(20):
        for _ in range(5):
            s.after_step(0.0)
        notes.append(s.after_epoch(1.0, 5, 0.0))  # validation never improves after the first epoch
        if s.stopped:
            break
    # 10 steps = 2 epochs of 5 steps without improvement per drop: 0.01 -> 0.005 -> 0.0025 (floor)
    assert notes[2] == "lr -> 0.005" and notes[4] == "lr -> 0.0025"
    assert s.lr == pytest.approx(0.0025)
    assert s.stopped.startswith("early stop") and epoch == 6


def test_final_stage_starts_at_budget_fraction_with_its_weights():
    tr = _training(
        lr=0.01,
        warmup_steps=0,
        max_epochs=10,
        energy_weight=1.0,
        forces_weight=10.0,
        final_stage={"enabled": True, "start": 0.5, "energy_weight": 100.0, "lr": 0.001},
    )
    s = Schedule(tr, steps_per_epoch=1)
    for epoch in range(5):
        s.after_step(0.0)
        note = s.after_epoch(1.0 / (epoch + 1), 1, 0.0)
    assert s.stage == 2 and note.startswith("final stage (50% of the budget)")
    assert s.loss_weights() == {"energy": 100.0, "forces": 10.0, "stress": 1.0}
    assert s.lr == pytest.approx(0.001)


def test_tiny_run_stops_early_and_records_why(tmp_path):
    train = write_ethanol(tmp_path / "train.xyz", n=8)
    cfg = load_config(
        tiny_config(
            train,
            dens={"enabled": False},
            training={
                "max_epochs": 200,
                "batch_size": 3,
                "lr": 1e-7,
                "warmup_steps": 0,
                "patience_steps": 2,
                "lr_min_ratio": 0.5,
                "final_stage": {"enabled": True, "start": 1.0},
            },
        )
    )
    trainer = Trainer(cfg, tmp_path / "run", quiet=True)
    trainer.run()
    assert trainer.epoch < 40
    assert trainer.stop_reason.startswith("early stop")
    rows = list(csv.DictReader(open(tmp_path / "run" / "metrics.csv")))
    events = [r["event"] for r in rows if r["event"]]
    assert any(e.startswith("lr ->") for e in events)
    assert any("final stage (stage 1 converged)" in e for e in events)
    assert rows[-1]["event"].startswith("early stop") and rows[-1]["stage"] == "2"


def _state(folder):
    ckpt = read_checkpoint(folder / "last.ckpt")
    rows = [{k: repr(v) for k, v in r.items() if k not in ("time_s", "event")} for r in ckpt["rows"]]
    return ckpt, rows


def test_max_time_inside_the_first_epoch_still_validates(tmp_path):
    """A budget that ends inside the first epoch: validated at the cut, best.ckpt written."""
    train = write_ethanol(tmp_path / "train.xyz", n=16)
    cfg = tiny_config(train, dens={"enabled": False}, training={"batch_size": 2, "max_time": 1e-3})
    cut = Trainer(load_config(cfg), tmp_path / "cut", quiet=True)
    cut.run()
    assert cut.epoch == 0 and len(cut.rows) == 1
    row = cut.rows[0]
    assert math.isfinite(row["valid_loss"]) and math.isfinite(row["valid_forces_mae"])
    assert "max_time" in row["event"] and row["step"] == 1 and 0 < row["epoch"] < 1
    best = read_checkpoint(tmp_path / "cut" / "best.ckpt")
    assert best["rows"][-1]["valid_loss"] == row["valid_loss"]  # a validated model
    assert (tmp_path / "cut" / "metrics.csv").read_text().count("\n") == 2


def test_valid_every_validates_inside_epochs(tmp_path):
    train = write_ethanol(tmp_path / "train.xyz", n=16)
    cfg = tiny_config(train, dens={"enabled": False}, training={"batch_size": 2, "max_epochs": 1, "valid_every": 2})
    trainer = Trainer(load_config(cfg), tmp_path / "run", quiet=True)
    trainer.run()
    # 12 train structures / batch 2 = 6 steps: validations after steps 2 and 4, and at the epoch end
    assert [r["step"] for r in trainer.rows] == [2, 4, 6]
    assert [r["epoch"] for r in trainer.rows] == [round(2 / 6, 4), round(4 / 6, 4), 1]


def test_max_time_mid_epoch_then_resume_equals_uninterrupted(tmp_path):
    train = write_ethanol(tmp_path / "train.xyz", n=16)
    base = {
        "max_epochs": 3,
        "batch_size": 2,
        "lr": 0.01,
        "warmup_steps": 3,
        "patience_steps": 4,
        "final_stage": {"enabled": False},
        "valid_every": 1,  # the uninterrupted run validates where the cut one does
    }
    whole = Trainer(
        load_config(tiny_config(train, dens={"enabled": False}, training=base)), tmp_path / "whole", quiet=True
    )
    whole.run()

    cut_cfg = load_config(tiny_config(train, dens={"enabled": False}, training={**base, "max_time": 1e-3}))
    cut = Trainer(cut_cfg, tmp_path / "cut", quiet=True)
    cut.run()
    assert cut.epoch == 0 and len(cut.rows) == 1  # validated at the cut, not an epoch
    ckpt = read_checkpoint(tmp_path / "cut" / "last.ckpt")
    assert ckpt["epoch_state"]["next"] == 1  # stopped after its first batch

    resumed = Trainer(
        load_config(tiny_config(train, dens={"enabled": False}, training=base)),
        tmp_path / "cut",
        resume=True,
        quiet=True,
    )
    assert set(resumed.resume_changes) == {"training.max_time"}
    resumed.run()
    (a, rows_a), (b, rows_b) = _state(tmp_path / "whole"), _state(tmp_path / "cut")
    assert a["epoch"] == b["epoch"] == 3 and rows_a == rows_b
    for k in a["raw_model_state"]:
        assert torch.equal(a["raw_model_state"][k], b["raw_model_state"][k]), k
    assert a["schedule"] == b["schedule"]
