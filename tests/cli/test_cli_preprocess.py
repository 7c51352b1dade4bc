"""`forcefield preprocess` -> `train` on the dataset (its own valid split, its test split
evaluated at the end) -> `evaluate` on the dataset, through the command line."""

from __future__ import annotations

import json

import yaml
from training_helpers import ETHANOL_E0, tiny_config, write_ethanol
from typer.testing import CliRunner

from forcefield.cli.app import app

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_preprocess_train_evaluate(tmp_path):
    train = write_ethanol(tmp_path / "train.xyz", n=16)
    test = write_ethanol(tmp_path / "test.xyz", n=4, start=600)
    h5 = tmp_path / "data.h5"
    r = invoke("preprocess", train, "-o", h5, "--valid", "0.25", "--test", test, "--isolated-atoms", ETHANOL_E0)
    assert r.exit_code == 0, r.output
    assert "16 structures (12 train, 4 valid, 0 test" not in r.output  # the test file is stored too
    assert "20 structures (12 train, 4 valid, 4 test" in r.output
    # a second run never replaces the file silently
    again = invoke("preprocess", train, "-o", h5)
    assert again.exit_code == 2 and "already exists" in again.output
    cfg = tiny_config(h5, training={"max_epochs": 1})
    cfg["data"] = {"train": str(h5), "test": str(h5)}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    r = invoke("train", tmp_path / "c.yaml", "-o", tmp_path / "run")
    assert r.exit_code == 0, r.output
    assert "trained 1 epochs (3 steps)" in r.output and "test (4 structures)" in r.output
    metrics = json.loads((tmp_path / "run" / "test_metrics.json").read_text())
    assert metrics["n_structures"] == 4 and metrics["forces_mae"] > 0
    r = invoke("evaluate", tmp_path / "run" / "best.ckpt", h5)
    assert r.exit_code == 0, r.output
    assert f"{metrics['forces_mae']:.4f}" in r.output  # the same numbers from the CLI


def test_preprocess_bad_input_is_one_line(tmp_path):
    bad = tmp_path / "bad.xyz"
    bad.write_text("2\nenergy=1.0 Properties=species:S:1:pos:R:3\nC 0 0 0\nO 0 0 0.01\n")
    r = invoke("preprocess", bad, "-o", tmp_path / "x.h5", "--require", "energy")
    assert r.exit_code == 2
    assert r.output.strip().count("\n") == 0 and "bad.xyz: frame 0: atoms 0 and 1 are" in r.output
    assert not (tmp_path / "x.h5").exists()
