"""Nothing a user does loses a run, leaks a traceback or kills the process: degenerate cells,
coincident atoms, species without data, all-zero loss weights, outputs that are folders or
files, file permissions, float32 far from the origin, partial labels, `~` in paths, foreign
.pt files and the atomic writer's temporary files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import ase.io
import numpy as np
import pytest
import torch
import yaml
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator
from training_helpers import ETHANOL_E0, tiny_config, write_ethanol
from typer.testing import CliRunner

from forcefield.cli.app import app
from forcefield.errors import InputError

runner = CliRunner()
from paths import ROOT  # noqa: E402


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def user_error(result, *needles):
    """Exit code 2, one line on stderr naming every needle, no traceback."""
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for needle in needles:
        assert str(needle) in lines[0], (needle, lines[0])
    return lines[0]


def snapshot(folder: Path) -> dict:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def with_umask(mask, fn, *args, **kwargs):
    old = os.umask(mask)
    try:
        return fn(*args, **kwargs)
    finally:
        os.umask(old)


def mode(path) -> int:
    return os.stat(path).st_mode & 0o777


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """A trained tiny run (one epoch, umask 0o022) whose files later errors must leave alone."""
    d = tmp_path_factory.mktemp("user_errors")
    write_ethanol(d / "train.xyz", n=12)
    write_ethanol(d / "test.xyz", n=5, start=600)
    cfg = tiny_config(d / "train.xyz", training={"max_epochs": 1})
    (d / "config.yaml").write_text(yaml.safe_dump(cfg))
    result = with_umask(0o022, invoke, "train", d / "config.yaml", "-o", d / "run")
    assert result.exit_code == 0, result.output
    return {"dir": d, "run": d / "run", "config": cfg}


def write_config(d: Path, name: str, cfg: dict) -> Path:
    (d / name).write_text(yaml.safe_dump(cfg))
    return d / name


def ethanol_with(d: Path, name: str, edit, n: int = 12) -> Path:
    """The 12 training frames with `edit(frames)` applied, written to d/name."""
    frames = ase.io.read(d / "train.xyz", index=f":{n}")
    for a in frames:
        a.calc = SinglePointCalculator(a, energy=a.get_potential_energy(), forces=a.get_forces())
    edit(frames)
    ase.io.write(d / name, frames, format="extxyz")
    return d / name


# ----------------------------------------------------------------- 4. degenerate cells

DEGENERATE = {
    "TTF, b = 0": ("[True, True, False]", "[[3, 0, 0], [0, 0, 0], [0, 0, 0]]", "cell vector 1"),
    "FFT, c = 0": ("[False, False, True]", "[[3, 0, 0], [0, 3, 0], [0, 0, 0]]", "cell vector 2"),
    "TTT, a = b": ("True", "[[3, 0, 0], [3, 0, 0], [0, 0, 3]]", "linearly dependent"),
}


@pytest.mark.parametrize("case", DEGENERATE)
def test_degenerate_cell_in_calculator_is_an_input_error(case):
    """In a subprocess: vesin used to die with SIGFPE (or a C++ exception) here."""
    pbc, cell, needle = DEGENERATE[case]
    script = textwrap.dedent(f"""
        import ase
        from forcefield.calculator import ForceFieldCalculator
        from forcefield.errors import InputError
        from forcefield.model.forcefield import ForceField
        m = ForceField.from_config({{"species": ["Cu"], "r_max": 4.0, "num_layers": 1, "channels": 4,
                                    "lmax": 1, "num_basis": 4, "radial_hidden": 8, "dtype": "float64"}})
        a = ase.Atoms("Cu2", positions=[[0, 0, 0], [1.5, 0, 0]], pbc={pbc}, cell={cell})
        a.calc = ForceFieldCalculator(m)
        try:
            a.get_potential_energy()
        except InputError as exc:
            print("InputError:", exc)
    """)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300, env=env, cwd=ROOT
    )
    assert proc.returncode == 0, (proc.returncode, proc.stderr[-2000:])
    assert "InputError: structure:" in proc.stdout and needle in proc.stdout, proc.stdout


def test_one_cell_check_for_reader_and_graph(tmp_path):
    import forcefield.data.frames as frames_module
    from forcefield.data.graph import build_graph, check_cell

    assert frames_module.check_cell is check_cell
    path = tmp_path / "cells.xyz"
    ok = Atoms("Cu2", positions=[[0, 0, 0], [1.5, 0, 0]], cell=[3, 3, 3], pbc=True)
    bad = Atoms(
        "Cu2", positions=[[0, 0, 0], [1.5, 0, 0]], cell=[[3, 0, 0], [0, 0, 0], [0, 0, 0]], pbc=[True, True, False]
    )
    ase.io.write(path, [ok, bad], format="extxyz")
    from forcefield.data.frames import read_frames

    with pytest.raises(InputError, match=rf"{path}: frame 1: periodic along cell vector 1"):
        read_frames(path)
    # a periodic direction far thinner than the cutoff would need millions of images: refused
    # by the graph builder and by the neighbour count of the statistics (before training)
    from forcefield.data.frames import Frame
    from forcefield.data.statistics import avg_num_neighbors

    thin = Frame(
        numbers=[29], positions=[[0, 0, 0]], cell=np.diag([3.0, 3.0, 1e-4]), pbc=[True] * 3, source="thin.xyz:4"
    )
    with pytest.raises(
        InputError, match="thin.xyz: frame 4: the cell is only 0.0001 Å thick along periodic cell vector 2"
    ):
        build_graph(thin.numbers, thin.positions, thin.cell, thin.pbc, ["Cu"], 5.0, "thin.xyz: frame 4")
    with pytest.raises(InputError, match="thin.xyz: frame 4: the cell is only"):
        avg_num_neighbors([thin], 5.0)


# ----------------------------------------------------------------- 5. coincident atoms


def test_coincident_atoms_in_calculator():
    from model_utils import make_model

    from forcefield import ForceFieldCalculator

    model = make_model("float64", seed=5, species=["Cu", "Au"], channels=4, lmax=1)
    atoms = Atoms("CuAuCu", positions=[[0, 0, 0], [2.5, 0, 0], [2.5, 0.05, 0]])
    atoms.calc = ForceFieldCalculator(model)
    with pytest.raises(InputError, match=r"atoms 1 and 2 are 0\.05 Å apart"):
        atoms.get_potential_energy()
    # through a periodic image, too
    atoms = Atoms("Cu2", positions=[[0.02, 1, 1], [2.97, 1, 1]], cell=[3, 3, 3], pbc=True)
    atoms.calc = ForceFieldCalculator(model)
    with pytest.raises(InputError, match=r"atoms 0 and 1 are 0\.05 Å apart"):
        atoms.get_forces()


def test_coincident_atoms_in_training_and_evaluation(work):
    d, run = work["dir"], work["run"]
    kept = snapshot(run)

    def duplicate(frames):
        frames[7].positions[4] = frames[7].positions[2] + [0.03, 0.0, 0.0]

    bad = ethanol_with(d, "coincident.xyz", duplicate)
    cfg = dict(work["config"], data=dict(work["config"]["data"], train=str(bad)))
    user_error(
        invoke("train", write_config(d, "coincident.yaml", cfg), "-o", d / "fresh"), f"{bad}: frame 7", "atoms 2 and 4"
    )
    assert snapshot(run) == kept and not (d / "fresh").exists()
    user_error(invoke("evaluate", run / "best.ckpt", bad), f"{bad}: frame 7", "atoms 2 and 4")


# ----------------------------------------------------------------- 6. species without data


def test_species_without_data_is_refused(work):
    from forcefield.training.config import load_config
    from forcefield.training.datasets import fit_normalization, load_datasets

    d, run = work["dir"], work["run"]
    kept = snapshot(run)
    cfg = dict(work["config"], model=dict(work["config"]["model"], species=["H", "C", "F", "N", "O"]))
    user_error(invoke("train", write_config(d, "fluorine.yaml", cfg), "-o", d / "fresh"), "'F'", "normalization.e0")
    assert snapshot(run) == kept and not (d / "fresh").exists()
    # with its E0 in normalization.e0 it is fine (N's comes from data.isolated_atoms): shift = E0
    cfg["normalization"] = {"e0": {"F": -2713.0}}
    loaded = load_config(cfg)
    stats = fit_normalization(loaded, load_datasets(loaded))
    assert stats.shift["F"] == stats.e0["F"] == -2713.0
    assert stats.shift["N"] == stats.e0["N"] == pytest.approx(-1479.0665594928669)
    assert stats.source["e0"]["F"] == "given" and stats.source["e0"]["N"] == "isolated_atoms"


# ----------------------------------------------------------------- 7. tracebacks for ordinary mistakes


def test_all_loss_weights_zero(work):
    d, run = work["dir"], work["run"]
    kept = snapshot(run)
    cfg = dict(work["config"])
    cfg["training"] = dict(cfg["training"], energy_weight=0.0, forces_weight=0.0, stress_weight=0.0)
    user_error(
        invoke("train", write_config(d, "zero.yaml", cfg), "-o", d / "fresh"),
        "energy_weight",
        "forces_weight",
        "stress_weight",
    )
    # stress_weight > 0 without any stress in the data is the same mistake
    cfg["training"]["stress_weight"] = 1.0
    user_error(invoke("train", write_config(d, "zero_stress.yaml", cfg), "-o", d / "fresh"), "stress")
    # the final stage's own weights, too
    cfg["training"] = dict(
        work["config"]["training"], final_stage={"energy_weight": 0.0, "forces_weight": 0.0, "stress_weight": 0.0}
    )
    user_error(
        invoke("train", write_config(d, "zero_final.yaml", cfg), "-o", d / "fresh"),
        "training.final_stage.energy_weight",
    )
    assert snapshot(run) == kept and not (d / "fresh").exists()


def test_outputs_of_the_wrong_kind(work):
    d, run = work["dir"], work["run"]
    kept = snapshot(run)
    folder = d / "a_folder"
    folder.mkdir(exist_ok=True)
    user_error(invoke("export", run / "best.ckpt", "-o", folder), str(folder), "directory")
    user_error(invoke("evaluate", run / "best.ckpt", d / "test.xyz", "--json", folder), str(folder))
    user_error(invoke("evaluate", run / "best.ckpt", d / "test.xyz", "--plot", folder), str(folder))
    assert list(folder.iterdir()) == []
    a_file = d / "a_file.txt"
    a_file.write_text("keep me\n")
    user_error(invoke("train", d / "config.yaml", "-o", a_file), str(a_file))
    user_error(invoke("train", d / "config.yaml", "-o", a_file / "run"), str(a_file))
    user_error(invoke("evaluate", run / "best.ckpt", d / "test.xyz", "--json", a_file / "m.json"), str(a_file))
    user_error(invoke("export", run / "best.ckpt", "-o", a_file / "m.pt"), str(a_file))
    assert a_file.read_text() == "keep me\n"
    assert snapshot(run) == kept


# ----------------------------------------------------------------- 8. file modes


def test_written_files_get_the_umask_mode(work, tmp_path):
    from forcefield.atomic_io import atomic_path, save_torch, write_bytes, write_text
    from forcefield.data.frames import read_frames, write_frames
    from forcefield.export.torchscript import export_model

    run = work["run"]
    for name in ("best.ckpt", "last.ckpt", "metrics.csv", "config.yaml", "learning_curve.png"):
        assert mode(run / name) == 0o644, name  # trained under umask 0o022
    frames = read_frames(work["dir"] / "test.xyz", index=":2")
    for mask, expected in ((0o022, 0o644), (0o077, 0o600), (0o027, 0o640)):
        d = tmp_path / f"m{mask:o}"
        with_umask(mask, save_torch, {"x": 1}, d / "a.ckpt")
        with_umask(mask, write_text, "epoch\n1\n", d / "metrics.csv")
        with_umask(mask, write_bytes, b"\x00\x01", d / "b.bin")
        with_umask(mask, write_frames, frames, d / "frames.xyz")

        def executable(d=d):
            with atomic_path(d / "lib.so", mode=0o777) as tmp:
                tmp.write_bytes(b"ELF")

        with_umask(mask, executable)
        for name in ("a.ckpt", "metrics.csv", "b.bin", "frames.xyz"):
            assert mode(d / name) == expected, (mask, name)
        assert mode(d / "lib.so") == 0o777 & ~mask
        assert [p.name for p in d.iterdir() if p.name.endswith(".tmp")] == []
    with_umask(0o077, export_model, run / "best.ckpt", tmp_path / "model.pt")
    assert mode(tmp_path / "model.pt") == 0o600


def test_interrupt_removes_the_temporary_file(tmp_path):
    from forcefield.atomic_io import atomic_path, write_text

    target = tmp_path / "metrics.csv"
    write_text("old\n", target)
    with pytest.raises(KeyboardInterrupt):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            assert tmp.name.startswith(".metrics.csv.") and tmp.name.endswith(".tmp")
            assert target.read_text() == "old\n"
            raise KeyboardInterrupt
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.csv"]
    assert target.read_text() == "old\n"


def test_kill_9_never_leaves_an_empty_file_under_the_final_name(tmp_path):
    """A process killed mid-write leaves only a stale .*.tmp; the next write ignores it."""
    script = textwrap.dedent(f"""
        import os, signal
        from forcefield.atomic_io import atomic_path
        with atomic_path({str(tmp_path / "new.json")!r}) as tmp:
            os.kill(os.getpid(), signal.SIGKILL)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == -9
    names = [p.name for p in tmp_path.iterdir()]
    assert "new.json" not in names
    assert len(names) == 1 and names[0].startswith(".new.json.") and names[0].endswith(".tmp")
    from forcefield.atomic_io import write_text

    write_text("{}\n", tmp_path / "new.json")
    assert (tmp_path / "new.json").read_text() == "{}\n"


# ----------------------------------------------------------------- 9. float32 far from the origin


def test_float32_calculator_far_from_origin():
    from ase.build import molecule
    from model_utils import make_model

    from forcefield import ForceFieldCalculator

    model = make_model("float32", seed=3, species=["H", "C", "O"], channels=4, lmax=1)
    near = molecule("CH3CH2OH")
    near.calc = ForceFieldCalculator(model)
    f_ref, e_ref = near.get_forces(), near.get_potential_energy()
    for offset in ([1e5, 0, 0], [1e5, -2e4, 3e4]):
        far = near.copy()
        far.positions += offset
        far.calc = ForceFieldCalculator(model)
        scale = np.abs(f_ref).max()
        assert np.abs(far.get_forces() - f_ref).max() < 1e-5 * scale
        assert far.get_potential_energy() == pytest.approx(e_ref, rel=1e-6)
    # a periodic cell whose atoms drifted many cells away (unwrapped MD positions)
    cell = Atoms("CO", positions=[[0.5, 0.5, 0.5], [1.6, 0.7, 0.4]], cell=[4.0, 4.2, 4.4], pbc=True)
    cell.calc = ForceFieldCalculator(model)
    f_cell = cell.get_forces()
    drifted = cell.copy()
    drifted.positions[1] += 2500 * drifted.cell[0] - 1700 * drifted.cell[2]
    drifted.calc = ForceFieldCalculator(model)
    assert np.abs(drifted.get_forces() - f_cell).max() < 1e-5 * np.abs(f_cell).max()


# ----------------------------------------------------------------- 10. smaller ones


def test_evaluate_reports_counts_per_quantity(work):
    d, run = work["dir"], work["run"]

    def drop_energies(frames):
        for k in (1, 3):
            frames[k].calc = SinglePointCalculator(frames[k], forces=frames[k].get_forces())

    partial = ethanol_with(d, "partial.xyz", drop_energies, n=5)
    result = invoke("evaluate", run / "best.ckpt", partial, "--json", d / "partial.json")
    assert result.exit_code == 0, result.output
    metrics = json.loads((d / "partial.json").read_text())
    assert metrics["n_structures"] == 5 and metrics["n_energy"] == 3 and "n_forces" not in metrics
    assert "(3 structures)" in result.stdout and "(5 structures)" in result.stdout

    def drop_all(frames):
        for a in frames:
            a.calc = None

    unlabelled = ethanol_with(d, "unlabelled.xyz", drop_all, n=3)
    before = (d / "partial.json").read_bytes()
    user_error(
        invoke("evaluate", run / "best.ckpt", unlabelled, "--json", d / "partial.json"),
        str(unlabelled),
        "nothing to score",
    )
    assert (d / "partial.json").read_bytes() == before


def test_valid_fraction_named_as_such(work, tmp_path):
    write_ethanol(tmp_path / "one.xyz", n=1)
    cfg = tiny_config(tmp_path / "one.xyz", data={"valid": 0.2})
    line = user_error(
        invoke("train", write_config(tmp_path, "one.yaml", cfg), "-o", tmp_path / "run"), "data.valid fraction 0.2"
    )
    assert not line.startswith("error: 0.2:")
    assert not (tmp_path / "run").exists()


def test_e0_error_names_energy_key(work, tmp_path):
    cfg = tiny_config(work["dir"] / "train.xyz", data={"energy_key": "my_energy"})
    user_error(
        invoke("train", write_config(tmp_path, "key.yaml", cfg), "-o", tmp_path / "run"),
        str(ETHANOL_E0),
        "isolated atom",
        "'my_energy'",
    )


def test_tilde_in_paths(work, tmp_path, monkeypatch):
    from forcefield.data.frames import read_frames

    monkeypatch.setenv("HOME", str(tmp_path))
    write_ethanol(tmp_path / "home.xyz", n=3)
    assert len(read_frames("~/home.xyz")) == 3
    result = invoke("evaluate", work["run"] / "best.ckpt", "~/home.xyz", "--json", "~/home.json")
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "home.json").read_text())["n_structures"] == 3


def test_foreign_pt_file_is_one_line_without_warning(work, tmp_path):
    from forcefield import ForceFieldCalculator

    foreign = tmp_path / "foreign.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), str(foreign))
    pickled = tmp_path / "weights.pt"
    torch.save({"weight": torch.zeros(2)}, pickled)
    for path in (foreign, pickled):
        user_error(invoke("evaluate", path, work["dir"] / "test.xyz"), str(path))
        user_error(invoke("export", path, "-o", tmp_path / "out.pt"), str(path))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with pytest.raises(InputError, match=str(path)):
                ForceFieldCalculator(path)
        assert not [w for w in caught if issubclass(w.category, UserWarning)], [str(w.message) for w in caught]
    assert not (tmp_path / "out.pt").exists()


# ----------------------------------------------------------------- 11. bugs keep their traceback


@pytest.mark.parametrize("bug", [ValueError("internal bug"), KeyError("internal bug"), RuntimeError("internal bug")])
def test_an_internal_bug_is_not_a_user_error(tmp_path, monkeypatch, bug):
    """Only InputError, PluginBuildError and OSError are user errors; a ValueError from a bug
    (here: raised inside export_model) propagates with its traceback instead of becoming a
    one-line `error:` with exit code 2."""
    import forcefield.export.torchscript as torchscript

    def broken(*args, **kwargs):
        raise bug

    monkeypatch.setattr(torchscript, "export_model", broken)
    result = invoke("export", tmp_path / "any.ckpt", "-o", tmp_path / "m.pt")
    assert result.exit_code not in (0, 2), (result.exit_code, result.output)
    assert result.exception is bug
    assert "error:" not in result.stderr


def test_user_errors_are_still_one_line(tmp_path, monkeypatch):
    import forcefield.export.torchscript as torchscript
    from forcefield.export.plugin import PluginBuildError

    for exc, needle in (
        (InputError("x.ckpt: not a forcefield checkpoint"), "x.ckpt: not a forcefield checkpoint"),
        (PluginBuildError("cmake not found"), "cmake not found"),
        (PermissionError(13, "Permission denied", "/ro/m.pt"), "/ro/m.pt: Permission denied"),
    ):

        def raising(*args, exc=exc, **kwargs):
            raise exc

        monkeypatch.setattr(torchscript, "export_model", raising)
        user_error(invoke("export", tmp_path / "any.ckpt", "-o", tmp_path / "m.pt"), needle)
