"""The defaults that docs/design.md and README.md quote are the code's: loss weights, the
final stage, optimiser settings, DeNS and switch defaults, chunk sizes, format versions.

Each check finds its sentence by a pattern and compares the numbers in it with the
pydantic defaults or constants they describe. A sentence that changes wording makes its
check fail with the pattern it looked for: update the pattern with the text (or drop the
number from the text and the check with it)."""

from __future__ import annotations

import re

import pytest
from paths import ROOT

from forcefield.model.config import ModelConfig, SwitchConfig
from forcefield.training.config import DensConfig, FinalStageConfig, TrainingConfig

DESIGN = ROOT / "docs" / "design.md"
README = ROOT / "README.md"
NUMBER = r"([0-9]+(?:\.[0-9]+)?)"


def quoted(path, pattern: str) -> list:
    """The numbers captured by `pattern` (NUMBER groups) in the text of `path`, whitespace-insensitive."""
    text = " ".join(path.read_text().split())
    found = re.search(pattern, text)
    assert found, f"{path.relative_to(ROOT)}: no sentence matches {pattern!r}"
    return [float(g) for g in found.groups()]


def test_loss_weights():
    t = TrainingConfig()
    defaults = [t.energy_weight, t.forces_weight, t.stress_weight]
    assert quoted(DESIGN, rf"Defaults `w_E = {NUMBER}`, `w_F = {NUMBER}`, `w_S = {NUMBER}`") == defaults
    assert (
        quoted(
            README,
            rf"`training.\{{energy_weight,forces_weight,stress_weight\}}` .*?defaults {NUMBER} / {NUMBER} / {NUMBER}",
        )
        == defaults
    )


def test_recipe_summary():
    t, f = TrainingConfig(), FinalStageConfig()
    assert t.amsgrad and f.lr is None and "0.1 training.lr" in FinalStageConfig.model_fields["lr"].description
    design = quoted(
        DESIGN,
        rf"\(AMSGrad, lr {NUMBER}, energy / forces weights {NUMBER} / {NUMBER}, final stage {NUMBER} / {NUMBER} "
        rf"at {NUMBER} lr from {NUMBER}% of the budget\)",
    )
    assert design == [t.lr, t.energy_weight, t.forces_weight, f.energy_weight, f.forces_weight, 0.1, 100 * f.start]
    readme = quoted(
        README, rf"default: from {NUMBER}% of the budget, energy {NUMBER} / forces {NUMBER}, LR {NUMBER} lr"
    )
    assert readme == [100 * f.start, f.energy_weight, f.forces_weight, 0.1]
    assert quoted(DESIGN, rf"gradient-norm clipping \({NUMBER}\)") == [t.grad_clip]
    assert quoted(DESIGN, rf"EMA of the weights \({NUMBER},") == [t.ema_decay]


def test_dens_defaults():
    d = DensConfig()
    readme = quoted(
        README, rf"DeNS \(default off\): {NUMBER} of structures, {NUMBER} of their atoms, {NUMBER} Å, weight {NUMBER}"
    )
    assert not d.enabled and readme == [d.prob, d.corrupt_ratio, d.std, d.coefficient]
    assert quoted(DESIGN, rf"`dens.end` \(fraction of the budget, default {NUMBER}\)") == [d.end]


def test_switch_and_model_defaults():
    sw, m = SwitchConfig(), ModelConfig(species=["Cu"], r_max=4.0)
    for path, pattern in (
        (DESIGN, rf"Defaults `tau = {NUMBER} Å`, `r_on = {NUMBER} r_max`, `r_off = r_max`"),
        (README, rf"isolation switch; defaults {NUMBER} Å, {NUMBER} r_max, r_max"),
    ):
        tau, r_on = quoted(path, pattern)
        assert tau == sw.tau and r_on * m.r_max == pytest.approx(m.switch.r_on) and m.switch.r_off == m.r_max
    assert quoted(README, rf"`model.correlation` .*?\(default {NUMBER},") == [m.correlation]


def test_chunk_sizes():
    from forcefield.model.forcefield import DEFAULT_EDGE_CHUNK, DEFAULT_MESSAGE_CHUNK

    assert quoted(DESIGN, rf"`edge_chunk` edges \(default {NUMBER}\)") == [DEFAULT_EDGE_CHUNK]
    assert quoted(DESIGN, rf"`message_chunk` edges \(default {NUMBER}\)") == [DEFAULT_MESSAGE_CHUNK]


def test_format_versions():
    from forcefield.model.deployed import FORMAT_VERSION
    from forcefield.model.serialization import CHECKPOINT_VERSION

    assert quoted(DESIGN, rf'format: "forcefield-checkpoint", version: {NUMBER}') == [CHECKPOINT_VERSION]
    assert quoted(DESIGN, rf"Checkpoints \(format version {NUMBER}, key `normalization`\)") == [CHECKPOINT_VERSION]
    assert quoted(DESIGN, rf"`format_version` \(currently `{NUMBER}`\)") == [FORMAT_VERSION]
