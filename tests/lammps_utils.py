"""Helpers and fixtures of the LAMMPS tests with a real exported model
(tests/export/test_lammps_model.py, tests/export/test_lammps_folding.py): running a deck,
reading dumps, the calculator's reference results. Their fixtures (random_models,
bulk_case) are in tests/export/conftest.py."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Dict, Optional

import numpy as np
from ase import Atoms

from forcefield.calculator import ForceFieldCalculator
from forcefield.export import plugin as ffplugin
from forcefield.export.lammps_runner import parse_thermo  # noqa: F401  (for the tests that take this module)

SPECIES = ["Cu", "Au"]
MASSES = {"Cu": 63.546, "Au": 196.96657}
R_MAX = 4.0
NKTV2P_METAL = 1.6021765e6  # LAMMPS metal units: pressure (bar) = nktv2p * eV/A^3
VOIGT_ASE_TO_LAMMPS = [0, 1, 2, 5, 4, 3]  # ASE xx yy zz yz xz xy -> LAMMPS xx yy zz xy xz yz


def lammps_run(
    workdir: Path,
    deck: str,
    plugin: Path,
    np_: int = 1,
    mpirun: bool = False,
    timeout: float = 600,
    extra_env: Optional[Dict[str, str]] = None,
) -> subprocess.CompletedProcess:
    """Run `deck` in `workdir` (under mpirun when np_ > 1 or mpirun); stdout+stderr in .stdout."""
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "in.lammps").write_text(deck)
    env = {**os.environ, **ffplugin.lammps_env(plugin), "OMP_NUM_THREADS": "1"}
    env.pop("LAMMPS_PLUGIN_PATH", None)  # the deck loads the plugin explicitly
    env.pop("FORCEFIELD_DUMP_INPUTS", None)
    env.update(extra_env or {})
    cmd = [ffplugin.lmp_executable(), "-in", "in.lammps", "-log", "log.lammps", "-nocite"]
    if np_ > 1 or mpirun:
        cmd = [ffplugin.mpirun_executable(), "-np", str(np_)] + cmd
    return subprocess.run(
        cmd, cwd=workdir, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=timeout
    )


def header(plugin: Path, model: Path, data: str = "data.lmp", boundary: str = "p p p", elements: str = "Cu Au") -> str:
    masses = "\n".join(f"mass {k + 1} {MASSES[s]}" for k, s in enumerate(elements.split()))
    return f"""units metal
atom_style atomic
atom_modify map array
newton on
boundary {boundary}
read_data {data}
{masses}
plugin load {plugin}
pair_style forcefield {model} device cpu
pair_coeff * * {elements}
compute pea all pe/atom
compute vir all pressure NULL virial
"""


def read_dump(path: Path) -> Dict[int, np.ndarray]:
    """{timestep: rows} of a `dump custom` file (rows sorted by id, columns as dumped)."""
    lines = path.read_text().splitlines()
    out: Dict[int, np.ndarray] = {}
    k = 0
    while k < len(lines):
        assert lines[k].startswith("ITEM: TIMESTEP"), lines[k]
        step = int(lines[k + 1])
        n = int(lines[k + 3])
        start = k + 9  # TIMESTEP, step, NUMBER, n, BOX (+3 or 4 lines), ATOMS header
        while not lines[start - 1].startswith("ITEM: ATOMS"):
            start += 1
        out[step] = np.array([[float(v) for v in line.split()] for line in lines[start : start + n]])
        k = start + n
    return out


def ok(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 0, proc.stdout[-4000:]
    return proc.stdout


def lammps_cell(atoms: Atoms) -> np.ndarray:
    cell = atoms.cell.array
    assert abs(cell[0, 1]) + abs(cell[0, 2]) + abs(cell[1, 2]) == 0.0, "cell must be lower-triangular"
    return cell


def calc_results(model: Path, atoms: Atoms) -> Dict[str, np.ndarray]:
    a = atoms.copy()
    a.calc = ForceFieldCalculator(model)
    res = {"energy": a.get_potential_energy(), "forces": a.get_forces(), "energies": a.get_potential_energies()}
    if a.pbc.all():
        res["stress"] = a.get_stress()
    return res


def alloy_case(folder: Path, seed: int, tilt=(0.8, -0.5, 0.6)):
    """108 rattled atoms of a random Cu/Au FCC alloy (40% Au) in a triclinic periodic cell
    with the off-diagonal entries `tilt`, and its LAMMPS data file folder/data.lmp."""
    from toy_exported_model import write_lammps_data

    rng = np.random.default_rng(seed)
    a, n = 3.75, 3
    base = np.array([[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]])
    frac = np.array([(b + [i, j, k]) / n for i in range(n) for j in range(n) for k in range(n) for b in base])
    cell = np.diag([a * n] * 3)
    cell[1, 0], cell[2, 0], cell[2, 1] = tilt
    pos = frac @ cell + rng.normal(scale=0.12, size=(len(frac), 3))
    pos = (np.linalg.solve(cell.T, pos.T).T % 1.0) @ cell
    symbols = np.where(rng.random(len(pos)) < 0.4, "Au", "Cu")
    atoms = Atoms(list(symbols), positions=pos, cell=cell, pbc=True)
    types = np.array([SPECIES.index(s) + 1 for s in atoms.get_chemical_symbols()])
    write_lammps_data(folder / "data.lmp", atoms.positions, types, lammps_cell(atoms), 2)
    return atoms


def nve_block(steps: int) -> str:
    """The NVE run of the trajectory tests (600 K, 1 fs, forces and per-atom energies dumped
    at 0 and `steps`, thermo every 10 steps), to append to a deck's header."""
    return f"""velocity all create 600 4321 loop geom
fix nve all nve
timestep 0.001
neighbor 1.0 bin
neigh_modify every 1 delay 0 check yes
dump d all custom {steps} traj.dump id type xu yu zu vx vy vz fx fy fz c_pea
dump_modify d format float %.17g sort id
thermo_style custom step pe ke etotal c_vir[1] c_vir[2] c_vir[3] c_vir[4] c_vir[5] c_vir[6]
thermo_modify format float %.17g
thermo 10
run {steps}
"""
