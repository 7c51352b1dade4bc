"""E0 (and the rest of the normalisation) enters a model one documented way, the same from
Python and from a config file: `ForceField.from_config(model, normalization={"e0": ...})`
and a config's `normalization:` section. `model` keys of the old layout (e0, shift, scale,
avg_num_neighbors) are moved there with a FutureWarning on both paths (one function,
forcefield.model.normalization.move_legacy_model_keys); a key given in both places is an
InputError on both."""

from __future__ import annotations

import warnings

import pytest

from forcefield import ForceField
from forcefield.errors import InputError
from forcefield.model.normalization import default_normalization
from forcefield.training.config import load_config

ARCH = {"species": ["Cu", "Au"], "r_max": 4.0, "num_layers": 1, "channels": 4, "lmax": 1, "dtype": "float64"}
E0 = {"Cu": -1.2, "Au": -2.3}


def config_dict(model: dict, normalization: dict | None = None) -> dict:
    raw = {"data": {"train": "train.xyz"}, "model": model}
    if normalization is not None:
        raw["normalization"] = normalization
    return raw


def test_the_documented_way_takes_e0_without_a_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model = ForceField.from_config(ARCH, normalization={"e0": E0})
        cfg = load_config(config_dict(ARCH, {"e0": E0}))
    norm = model.normalization()
    assert norm.e0 == E0 and norm.source["e0"] == {"Cu": "given", "Au": "given"}
    assert cfg.normalization.e0 == E0
    assert default_normalization(cfg.model.species, cfg.normalization.model_dump()).e0 == norm.e0


def test_old_model_e0_is_moved_with_a_warning_on_both_paths():
    old = dict(ARCH, e0=E0, shift={"Cu": -1.0})
    with pytest.warns(FutureWarning, match=r"model.e0.*normalization") as record:
        model = ForceField.from_config(old)
    assert record[0].filename == __file__  # the warning points at the caller's line
    with pytest.warns(FutureWarning, match=r"model.e0.*normalization"):
        cfg = load_config(config_dict(old))
    assert model.normalization().e0 == E0 == cfg.normalization.e0
    assert model.normalization().shift["Cu"] == -1.0 == cfg.normalization.shift["Cu"]
    assert "e0" not in cfg.model.model_dump() and "e0" not in model.model_config().model_dump()


def test_a_key_in_both_places_is_refused_on_both_paths():
    old = dict(ARCH, e0=E0)
    with pytest.raises(InputError, match=r"model.e0 and normalization.e0 are both given"):
        ForceField.from_config(old, normalization={"e0": {"Cu": 0.0}})
    with pytest.raises(InputError, match=r"model.e0 and normalization.e0 are both given"):
        load_config(config_dict(old, {"e0": {"Cu": 0.0}}))
    with pytest.raises(InputError, match=r"model.e0 beside a complete normalization"):
        ForceField.from_config(old, normalization=default_normalization(ARCH["species"]))


def test_bad_values_are_input_errors_naming_the_key():
    with pytest.raises(InputError, match=r"normalization.e0: element 'Fe'"):
        ForceField.from_config(ARCH, normalization={"e0": {"Fe": 1.0}})
    with pytest.raises(InputError, match=r"normalization.scale"):
        ForceField.from_config(ARCH, normalization={"scale": -1.0})
    with pytest.raises(InputError, match=r"model.e1: unknown key"):
        ForceField.from_config(dict(ARCH, e1=E0))
