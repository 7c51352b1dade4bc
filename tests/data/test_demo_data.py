"""Built-in EMT demo data: reproducible, complete, consistent with the isolated atoms."""

from __future__ import annotations

import time
from collections import Counter

import numpy as np
import pytest
from ase import Atoms
from ase.calculators.emt import EMT

from forcefield.data.frames import is_isolated_atom, read_frames
from forcefield.data.split import extract_e0
from forcefield.demo import (
    DIMER_DISTANCE_RANGE,
    dimer_curve,
    generate_demo_dataset,
    isolated_atom_energy,
)
from forcefield.errors import InputError

CONFIG_TYPES = {"bulk", "vacancy", "surface", "adatom", "cluster", "dimer", "isolated_atom"}
SMALL = dict(n_bulk=6, n_vacancy=2, n_surface=3, n_adatom=2, n_cluster=3, n_dimer=6, n_test=8)


@pytest.fixture(scope="module")
def default_dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    start = time.perf_counter()
    paths = generate_demo_dataset(out)
    elapsed = time.perf_counter() - start
    return paths, elapsed


def test_small_generation_is_byte_identical(tmp_path):
    a = generate_demo_dataset(tmp_path / "a", seed=3, **SMALL)
    b = generate_demo_dataset(tmp_path / "b", seed=3, **SMALL)
    assert set(a) == {"train", "test", "isolated_atoms"}
    for key in a:
        assert a[key].name == f"{key}.xyz"
        assert a[key].read_bytes() == b[key].read_bytes(), key
    c = generate_demo_dataset(tmp_path / "c", seed=4, **SMALL)
    assert c["train"].read_bytes() != a["train"].read_bytes()
    assert c["test"].read_bytes() != a["test"].read_bytes()


def test_default_dataset_contents(default_dataset):
    paths, elapsed = default_dataset
    assert elapsed < 60.0  # about 6 s on 2 cores; generous for loaded machines
    train = read_frames(paths["train"])
    test = read_frames(paths["test"])
    isolated = read_frames(paths["isolated_atoms"])

    assert 150 <= len(train) <= 300
    assert 30 <= len(test) <= 50
    assert max(len(f) for f in train + test) <= 40
    assert set(Counter(f.config_type for f in train)) == CONFIG_TYPES
    assert set(Counter(f.config_type for f in test)) == CONFIG_TYPES - {"isolated_atom"}
    symbols = {s for f in train for s in f.symbols}
    assert symbols == {"Cu", "Au"}

    for f in train + test + isolated:
        assert f.energy is not None and np.isfinite(f.energy)
        assert f.forces is not None and f.forces.shape == (len(f), 3)
        if f.pbc.all():
            assert f.stress is not None
            np.testing.assert_allclose(f.stress, f.stress.T, atol=1e-12)
        else:
            assert f.stress is None
    # periodicity per type
    for f in train:
        if f.config_type in ("bulk", "vacancy"):
            assert f.pbc.all() and len(f) in (14, 15, 16, 30, 31, 32)
        elif f.config_type in ("surface", "adatom"):
            assert list(f.pbc) == [True, True, False]
            assert np.linalg.norm(f.cell[2]) > np.ptp(f.positions[:, 2]) + 10.0  # vacuum
        elif f.config_type in ("cluster",):
            assert not f.pbc.any() and 4 <= len(f) <= 13
        elif f.config_type == "dimer":
            assert not f.pbc.any() and len(f) == 2

    # dimers span the dissociation curve, out past EMT's cutoff
    d = np.array([np.linalg.norm(f.positions[1] - f.positions[0]) for f in train if f.config_type == "dimer"])
    assert d.min() < 2.2 and d.max() > 6.2
    assert d.min() >= DIMER_DISTANCE_RANGE[0] - 1e-9
    pairs = {tuple(sorted(f.symbols)) for f in train if f.config_type == "dimer"}
    assert pairs == {("Cu", "Cu"), ("Au", "Cu"), ("Au", "Au")}

    # test snapshots differ from training snapshots
    train_pos = {f.positions.round(6).tobytes() for f in train}
    assert not any(f.positions.round(6).tobytes() in train_pos for f in test)

    # E0 file: EMT's isolated-atom energies, also contained in train.xyz
    assert all(f.config_type == "isolated_atom" and is_isolated_atom(f) for f in isolated)
    _, e0 = extract_e0(isolated)
    assert e0 == pytest.approx({"Cu": isolated_atom_energy("Cu"), "Au": isolated_atom_energy("Au")})
    assert e0["Cu"] == pytest.approx(3.51) and e0["Au"] == pytest.approx(3.80)
    rest, e0_train = extract_e0(train)
    assert e0_train == e0 and len(rest) == len(train) - 2
    # beyond the cutoff a dimer's energy is the sum of E0, forces vanish
    for f in train:
        if f.config_type == "dimer" and np.linalg.norm(f.positions[1] - f.positions[0]) > 6.2:
            assert f.energy == pytest.approx(sum(e0[s] for s in f.symbols), abs=1e-10)
            np.testing.assert_allclose(f.forces, 0.0, atol=1e-12)


def test_labels_are_emt(tmp_path):
    paths = generate_demo_dataset(tmp_path, seed=1, **SMALL)
    for f in read_frames(paths["train"])[::3]:
        atoms = f.to_atoms()
        atoms.calc = EMT()
        assert atoms.get_potential_energy() == pytest.approx(f.energy, abs=1e-6)
        np.testing.assert_allclose(atoms.get_forces(), f.forces, atol=1e-5)
        if f.pbc.all():
            np.testing.assert_allclose(atoms.get_stress(voigt=False), f.stress, atol=1e-6)


def test_dimer_dissociation_limit():
    e0 = {s: isolated_atom_energy(s) for s in ("Cu", "Au")}
    far = [6.5, 8.0, 12.0]
    for a, b in [("Cu", "Cu"), ("Cu", "Au"), ("Au", "Au")]:
        energies = dimer_curve(a, b, far)
        np.testing.assert_allclose(energies, e0[a] + e0[b], atol=1e-12)
        np.testing.assert_allclose(dimer_curve(a, b, far, relative=True), 0.0, atol=1e-12)
    # the curve is bound near 2.3 Å and repulsive at short range
    curve = dimer_curve("Cu", "Au", [1.5, 2.3, 4.0], relative=True)
    assert curve[1] < -1.0 and curve[0] > curve[1] and curve[1] < curve[2] < 0.0
    # same as a direct EMT evaluation
    atoms = Atoms("CuAu", positions=[[0, 0, 0], [2.3, 0, 0]])
    atoms.calc = EMT()
    assert dimer_curve("Cu", "Au", [2.3])[0] == pytest.approx(atoms.get_potential_energy())


def test_cu_only_and_bad_elements(tmp_path):
    paths = generate_demo_dataset(tmp_path, seed=0, elements=["Cu"], **SMALL)
    frames = read_frames(paths["train"])
    assert {s for f in frames for s in f.symbols} == {"Cu"}
    with pytest.raises(InputError) as err:
        generate_demo_dataset(tmp_path / "zn", elements=["Cu", "Zn"], **SMALL)
    assert "'Zn'" in str(err.value)
