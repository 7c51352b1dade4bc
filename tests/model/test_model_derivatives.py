"""Forces and stress are the derivatives of the energy (finite differences, float64), and
the energy is extensive over a supercell of the 1-atom FCC primitive cell."""

from __future__ import annotations

import numpy as np
import pytest
from model_utils import (
    energy_of,
    evaluate,
    fcc_cu,
    make_model,
    molecule,
    one_thread,  # noqa: F401  (autouse fixture: one intra-op thread)
    rel_err,
    triclinic_cell,
)

H = 1e-5


@pytest.fixture(scope="module")
def model():
    return make_model("float64", seed=21)


def _energies(model, structures):
    return evaluate(model, structures)["energy"]


@pytest.mark.parametrize("make", [triclinic_cell, molecule], ids=["triclinic", "molecule"])
def test_forces_are_minus_energy_gradient(model, make):
    atoms = make()
    forces = evaluate(model, atoms)["forces"]
    # every coordinate of every atom, +h and -h, all in one batch
    displaced = []
    for i in range(len(atoms)):
        for k in range(3):
            for sign in (1.0, -1.0):
                a = atoms.copy()
                a.positions[i, k] += sign * H
                displaced.append(a)
    e = _energies(model, displaced).reshape(len(atoms), 3, 2)
    fd = -(e[..., 0] - e[..., 1]) / (2 * H)
    assert np.max(np.abs(forces)) > 0.1
    assert rel_err(fd, forces) < 1e-7


def _strained(atoms, eps):
    a = atoms.copy()
    deform = np.eye(3) + eps
    a.set_cell(atoms.cell.array @ deform, scale_atoms=False)
    a.positions = atoms.positions @ deform
    return a


@pytest.mark.parametrize(
    "make", [triclinic_cell, lambda: fcc_cu(a=3.5, repeat=(2, 1, 1)).copy()], ids=["triclinic", "fcc_2x1x1"]
)
def test_stress_is_strain_derivative(model, make):
    """ASE convention: stress = (1/V) dE/d(eps), eps a symmetric strain of cell and positions."""
    atoms = make()
    if len(set(atoms.get_chemical_symbols())) == 1:
        atoms.rattle(0.05, seed=3)  # break the symmetry: off-diagonal stress
    stress = evaluate(model, atoms, virial=True)["stress"][0]
    structures = []
    pairs = [(0, 0), (1, 1), (2, 2), (1, 2), (0, 2), (0, 1)]
    for i, j in pairs:
        for sign in (1.0, -1.0):
            eps = np.zeros((3, 3))
            eps[i, j] += sign * H / 2
            eps[j, i] += sign * H / 2
            structures.append(_strained(atoms, eps))
    e = _energies(model, structures).reshape(6, 2)
    de = (e[:, 0] - e[:, 1]) / (2 * H)  # derivative along the symmetric direction
    fd = np.zeros((3, 3))
    for (i, j), d in zip(pairs, de):
        # the direction (e_ij + e_ji)/2 gives (s_ij + s_ji)/2 * V = s_ij * V
        fd[i, j] = fd[j, i] = d / atoms.get_volume()
    assert np.max(np.abs(stress)) > 1e-3
    assert rel_err(fd, stress) < 1e-7
    # symmetric, and equal to what the ASE calculator reports (Voigt order)
    assert np.array_equal(stress, stress.T)
    from forcefield import ForceFieldCalculator

    atoms.calc = ForceFieldCalculator(model)
    voigt = atoms.get_stress()
    assert rel_err(voigt, stress.flat[[0, 4, 8, 5, 2, 1]]) < 1e-12
    assert rel_err(atoms.get_forces(), evaluate(model, atoms)["forces"]) < 1e-12


def test_fcc_primitive_vs_supercell(model):
    prim = fcc_cu(a=3.61)
    assert len(prim) == 1
    sup = prim.repeat((2, 2, 2))
    out_p = evaluate(model, prim, virial=True)
    out_s = evaluate(model, sup, virial=True)
    assert abs(out_p["energy"][0]) > 1e-3
    assert rel_err(out_p["energy"][0], out_s["energy"][0] / 8) < 1e-10
    assert rel_err(out_s["node_energy"], np.full(8, out_p["node_energy"][0])) < 1e-10
    # every atom is an inversion centre: no force
    assert np.max(np.abs(out_p["forces"])) < 1e-10
    assert np.max(np.abs(out_s["forces"])) < 1e-10
    assert rel_err(out_s["stress"], out_p["stress"]) < 1e-10
    # and the cubic 4-atom cell agrees too
    cubic = fcc_cu(a=3.61, cubic=True)
    assert rel_err(energy_of(model, cubic) / 4, out_p["energy"][0]) < 1e-10
