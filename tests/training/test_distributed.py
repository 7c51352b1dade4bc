"""torch.distributed training (gloo, CPU): 2 processes started by torchrun equal 1 process
with the same global batch, and a 2-process run resumed under 2 processes equals an
uninterrupted one. float64, so the only difference is the order of floating-point sums."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from training_helpers import tiny_config, write_ethanol

from forcefield.model.serialization import read_checkpoint

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone"]


def _train(cfg: dict, folder: Path, nproc: int, *extra: str) -> subprocess.CompletedProcess:
    path = folder.parent / f"{folder.name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    cli = ["-m", "forcefield", "train", str(path), "--output", str(folder), *extra]
    cmd = [*TORCHRUN, f"--nproc_per_node={nproc}", *cli] if nproc > 1 else [sys.executable, *cli]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    return r


def _config(train: Path, **training) -> dict:
    # 24 train structures, global batch 4: 6 steps per epoch; 4 epochs = 24 optimizer steps
    base = {"max_epochs": 4, "batch_size": 4, "lr": 0.01, "warmup_steps": 3, "num_threads": 1}
    return tiny_config(train, training={**base, **training})


def _assert_close(a: dict, b: dict, atol: float) -> None:
    for k in a["raw_model_state"]:
        x, y = a["raw_model_state"][k], b["raw_model_state"][k]
        assert torch.allclose(x, y, rtol=0, atol=atol), (k, float((x - y).abs().max()))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ddp")
    train = write_ethanol(tmp / "train.xyz", n=32)
    cfg = _config(train)  # DeNS on (tiny_config): its draws must not depend on the rank layout
    one = _train(cfg, tmp / "one", 1)
    two = _train(cfg, tmp / "two", 2)
    return tmp, train, one, two


def test_two_processes_equal_one(runs):
    tmp, _, one, two = runs
    a, b = read_checkpoint(tmp / "one" / "last.ckpt"), read_checkpoint(tmp / "two" / "last.ckpt")
    assert a["schedule"]["step"] == b["schedule"]["step"] == 24
    _assert_close(a, b, 1e-10)
    for ra, rb in zip(a["rows"], b["rows"], strict=True):
        assert ra["valid_loss"] == pytest.approx(rb["valid_loss"], rel=1e-10)
        assert ra["train_loss"] == pytest.approx(rb["train_loss"], rel=1e-10)
    assert any(r["train_dens_loss"] > 0 for r in b["rows"])
    # only rank 0 reports and writes
    assert two.stdout.count("trained 4 epochs") == 1


def test_resume_under_two_processes_equals_uninterrupted(runs):
    tmp, train, _, _ = runs
    # DeNS off: its coefficient decays over max_epochs, which the resumed run changes
    cfg = _config(train, final_stage={"enabled": False})
    cfg["dens"] = {"enabled": False}
    _train(cfg, tmp / "straight", 2)
    _train({**cfg, "training": {**cfg["training"], "max_epochs": 2}}, tmp / "resumed", 2)
    _train(cfg, tmp / "resumed", 2, "--resume")
    a, b = read_checkpoint(tmp / "straight" / "last.ckpt"), read_checkpoint(tmp / "resumed" / "last.ckpt")
    assert a["epoch"] == b["epoch"] == 4
    _assert_close(a, b, 0.0)
    assert a["schedule"] == b["schedule"]
