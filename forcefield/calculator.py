"""ASE calculator for a ForceField object, a training checkpoint or an exported TorchScript file."""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Union

import numpy as np
import torch
from ase.calculators.calculator import Calculator, all_changes

from forcefield.data.graph import build_graph, check_cell, recentred_positions
from forcefield.model.deployed import DTYPES, is_exported_file, load_checkpoint_model, load_exported, match_threads


class _EagerRunner:
    """Calls a ForceField (eager) module on one graph."""

    def __init__(self, model: torch.nn.Module):
        self.model = model
        self.species: List[str] = list(model.species)
        self.r_max = float(model.r_max)
        self.dtype = model.shift.dtype

    def __call__(self, pos, species, edge_index, shifts, want_virial: bool) -> Dict[str, torch.Tensor]:
        batch = torch.zeros(pos.shape[0], dtype=torch.long)
        out = self.model(pos, species, edge_index, shifts, batch, 1, compute_virial=want_virial)
        res = {"energy": out["energy"][0], "node_energy": out["node_energy"], "forces": out["forces"]}
        if want_virial:
            res["virial"] = out["virial"][0]
        return res


class _ExportedRunner:
    """Calls an exported TorchScript module: forward(pos, species, edge_index, shifts, n_local)."""

    def __init__(self, module, metadata: dict):
        self.module = module
        self.species = list(metadata["species"])
        self.r_max = float(metadata["r_max"])
        self.dtype = DTYPES[metadata["dtype"]]
        self.threads = torch.get_num_threads()

    def __call__(self, pos, species, edge_index, shifts, want_virial: bool) -> Dict[str, torch.Tensor]:
        if torch.get_num_threads() != self.threads:  # message pieces suit one thread only
            self.threads = torch.get_num_threads()
            match_threads(self.module, pos.device.type)
        # without the profiling executor's optimisation, as the pair style runs it: it gains
        # no speed on this model and its optimised graph keeps ~3x the memory alive
        with torch.jit.optimized_execution(False):
            energy, node_energy, forces, v = self.module(pos, species, edge_index, shifts, pos.shape[0])
        virial = torch.stack(
            [torch.stack([v[0], v[3], v[4]]), torch.stack([v[3], v[1], v[5]]), torch.stack([v[4], v[5], v[2]])]
        )
        return {"energy": energy, "node_energy": node_energy, "forces": forces, "virial": virial}


def make_runner(model: Union[torch.nn.Module, str, Path]):
    """A runner for a ForceField, a checkpoint path or an exported-model path; any other
    file is an InputError naming it (one line, no torch warning)."""
    if isinstance(model, torch.nn.Module):
        return _EagerRunner(model)
    path = Path(model).expanduser()
    if is_exported_file(path):
        return _ExportedRunner(*load_exported(path))
    return _EagerRunner(load_checkpoint_model(path))


def structure_graph(numbers, positions, cell, pbc, runner, where: str = "structure"):
    """The graph a runner evaluates: validated (`build_graph`), positions recentred in
    float64 (`recentred_positions`) so that float32 models lose nothing far from the origin."""
    positions = np.asarray(positions, dtype=np.float64)
    if np.isfinite(positions).all():  # else build_graph names the bad atom
        check_cell(cell, pbc, where, runner.r_max)
        positions = recentred_positions(positions, cell, pbc)
    return build_graph(numbers, positions, cell, pbc, runner.species, runner.r_max, where)


def run_graph(runner, g, periodic: bool) -> Dict[str, object]:
    """One graph through a runner: energy (float), forces, node_energy (numpy, float64)
    and, for periodic cells, stress (3,3) in eV/Å^3 (ASE sign convention)."""
    t = lambda a, dt=runner.dtype: torch.as_tensor(np.asarray(a), dtype=dt)  # noqa: E731
    out = runner(t(g.positions), t(g.species, torch.long), t(g.edge_index, torch.long), t(g.shifts), periodic)
    res: Dict[str, object] = {
        "energy": float(out["energy"].detach()),
        "forces": out["forces"].detach().double().numpy().copy(),
        "node_energy": out["node_energy"].detach().double().numpy().copy(),
    }
    if periodic:
        res["stress"] = -out["virial"].detach().double().numpy() / abs(np.linalg.det(g.cell))
    return res


class ForceFieldCalculator(Calculator):
    """energy, free_energy, forces, energies (per atom) and, for periodic cells, stress."""

    implemented_properties = ["energy", "free_energy", "forces", "energies", "stress"]

    def __init__(self, model: Union[torch.nn.Module, str, Path], **kwargs):
        super().__init__(**kwargs)
        self.runner = make_runner(model)

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        r = self.runner
        a = self.atoms
        g = structure_graph(a.numbers, a.positions, a.cell.array, a.pbc, r)
        out = run_graph(r, g, bool(self.atoms.pbc.all()))
        self.results = {
            "energy": out["energy"],
            "free_energy": out["energy"],
            "forces": out["forces"],
            "energies": out["node_energy"],
        }
        if "stress" in out:
            self.results["stress"] = out["stress"].flat[[0, 4, 8, 5, 2, 1]].copy()
