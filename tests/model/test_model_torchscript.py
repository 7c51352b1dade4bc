"""TorchScript: the ForceField scripted with e3nn.util.jit.script, and the file written by
export_model, saved and loaded in a fresh Python process, give the eager energy, per-atom
energies, forces and virial to 1e-10 (float64); the ASE calculator on the exported file
agrees with the eager calculator."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from e3nn.util.jit import script
from model_utils import (
    make_model,
    molecule,
    one_thread,  # noqa: F401  (autouse fixture: one intra-op thread)
    rel_err,
    triclinic_cell,
)

from forcefield import ForceFieldCalculator
from forcefield.data.graph import atoms_to_graph, collate
from forcefield.export.torchscript import export_model, load_exported

TOL = 1e-10


@pytest.fixture(scope="module")
def model():
    return make_model("float64", seed=51)


def _inputs(model, atoms):
    g = atoms_to_graph(atoms, model.species, model.r_max)
    b = collate([g], dtype=model.dtype)
    return {k: b[k] for k in ("pos", "species", "edge_index", "shifts", "batch")}


def _eager(model, inp):
    out = model(
        inp["pos"], inp["species"], inp["edge_index"], inp["shifts"], inp["batch"], 1, -1, True, True, False, None
    )
    return {k: out[k].detach() for k in ("energy", "node_energy", "forces", "virial")}


FRESH_PROCESS = textwrap.dedent(r"""
    import sys
    import torch
    scripted_path, export_path, inputs_path, out_path = sys.argv[1:5]
    inputs = torch.load(inputs_path)
    # 1. the scripted ForceField, loaded with torch alone (no forcefield / e3nn import)
    module = torch.jit.load(scripted_path)
    assert "e3nn" not in sys.modules and "forcefield" not in sys.modules
    results = []
    for inp in inputs:
        out = module(inp["pos"], inp["species"], inp["edge_index"], inp["shifts"], inp["batch"], 1,
                     -1, True, True, False, None)
        results.append({k: out[k].detach() for k in ("energy", "node_energy", "forces", "virial")})
    # 2. the exported deployment module (through the package's loader)
    from forcefield.export.torchscript import load_exported
    deployed, meta = load_exported(export_path)
    exported = []
    for inp in inputs:
        e, ne, f, v = deployed(inp["pos"], inp["species"], inp["edge_index"], inp["shifts"],
                               inp["pos"].shape[0])
        exported.append({"energy": e, "node_energy": ne, "forces": f, "virial": v, "dtype": meta["dtype"]})
    torch.save({"scripted": results, "exported": exported}, out_path)
""")


def test_scripted_and_exported_match_eager_in_fresh_process(model, tmp_path):
    structures = [triclinic_cell(), molecule()]
    inputs = [_inputs(model, a) for a in structures]
    eager = [_eager(model, inp) for inp in inputs]

    scripted = script(model)
    # in this process first
    for inp, ref in zip(inputs, eager):
        out = scripted(
            inp["pos"], inp["species"], inp["edge_index"], inp["shifts"], inp["batch"], 1, -1, True, True, False, None
        )
        for k in ref:
            assert rel_err(out[k].detach().numpy(), ref[k].numpy()) < TOL, k
    scripted_path = tmp_path / "scripted.pt"
    torch.jit.save(scripted, str(scripted_path))
    export_path = export_model(model, tmp_path / "exported.pt")
    inputs_path, out_path = tmp_path / "inputs.pt", tmp_path / "outputs.pt"
    torch.save(inputs, inputs_path)
    script_file = tmp_path / "fresh.py"
    script_file.write_text(FRESH_PROCESS)
    proc = subprocess.run(
        [sys.executable, str(script_file), str(scripted_path), str(export_path), str(inputs_path), str(out_path)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = torch.load(out_path)

    for ref, got in zip(eager, res["scripted"]):
        for k in ref:
            assert got[k].dtype == torch.float64
            assert rel_err(got[k].numpy(), ref[k].numpy()) < TOL, k
    for ref, got in zip(eager, res["exported"]):
        assert got["dtype"] == "float64"
        assert rel_err(got["energy"].numpy(), ref["energy"][0].numpy()) < TOL
        assert rel_err(got["node_energy"].numpy(), ref["node_energy"].numpy()) < TOL
        assert rel_err(got["forces"].numpy(), ref["forces"].numpy()) < TOL
        w = ref["virial"][0].numpy()
        assert rel_err(got["virial"].numpy(), w[[0, 1, 2, 0, 0, 1], [0, 1, 2, 1, 2, 2]]) < TOL


def test_calculator_on_exported_file(model, tmp_path):
    path = export_model(model, tmp_path / "m.pt")
    module, meta = load_exported(path)
    assert meta["species"] == model.species and meta["r_max"] == model.r_max
    for atoms in (triclinic_cell(), molecule()):
        a_eager, a_file = atoms.copy(), atoms.copy()
        a_eager.calc = ForceFieldCalculator(model)
        a_file.calc = ForceFieldCalculator(path)
        assert rel_err(a_file.get_potential_energy(), a_eager.get_potential_energy()) < TOL
        assert rel_err(a_file.get_forces(), a_eager.get_forces()) < TOL
        assert rel_err(a_file.get_potential_energies(), a_eager.get_potential_energies()) < TOL
        if atoms.pbc.all():
            assert rel_err(a_file.get_stress(), a_eager.get_stress()) < TOL


def test_export_float32_of_float64_model(model, tmp_path):
    """Exporting in float32 keeps the weights (rounded): energies agree to float32 precision."""
    path = export_model(model, tmp_path / "m32.pt", dtype="float32")
    _, meta = load_exported(path)
    assert meta["dtype"] == "float32"
    atoms = triclinic_cell()
    a64, a32 = atoms.copy(), atoms.copy()
    a64.calc = ForceFieldCalculator(model)
    a32.calc = ForceFieldCalculator(path)
    assert a32.get_potential_energy() == pytest.approx(a64.get_potential_energy(), rel=1e-5)
    np.testing.assert_allclose(a32.get_forces(), a64.get_forces(), atol=1e-3 * np.abs(a64.get_forces()).max())
