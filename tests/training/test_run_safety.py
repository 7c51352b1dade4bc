"""A run folder is never silently changed: --resume refuses a changed architecture or data,
training into an existing run needs --resume or --overwrite, and a checkpoint that would need
unpickling arbitrary objects is refused before any of its code can run."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch
import yaml
from training_helpers import tiny_config, write_ethanol
from typer.testing import CliRunner

from forcefield.cli.app import app
from forcefield.model.serialization import read_checkpoint

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def one_line_error(result, *needles) -> str:
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def snapshot(folder: Path) -> dict:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    d = tmp_path_factory.mktemp("run_safety")
    write_ethanol(d / "train.xyz", n=8)
    cfg = tiny_config(d / "train.xyz", dens={"enabled": False}, training={"max_epochs": 1})
    (d / "config.yaml").write_text(yaml.safe_dump(cfg))
    result = invoke("train", d / "config.yaml", "-o", d / "run")
    assert result.exit_code == 0, result.output
    return {"dir": d, "run": d / "run", "config": cfg}


def _variant(run, name: str, **sections) -> Path:
    cfg = tiny_config(run["dir"] / "train.xyz", dens={"enabled": False}, training={"max_epochs": 1})
    for section, values in sections.items():
        cfg[section].update(values)
    path = run["dir"] / name
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.mark.parametrize(
    "section,change,key",
    [
        ("model", {"channels": 6}, "model.channels"),
        ("model", {"r_max": 4.5}, "model.r_max"),
        ("model", {"dtype": "float32"}, "model.dtype"),
        ("training", {"lr": 0.5}, "training.lr"),
        ("dens", {"enabled": True}, "dens.enabled"),
    ],
)
def test_resume_with_changed_config_is_refused(run, section, change, key):
    before = snapshot(run["run"])
    path = _variant(run, f"changed_{key}.yaml", **{section: change})
    line = one_line_error(invoke("train", path, "-o", run["run"], "--resume"), key, "--resume")
    if key == "dens.enabled":
        assert "optimizer state" in line
    assert snapshot(run["run"]) == before  # config.yaml still describes the checkpoints


def test_resume_may_extend_the_budget_and_records_it(run, tmp_path):
    import shutil

    folder = tmp_path / "run"
    shutil.copytree(run["run"], folder)
    path = _variant(run, "longer.yaml", training={"max_epochs": 2})
    result = invoke("train", path, "-o", folder, "--resume")
    assert result.exit_code == 0, result.output
    assert "training.max_epochs 1 -> 2" in result.stderr
    assert yaml.safe_load((folder / "config.yaml").read_text())["training"]["max_epochs"] == 2
    assert read_checkpoint(folder / "last.ckpt")["epoch"] == 2


def test_training_into_an_existing_run_needs_overwrite(run, tmp_path):
    import shutil

    folder = tmp_path / "run"
    shutil.copytree(run["run"], folder)
    before = snapshot(folder)
    one_line_error(
        invoke("train", run["dir"] / "config.yaml", "-o", folder), "already holds a training run", "--overwrite"
    )
    assert snapshot(folder) == before
    (folder / "test_metrics.json").write_text("{}")  # a stale file of the old run
    result = invoke("train", run["dir"] / "config.yaml", "-o", folder, "--overwrite")
    assert result.exit_code == 0, result.output
    assert not (folder / "test_metrics.json").exists()  # no file of the old run is left beside the new one
    assert read_checkpoint(folder / "last.ckpt")["epoch"] == 1


class _Payload:
    """Unpickling this object would create a file: the attack a weights-only load stops."""

    def __init__(self, target: str):
        self.target = target

    def __reduce__(self):
        return (open, (self.target, "w"))


def test_crafted_checkpoint_runs_no_code(run, tmp_path):
    target = tmp_path / "pwned"
    ckpt = read_checkpoint(run["run"] / "best.ckpt")
    ckpt["extra"] = _Payload(str(target))
    bad = tmp_path / "crafted.ckpt"
    torch.save(ckpt, bad, pickle_protocol=pickle.DEFAULT_PROTOCOL)
    assert not target.exists()
    for args in (["evaluate", bad, run["dir"] / "train.xyz"], ["export", bad, "-o", tmp_path / "m.pt"]):
        one_line_error(invoke(*args), "crafted.ckpt", "refused")
        assert not target.exists()
    from forcefield.calculator import ForceFieldCalculator
    from forcefield.errors import InputError

    with pytest.raises(InputError, match="refused"):
        ForceFieldCalculator(str(bad))
    assert not target.exists()


def test_checkpoint_of_a_newer_format_is_refused(run, tmp_path):
    from forcefield.atomic_io import save_torch

    ckpt = read_checkpoint(run["run"] / "best.ckpt")
    ckpt["version"] = 99
    path = tmp_path / "future.ckpt"
    save_torch(ckpt, path)
    one_line_error(invoke("evaluate", path, run["dir"] / "train.xyz"), "future.ckpt", "version 99")
