"""Species shift fit, force scale, neighbour counts and the train/valid split."""

from __future__ import annotations

import numpy as np
import pytest
from ase.build import bulk, fcc111
from paths import DATASETS

from forcefield.data.frames import Frame, read_frames
from forcefield.data.split import extract_e0, train_valid_split
from forcefield.data.statistics import (
    avg_num_neighbors,
    composition_matrix,
    fit_species_shift,
    force_rms,
    neighbor_pairs,
)
from forcefield.errors import InputError

DATA = DATASETS
ETHANOL = DATA / "ethanol" / "train.xyz"
SILICON = DATA / "silicon" / "train.xyz"

Z = {"H": 1, "C": 6, "O": 8, "Cu": 29, "Au": 79}


def _frame(symbols, energy=None, forces=None, positions=None, source=""):
    n = len(symbols)
    if positions is None:
        positions = np.arange(3 * n, dtype=float).reshape(n, 3)
    return Frame(
        numbers=[Z[s] for s in symbols],
        positions=positions,
        cell=np.zeros((3, 3)),
        pbc=[False] * 3,
        energy=energy,
        forces=forces,
        stress=None,
        source=source,
    )


def _synthetic(mu, n_frames, rng, noise=0.0, max_count=6):
    species = list(mu)
    frames = []
    for k in range(n_frames):
        counts = rng.integers(0, max_count + 1, size=len(species))
        if counts.sum() == 0:
            counts[0] = 1
        symbols = [s for s, c in zip(species, counts) for _ in range(c)]
        e = sum(mu[s] for s in symbols) + noise * rng.normal()
        frames.append(_frame(symbols, energy=e, source=f"syn.xyz:{k}"))
    return frames


# ------------------------------------------------------------ species shift


def test_least_squares_recovers_known_shifts():
    rng = np.random.default_rng(1)
    mu = {"H": -13.6, "C": -1025.3, "O": -2035.6}
    frames = _synthetic(mu, 40, rng)
    fit = fit_species_shift(frames, ["H", "C", "O"])
    assert fit == pytest.approx(mu, abs=1e-8)
    # full rank: a baseline e0 does not change the least-squares answer
    fit_e0 = fit_species_shift(frames, ["H", "C", "O"], e0={"H": 0.0, "C": 5.0, "O": -1.0})
    assert fit_e0 == pytest.approx(mu, abs=1e-8)


def test_least_squares_with_noise_and_absent_species():
    rng = np.random.default_rng(2)
    mu = {"Cu": -3.7, "Au": -3.1}
    frames = _synthetic(mu, 200, rng, noise=0.01)
    fit = fit_species_shift(frames, ["Cu", "Au", "H", "O"], e0={"O": -7.0})
    assert fit["Cu"] == pytest.approx(-3.7, abs=5e-3)
    assert fit["Au"] == pytest.approx(-3.1, abs=5e-3)
    assert fit["H"] == 0.0  # absent and no e0
    assert fit["O"] == -7.0  # absent, e0 known
    assert list(fit) == ["Cu", "Au", "H", "O"]


def test_single_element_gives_mean_energy_per_atom():
    frames = [_frame(["Cu"] * n, energy=-3.0 * n + d) for n, d in [(4, 0.1), (8, -0.2), (2, 0.05)]]
    fit = fit_species_shift(frames, ["Cu"])
    expected = sum(f.energy for f in frames) / sum(len(f) for f in frames)  # least squares on N
    lsq = sum(f.energy * len(f) for f in frames) / sum(len(f) ** 2 for f in frames)
    assert fit["Cu"] == pytest.approx(lsq, abs=1e-12)
    assert fit["Cu"] == pytest.approx(expected, abs=0.05)


def test_fixed_stoichiometry_is_sensible():
    # every frame C2H6O: the composition matrix has rank 1
    frames = [_frame(["C", "C", "O"] + ["H"] * 6, energy=-4209.0 + 0.1 * k) for k in range(5)]
    mean_e = np.mean([f.energy for f in frames])
    fit = fit_species_shift(frames, ["H", "C", "O"])
    # no e0: every element gets the mean energy per atom
    for s in "HCO":
        assert fit[s] == pytest.approx(mean_e / 9, abs=1e-9)
    # with e0: e0 plus an equal share of the binding energy per atom
    e0 = {"H": -13.6, "C": -1025.3, "O": -2035.6}
    fit = fit_species_shift(frames, ["H", "C", "O"], e0=e0)
    share = {s: fit[s] - e0[s] for s in "HCO"}
    assert share["H"] == pytest.approx(share["C"], abs=1e-9)
    assert share["C"] == pytest.approx(share["O"], abs=1e-9)
    assert 6 * fit["H"] + 2 * fit["C"] + fit["O"] == pytest.approx(mean_e, abs=1e-9)


def test_use_e0():
    frames = _synthetic({"Cu": -3.0, "Au": -4.0}, 10, np.random.default_rng(3))
    e0 = {"Cu": 3.51, "Au": 3.8}
    assert fit_species_shift(frames, ["Cu", "Au"], e0=e0, use_e0=True) == e0
    # e0 incomplete: fall back to the fit
    fit = fit_species_shift(frames, ["Cu", "Au"], e0={"Cu": 3.51}, use_e0=True)
    assert fit == pytest.approx({"Cu": -3.0, "Au": -4.0}, abs=1e-8)


def test_no_energies():
    frames = [_frame(["Cu", "Au"])]
    assert fit_species_shift(frames, ["Cu", "Au"], e0={"Au": 1.0}) == {"Cu": 0.0, "Au": 1.0}


def test_shift_rejects_unknown_element():
    frames = [_frame(["Cu", "O"], energy=1.0, source="x.xyz:3")]
    with pytest.raises(InputError) as err:
        fit_species_shift(frames, ["Cu", "Au"])
    assert "x.xyz: frame 3" in str(err.value) and "'O'" in str(err.value)


def test_composition_matrix():
    frames = [_frame(["Cu", "Au", "Cu"]), _frame(["Au"])]
    np.testing.assert_array_equal(composition_matrix(frames, ["Cu", "Au"]), [[2, 1], [0, 1]])


def test_ethanol_shift_near_isolated_atoms():
    frames = read_frames(ETHANOL)
    _, e0 = extract_e0(read_frames(DATA / "ethanol" / "isolated_atoms.xyz"))
    fit = fit_species_shift(frames, ["H", "C", "O"], e0=e0)
    mean_e = np.mean([f.energy for f in frames])
    assert 6 * fit["H"] + 2 * fit["C"] + fit["O"] == pytest.approx(mean_e, abs=1e-6)
    for s in "HCO":  # binding energy per atom of ethanol is a few eV
        assert -6.0 < fit[s] - e0[s] < 0.0


# ------------------------------------------------------------ force scale


def test_force_rms():
    f1 = np.array([[1.0, -2.0, 2.0], [0.0, 0.0, 0.0]])
    f2 = np.array([[3.0, 0.0, 0.0]])
    frames = [_frame(["Cu", "Cu"], forces=f1), _frame(["Cu", "Au"], forces=np.vstack([f2, f2]))]
    values = np.concatenate([f1.ravel(), f2.ravel(), f2.ravel()])
    assert force_rms(frames) == pytest.approx(np.sqrt(np.mean(values**2)))


def test_force_rms_fallbacks():
    # no forces: RMS of the per-atom energy residual after the shift
    mu = {"Cu": -3.0, "Au": -4.0}
    frames = [
        _frame(["Cu", "Cu"], energy=-6.0 + 0.2),
        _frame(["Au"] * 4, energy=-16.0 - 0.4),
    ]
    expected = np.sqrt(np.mean([(0.2 / 2) ** 2, (0.4 / 4) ** 2]))
    assert force_rms(frames, shift=mu) == pytest.approx(expected)
    # no labels at all
    assert force_rms([_frame(["Cu", "Cu"])]) == 1.0
    # zero residual (exact fit) -> 1.0, never 0
    assert force_rms([_frame(["Cu", "Cu"], energy=-6.0)], shift=mu) == 1.0


def test_force_rms_real_data():
    frames = read_frames(SILICON)
    allf = np.concatenate([f.forces.ravel() for f in frames])
    assert force_rms(frames) == pytest.approx(np.sqrt(np.mean(allf**2)))


# ------------------------------------------------------------ neighbours


def _from_atoms(atoms):
    return Frame.from_atoms(atoms)


def test_avg_num_neighbors_fcc_shells():
    cu = bulk("Cu", "fcc", a=3.61)  # primitive cell, 1 atom: much smaller than the cutoff
    assert avg_num_neighbors([_from_atoms(cu)], 3.0) == pytest.approx(12.0)
    assert avg_num_neighbors([_from_atoms(cu)], 4.0) == pytest.approx(18.0)
    conv = bulk("Cu", "fcc", a=3.61, cubic=True) * (2, 1, 1)
    assert avg_num_neighbors([_from_atoms(conv)], 3.0) == pytest.approx(12.0)


def test_avg_num_neighbors_matches_ase(monkeypatch):
    import ase.neighborlist

    reference = ase.neighborlist.neighbor_list

    def no_fallback(*args, **kwargs):
        raise AssertionError("vesin should handle this structure without the ASE fallback")

    monkeypatch.setattr(ase.neighborlist, "neighbor_list", no_fallback)
    rng = np.random.default_rng(0)
    structures = []
    a = bulk("Cu", "fcc", a=3.61, cubic=True)
    a.rattle(0.1, seed=1)
    a.positions += [50.0, -20.0, 7.0]  # atoms outside the cell
    structures.append(a)
    slab = fcc111("Au", size=(2, 2, 3), vacuum=6.0)
    structures.append(slab)  # pbc T T F
    slab0 = fcc111("Cu", size=(2, 2, 3))  # zero cell vector along the open direction
    structures.append(slab0)
    mol = read_frames(ETHANOL, index=":1")[0].to_atoms()
    structures.append(mol)
    tri = bulk("Cu", "fcc", a=3.61) * (1, 2, 1)
    tri.set_cell(tri.cell[:] @ (np.eye(3) + 0.05 * rng.normal(size=(3, 3))), scale_atoms=True)
    structures.append(tri)
    for atoms in structures:
        for r in (2.0, 3.0, 5.0, 6.5):
            i, j = neighbor_pairs(_from_atoms(atoms), r)
            i_ref, j_ref = reference("ij", atoms, r)
            assert sorted(zip(i.tolist(), j.tolist())) == sorted(zip(i_ref.tolist(), j_ref.tolist()))
    total = sum(len(reference("i", s, 5.0)) for s in structures)
    atoms_count = sum(len(s) for s in structures)
    got = avg_num_neighbors([_from_atoms(s) for s in structures], 5.0)
    assert got == pytest.approx(total / atoms_count)


def test_avg_num_neighbors_molecule_and_isolated():
    dimer = _frame(["Cu", "Cu"], positions=[[0, 0, 0], [2.5, 0, 0]])
    single = _frame(["Cu"], positions=[[0, 0, 0]])
    assert avg_num_neighbors([dimer], 3.0) == 1.0
    assert avg_num_neighbors([dimer], 2.0) == 0.0
    assert avg_num_neighbors([dimer, single], 3.0) == pytest.approx(2 / 3)


def test_ethanol_avg_num_neighbors():
    frames = read_frames(ETHANOL, index=":50")
    assert avg_num_neighbors(frames, 5.0) == pytest.approx(8.0)  # 9 atoms, all within 5 Å


# ------------------------------------------------------------ split


def test_split_deterministic_and_complete():
    frames = [_frame(["Cu"], energy=float(k), source=f"d.xyz:{k}") for k in range(50)]
    t1, v1 = train_valid_split(frames, 0.2, seed=7)
    t2, v2 = train_valid_split(frames, 0.2, seed=7)
    assert [f.source for f in v1] == [f.source for f in v2]
    assert [f.source for f in t1] == [f.source for f in t2]
    assert len(v1) == 10 and len(t1) == 40
    ids_t = {f.source for f in t1}
    ids_v = {f.source for f in v1}
    assert not ids_t & ids_v and len(ids_t | ids_v) == 50
    # original order kept inside each part
    assert [f.energy for f in v1] == sorted(f.energy for f in v1)
    _, v3 = train_valid_split(frames, 0.2, seed=8)
    assert [f.source for f in v3] != [f.source for f in v1]


def test_split_edge_cases():
    two = [_frame(["Cu"], energy=0.0), _frame(["Cu"], energy=1.0)]
    t, v = train_valid_split(two, 0.01, seed=0)
    assert len(v) == 1 and len(t) == 1
    t, v = train_valid_split(two, 0.0, seed=0)
    assert len(v) == 0 and len(t) == 2
    t, v = train_valid_split(two[:1], 0.5, seed=0)
    assert len(v) == 0 and len(t) == 1
    t, v = train_valid_split(two * 5, 0.95, seed=0)
    assert len(t) >= 1
    for bad in (-0.1, 1.0, 1.5, float("nan")):
        with pytest.raises(InputError):
            train_valid_split(two, bad, seed=0)
