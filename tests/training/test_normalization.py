"""The fitted normalisation (shift, scale, E0, avg_num_neighbors) is its own record, apart
from the architecture, in the config, the checkpoint and the export, with its sources;
checkpoints and configs from before still load."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import yaml
from training_helpers import ethanol_atoms, tiny_config, write_ethanol
from typer.testing import CliRunner

from forcefield.cli.app import app
from forcefield.data.graph import frame_to_graph
from forcefield.data.statistics import avg_num_neighbors_of_graphs
from forcefield.errors import InputError
from forcefield.model.deployed import load_exported
from forcefield.model.normalization import LEGACY_MODEL_KEYS
from forcefield.model.serialization import model_from_checkpoint, read_checkpoint
from forcefield.training.config import load_config
from forcefield.training.datasets import fit_normalization, load_datasets
from forcefield.training.resume import check_resume_config

runner = CliRunner()


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    d = tmp_path_factory.mktemp("normalization")
    write_ethanol(d / "train.xyz", n=8)
    cfg = tiny_config(
        d / "train.xyz",
        dens={"enabled": False},
        normalization={"scale": 2.5},
        training={"max_epochs": 1},
    )
    (d / "config.yaml").write_text(yaml.safe_dump(cfg))
    result = runner.invoke(app, ["train", str(d / "config.yaml"), "-o", str(d / "run")])
    assert result.exit_code == 0, result.output
    return {"dir": d, "run": d / "run", "config": cfg}


def test_checkpoint_keeps_architecture_and_normalization_apart(run):
    ckpt = read_checkpoint(run["run"] / "best.ckpt")
    assert ckpt["version"] == 3
    assert not set(LEGACY_MODEL_KEYS) & set(ckpt["model_config"])
    norm = ckpt["normalization"]
    assert norm["scale"] == 2.5 and norm["source"]["scale"] == "given"
    assert norm["source"]["shift"] == "fitted" and norm["source"]["avg_num_neighbors"] == "fitted"
    # E0 of all three elements comes from the isolated-atom file
    assert norm["source"]["e0"] == {"H": "isolated_atoms", "C": "isolated_atoms", "O": "isolated_atoms"}
    cfg = load_config(run["config"])
    data = load_datasets(cfg)
    assert norm["e0"] == pytest.approx(data.e0, abs=0)
    graphs = [frame_to_graph(f, cfg.model.species, cfg.model.r_max) for f in data.train]
    assert norm["avg_num_neighbors"] == pytest.approx(avg_num_neighbors_of_graphs(graphs), rel=1e-12)
    # the model carries exactly this record, in its buffers and its interaction blocks
    model = model_from_checkpoint(run["run"] / "best.ckpt")
    assert model.normalization().model_dump(mode="json") == norm
    assert float(model.scale) == 2.5
    for layer in model.layers:
        assert layer.inv_avg_num_neighbors == pytest.approx(1.0 / norm["avg_num_neighbors"], rel=1e-15)


def test_export_metadata_has_the_normalization(run, tmp_path):
    result = runner.invoke(
        app, ["export", str(run["run"] / "best.ckpt"), "-o", str(tmp_path / "m.pt"), "--dtype", "float64"]
    )
    assert result.exit_code == 0, result.output
    _, meta = load_exported(tmp_path / "m.pt")
    norm = read_checkpoint(run["run"] / "best.ckpt")["normalization"]
    assert meta["normalization"] == norm
    assert meta["e0"] == norm["e0"] and meta["shift"] == norm["shift"] and meta["scale"] == norm["scale"]
    assert not set(LEGACY_MODEL_KEYS) & set(meta["model_config"])


def test_version2_checkpoint_loads_with_the_same_predictions(run, tmp_path):
    """Version 2 kept e0 / shift / scale / avg_num_neighbors inside model_config."""
    from forcefield.atomic_io import save_torch
    from forcefield.calculator import ForceFieldCalculator

    ckpt = read_checkpoint(run["run"] / "best.ckpt")
    norm = ckpt.pop("normalization")
    ckpt["model_config"].update({k: norm[k] for k in LEGACY_MODEL_KEYS})
    ckpt["version"] = 2
    old = tmp_path / "v2.ckpt"
    save_torch(ckpt, old)
    loaded = read_checkpoint(old)
    assert loaded["normalization"]["source"]["scale"] == "unrecorded"
    assert {k: loaded["normalization"][k] for k in LEGACY_MODEL_KEYS} == {k: norm[k] for k in LEGACY_MODEL_KEYS}
    atoms = ethanol_atoms(2, start=20)
    results = []
    for path in (run["run"] / "best.ckpt", old):
        calc = ForceFieldCalculator(model_from_checkpoint(path))
        results.append([(calc.get_potential_energy(a), calc.get_forces(a)) for a in atoms])
    for (e_new, f_new), (e_old, f_old) in zip(*results):
        assert e_new == e_old
        np.testing.assert_array_equal(f_new, f_old)


def test_given_values_are_used_and_the_rest_fitted(run):
    e0_h = -13.0
    cfg = load_config(
        tiny_config(run["dir"] / "train.xyz", normalization={"e0": {"H": e0_h}, "avg_num_neighbors": 7.0})
    )
    norm = fit_normalization(cfg, load_datasets(cfg))
    assert norm.e0["H"] == e0_h and norm.source["e0"]["H"] == "given"
    assert norm.source["e0"]["C"] == "isolated_atoms"
    assert norm.avg_num_neighbors == 7.0 and norm.source["avg_num_neighbors"] == "given"
    assert norm.source["scale"] == "fitted" and norm.scale > 0
    bad = tiny_config(run["dir"] / "train.xyz", normalization={"shift": {"Cu": -1.0}})
    with pytest.raises(InputError, match=r"normalization.shift: element 'Cu'"):
        fit_normalization(load_config(bad), load_datasets(load_config(bad)))


def test_config_with_the_old_model_keys_still_loads(run):
    """model.e0 / model.shift move to `normalization` (they were used as given), model.scale
    and model.avg_num_neighbors are dropped (they were always replaced): same run as before."""
    old = tiny_config(run["dir"] / "train.xyz")
    old["model"].update(e0={"H": -13.0}, shift={"C": -1030.0}, scale=1.0, avg_num_neighbors=10.0)
    with pytest.warns(FutureWarning, match="normalization"):
        cfg = load_config(old)
    assert cfg.normalization.e0 == {"H": -13.0} and cfg.normalization.shift == {"C": -1030.0}
    assert cfg.normalization.scale is None and cfg.normalization.avg_num_neighbors is None
    both = dict(old, normalization={"e0": {"H": -14.0}})
    with pytest.raises(InputError, match=r"model.e0 and normalization.e0"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            load_config(both)
    # --resume compares against the config a checkpoint of the old layout recorded
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        new = load_config(old).model_dump(mode="json")
    recorded = {k: v for k, v in new.items() if k != "normalization"}
    recorded["model"] = dict(new["model"], e0={"H": -13.0}, shift={"C": -1030.0}, scale=1.0, avg_num_neighbors=10.0)
    assert check_resume_config(recorded, new, run["dir"]) == {}
    recorded["model"]["e0"] = {"H": -12.0}
    with pytest.raises(InputError, match=r"normalization.e0"):
        check_resume_config(recorded, new, run["dir"])
