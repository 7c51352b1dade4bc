"""A short training run on the GPU through the public entry points only
(forcefield.training.config.load_config(dict) and forcefield.training.trainer.train(cfg,
output)): the loss falls, the checkpoint loads on CPU (a machine without a GPU) and gives
there what the model gives on the device; its export loads and runs on CPU.

Marked `gpu`: skipped only when no CUDA device is present; FORCEFIELD_TEST_DEVICE=cpu runs
it on CPU (tests/gpu/conftest.py)."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch
from training_helpers import ethanol_atoms, tiny_config, write_ethanol

from forcefield.data.graph import atoms_to_graph, collate

pytestmark = pytest.mark.gpu


def _evaluate(model, atoms_list, device):
    model = model.to(device)
    graphs = [atoms_to_graph(a, model.species, model.r_max) for a in atoms_list]
    b = collate(graphs, dtype=model.dtype, device=device)
    out = model(b["pos"], b["species"], b["edge_index"], b["shifts"], b["batch"], len(graphs), compute_forces=True)
    return {k: out[k].detach().to("cpu", torch.float64).numpy() for k in ("energy", "forces")}


def test_training_on_device_loss_falls_and_checkpoint_loads_on_cpu(device, tmp_path):
    from forcefield.export.torchscript import export_model, load_exported
    from forcefield.model.deployed import load_checkpoint_model
    from forcefield.training.config import load_config
    from forcefield.training.trainer import train

    data = write_ethanol(tmp_path / "train.xyz", n=20)
    cfg = load_config(
        tiny_config(
            data,
            model={"channels": 8},
            training={"max_epochs": 5, "batch_size": 2, "lr": 0.02, "warmup_steps": 0, "device": device},
        )
    )
    train(cfg, tmp_path / "run", quiet=True)

    with open(tmp_path / "run" / "metrics.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 5
    valid = [float(r["valid_loss"]) for r in rows]
    assert all(np.isfinite(valid))
    assert valid[-1] < 0.75 * valid[0], valid

    # the checkpoint loads on CPU (tensors mapped there) and agrees with the device
    model = load_checkpoint_model(tmp_path / "run" / "best.ckpt")
    assert all(p.device.type == "cpu" for p in model.parameters())
    model.eval()
    atoms = ethanol_atoms(3, start=40)
    on_cpu = _evaluate(model, atoms, "cpu")
    on_device = _evaluate(load_checkpoint_model(tmp_path / "run" / "best.ckpt").eval(), atoms, device)
    for k in on_cpu:
        np.testing.assert_allclose(on_device[k], on_cpu[k], rtol=0, atol=1e-10, err_msg=k)

    # and its export runs on CPU
    module, meta = load_exported(export_model(tmp_path / "run" / "best.ckpt", tmp_path / "m.pt"), "cpu")
    g = atoms_to_graph(atoms[0], meta["species"], meta["r_max"])
    b = collate([g], dtype=torch.float64)
    energy = module(b["pos"], b["species"], b["edge_index"], b["shifts"], len(atoms[0]))[0]
    assert float(energy) == pytest.approx(on_cpu["energy"][0], abs=1e-8)
