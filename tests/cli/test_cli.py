"""The `forcefield` command line end to end with typer's CliRunner:
template -> train -> evaluate -> export -> evaluate the export; user errors give one line
and a non-zero exit code, no traceback, and leave earlier results alone. Also the ASE
calculator built from a checkpoint or an exported file."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import ase.io
import numpy as np
import pytest
import yaml
from ase.calculators.singlepoint import SinglePointCalculator
from training_helpers import ETHANOL_E0, TINY_MODEL, write_ethanol
from typer.testing import CliRunner

import forcefield
from forcefield.cli.app import app

runner = CliRunner()
COMMANDS = ["template", "train", "evaluate", "export", "lammps-plugin", "demo"]
PNG = b"\x89PNG\r\n\x1a\n"


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def ok(result):
    assert result.exit_code == 0, result.output
    return result


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """A config made from `forcefield template`, edited to a tiny model and two epochs,
    and the run it trains (shared by the tests below)."""
    tmp = tmp_path_factory.mktemp("cli")
    write_ethanol(tmp / "train.xyz", n=12)
    write_ethanol(tmp / "test.xyz", n=5, start=600)
    text = ok(invoke("template")).stdout
    cfg = yaml.safe_load(text)
    cfg["data"].update(train="train.xyz", valid=0.25, isolated_atoms=str(ETHANOL_E0))
    cfg["model"].update({k: v for k, v in TINY_MODEL.items()})
    cfg["training"].update(max_epochs=2, batch_size=4, device="cpu", num_threads=1)
    (tmp / "config.yaml").write_text(yaml.safe_dump(cfg))
    result = ok(invoke("train", tmp / "config.yaml", "--output", tmp / "run"))
    return {"dir": tmp, "config": cfg, "train_stdout": result.stdout, "run": tmp / "run"}


@pytest.fixture(scope="module")
def exported(work):
    path = work["dir"] / "model.pt"
    out = ok(invoke("export", work["run"] / "best.ckpt", "-o", path)).stdout
    assert out.strip().splitlines()[-1] == str(path.resolve())
    return path


# ----------------------------------------------------------------- basics


def test_version_and_help():
    assert ok(invoke("--version")).stdout.strip() == f"forcefield {forcefield.__version__}"
    assert "Usage" in ok(invoke("--help")).stdout
    for command in COMMANDS:
        out = ok(invoke(command, "--help")).stdout
        assert "Usage" in out and command in out, command


def test_template_is_a_complete_commented_config(tmp_path):
    from forcefield.training.config import Config, load_config

    text = ok(invoke("template")).stdout
    assert text.count("#") > 20
    raw = yaml.safe_load(text)
    # every key of every section is spelled out
    assert set(raw) == set(Config.model_fields) == {"data", "model", "normalization", "dens", "training"}
    for section in raw:
        fields = Config.model_fields[section].annotation.model_fields
        assert set(raw[section]) == set(fields), section
    assert set(raw["model"]["switch"]) == {"enabled", "tau", "r_on", "r_off"}
    (tmp_path / "c.yaml").write_text(text)
    cfg = load_config(tmp_path / "c.yaml")
    assert cfg.dens.prob == 0.25 and cfg.dens.corrupt_ratio == 0.25 and cfg.dens.std == 0.05
    # DeNS defaults: off, denoising-only when enabled (the best measured regimes, bench/README.md)
    assert cfg.dens.coefficient == 5.0 and not cfg.dens.enabled
    assert not cfg.dens.energy_loss and not cfg.dens.uncorrupted_force_loss


# ----------------------------------------------------------------- train / evaluate / export


def test_train_writes_the_promised_files(work):
    run = work["run"]
    for name in ("best.ckpt", "last.ckpt", "config.yaml", "metrics.csv", "learning_curve.png"):
        assert (run / name).is_file(), name
    assert (run / "learning_curve.png").read_bytes().startswith(PNG)
    assert not [n for n in os.listdir(run) if n.endswith(".tmp")]
    with open(run / "metrics.csv") as fh:
        rows = list(csv.DictReader(fh))
    for col in ("epoch", "train_loss", "valid_energy_mae", "valid_forces_mae", "train_dens_loss"):
        assert col in rows[0], col
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    for r in rows:
        assert np.isfinite(float(r["train_loss"])) and float(r["valid_forces_mae"]) > 0
    # the resolved config reloads, with absolute data paths
    from forcefield.training.config import load_config

    resolved = load_config(run / "config.yaml")
    assert Path(resolved.data.train).is_absolute() and resolved.model.channels == TINY_MODEL["channels"]
    # the last line of stdout is the absolute path of best.ckpt
    assert work["train_stdout"].strip().splitlines()[-1] == str((run / "best.ckpt").resolve())


def test_evaluate_json_plot_export_roundtrip(work, exported):
    d, run = work["dir"], work["run"]
    test = d / "test.xyz"
    ok(invoke("evaluate", run / "best.ckpt", test, "--json", d / "ckpt.json", "--plot", d / "parity.png"))
    metrics = json.loads((d / "ckpt.json").read_text())
    assert set(metrics) == {"n_structures", "energy_mae", "energy_rmse", "forces_mae", "forces_rmse"}
    assert metrics["n_structures"] == 5
    assert 0 < metrics["energy_mae"] <= metrics["energy_rmse"]
    assert 0 < metrics["forces_mae"] <= metrics["forces_rmse"]
    assert (d / "parity.png").read_bytes().startswith(PNG)

    ok(invoke("evaluate", exported, test, "--json", d / "export.json"))
    exported = json.loads((d / "export.json").read_text())
    assert exported["n_structures"] == metrics["n_structures"]
    for k in ("energy_mae", "energy_rmse", "forces_mae", "forces_rmse"):
        assert exported[k] == pytest.approx(metrics[k], rel=1e-9), k


def test_resume_continues_the_run(work, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(work["run"], run)
    cfg = dict(work["config"], training=dict(work["config"]["training"], max_epochs=3))
    cfg["data"] = dict(cfg["data"], train=str(work["dir"] / "train.xyz"))
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))
    ok(invoke("train", tmp_path / "config.yaml", "--output", run, "--resume"))
    with open(run / "metrics.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    with open(work["run"] / "metrics.csv") as fh:
        before = list(csv.DictReader(fh))
    assert rows[:2] == before


def test_calculator_from_checkpoint_and_export(work, exported):
    from forcefield import ForceFieldCalculator
    from forcefield.model.serialization import model_from_checkpoint

    d, ckpt = work["dir"], work["run"] / "best.ckpt"
    atoms = ase.io.read(d / "test.xyz", index="0")
    atoms.calc = None
    model = model_from_checkpoint(ckpt)
    ref = ForceFieldCalculator(model)
    atoms.calc = ref
    e_ref, f_ref = atoms.get_potential_energy(), atoms.get_forces()
    atoms.calc = ForceFieldCalculator(ckpt)  # a path (Path)
    assert atoms.get_potential_energy() == e_ref
    np.testing.assert_array_equal(atoms.get_forces(), f_ref)
    atoms.calc = ForceFieldCalculator(str(ckpt))  # a path (str)
    assert atoms.get_potential_energy() == e_ref
    assert np.sum(atoms.get_potential_energies()) == pytest.approx(e_ref, rel=1e-12)
    atoms.calc = ForceFieldCalculator(exported)
    assert atoms.get_potential_energy() == pytest.approx(e_ref, rel=1e-12)
    np.testing.assert_allclose(atoms.get_forces(), f_ref, rtol=1e-9, atol=1e-12)


def test_portable_export_loads_with_torch_alone(work, exported):
    """`export --portable` leaves forcefield's operators out: the file loads in a process
    that imports torch only; the default export calls them (metadata lists them) and so
    needs `import forcefield` there. Both give the same numbers in Python."""
    portable = work["dir"] / "portable.pt"
    ok(invoke("export", work["run"] / "best.ckpt", "-o", portable, "--portable"))
    from forcefield.export.torchscript import load_exported
    from forcefield.model.fast_tp import FUSED_OPERATORS

    assert load_exported(portable)[1]["operators"] == []
    assert load_exported(exported)[1]["operators"] == list(FUSED_OPERATORS)
    probe = "import sys, torch; torch.jit.load(sys.argv[1]); assert 'forcefield' not in sys.modules"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    assert subprocess.run([sys.executable, "-c", probe, str(portable)], env=env).returncode == 0
    failed = subprocess.run([sys.executable, "-c", probe, str(exported)], env=env, capture_output=True, text=True)
    assert failed.returncode != 0 and "forcefield::channelwise_tp" in failed.stderr
    atoms = ase.io.read(work["dir"] / "test.xyz", index="0")
    from forcefield import ForceFieldCalculator

    results = []
    for path in (exported, portable):
        atoms.calc = ForceFieldCalculator(path)
        results.append((atoms.get_potential_energy(), atoms.get_forces().copy()))
    assert results[0][0] == pytest.approx(results[1][0], rel=1e-12)
    np.testing.assert_allclose(results[0][1], results[1][1], rtol=0, atol=1e-12)


# ----------------------------------------------------------------- user errors


def _bad_inputs(d: Path, cfg: dict) -> dict:
    """Write the bad files; return case -> (command args, text the one-line message must contain)."""

    def config(**edit):
        c = json.loads(json.dumps(cfg))
        for path, value in edit.items():
            *head, last = path.split("__")
            node = c
            for h in head:
                node = node[h]
            if value is None:
                node.pop(last)
            else:
                node[last] = value
        return yaml.safe_dump(c)

    frames = ase.io.read(d / "train.xyz", index=":")
    no_forces = [a.copy() for a in frames]
    for a, orig in zip(no_forces, frames):
        a.calc = SinglePointCalculator(a, energy=orig.get_potential_energy(), forces=orig.get_forces())
    no_forces[3].calc = SinglePointCalculator(no_forces[3], energy=frames[3].get_potential_energy())
    ase.io.write(d / "no_forces.xyz", no_forces)
    nitrogen = frames[0].copy()
    nitrogen.numbers[2] = 7
    nitrogen.calc = SinglePointCalculator(nitrogen, energy=-4000.0, forces=frames[0].get_forces())
    ase.io.write(d / "nitrogen.xyz", [nitrogen])
    (d / "junk.xyz").write_text("this is\nnot an extxyz file\n")

    train = str(d / "train.xyz")
    files = {
        "missing.yaml": None,
        "badkey.yaml": config(training__max_epoch=3, data__train=train),
        "badnested.yaml": config(model__switch__tua=0.1, data__train=train),
        "notyaml.yaml": "data: [1, 2\n",
        "missing_data.yaml": config(data__train=str(d / "nowhere.xyz")),
        "junk.yaml": config(data__train=str(d / "junk.xyz")),
        "no_forces.yaml": config(data__train=str(d / "no_forces.xyz")),
        "species.yaml": config(data__train=train, model__species=["H", "C"]),
    }
    run = d / "run"
    cases = {
        "missing config": (["train", d / "missing.yaml", "-o", run], "missing.yaml"),
        "misspelt key": (["train", d / "badkey.yaml", "-o", run], "training.max_epoch"),
        "misspelt nested key": (["train", d / "badnested.yaml", "-o", run], "model.switch.tua"),
        "invalid yaml": (["train", d / "notyaml.yaml", "-o", run], "notyaml.yaml"),
        "missing data file": (["train", d / "missing_data.yaml", "-o", run], "nowhere.xyz"),
        "unreadable extxyz": (["train", d / "junk.yaml", "-o", run], "junk.xyz"),
        "structure without forces": (["train", d / "no_forces.yaml", "-o", run], "frame 3 has no forces"),
        "element not in species": (["train", d / "species.yaml", "-o", run], "'O'"),
        "evaluate missing model": (["evaluate", d / "none.ckpt", d / "test.xyz"], "none.ckpt"),
        "evaluate junk model": (["evaluate", d / "junk.xyz", d / "test.xyz"], "junk.xyz"),
        "evaluate missing data": (["evaluate", run / "best.ckpt", d / "nowhere.xyz"], "nowhere.xyz"),
        "evaluate junk data": (["evaluate", run / "best.ckpt", d / "junk.xyz"], "junk.xyz"),
        "evaluate foreign element": (["evaluate", run / "best.ckpt", d / "nitrogen.xyz"], "'N'"),
        "export missing checkpoint": (["export", d / "none.ckpt", "-o", d / "x.pt"], "none.ckpt"),
    }
    for name, text in files.items():
        if text is not None:
            (d / name).write_text(text)
    return cases


@pytest.fixture(scope="module")
def bad_inputs(work):
    return _bad_inputs(work["dir"], work["config"])


def test_user_errors_one_line_no_traceback_outputs_kept(work, bad_inputs):
    d, run = work["dir"], work["run"]
    cases = bad_inputs
    kept = {p.name: p.read_bytes() for p in run.iterdir()}
    for case, (args, needle) in cases.items():
        result = invoke(*args)
        assert result.exit_code != 0, case
        assert isinstance(result.exception, SystemExit), (case, result.exception)
        assert "Traceback" not in result.output, case
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1, (case, result.stderr)
        assert lines[0].startswith("error: ") and needle in lines[0], (case, lines[0])
        assert {p.name: p.read_bytes() for p in run.iterdir()} == kept, case
    assert not (d / "x.pt").exists()


def test_resume_without_checkpoint_names_it(work, tmp_path):
    cfg = dict(work["config"], data=dict(work["config"]["data"], train=str(work["dir"] / "train.xyz")))
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    result = invoke("train", tmp_path / "c.yaml", "-o", tmp_path / "fresh", "--resume")
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert "last.ckpt: nothing to resume from" in result.stderr


def test_console_script_error_has_no_traceback(work, bad_inputs):
    """The real process (not CliRunner, which catches exceptions itself)."""
    d = work["dir"]
    proc = subprocess.run(
        [sys.executable, "-m", "forcefield.cli.app", "train", str(d / "badkey.yaml")],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=d,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr + proc.stdout
    assert proc.stderr.strip().splitlines() == [
        f"error: {d / 'badkey.yaml'}: training.max_epoch: unknown key (misspelt?)"
    ]
