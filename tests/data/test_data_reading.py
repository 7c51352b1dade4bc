"""Reading, validating and writing frames; E0 extraction; input error messages."""

from __future__ import annotations

import ase.io
import numpy as np
import pytest
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator
from paths import DATASETS

from forcefield.data.checks import check_labels, check_species
from forcefield.data.frames import (
    Frame,
    is_isolated_atom,
    read_frames,
    stress_to_3x3,
    write_frames,
)
from forcefield.data.split import extract_e0
from forcefield.errors import InputError

DATA = DATASETS
ETHANOL = DATA / "ethanol" / "train.xyz"
ETHANOL_E0 = DATA / "ethanol" / "isolated_atoms.xyz"
SILICON = DATA / "silicon" / "train.xyz"


# ----------------------------------------------------------------- real data


def test_read_ethanol_train():
    frames = read_frames(ETHANOL)
    assert len(frames) == 1000
    for k, f in enumerate(frames):
        assert f.numbers.shape == (9,)
        assert f.positions.shape == (9, 3) and f.positions.dtype == np.float64
        assert f.energy is not None and np.isfinite(f.energy)
        assert f.forces is not None and f.forces.shape == (9, 3)
        assert f.stress is None
        assert not f.pbc.any()
        assert f.source == f"{ETHANOL}:{k}"
    assert sorted(frames[0].symbols) == sorted(["C", "C", "O", "H", "H", "H", "H", "H", "H"])
    # values as in the file's first frame header / first atom line
    assert frames[0].energy == pytest.approx(-4209.4657843064815, abs=1e-9)
    np.testing.assert_allclose(frames[0].forces[0], [-4.15950961, 0.10729389, 3.61777644])
    assert frames[0].config_type == "Training_set"


def test_read_silicon_stress():
    frames = read_frames(SILICON)
    assert len(frames) == 214
    assert {f.config_type for f in frames} >= {"Vacancy", "AIMD-NVT", "Surface", "Elastic"}
    for f in frames:
        assert f.energy is not None
        assert f.forces.shape == (len(f), 3)
        assert f.stress is not None and f.stress.shape == (3, 3)
        np.testing.assert_allclose(f.stress, f.stress.T, atol=1e-12)
        assert f.pbc.all()
    # first frame: the 3x3 stress as written in the file (row-major)
    expected = np.array(
        [
            [0.004107503988364278, -0.005671550665533216, 0.0033825764710596886],
            [-0.005671550665533216, 0.0060128544849129785, 0.0010025043176563123],
            [0.0033825764710596886, 0.0010025043176563123, 0.001722015272337695],
        ]
    )
    np.testing.assert_allclose(frames[0].stress, expected, rtol=1e-12)
    check_labels(frames, True, True, True, SILICON)  # all labels present: no error


def test_isolated_atoms_e0():
    frames = read_frames(ETHANOL_E0)
    assert all(is_isolated_atom(f) for f in frames)
    rest, e0 = extract_e0(frames)
    assert rest == []
    assert e0 == pytest.approx(
        {
            "H": -13.568422383046626,
            "C": -1025.2770951782686,
            "O": -2035.5709809589698,
            "N": -1479.0665594928669,
        }
    )
    train = read_frames(ETHANOL, index=":10")
    rest, e0 = extract_e0(train + frames)
    assert len(rest) == 10 and set(e0) == {"H", "C", "O", "N"}


def test_index_selection_keeps_file_indices():
    frames = read_frames(ETHANOL, index="10:20:5")
    assert [f.source for f in frames] == [f"{ETHANOL}:10", f"{ETHANOL}:15"]
    full = read_frames(ETHANOL, index=":16")
    assert frames[1].energy == full[15].energy


# ------------------------------------------------------------ label locations


def _copper_pair(**info):
    atoms = Atoms("Cu2", positions=[[0, 0, 0], [1.8, 0.2, 0.1]], cell=np.eye(3) * 4.0, pbc=True)
    atoms.info.update(info)
    return atoms


def test_labels_in_info_and_arrays():
    atoms = _copper_pair(energy=-1.5, stress=np.arange(6.0))
    atoms.arrays["forces"] = np.array([[0.1, 0.2, 0.3], [-0.1, -0.2, -0.3]])
    f = Frame.from_atoms(atoms, source="mem:0")
    assert f.energy == -1.5
    np.testing.assert_allclose(f.forces[1], [-0.1, -0.2, -0.3])
    # Voigt xx yy zz yz xz xy -> full symmetric 3x3
    np.testing.assert_allclose(f.stress, [[0, 5, 4], [5, 1, 3], [4, 3, 2]])


def test_labels_on_calculator():
    atoms = _copper_pair()
    atoms.calc = SinglePointCalculator(atoms, energy=2.5, forces=np.ones((2, 3)), stress=np.array([1.0, 2, 3, 4, 5, 6]))
    f = Frame.from_atoms(atoms)
    assert f.energy == 2.5
    np.testing.assert_allclose(f.forces, np.ones((2, 3)))
    np.testing.assert_allclose(f.stress, [[1, 6, 5], [6, 2, 4], [5, 4, 3]])


def test_info_takes_precedence_over_calculator():
    atoms = _copper_pair(energy=-7.0)
    atoms.calc = SinglePointCalculator(atoms, energy=99.0)
    assert Frame.from_atoms(atoms).energy == -7.0


def test_energy_keys_in_file_info_and_calc(tmp_path):
    # standard keys: ASE moves them onto a SinglePointCalculator when reading
    a = _copper_pair()
    a.calc = SinglePointCalculator(a, energy=-3.25, forces=np.full((2, 3), 0.5), stress=np.arange(6.0))
    path_std = tmp_path / "std.xyz"
    ase.io.write(path_std, a, format="extxyz")
    assert ase.io.read(path_std).calc is not None
    (f,) = read_frames(path_std)
    assert f.energy == -3.25
    np.testing.assert_allclose(f.forces, 0.5)
    np.testing.assert_allclose(f.stress, stress_to_3x3(np.arange(6.0)))

    # custom keys: they stay in atoms.info / atoms.arrays
    b = _copper_pair(REF_energy=-4.5, REF_stress=np.array([1.0, 1, 1, 0, 0, 0]))
    b.arrays["REF_forces"] = np.full((2, 3), -0.25)
    path_ref = tmp_path / "ref.xyz"
    ase.io.write(path_ref, b, format="extxyz")
    (g,) = read_frames(path_ref, energy_key="REF_energy", forces_key="REF_forces", stress_key="REF_stress")
    assert g.energy == -4.5
    np.testing.assert_allclose(g.forces, -0.25)
    np.testing.assert_allclose(g.stress, np.eye(3))
    # the default keys find nothing in that file
    (h,) = read_frames(path_ref)
    assert h.energy is None and h.forces is None and h.stress is None
    with pytest.raises(InputError) as err:
        check_labels([h], True, False, False, path_ref)
    assert str(path_ref) in str(err.value) and "'energy'" in str(err.value)


def test_stress_formats():
    voigt = np.array([1.0, 2, 3, 4, 5, 6])
    full = stress_to_3x3(voigt)
    np.testing.assert_allclose(stress_to_3x3(full.reshape(9)), full)
    np.testing.assert_allclose(stress_to_3x3(full), full)
    with pytest.raises(InputError):
        stress_to_3x3(np.zeros(4), "x.xyz: frame 2")


def test_write_read_roundtrip(tmp_path):
    frames = read_frames(SILICON, index=":3") + read_frames(ETHANOL, index=":2")
    path = tmp_path / "sub" / "out.xyz"
    write_frames(frames, path)
    assert sorted(p.name for p in path.parent.iterdir()) == ["out.xyz"]  # no temp file left
    back = read_frames(path)
    assert len(back) == len(frames)
    for a, b in zip(frames, back):
        np.testing.assert_array_equal(a.numbers, b.numbers)
        np.testing.assert_allclose(a.positions, b.positions, atol=1e-7)
        np.testing.assert_allclose(a.cell, b.cell, atol=1e-7)
        np.testing.assert_array_equal(a.pbc, b.pbc)
        assert a.energy == pytest.approx(b.energy, abs=1e-9)
        np.testing.assert_allclose(a.forces, b.forces, atol=1e-7)
        if a.stress is None:
            assert b.stress is None
        else:
            np.testing.assert_allclose(a.stress, b.stress, atol=1e-12)
        assert a.config_type == b.config_type


def test_to_atoms_carries_labels():
    (f,) = read_frames(SILICON, index=":1")
    atoms = f.to_atoms()
    assert atoms.get_potential_energy() == f.energy
    np.testing.assert_allclose(atoms.get_forces(), f.forces)
    np.testing.assert_allclose(atoms.get_stress(voigt=False), f.stress)
    assert atoms.info["config_type"] == f.config_type
    bare = Frame(
        numbers=[29],
        positions=[[0, 0, 0]],
        cell=np.zeros((3, 3)),
        pbc=[False] * 3,
        energy=None,
        forces=None,
        stress=None,
    )
    assert bare.to_atoms().calc is None


# ------------------------------------------------------------ error messages


def _single_line(err) -> str:
    msg = str(err.value)
    assert "\n" not in msg
    return msg


def test_missing_file(tmp_path):
    path = tmp_path / "nope" / "missing.xyz"
    with pytest.raises(InputError) as err:
        read_frames(path)
    msg = _single_line(err)
    assert str(path) in msg and "not found" in msg


def test_corrupt_file(tmp_path):
    path = tmp_path / "corrupt.xyz"
    path.write_text("garbage\nthis is not xyz\n")
    with pytest.raises(InputError) as err:
        read_frames(path)
    msg = _single_line(err)
    assert msg.startswith(f"{path}: cannot read")
    assert "XYZError" in msg  # ase's reason is included

    truncated = tmp_path / "truncated.xyz"
    truncated.write_text("".join(ETHANOL.read_text().splitlines(keepends=True)[:7]))
    with pytest.raises(InputError) as err:
        read_frames(truncated)
    assert str(truncated) in _single_line(err)

    empty = tmp_path / "empty.xyz"
    empty.write_text("")
    with pytest.raises(InputError) as err:
        read_frames(empty)
    assert str(empty) in _single_line(err)


def test_non_finite_position(tmp_path):
    path = tmp_path / "nan.xyz"
    path.write_text(
        '2\nenergy=1.0 pbc="F F F"\nCu 0 0 0\nCu 1 1 1\n3\nenergy=2.0 pbc="F F F"\nCu 0 0 0\nCu 1 1 1\nAu 2.0 nan 0.0\n'
    )
    with pytest.raises(InputError) as err:
        read_frames(path)
    msg = _single_line(err)
    assert str(path) in msg and "frame 1" in msg and "atom 2" in msg


def test_forces_wrong_shape():
    atoms = _copper_pair()
    atoms.calc = SinglePointCalculator(atoms, energy=1.0)
    atoms.calc.results["forces"] = np.zeros((3, 3))
    with pytest.raises(InputError) as err:
        Frame.from_atoms(atoms, source="data/x.xyz:4")
    msg = _single_line(err)
    assert "data/x.xyz: frame 4" in msg and "forces" in msg


def test_missing_forces_message(tmp_path):
    path = tmp_path / "noforces.xyz"
    frames = read_frames(ETHANOL, index=":3")
    frames[2].forces = None
    write_frames(frames, path)
    loaded = read_frames(path)
    check_labels(loaded, True, False, False, path)  # forces not needed: fine
    with pytest.raises(InputError) as err:
        check_labels(loaded, True, True, False, path)
    msg = _single_line(err)
    assert msg == f"{path}: frame 2 has no forces (key 'forces') but forces_weight > 0"


def test_missing_stress_only_for_periodic(tmp_path):
    ethanol = read_frames(ETHANOL, index=":2")
    check_labels(ethanol, True, True, True, ETHANOL)  # molecules need no stress
    si = read_frames(SILICON, index=":4")
    si[3].stress = None
    with pytest.raises(InputError) as err:
        check_labels(si, True, True, True)
    assert _single_line(err) == f"{SILICON}: frame 3 has no stress (key 'stress') but stress_weight > 0"


def test_unknown_element():
    frames = read_frames(ETHANOL, index=":5")
    check_species(frames, ["H", "C", "O"], ETHANOL)
    with pytest.raises(InputError) as err:
        check_species(frames, ["H", "C"], ETHANOL)
    msg = _single_line(err)
    assert msg == f"{ETHANOL}: frame 0 contains element 'O', which is not in model.species ['H', 'C']"


def test_unknown_element_in_file(tmp_path):
    path = tmp_path / "zn.xyz"
    path.write_text('1\nenergy=1.0 pbc="F F F"\nCu 0 0 0\n2\nenergy=1.0 pbc="F F F"\nAu 0 0 0\nZn 2 0 0\n')
    frames = read_frames(path)
    with pytest.raises(InputError) as err:
        check_species(frames, ["Cu", "Au"], path)
    assert _single_line(err) == (f"{path}: frame 1 contains element 'Zn', which is not in model.species ['Cu', 'Au']")


def test_periodic_with_zero_cell(tmp_path):
    with pytest.raises(InputError) as err:
        Frame(
            numbers=[29, 29],
            positions=np.zeros((2, 3)) + [[0, 0, 0], [1, 0, 0]],
            cell=np.zeros((3, 3)),
            pbc=[True, True, True],
            energy=None,
            forces=None,
            stress=None,
            source="cells.xyz:0",
        )
    assert "cells.xyz: frame 0" in _single_line(err)


def test_conflicting_e0():
    a = Frame(
        numbers=[29],
        positions=[[0, 0, 0]],
        cell=np.zeros((3, 3)),
        pbc=[False] * 3,
        energy=1.0,
        forces=None,
        stress=None,
        config_type="isolated_atom",
        source="a.xyz:0",
    )
    b = Frame(
        numbers=[29],
        positions=[[0, 0, 0]],
        cell=np.zeros((3, 3)),
        pbc=[False] * 3,
        energy=1.5,
        forces=None,
        stress=None,
        config_type="IsolatedAtom",
        source="a.xyz:5",
    )
    same = Frame(
        numbers=[29],
        positions=[[1, 0, 0]],
        cell=np.zeros((3, 3)),
        pbc=[False] * 3,
        energy=1.0,
        forces=None,
        stress=None,
        source="a.xyz:7",
    )
    rest, e0 = extract_e0([a, same])
    assert rest == [] and e0 == {"Cu": 1.0}
    with pytest.raises(InputError) as err:
        extract_e0([a, b])
    msg = _single_line(err)
    assert "a.xyz: frame 5" in msg and "Cu" in msg


def test_is_isolated_atom_rules():
    kw = dict(energy=None, forces=None, stress=None)
    one_open = Frame(numbers=[29], positions=[[0, 0, 0]], cell=np.zeros((3, 3)), pbc=[False] * 3, **kw)
    one_periodic = Frame(numbers=[29], positions=[[0, 0, 0]], cell=np.eye(3) * 2.5, pbc=[True] * 3, **kw)
    tagged = Frame(
        numbers=[29], positions=[[0, 0, 0]], cell=np.eye(3) * 20, pbc=[True] * 3, config_type="IsolatedAtom", **kw
    )
    two = Frame(numbers=[29, 29], positions=[[0, 0, 0], [3, 0, 0]], cell=np.zeros((3, 3)), pbc=[False] * 3, **kw)
    assert is_isolated_atom(one_open)
    assert not is_isolated_atom(one_periodic)
    assert is_isolated_atom(tagged)
    assert not is_isolated_atom(two)
