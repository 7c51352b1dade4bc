"""pair_style forcefield: periodic images folded onto their owners.

With folding (the default; `fold no` or FORCEFIELD_FOLD=0 turns it off) a ghost atom that
is a periodic image of an atom its rank owns is no model node: edges to it point at the
owner with the shift x_image - x_owner, as the Python graph of a periodic cell. On one
rank the model then gets exactly the N owned atoms; with several ranks the ghosts of
atoms owned by other ranks stay nodes (no energy, their forces reverse-communicated).

The real model (the tiny ForceField of tests/export/conftest.py, float64, r_max 4, 2 layers)
on four periodic cells -- smaller than r_max (every atom its own neighbour many times
over), triclinic, a slab periodic in x and y only, a single atom -- folded (with LAMMPS'
atom map and with the pair style's own ID table) against unfolded and against
ForceFieldCalculator: energy, per-atom energies, forces, virial to 1e-10; the inputs
saved by FORCEFIELD_DUMP_INPUTS show N nodes, the periodic graph's edges and lattice
shifts. mpirun -np 1, 2 and 4 agree, folded and unfolded, and no rank sends an image of
an atom it owns.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Dict, List, Optional

import lammps_utils as lu
import numpy as np
import pytest
import torch
from ase import Atoms
from ase.neighborlist import neighbor_list
from toy_exported_model import write_lammps_data  # noqa: E402

from forcefield.export.lammps_runner import parse_thermo  # noqa: E402
from forcefield.export.torchscript import load_exported  # noqa: E402

SPECIES = lu.SPECIES
R_MAX = lu.R_MAX
NKTV2P_METAL = lu.NKTV2P_METAL
TOL = 1e-10


# --------------------------------------------------------------------------- structures


def _alloy(symbols_seed: int, n: int) -> List[str]:
    rng = np.random.default_rng(symbols_seed)
    symbols = list(np.where(rng.random(n) < 0.5, "Au", "Cu"))
    if n > 1:
        symbols[0], symbols[1] = "Cu", "Au"  # both species, always
    return symbols


def _wrapped(
    frac: np.ndarray, cell: np.ndarray, pbc=(True, True, True), seed: int = 0, rattle: float = 0.08
) -> np.ndarray:
    rng = np.random.default_rng(seed)
    pos = frac @ cell + rng.normal(scale=rattle, size=(len(frac), 3))
    f = np.linalg.solve(cell.T, pos.T).T
    for d in range(3):
        if pbc[d]:
            f[:, d] %= 1.0
    return f @ cell


FCC = np.array([[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]])


def small_cell() -> Atoms:
    """4 atoms, every cell vector shorter than r_max (4 A): each atom has many of its own
    images (and of every other atom) within r_max, and hundreds in the ghost shell. (FCC
    shifted by a quarter: with 2 or 4 MPI ranks every rank owns atoms.)"""
    cell = np.array([[3.7, 0.0, 0.0], [0.3, 3.6, 0.0], [-0.2, 0.25, 3.8]])
    return Atoms(_alloy(1, 4), positions=_wrapped(FCC + 0.25, cell, seed=1), cell=cell, pbc=True)


def triclinic_cell() -> Atoms:
    """2x2x2 FCC cells (32 atoms) in a strongly tilted cell."""
    cell = np.array([[7.5, 0.0, 0.0], [2.1, 7.4, 0.0], [-1.6, 1.9, 7.6]])
    frac = np.array([(b + [i, j, k]) / 2 for i in range(2) for j in range(2) for k in range(2) for b in FCC])
    return Atoms(_alloy(2, len(frac)), positions=_wrapped(frac, cell, seed=2), cell=cell, pbc=True)


def slab_cell() -> Atoms:
    """Three (100) layers of 4 atoms, periodic in x and y (5.2 A), vacuum in z."""
    a = 3.7 / np.sqrt(2.0)
    cell = np.array([[2 * a, 0.0, 0.0], [0.0, 2 * a, 0.0], [0.0, 0.0, 16.0]])
    pos = np.array(
        [
            [(i + 0.5 * (k % 2)) * a, (j + 0.5 * (k % 2)) * a, 6.0 + 1.85 * k]
            for k in range(3)
            for i in range(2)
            for j in range(2)
        ]
    )
    frac = np.linalg.solve(cell.T, pos.T).T
    pbc = (True, True, False)
    return Atoms(_alloy(3, len(pos)), positions=_wrapped(frac, cell, pbc, seed=3), cell=cell, pbc=pbc)


def one_atom_cell() -> Atoms:
    """A single atom in a triclinic cell shorter than r_max: all its neighbours are itself."""
    cell = np.array([[2.7, 0.0, 0.0], [0.5, 2.6, 0.0], [-0.4, 0.3, 2.8]])
    return Atoms(["Au"], positions=[[0.3, 0.4, 0.5]], cell=cell, pbc=True)


CASES = {"small_cell": small_cell, "triclinic": triclinic_cell, "slab": slab_cell, "one_atom": one_atom_cell}


def write_case(d: Path, atoms: Atoms) -> None:
    types = np.array([SPECIES.index(s) + 1 for s in atoms.get_chemical_symbols()])
    write_lammps_data(d / "data.lmp", atoms.positions, types, lu.lammps_cell(atoms), 2)


def boundary(atoms: Atoms) -> str:
    return " ".join("p" if p else "m" for p in atoms.pbc)


# --------------------------------------------------------------------------- LAMMPS


class Step0:
    """Step 0 of one LAMMPS run: energy, virial W (eV, LAMMPS order xx yy zz xy xz yz),
    dump rows [id type x y z fx fy fz pe] sorted by id, the dumped model inputs per rank."""

    def __init__(self, stdout: str, work: Path):
        self.stdout = stdout
        row = parse_thermo(stdout)[0]
        self.energy = row["PotEng"]
        pvir = np.array([row[f"c_vir[{k}]"] for k in range(1, 7)])
        self.virial = pvir * row["Volume"] / NKTV2P_METAL
        self.rows = lu.read_dump(work / "f.dump")[0]
        self.inputs: Dict[int, tuple] = {}
        for f in sorted(work.glob("in.pt*")):
            m = re.search(r"\.rank(\d+)$", f.name)
            self.inputs[int(m.group(1)) if m else 0] = tuple(torch.load(f))

    @property
    def forces(self) -> np.ndarray:
        return self.rows[:, 5:8]

    @property
    def energies(self) -> np.ndarray:
        return self.rows[:, 8]


def run_step0(
    work: Path,
    data: Path,
    plugin: Path,
    model: Path,
    atoms: Atoms,
    fold: Optional[str] = None,
    atom_map: bool = True,
    np_: int = 1,
    pair_extra: str = "",
    extra_env: Optional[Dict[str, str]] = None,
) -> Step0:
    """`run 0` of `atoms`; fold: FORCEFIELD_FOLD value (None: unset, the default)."""
    # lammps_run passes os.environ on: the default must not come from there
    assert fold is not None or "FORCEFIELD_FOLD" not in os.environ, "unset FORCEFIELD_FOLD for these tests"
    work.mkdir(parents=True, exist_ok=True)
    (work / "data.lmp").write_bytes(data.read_bytes())
    deck = lu.header(plugin, model, boundary=boundary(atoms))
    if not atom_map:
        assert "atom_modify map array\n" in deck
        deck = deck.replace("atom_modify map array\n", "")
    if pair_extra:
        deck = deck.replace(" device cpu\n", f" device cpu {pair_extra}\n")
    deck += """dump d all custom 1 f.dump id type x y z fx fy fz c_pea
dump_modify d format float %.17g sort id
thermo_style custom step pe vol c_vir[1] c_vir[2] c_vir[3] c_vir[4] c_vir[5] c_vir[6]
thermo_modify format float %.17g
run 0
"""
    env = {"FORCEFIELD_DUMP_INPUTS": str(work / "in.pt"), **(extra_env or {})}
    if fold is not None:
        env["FORCEFIELD_FOLD"] = fold
    proc = lu.lammps_run(work, deck, plugin, np_=np_, mpirun=np_ > 1, extra_env=env)
    return Step0(lu.ok(proc), work)


def assert_same(a: Step0, b: Step0, tol: float = TOL) -> None:
    np.testing.assert_array_equal(a.rows[:, 0], b.rows[:, 0])
    assert abs(a.energy - b.energy) < tol, (a.energy, b.energy)
    np.testing.assert_allclose(a.forces, b.forces, rtol=0, atol=tol)
    np.testing.assert_allclose(a.energies, b.energies, rtol=0, atol=tol)
    np.testing.assert_allclose(a.virial, b.virial, rtol=0, atol=tol)


# --------------------------------------------------------------------------- one rank, four cells


@pytest.fixture(scope="module", params=list(CASES))
def case_runs(request, random_models, plugin_path, tmp_path_factory):
    """One cell: LAMMPS folded (LAMMPS' atom map / the pair style's ID table), unfolded,
    and ForceFieldCalculator."""
    name = request.param
    atoms = CASES[name]()
    d = tmp_path_factory.mktemp(f"fold_{name}")
    write_case(d, atoms)
    model = random_models["f64"]
    runs = {
        "fold_map": run_step0(d / "fold_map", d / "data.lmp", plugin_path, model, atoms),
        "fold_nomap": run_step0(d / "fold_nomap", d / "data.lmp", plugin_path, model, atoms, atom_map=False),
        "unfold": run_step0(d / "unfold", d / "data.lmp", plugin_path, model, atoms, fold="0"),
    }
    return name, atoms, runs, lu.calc_results(model, atoms)


def test_folded_equals_unfolded(case_runs):
    name, atoms, runs, _ = case_runs
    assert "fold yes: periodic images of owned atoms are folded" in runs["fold_map"].stdout
    assert "fold no: periodic images are separate ghost nodes" in runs["unfold"].stdout
    assert_same(runs["fold_map"], runs["unfold"])
    assert_same(runs["fold_nomap"], runs["unfold"])
    # not vacuous: real forces (a single atom has none: every force cancels by symmetry)
    if len(atoms) > 1:
        assert np.abs(runs["unfold"].forces).max() > 0.05
    assert np.abs(runs["unfold"].virial).max() > 0.1


def test_folded_equals_calculator(case_runs):
    name, atoms, runs, ref = case_runs
    for key in ("fold_map", "fold_nomap"):
        r = runs[key]
        np.testing.assert_allclose(r.rows[:, 2:5], atoms.positions, rtol=0, atol=1e-12)
        assert abs(r.energy - ref["energy"]) < TOL
        np.testing.assert_allclose(r.forces, ref["forces"], rtol=0, atol=TOL)
        np.testing.assert_allclose(r.energies, ref["energies"], rtol=0, atol=TOL)
        if "stress" in ref:  # ASE stress = -W / V (xx yy zz yz xz xy)
            w = -ref["stress"][lu.VOIGT_ASE_TO_LAMMPS] * atoms.get_volume()
            np.testing.assert_allclose(r.virial, w, rtol=0, atol=TOL)


def test_folded_inputs_are_the_periodic_graph(case_runs, random_models):
    """On one rank the model gets exactly the N owned atoms, the periodic graph's edges
    (one per pair within r_max and lattice shift) and lattice-vector shifts."""
    name, atoms, runs, _ = case_runs
    n = len(atoms)
    cell = atoms.cell.array
    i_ref, j_ref, s_ref = neighbor_list("ijS", atoms, R_MAX)
    assert len(i_ref) > 0
    module, _ = load_exported(random_models["f64"])
    for key in ("fold_map", "fold_nomap"):
        r = runs[key]
        assert list(r.inputs) == [0]
        pos, species, edge_index, shifts, n_local = r.inputs[0]
        assert n_local == n and pos.shape[0] == n and species.shape[0] == n
        assert edge_index.shape[1] == len(i_ref)
        vec = (pos[edge_index[1]] - pos[edge_index[0]] + shifts).numpy()
        assert np.linalg.norm(vec, axis=1).max() < R_MAX
        lattice = np.linalg.solve(cell.T, shifts.numpy().T).T
        np.testing.assert_allclose(lattice, np.round(lattice), rtol=0, atol=1e-9)
        for d in range(3):
            if not atoms.pbc[d]:
                assert np.all(np.round(lattice[:, d]) == 0)
        # the same edges as the Python graph: sorted edge vectors per centre species
        ours = np.column_stack([species[edge_index[0]].numpy(), species[edge_index[1]].numpy(), vec])
        theirs_vec = atoms.positions[j_ref] - atoms.positions[i_ref] + s_ref @ cell
        sp = np.array([SPECIES.index(s) for s in atoms.get_chemical_symbols()])
        theirs = np.column_stack([sp[i_ref], sp[j_ref], theirs_vec])
        np.testing.assert_allclose(
            ours[np.lexsort(ours.T[::-1])], theirs[np.lexsort(theirs.T[::-1])], rtol=0, atol=1e-9
        )
        assert abs(float(module(pos, species, edge_index, shifts, n_local)[0]) - r.energy) < TOL
    # without folding the images are nodes, zero shifts
    pos, _, edge_index, shifts, n_local = runs["unfold"].inputs[0]
    assert n_local == n and pos.shape[0] > n and bool(torch.all(shifts == 0))
    sent = {k: runs[k].inputs[0][0].shape[0] / n for k in ("unfold", "fold_map")}
    print(f"{name}: atoms sent per owned atom {sent['unfold']:.2f} unfolded, {sent['fold_map']:.2f} folded")


def test_fold_keyword_and_env(random_models, plugin_path, tmp_path):
    """`fold no` in pair_style wins over FORCEFIELD_FOLD=1; a bad value is an error."""
    atoms = one_atom_cell()
    write_case(tmp_path, atoms)
    model = random_models["f64"]
    r = run_step0(tmp_path / "kw", tmp_path / "data.lmp", plugin_path, model, atoms, fold="1", pair_extra="fold no")
    assert "fold no:" in r.stdout and r.inputs[0][0].shape[0] > 1
    r = run_step0(
        tmp_path / "kw_yes", tmp_path / "data.lmp", plugin_path, model, atoms, fold="0", pair_extra="fold yes"
    )
    assert "fold yes:" in r.stdout and r.inputs[0][0].shape[0] == 1
    for extra, env, msg in (
        ("fold maybe", {}, "fold 'maybe' (expected yes or no)"),
        ("", {"FORCEFIELD_FOLD": "maybe"}, "FORCEFIELD_FOLD='maybe' is not one of"),
    ):
        work = tmp_path / f"bad{len(msg)}"
        work.mkdir()
        (work / "data.lmp").write_bytes((tmp_path / "data.lmp").read_bytes())
        deck = lu.header(plugin_path, model).replace(" device cpu\n", f" device cpu {extra}\n") + "run 0\n"
        proc = lu.lammps_run(work, deck, plugin_path, extra_env=env)
        assert proc.returncode == 1 and "ERROR" in proc.stdout and msg in proc.stdout, proc.stdout[-3000:]


def test_float32_folded(random_models, plugin_path, tmp_path):
    """float32: folded and unfolded agree to float32 round-off (shifts in float32)."""
    atoms = small_cell()
    write_case(tmp_path, atoms)
    model = random_models["f32"]
    a = run_step0(tmp_path / "fold", tmp_path / "data.lmp", plugin_path, model, atoms)
    b = run_step0(tmp_path / "unfold", tmp_path / "data.lmp", plugin_path, model, atoms, fold="0")
    assert a.inputs[0][3].dtype == torch.float32 and a.inputs[0][0].shape[0] == len(atoms)
    assert a.energy == pytest.approx(b.energy, rel=2e-6)
    np.testing.assert_allclose(a.forces, b.forces, rtol=0, atol=2e-4)


# --------------------------------------------------------------------------- MPI


def _frac_mod1(pos: np.ndarray, cell: np.ndarray, pbc) -> np.ndarray:
    f = np.linalg.solve(cell.T, np.asarray(pos, dtype=np.float64).T).T
    for d in range(3):
        if pbc[d]:
            f[:, d] %= 1.0
    return f


def _match(frac: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """Index of the atom in `ref` (fractional, mod 1) that each row of `frac` is an image of."""
    diff = frac[:, None, :] - ref[None, :, :]
    diff -= np.round(diff)
    dist = np.abs(diff).max(axis=2)
    k = dist.argmin(axis=1)
    assert np.all(dist[np.arange(len(frac)), k] < 1e-9), "a node is not an image of any atom"
    return k


@pytest.fixture(scope="module", params=["bulk108", "small_cell"])
def mpi_case(request, bulk_case, random_models, plugin_path, tmp_path_factory):
    """Step 0 under mpirun -np 1, 2, 4 folded and -np 2, 4 unfolded (processors chosen
    by LAMMPS: the 4-atom cell's subdomains are much thinner than the ghost shell, so
    images of a rank's own atoms also come back through other ranks)."""
    if request.param == "bulk108":
        d0, atoms = bulk_case
        data = d0 / "data.lmp"
    else:
        atoms = small_cell()
        d0 = tmp_path_factory.mktemp("mpi_small")
        write_case(d0, atoms)
        data = d0 / "data.lmp"
    d = tmp_path_factory.mktemp(f"mpi_{request.param}")
    model = random_models["f64"]
    runs = {}
    for np_, fold in ((1, "1"), (2, "1"), (4, "1"), (2, "0"), (4, "0")):
        runs[(np_, fold)] = run_step0(d / f"np{np_}_fold{fold}", data, plugin_path, model, atoms, fold=fold, np_=np_)
    return request.param, atoms, runs


def test_mpi_ranks_agree(mpi_case):
    name, atoms, runs = mpi_case
    ref = runs[(1, "1")]
    for key, r in runs.items():
        m = re.search(r"(\d+) by (\d+) by (\d+) MPI processor grid", r.stdout)
        assert int(m.group(1)) * int(m.group(2)) * int(m.group(3)) == key[0]
        assert_same(r, ref)


def test_mpi_nodes_are_owned_atoms_and_off_rank_ghosts(mpi_case):
    """Folded, every rank sends its owned atoms and only images of atoms owned by other
    ranks; fewer nodes than unfolded, the same owned atoms."""
    name, atoms, runs = mpi_case
    cell, pbc = atoms.cell.array, atoms.pbc
    ref = _frac_mod1(atoms.positions, cell, pbc)
    for np_ in (2, 4):
        folded, unfolded = runs[(np_, "1")].inputs, runs[(np_, "0")].inputs
        assert sorted(folded) == sorted(unfolded) == list(range(np_))  # every rank owns atoms
        owned_total = 0
        ghosts = {"1": 0, "0": 0}
        for rank, (pos, species, edge_index, shifts, n_local) in folded.items():
            ids = _match(_frac_mod1(pos.numpy(), cell, pbc), ref)
            owned, ghost = ids[:n_local], ids[n_local:]
            assert len(set(owned.tolist())) == n_local
            assert not set(ghost.tolist()) & set(owned.tolist()), (np_, rank)
            owned_total += n_local
            ghosts["1"] += len(ghost)
            pos_u, _, _, shifts_u, n_local_u = unfolded[rank]
            assert n_local_u == n_local and bool(torch.all(shifts_u == 0))
            ghosts["0"] += pos_u.shape[0] - n_local_u
        assert owned_total == len(atoms)
        assert ghosts["1"] < ghosts["0"], ghosts
        print(f"{name} np {np_}: ghost nodes {ghosts['0']} unfolded, {ghosts['1']} folded ({len(atoms)} atoms)")
