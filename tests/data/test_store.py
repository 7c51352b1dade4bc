"""The preprocessed (HDF5) dataset: round trip against the extxyz path, the same bad-input
errors naming file and frame, damaged files, and training from it."""

from __future__ import annotations

import subprocess
import sys

import ase.io
import h5py
import numpy as np
import pytest
import torch
from ase import Atoms
from paths import DATASETS
from training_helpers import ETHANOL_E0, SPECIES, tiny_config, write_ethanol

from forcefield.data.preprocess import preprocess
from forcefield.data.store import StoredDataset
from forcefield.errors import InputError
from forcefield.model.serialization import read_checkpoint
from forcefield.training.config import load_config
from forcefield.training.datasets import fit_normalization, load_training_data
from forcefield.training.trainer import Trainer

SILICON = DATASETS / "silicon" / "train.xyz"


def _graphs(source):
    return [source.graph(i) for i in range(len(source))]


def _assert_same_graphs(a, b):
    assert len(a) == len(b) > 0
    for ga, gb in zip(a, b):
        for name in ("species", "positions", "cell", "pbc", "edge_index", "shifts"):
            np.testing.assert_array_equal(getattr(ga, name), getattr(gb, name), err_msg=name)
        assert ga.energy == gb.energy
        for name in ("forces", "stress"):
            x, y = getattr(ga, name), getattr(gb, name)
            assert (x is None) == (y is None), name
            if x is not None:
                np.testing.assert_array_equal(x, y, err_msg=name)


def _norm_close(a, b):
    da, db = a.model_dump(), b.model_dump()
    for key in ("shift", "e0"):
        for s in da[key]:
            assert da[key][s] == pytest.approx(db[key][s], rel=1e-12, abs=1e-12), (key, s)
    for key in ("scale", "avg_num_neighbors"):
        assert da[key] == pytest.approx(db[key], rel=1e-12), key


@pytest.mark.parametrize("neighbours", [True, False])
def test_round_trip_equals_the_extxyz_path_ethanol(tmp_path, neighbours):
    train = write_ethanol(tmp_path / "train.xyz", n=24)
    h5 = tmp_path / "train.h5"
    summary = preprocess(
        [str(train)], h5, r_max=5.0, valid=0.25, isolated_atoms=str(ETHANOL_E0), seed=0, neighbours=neighbours
    )
    assert summary["train"] == 18 and summary["valid"] == 6
    plain = load_config(tiny_config(train))  # valid 0.25, seed 0, data.isolated_atoms
    stored = load_config(tiny_config(h5))
    del stored.data.valid  # the dataset's own split
    stored = load_config({**stored.model_dump(mode="json"), "data": {"train": str(h5)}})
    a, b = load_training_data(plain), load_training_data(stored)
    _assert_same_graphs(_graphs(a.train), _graphs(b.train))
    _assert_same_graphs(_graphs(a.valid), _graphs(b.valid))
    assert a.e0 == b.e0
    _norm_close(fit_normalization(plain, a), fit_normalization(stored, b))


def test_round_trip_equals_the_extxyz_path_silicon_with_stress_and_test_split(tmp_path):
    h5 = tmp_path / "si.h5"
    test_file = tmp_path / "si_test.xyz"
    ase.io.write(test_file, ase.io.read(DATASETS / "silicon" / "test.xyz", ":5"))
    train_file = tmp_path / "si.xyz"
    ase.io.write(train_file, ase.io.read(SILICON, ":30"))
    preprocess([str(train_file)], h5, r_max=4.0, species=["Si"], valid=0.2, test=[str(test_file)], seed=3)
    model = {"species": ["Si"], "r_max": 4.0, "channels": 4, "lmax": 1, "radial_hidden": 8, "dtype": "float64"}
    base = {"model": model, "training": {"seed": 3}}
    plain = load_config({**base, "data": {"train": str(train_file), "valid": 0.2}})
    stored = load_config({**base, "data": {"train": str(h5)}})
    a, b = load_training_data(plain), load_training_data(stored)
    _assert_same_graphs(_graphs(a.train), _graphs(b.train))
    _assert_same_graphs(_graphs(a.valid), _graphs(b.valid))
    assert any(g.stress is not None for g in _graphs(b.train))
    _norm_close(fit_normalization(plain, a), fit_normalization(stored, b))
    store = StoredDataset(h5)
    frames = [store.frame(int(i)) for i in store.splits["test"]]
    assert len(frames) == 5 and frames[0].source.endswith("si_test.xyz:0")
    ref = ase.io.read(test_file, ":")
    assert frames[4].energy == ref[4].get_potential_energy()
    np.testing.assert_array_equal(frames[4].positions, ref[4].positions)


def _bad(tmp_path, images, name="bad.xyz"):
    path = tmp_path / name
    ase.io.write(path, images, format="extxyz")
    return path


def _labelled(atoms, energy=-1.0, forces=True):
    from ase.calculators.singlepoint import SinglePointCalculator

    atoms.calc = SinglePointCalculator(atoms, energy=energy, forces=np.zeros((len(atoms), 3)) if forces else None)
    return atoms


def _good():
    return _labelled(Atoms("CO", positions=[[0, 0, 0], [1.2, 0, 0]]))


@pytest.mark.parametrize(
    "bad, message",
    [
        (lambda: _labelled(Atoms("CO", positions=[[0, 0, 0], [0.01, 0, 0]])), r"bad.xyz: frame 1: atoms 0 and 1 are"),
        (
            lambda: _labelled(Atoms("CO", positions=[[0, 0, 0], [1.2, 0, 0]]), forces=False),
            r"bad.xyz: frame 1 has no forces \(key 'forces'\)",
        ),
        (
            lambda: _labelled(Atoms("CZn", positions=[[0, 0, 0], [1.2, 0, 0]])),
            r"bad.xyz: frame 1: atom 1 is element 'Zn', which is not in the model's species",
        ),
        (
            lambda: _labelled(
                Atoms("CO", positions=[[0, 0, 0], [1.2, 0, 0]], cell=[[1, 0, 0], [2, 0, 0], [0, 0, 1]], pbc=True)
            ),
            r"bad.xyz: frame 1: .*cell",
        ),
    ],
    ids=["coincident", "missing-forces", "unknown-species", "degenerate-cell"],
)
def test_bad_input_names_file_and_frame(tmp_path, bad, message):
    path = _bad(tmp_path, [_good(), bad()])
    out = tmp_path / "out.h5"
    with pytest.raises(InputError, match=message):
        preprocess([str(path)], out, species=["C", "O", "H"], valid=0.5)
    assert not out.exists()  # nothing half-written under the final name


def test_existing_output_is_kept(tmp_path):
    path = _bad(tmp_path, [_good(), _good()])
    out = tmp_path / "out.h5"
    out.write_text("keep me")
    with pytest.raises(InputError, match="already exists"):
        preprocess([str(path)], out, valid=0.5)
    assert out.read_text() == "keep me"


def _dataset(tmp_path):
    train = write_ethanol(tmp_path / "train.xyz", n=12)
    h5 = tmp_path / "train.h5"
    preprocess([str(train)], h5, valid=0.25)
    return h5


def test_truncated_and_foreign_files_are_one_line_errors(tmp_path):
    h5 = _dataset(tmp_path)
    cut = tmp_path / "cut.h5"
    cut.write_bytes(h5.read_bytes()[: h5.stat().st_size // 2])
    with pytest.raises(InputError, match=r"cut.h5: not a readable forcefield dataset"):
        StoredDataset(cut)
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as f:
        f["x"] = np.zeros(3)
    with pytest.raises(InputError, match="not a forcefield dataset"):
        StoredDataset(other)
    broken = tmp_path / "broken.h5"
    broken.write_bytes(h5.read_bytes())
    with h5py.File(broken, "a") as f:
        del f["atoms/positions"]
        f["atoms/positions"] = np.zeros((3, 3))
    with pytest.raises(InputError, match="broken.h5: atoms/positions holds 3 rows"):
        StoredDataset(broken)
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(f"data: {{train: {cut}}}\nmodel: {{species: [H, C, O]}}\n")
    r = subprocess.run(
        [sys.executable, "-m", "forcefield", "train", str(cfg), "-o", str(tmp_path / "run")],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().count("\n") == 0 and "cut.h5: not a readable forcefield dataset" in r.stderr


def test_model_mismatch_is_named(tmp_path):
    h5 = _dataset(tmp_path)
    cfg = tiny_config(h5, model={"r_max": 4.0})
    cfg["data"].pop("valid")
    with pytest.raises(InputError, match=r"preprocessed with r_max 5 Å but model.r_max is 4"):
        load_training_data(load_config(cfg))
    cfg = tiny_config(h5, model={"species": ["H", "C"]})
    cfg["data"].pop("valid")
    with pytest.raises(InputError, match=r"train.xyz: frame 0 contains element 'O', which is not in model.species"):
        load_training_data(load_config(cfg))
    cfg = tiny_config(h5)
    with pytest.raises(InputError, match=r"data.valid 0.25: .* already holds a valid split"):
        load_training_data(load_config(cfg))


def _final(folder):
    return read_checkpoint(folder / "last.ckpt")


@pytest.mark.parametrize("workers", [0, 2])
def test_training_from_the_dataset_equals_training_from_extxyz(tmp_path, workers):
    train = write_ethanol(tmp_path / "train.xyz", n=16)
    h5 = tmp_path / "train.h5"
    preprocess([str(train)], h5, valid=0.25, isolated_atoms=str(ETHANOL_E0))
    plain = tiny_config(train, training={"max_epochs": 2})
    stored = tiny_config(h5, training={"max_epochs": 2}, data={"num_workers": workers})
    stored["data"].pop("valid")
    Trainer(load_config(plain), tmp_path / "a", quiet=True).run()
    Trainer(load_config(stored), tmp_path / "b", quiet=True).run()
    a, b = _final(tmp_path / "a"), _final(tmp_path / "b")
    for k in a["raw_model_state"]:
        assert torch.equal(a["raw_model_state"][k], b["raw_model_state"][k]), k
    assert [r["valid_loss"] for r in a["rows"]] == [r["valid_loss"] for r in b["rows"]]
    assert SPECIES == load_config(stored).model.species


def test_labels_the_config_needs_are_checked_on_the_dataset(tmp_path):
    """A dataset preprocessed without forces refuses a config whose loss needs them,
    naming the original file and frame."""
    path = _bad(tmp_path, [_labelled(Atoms("CO", positions=[[0, 0, 0], [1.2, 0, 0]]), forces=False)] * 4)
    h5 = tmp_path / "noforces.h5"
    preprocess([str(path)], h5, valid=0.25, require=["energy"])
    cfg = tiny_config(h5, model={"species": ["C", "O"]}, dens={"enabled": False})
    cfg["data"] = {"train": str(h5)}
    with pytest.raises(InputError, match=r"bad.xyz: frame 0 has no forces \(key 'forces'\) but forces_weight > 0"):
        load_training_data(load_config(cfg))
