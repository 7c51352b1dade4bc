"""Bad input gives a ValueError (forcefield.errors.InputError) that names what is wrong."""

from __future__ import annotations

import numpy as np
import pytest
from ase import Atoms
from model_utils import (
    make_model,
    one_thread,  # noqa: F401  (autouse fixture: one intra-op thread)
    triclinic_cell,
)

from forcefield import ForceField, ForceFieldCalculator
from forcefield.data.graph import atoms_to_graph
from forcefield.errors import InputError


@pytest.fixture(scope="module")
def model():
    return make_model("float64", seed=71, species=["Cu", "Au"])


def test_input_error_is_value_error():
    assert issubclass(InputError, ValueError)


@pytest.mark.parametrize("symbol", ["Fe", "H"])
def test_unknown_element_via_calculator(model, symbol):
    atoms = Atoms(["Cu", "Au", symbol, "Cu"], positions=np.arange(12.0).reshape(4, 3))
    atoms.calc = ForceFieldCalculator(model)
    with pytest.raises(ValueError, match=rf"'{symbol}'") as err:
        atoms.get_potential_energy()
    assert "atom 2" in str(err.value)


def test_unknown_element_via_exported_file(model, tmp_path):
    from forcefield.export.torchscript import export_model

    path = export_model(model, tmp_path / "m.pt")
    atoms = Atoms("CuNi", positions=[[0, 0, 0], [2.5, 0, 0]])
    atoms.calc = ForceFieldCalculator(path)
    with pytest.raises(ValueError, match="Ni"):
        atoms.get_forces()


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_position(model, bad):
    atoms = triclinic_cell()
    atoms = Atoms(
        [s if s != "O" else "Cu" for s in atoms.get_chemical_symbols()],
        positions=atoms.positions,
        cell=atoms.cell,
        pbc=True,
    )
    atoms.positions[4, 1] = bad
    atoms.calc = ForceFieldCalculator(model)
    with pytest.raises(ValueError, match=r"atom 4\b"):
        atoms.get_potential_energy()
    with pytest.raises(ValueError, match=r"atom 4\b"):
        atoms_to_graph(atoms, model.species, model.r_max)


def test_missing_species_in_config():
    with pytest.raises(ValueError, match="species"):
        ForceField.from_config({"r_max": 5.0, "dtype": "float64"})


@pytest.mark.parametrize(
    "cfg, words",
    [
        ({"species": [], "r_max": 5.0}, ["species"]),
        ({"species": ["Cu", "Xy"]}, ["species", "Xy"]),
        ({"species": ["Cu", "Cu"]}, ["species", "duplicate"]),
        ({"species": ["Cu"], "normalization": {"e0": {"Au": -1.0}}}, ["e0", "Au"]),
        ({"species": ["Cu"], "normalization": {"scale": -1.0}}, ["normalization.scale"]),
        ({"species": ["Cu"], "r_max": -1.0}, ["r_max"]),
        ({"species": ["Cu"], "dtype": "float16"}, ["dtype"]),
        ({"species": ["Cu"], "chanels": 8}, ["chanels"]),
        ({"species": ["Cu"], "switch": {"tau": 0.0}}, ["tau"]),
        ({"species": ["Cu"], "r_max": 5.0, "switch": {"r_on": 4.0, "r_off": 3.0}}, ["r_off"]),
        ({"species": ["Cu"], "r_max": 5.0, "switch": {"r_off": 6.0}}, ["r_off", "r_max"]),
    ],
)
def test_bad_config(cfg, words):
    cfg = dict(cfg)
    normalization = cfg.pop("normalization", None)
    with pytest.raises(ValueError) as err:
        ForceField.from_config(cfg, normalization)
    for w in words:
        assert w in str(err.value), (w, str(err.value))


def test_singular_periodic_cell(model):
    atoms = Atoms("Cu", positions=[[0, 0, 0]], cell=[[1, 0, 0], [2, 0, 0], [0, 0, 3]], pbc=True)
    with pytest.raises(ValueError, match="cell"):
        atoms_to_graph(atoms, model.species, model.r_max)
