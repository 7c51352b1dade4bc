"""The training loop on real data: the loss goes down, --resume continues bit for bit
(DeNS, EMA and the plateau scheduler on), and checkpoints are never half-written."""

from __future__ import annotations

import math
import os

import pytest
import torch
from training_helpers import tiny_config, write_ethanol

import forcefield.training.trainer as trainer_module
from forcefield.model.serialization import model_from_checkpoint, read_checkpoint
from forcefield.training.atomic_io import save_torch, write_text
from forcefield.training.config import load_config
from forcefield.training.trainer import Trainer


def test_loss_decreases_on_ethanol(tmp_path):
    train = write_ethanol(tmp_path / "train.xyz", n=20)
    cfg = load_config(
        tiny_config(
            train, model={"channels": 8}, training={"max_epochs": 6, "batch_size": 2, "lr": 0.02, "warmup_steps": 0}
        )
    )
    trainer = Trainer(cfg, tmp_path / "run", quiet=True)
    trainer.run()
    rows = trainer.rows
    assert [r["epoch"] for r in rows] == [1, 2, 3, 4, 5, 6]
    assert rows[-1]["valid_loss"] < 0.75 * rows[0]["valid_loss"]
    assert rows[-1]["valid_forces_mae"] < rows[0]["valid_forces_mae"]
    assert rows[-1]["train_forces_loss"] < rows[0]["train_forces_loss"]
    assert all(math.isfinite(r["train_dens_loss"]) for r in rows)
    # the DeNS coefficient decays linearly to 0 over training
    assert [r["dens_coefficient"] for r in rows] == sorted((r["dens_coefficient"] for r in rows), reverse=True)
    assert trainer.dens_coefficient(0.0) == 5.0 and trainer.dens_coefficient(0.5) == 2.5
    assert trainer.dens_coefficient(1.0) == 0.0


def _resume_config(train):
    return load_config(
        tiny_config(
            train,
            dens={"prob": 0.5},
            training={
                "max_epochs": 4,
                "batch_size": 3,
                "lr": 0.02,
                "ema_decay": 0.9,
                "scheduler": "plateau",
                "patience_steps": 1,
                "warmup_steps": 0,
                "plateau_factor": 0.5,
            },
        )
    )


def _final_state(folder):
    ckpt = read_checkpoint(folder / "last.ckpt")
    # NaN (no stress here) compares unequal to itself: compare its text
    rows = [{k: repr(v) for k, v in r.items() if k != "time_s"} for r in ckpt["rows"]]
    return ckpt, rows


def _assert_same_state(a, b):
    (ca, rows_a), (cb, rows_b) = a, b
    assert ca["epoch"] == cb["epoch"] == 4
    for key in ("model_state", "raw_model_state", "encoder_state", "head_state"):
        assert ca[key].keys() == cb[key].keys()
        for k in ca[key]:
            assert torch.equal(ca[key][k], cb[key][k]), (key, k)
    assert ca["ema"]["num_updates"] == cb["ema"]["num_updates"]
    assert ca["schedule"] == cb["schedule"]
    assert [g["lr"] for g in ca["optimizer"]["param_groups"]] == [g["lr"] for g in cb["optimizer"]["param_groups"]]
    assert rows_a == rows_b


class _Stop(Exception):
    pass


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory):
    """4 epochs in one go (shared by the resume tests)."""
    tmp = tmp_path_factory.mktemp("straight")
    train = write_ethanol(tmp / "train.xyz", n=16)
    trainer = Trainer(_resume_config(train), tmp / "run", quiet=True)
    trainer.run()
    assert any(r["train_dens_loss"] > 0 for r in trainer.rows)
    return train, _final_state(tmp / "run")


def test_resume_after_two_epochs_is_bitwise_identical(straight_run, tmp_path):
    train, reference = straight_run
    cfg = _resume_config(train)
    out = tmp_path / "run"
    first = Trainer(cfg, out, quiet=True)
    original = first.train_epoch

    def stop_after_two(*args, **kwargs):
        if first.epoch == 2:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    first.train_epoch = stop_after_two
    with pytest.raises(KeyboardInterrupt):
        first.run()
    assert read_checkpoint(out / "last.ckpt")["epoch"] == 2
    Trainer(cfg, out, resume=True, quiet=True).run()
    _assert_same_state(_final_state(out), reference)


def test_resume_after_interrupt_mid_epoch_is_bitwise_identical(straight_run, tmp_path, monkeypatch):
    """Ctrl-C in the middle of epoch 3: resuming must not count its first batches twice."""
    train, reference = straight_run
    cfg = _resume_config(train)
    out = tmp_path / "run"
    calls = {"n": 0}
    real_step = trainer_module.train_step

    def interrupt_in_epoch_three(*args, **kwargs):
        calls["n"] += 1
        # per epoch: 12 train structures / batch 3 = 4 steps
        if calls["n"] == 2 * 4 + 2:
            raise KeyboardInterrupt
        return real_step(*args, **kwargs)

    monkeypatch.setattr(trainer_module, "train_step", interrupt_in_epoch_three)
    first = Trainer(cfg, out, quiet=True)
    with pytest.raises(KeyboardInterrupt):
        first.run()
    assert calls["n"] == 10
    monkeypatch.setattr(trainer_module, "train_step", real_step)
    Trainer(cfg, out, resume=True, quiet=True).run()
    _assert_same_state(_final_state(out), reference)


def test_resume_without_checkpoint_is_a_clear_error(tmp_path):
    from forcefield.errors import InputError

    train = write_ethanol(tmp_path / "train.xyz", n=8)
    with pytest.raises(InputError, match="last.ckpt: nothing to resume from"):
        Trainer(_resume_config(train), tmp_path / "empty", resume=True, quiet=True)


# ----------------------------------------------------------------- atomic writes


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("trained")
    train = write_ethanol(tmp / "train.xyz", n=8)
    trainer = Trainer(load_config(tiny_config(train, training={"max_epochs": 1})), tmp / "run", quiet=True)
    trainer.run()
    return trainer


def _listing(folder):
    return sorted(os.listdir(folder))


@pytest.mark.parametrize("error", [OSError("No space left on device"), KeyboardInterrupt()])
def test_checkpoint_never_half_written(trained, monkeypatch, error):
    out = trained.out
    before = {name: (out / name).read_bytes() for name in ("last.ckpt", "best.ckpt")}
    files = _listing(out)
    real_save = torch.save

    def save_half_then_fail(obj, f, *args, **kwargs):
        real_save(obj, f, *args, **kwargs)
        size = os.path.getsize(f)
        with open(f, "r+b") as fh:  # a crash half-way: the file is cut short
            fh.truncate(size // 2)
        raise error

    monkeypatch.setattr(torch, "save", save_half_then_fail)
    with pytest.raises(type(error)):
        trained._save(best=True)
    with pytest.raises(type(error)):
        save_torch({"x": 1}, out / "last.ckpt")
    monkeypatch.undo()

    assert _listing(out) == files  # no temporary file left behind
    for name, data in before.items():
        assert (out / name).read_bytes() == data  # the old checkpoint, intact
    model = model_from_checkpoint(out / "last.ckpt")
    state = read_checkpoint(out / "last.ckpt")["model_state"]
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k])


def test_text_file_never_half_written(tmp_path, monkeypatch):
    target = tmp_path / "metrics.csv"
    write_text("epoch,train_loss\n1,0.5\n", target)
    import pathlib

    real = pathlib.Path.write_text

    def write_half_then_fail(self, data, *args, **kwargs):
        real(self, data[: len(data) // 2], *args, **kwargs)
        raise OSError("disk full")

    monkeypatch.setattr(pathlib.Path, "write_text", write_half_then_fail)
    with pytest.raises(OSError):
        write_text("epoch,train_loss\n1,0.5\n2,0.4\n", target)
    monkeypatch.undo()
    assert target.read_text() == "epoch,train_loss\n1,0.5\n"
    assert _listing(tmp_path) == ["metrics.csv"]
