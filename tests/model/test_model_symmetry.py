"""E(3) and permutation symmetry of energy, forces and stress (randomised weights, float64).

Rotations (proper), reflections (improper), translations: energy invariant, forces and
stress covariant, to 1e-10 relative; atom permutations: energy invariant, forces permuted.
Both on a periodic triclinic multi-species cell (smaller than 2 r_max: many images) and on
a molecule without a cell. Also: forces and stress are not trivially zero.
"""

from __future__ import annotations

import numpy as np
import pytest
from model_utils import (
    evaluate,
    make_model,
    molecule,
    one_thread,  # noqa: F401  (autouse fixture: one intra-op thread)
    random_rotation,
    rel_err,
    triclinic_cell,
)

TOL = 1e-10


@pytest.fixture(scope="module")
def model():
    return make_model("float64", seed=11)


STRUCTURES = {"triclinic": triclinic_cell, "molecule": molecule}


def _transform(atoms, matrix=None, translation=None):
    a = atoms.copy()
    if matrix is not None:
        a.positions = atoms.positions @ matrix.T
        if atoms.pbc.all():
            a.cell = atoms.cell.array @ matrix.T
    if translation is not None:
        a.positions = a.positions + translation
    return a


def _check(model, atoms, transformed, matrix):
    periodic = bool(atoms.pbc.all())
    ref = evaluate(model, atoms, virial=periodic)
    new = evaluate(model, transformed, virial=periodic)
    assert rel_err(new["energy"], ref["energy"]) < TOL
    assert rel_err(new["node_energy"], ref["node_energy"]) < TOL
    q = np.eye(3) if matrix is None else matrix
    assert rel_err(new["forces"], ref["forces"] @ q.T) < TOL
    if periodic:
        assert rel_err(new["stress"][0], q @ ref["stress"][0] @ q.T) < TOL


@pytest.mark.parametrize("name", STRUCTURES)
def test_not_vacuous(model, name):
    atoms = STRUCTURES[name]()
    out = evaluate(model, atoms, virial=atoms.pbc.all())
    assert np.max(np.abs(out["forces"])) > 1e-3
    assert np.ptp(out["node_energy"]) > 1e-3
    if atoms.pbc.all():
        assert np.max(np.abs(out["stress"])) > 1e-5
    assert np.all((out["switch"] >= 0) & (out["switch"] <= 1))
    if name == "molecule":  # its last atom sits inside the isolation switch's ramp
        assert 0.01 < out["switch"][-1] < 0.99
        assert np.all(out["switch"][:-1] == 1.0)


@pytest.mark.parametrize("name", STRUCTURES)
@pytest.mark.parametrize("seed", [0, 1])
def test_rotation(model, name, seed):
    atoms = STRUCTURES[name]()
    q = random_rotation(np.random.default_rng(seed))
    assert np.linalg.det(q) == pytest.approx(1.0)
    _check(model, atoms, _transform(atoms, q), q)


@pytest.mark.parametrize("name", STRUCTURES)
@pytest.mark.parametrize("seed", [0, 1])
def test_reflection(model, name, seed):
    atoms = STRUCTURES[name]()
    rng = np.random.default_rng(100 + seed)
    q = random_rotation(rng)
    n = rng.normal(size=3)
    n /= np.linalg.norm(n)
    q = (np.eye(3) - 2.0 * np.outer(n, n)) @ q  # improper: a mirror after a rotation
    assert np.linalg.det(q) == pytest.approx(-1.0)
    _check(model, atoms, _transform(atoms, q), q)
    # the pure inversion as well
    _check(model, atoms, _transform(atoms, -np.eye(3)), -np.eye(3))


@pytest.mark.parametrize("name", STRUCTURES)
def test_translation(model, name):
    atoms = STRUCTURES[name]()
    # a periodic cell is translated by more than a cell vector: atoms leave the cell unwrapped
    t = np.array([7.3, -11.9, 4.4])
    _check(model, atoms, _transform(atoms, translation=t), None)
    if atoms.pbc.all():
        wrapped = _transform(atoms, translation=t)
        wrapped.wrap()
        _check(model, atoms, wrapped, None)


@pytest.mark.parametrize("name", STRUCTURES)
def test_permutation(model, name):
    atoms = STRUCTURES[name]()
    perm = np.random.default_rng(5).permutation(len(atoms))
    permuted = atoms[perm]
    periodic = bool(atoms.pbc.all())
    ref = evaluate(model, atoms, virial=periodic)
    new = evaluate(model, permuted, virial=periodic)
    assert rel_err(new["energy"], ref["energy"]) < TOL
    assert rel_err(new["forces"], ref["forces"][perm]) < TOL
    assert rel_err(new["node_energy"], ref["node_energy"][perm]) < TOL
    if periodic:
        assert rel_err(new["stress"], ref["stress"]) < TOL


def test_supercell_is_extensive(model):
    """A 2x1x1 repeat of the triclinic cell: twice the energy, same forces and stress."""
    atoms = triclinic_cell()
    big = atoms.repeat((2, 1, 1))
    ref = evaluate(model, atoms, virial=True)
    new = evaluate(model, big, virial=True)
    assert rel_err(new["energy"], 2 * ref["energy"]) < TOL
    assert rel_err(new["forces"], np.concatenate([ref["forces"]] * 2)) < TOL
    assert rel_err(new["stress"], ref["stress"]) < TOL
