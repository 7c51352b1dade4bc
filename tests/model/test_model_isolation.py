"""The isolation switch and the cutoff: isolated atoms give exactly E0 and no force, pulling
atoms apart is continuous in energy and force and ends exactly at the sum of E0, and
condensed matter / molecules are untouched by the switch (s_i = 1 exactly)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.cluster import Icosahedron
from ase.io import read
from model_utils import (
    R_MAX,
    evaluate,
    fcc_cu,
    make_model,
    one_thread,  # noqa: F401  (autouse fixture: one intra-op thread)
)
from paths import DATASETS

from forcefield import ForceFieldCalculator

ETHANOL = DATASETS / "ethanol" / "train.xyz"


@pytest.fixture(scope="module")
def model():
    return make_model("float64", seed=31)


def _e0(model, symbol):
    return float(model.e0[model.species.index(symbol)])


# ---------------------------------------------------------------- isolated atoms
@pytest.mark.parametrize("symbol", ["H", "Cu", "Au"])
def test_isolated_atom_is_e0(model, symbol):
    e0 = _e0(model, symbol)
    # the random shift differs from E0: the switch, not a coincidence, gives E0
    assert abs(float(model.shift[model.species.index(symbol)]) - e0) > 1e-2
    for atoms in (
        Atoms(symbol, positions=[[0.3, -1.0, 2.0]]),  # molecule
        Atoms(symbol, positions=[[1.0, 2.0, 3.0]], cell=[11.0, 12.0, 13.0], pbc=True),
        Atoms(symbol, positions=[[0.0, 0.0, 0.0]], cell=[[10.5, 0, 0], [3.0, 10.2, 0], [1.0, 2.0, 10.9]], pbc=True),
    ):
        out = evaluate(model, atoms, virial=atoms.pbc.all())
        assert abs(out["energy"][0] - e0) <= 1e-12 * max(1.0, abs(e0))
        assert np.all(out["forces"] == 0.0)
        assert out["switch"][0] == 0.0
        if atoms.pbc.all():
            assert np.all(out["stress"] == 0.0)
        atoms.calc = ForceFieldCalculator(model)
        assert abs(atoms.get_potential_energy() - e0) <= 1e-12 * max(1.0, abs(e0))
        assert np.all(atoms.get_forces() == 0.0)
        assert abs(atoms.get_potential_energies()[0] - e0) <= 1e-12 * max(1.0, abs(e0))


def test_isolated_atoms_far_apart(model):
    """Several atoms, none within r_max of another: the sum of E0, no force."""
    atoms = Atoms("CuAuOH", positions=[[0, 0, 0], [5.2, 0, 0], [0, 5.5, 0], [0, 0, 7.0]])
    out = evaluate(model, atoms)
    assert abs(out["energy"][0] - sum(_e0(model, s) for s in "Cu Au O H".split())) < 1e-12 * 10
    assert np.all(out["forces"] == 0.0)


# ---------------------------------------------------------------- continuity
def _assert_continuous(y: np.ndarray, what: str, atol: float):
    """No step changes more than twice as much as the largest of the steps 2 and 3 before
    and after it.

    For a smooth sequence on a fine grid consecutive changes vary slowly (linearly near a
    zero crossing, where one of the steps k-2, k+2 is always larger than step k); a jump
    shows as a step (or two adjacent steps) much larger than the steps around it.
    """
    d = np.abs(np.diff(y, axis=0)).reshape(len(y) - 1, -1)
    n = len(d)
    nb = np.zeros_like(d)
    for off in (-3, -2, 2, 3):
        lo, hi = max(0, -off), min(n, n - off)
        nb[lo:hi] = np.maximum(nb[lo:hi], d[lo + off : hi + off])
    bad = d > 2.0 * nb + atol
    assert not bad.any(), f"{what} jumps at steps {np.nonzero(bad.any(axis=1))[0][:10]}"


def _assert_work_matches(e: np.ndarray, f_moving: np.ndarray, h: float):
    """E_{k+1} - E_k = -h (F_k + F_{k+1}) / 2 (trapezoid) for the atom pulled along x."""
    residual = np.diff(e) + h * 0.5 * (f_moving[1:] + f_moving[:-1])
    assert np.max(np.abs(residual)) < 1e-3 * h * max(np.max(np.abs(f_moving)), 1e-3)


def _envelope(r, r_max=R_MAX, p=6):
    x = r / r_max
    u = 1 - (p + 1) * (p + 2) / 2 * x**p + p * (p + 2) * x ** (p + 1) - p * (p + 1) / 2 * x ** (p + 2)
    return np.where(x < 1, u, 0.0)


def _single_neighbour_d(r, tau):
    with np.errstate(divide="ignore"):
        return r - tau * np.log(_envelope(r))


def _reference_switch(d, r_on, r_off):
    x = np.clip((d - r_on) / (r_off - r_on), 0.0, 1.0)
    return 1 - x**3 * (10 - 15 * x + 6 * x**2)


def test_dimer_pulled_apart(model):
    h = 1e-3
    distances = np.arange(0.5 * R_MAX, 1.2 * R_MAX + h / 2, h)
    dimers = [Atoms("CuAu", positions=[[0.0, 0.0, 0.0], [r, 0.0, 0.0]]) for r in distances]
    out = evaluate(model, dimers)
    e = out["energy"]
    f = out["forces"].reshape(len(dimers), 2, 3)
    s = out["switch"].reshape(len(dimers), 2)
    e0_sum = _e0(model, "Cu") + _e0(model, "Au")

    assert np.ptp(e) > 1e-2 and np.max(np.abs(f)) > 1e-2  # not vacuous
    _assert_continuous(e, "energy", 1e-12)
    _assert_continuous(f[:, 1, 0], "force", 1e-12)
    _assert_work_matches(e, f[:, 1, 0], h)
    assert np.all(f[:, :, 1:] == 0.0)  # along the bond only
    assert np.allclose(f[:, 0], -f[:, 1], rtol=0, atol=1e-12)
    # the switch against an independent evaluation of docs/design.md, section "Isolation switch",
    # for one neighbour:
    # d = r - tau log u(r), s = S((d - r_on) / (r_off - r_on))
    sw = model.switch
    d = _single_neighbour_d(distances, sw.tau)
    assert np.allclose(s[:, 0], _reference_switch(d, sw.r_on, sw.r_off), rtol=0, atol=1e-12)
    assert np.all(s[d <= sw.r_on - 1e-9] == 1.0) and (d <= sw.r_on - 1e-9).sum() > 100
    assert np.all(s[d >= sw.r_off + 1e-9] == 0.0) and (d >= sw.r_off + 1e-9).sum() > 100
    assert np.all(np.diff(s[:, 0]) <= 0)
    # exactly the sum of E0 and exactly no force once the atoms no longer see each other
    far = distances >= R_MAX
    assert np.all(np.abs(e[far] - e0_sum) <= 1e-12 * abs(e0_sum))
    assert np.all(f[far] == 0.0)
    # ... and already before r_max, where both switches are 0 (d >= r_off), though the atoms
    # still see each other: E = E0 exactly; only the envelope's tail is left in the force,
    # i.e. none, since E no longer depends on r
    off = (d >= sw.r_off + 1e-9) & (distances < R_MAX)
    assert off.sum() > 10
    assert np.all(np.abs(e[off] - e0_sum) <= 1e-12 * abs(e0_sum))
    assert np.max(np.abs(f[off])) <= 1e-12


def test_atom_pulled_out_of_cu13(model):
    """One surface atom of an icosahedral Cu13 is pulled radially out to beyond r_max."""
    cluster = Icosahedron("Cu", 2)
    centre = cluster.positions[0].copy()
    assert np.allclose(np.linalg.norm(cluster.positions - centre, axis=1)[0], 0.0)
    k = 1
    direction = (cluster.positions[k] - centre) / np.linalg.norm(cluster.positions[k] - centre)
    r0 = np.linalg.norm(cluster.positions[k] - centre)
    h = 2e-3  # 2800 frames of 13 atoms (the dimer test uses 1e-3 Å)
    radii = np.arange(r0, r0 + R_MAX + 0.6, h)
    frames = []
    for r in radii:
        a = cluster.copy()
        a.positions[k] = centre + r * direction
        frames.append(a)
    e, f_along, s_moving = [], [], []
    for start in range(0, len(frames), 600):
        out = evaluate(model, frames[start : start + 600])
        e.append(out["energy"])
        forces = out["forces"].reshape(-1, 13, 3)
        f_along.append(forces @ direction)  # (B, 13) projection on the pull direction
        s_moving.append(out["switch"].reshape(-1, 13)[:, k])
    e, f_along, s_moving = np.concatenate(e), np.concatenate(f_along), np.concatenate(s_moving)

    assert np.ptp(e) > 1e-2
    _assert_continuous(e, "energy", 1e-11)
    _assert_continuous(f_along, "force", 1e-11)
    _assert_work_matches(e, f_along[:, k], h)

    rest = cluster.copy()
    del rest[k]
    e_rest = evaluate(model, rest)["energy"][0]
    min_dist = np.array(
        [np.min(np.linalg.norm(np.delete(fr.positions, k, 0) - fr.positions[k], axis=1)) for fr in frames]
    )
    far = min_dist >= R_MAX
    assert far.sum() > 20
    e_sep = e_rest + _e0(model, "Cu")
    assert np.all(np.abs(e[far] - e_sep) <= 1e-12 * abs(e_sep))
    assert np.all(f_along[far][:, k] == 0.0)
    # the pulled atom's switch: 1 while it is near the cluster, 0 before it leaves
    # (a soft minimum over several neighbours is at most the single-neighbour d)
    sw = model.switch
    assert np.all(s_moving[_single_neighbour_d(min_dist, sw.tau) <= sw.r_on - 1e-9] == 1.0)
    assert np.all(s_moving[min_dist >= R_MAX] == 0.0)
    assert np.sum((s_moving == 0.0) & (min_dist < R_MAX)) > 5
    assert np.sum((s_moving > 0.0) & (s_moving < 1.0)) > 20


def test_continuity_checks_catch_a_hard_cutoff(model, monkeypatch):
    """Negative control: with a hard cutoff (envelope = 1 inside r_max) and no switch, the
    same dimer scan must fail the continuity checks."""
    hard = make_model("float64", seed=31, switch={"enabled": False})
    monkeypatch.setattr(hard.envelope, "forward", lambda r: (r < R_MAX).to(r.dtype))
    h = 1e-3
    distances = np.arange(0.9 * R_MAX, 1.1 * R_MAX, h)
    out = evaluate(hard, [Atoms("CuAu", positions=[[0.0, 0.0, 0.0], [r, 0.0, 0.0]]) for r in distances])
    with pytest.raises(AssertionError, match="energy jumps"):
        _assert_continuous(out["energy"], "energy", 1e-12)
    # a smooth energy with a kink (a force jump of 1e-2 eV/Å, 20x the force's change per
    # step here) is caught on the force
    x = np.arange(0, 1, h)
    e = np.sin(x) + 1e-2 * np.maximum(x - 0.5, 0)
    _assert_continuous(e, "energy", 1e-12)
    with pytest.raises(AssertionError, match="force jumps"):
        _assert_continuous(-np.cos(x) - 1e-2 * (x > 0.5), "force", 1e-12)
    with pytest.raises(AssertionError, match="force jumps"):  # also when spread over 2 steps
        _assert_continuous(-np.gradient(e, h), "force", 1e-12)


# ---------------------------------------------------------------- switch inactive in matter
def test_switch_is_one_in_bulk_copper(model):
    for atoms in (fcc_cu(3.61), fcc_cu(3.61, repeat=(2, 2, 2)), fcc_cu(3.61, cubic=True)):
        assert np.all(evaluate(model, atoms)["switch"] == 1.0)


def test_switch_is_one_in_ethanol():
    # default switch settings, a model built from the default config (not randomised switch)
    model = make_model("float64", seed=32, species=["H", "C", "O"])
    frames = read(str(ETHANOL), index=":5")
    assert len(frames) == 5
    out = evaluate(model, frames)
    assert out["switch"].shape == (45,)
    assert np.all(out["switch"] == 1.0)
    # float32 too
    model32 = make_model("float32", seed=32, species=["H", "C", "O"])
    assert np.all(evaluate(model32, frames)["switch"] == 1.0)


def test_float32_isolated_atom_is_exact():
    model = make_model("float32", seed=33)
    out = evaluate(model, Atoms("O", positions=[[1.0, 1.0, 1.0]]))
    assert out["energy"][0] == pytest.approx(float(model.e0[model.species.index("O")]), abs=0, rel=1e-6)
    assert np.all(out["forces"] == 0.0)
    assert model.e0.dtype == torch.float32
