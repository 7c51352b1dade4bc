"""Errors of a model (object, checkpoint or exported file) on a labelled structure file."""

from __future__ import annotations

from pathlib import Path
from typing import Dict, Tuple, Union

import numpy as np
import torch

from forcefield.calculator import make_runner, run_graph, structure_graph
from forcefield.data.checks import check_species
from forcefield.data.frames import frame_location, read_frames
from forcefield.data.split import extract_e0
from forcefield.errors import InputError


def predict_frames(runner, frames):
    """Per frame: (energy, forces (N,3), stress (3,3) or None) predicted by a runner
    (`forcefield.calculator.make_runner`)."""
    out = []
    for f in frames:
        g = structure_graph(f.numbers, f.positions, f.cell, f.pbc, runner, frame_location(f))
        r = run_graph(runner, g, bool(np.all(f.pbc)))
        out.append((r["energy"], r["forces"], r.get("stress")))
    return out


def _frames(data, energy_key: str, forces_key: str, stress_key: str):
    """The structures of a file, or the test split of a preprocessed dataset."""
    from forcefield.data.store import StoredDataset, is_stored_dataset

    if is_stored_dataset(data):
        store = StoredDataset(data)
        idx = store.splits["test"]
        if not len(idx):
            raise InputError(f"{data}: the dataset holds no test split (preprocess with --test FILE)")
        return [store.frame(int(i)) for i in idx]
    return extract_e0(read_frames(data, energy_key, forces_key, stress_key), energy_key=energy_key)[0]


def evaluate(
    model: Union[torch.nn.Module, str, Path],
    data: Union[str, Path],
    energy_key: str = "energy",
    forces_key: str = "forces",
    stress_key: str = "stress",
) -> Tuple[Dict[str, float], Dict[str, np.ndarray]]:
    """Metrics (energies meV/atom, forces meV/Å, stress meV/Å^3: docs/design.md, section
    "Units and conventions") and the reference/predicted arrays for parity plots.
    Isolated-atom frames are left out.

    ``n_structures`` counts the structures scored. A quantity that only some of them carry
    is scored over those, and its count is reported next to it: ``n_energy`` / ``n_forces``
    when fewer than ``n_structures`` structures have energies / forces, ``n_stress`` always
    with ``stress_mae``. InputError (naming ``data``) when nothing carries a label.
    """
    frames = _frames(data, energy_key, forces_key, stress_key)
    if not frames:
        raise InputError(f"{data}: only isolated atoms, no structure to score")
    has_e = [f.energy is not None for f in frames]
    has_f = [f.forces is not None for f in frames]
    has_s = [f.stress is not None and bool(np.all(f.pbc)) for f in frames]
    if not (any(has_e) or any(has_f) or any(has_s)):
        raise InputError(
            f"{data}: no structure has an energy, forces or stress (keys '{energy_key}', "
            f"'{forces_key}', '{stress_key}'): nothing to score"
        )
    runner = make_runner(model)
    check_species(frames, runner.species, data)
    preds = predict_frames(runner, frames)
    e_ref, e_pred, f_ref, f_pred, s_err = [], [], [], [], []
    for f, (e, forces, stress) in zip(frames, preds):
        n = len(f.numbers)
        if f.energy is not None:
            e_ref.append(f.energy / n)
            e_pred.append(e / n)
        if f.forces is not None:
            f_ref.append(f.forces)
            f_pred.append(forces)
        if f.stress is not None and stress is not None:
            s_err.append(stress - f.stress)
    n_frames = len(frames)
    metrics: Dict[str, float] = {"n_structures": n_frames}
    arrays = {
        "energy_ref": np.array(e_ref),
        "energy_pred": np.array(e_pred),
        "forces_ref": np.concatenate(f_ref) if f_ref else np.zeros((0, 3)),
        "forces_pred": np.concatenate(f_pred) if f_pred else np.zeros((0, 3)),
    }
    if e_ref:
        d = arrays["energy_pred"] - arrays["energy_ref"]
        if len(e_ref) < n_frames:
            metrics["n_energy"] = len(e_ref)
        metrics["energy_mae"] = 1000 * float(np.mean(np.abs(d)))
        metrics["energy_rmse"] = 1000 * float(np.sqrt(np.mean(d**2)))
    if f_ref:
        d = arrays["forces_pred"] - arrays["forces_ref"]
        if len(f_ref) < n_frames:
            metrics["n_forces"] = len(f_ref)
        metrics["forces_mae"] = 1000 * float(np.mean(np.abs(d)))
        metrics["forces_rmse"] = 1000 * float(np.sqrt(np.mean(d**2)))
    if s_err:
        metrics["n_stress"] = len(s_err)
        metrics["stress_mae"] = 1000 * float(np.mean(np.abs(np.stack(s_err))))
    return metrics, arrays


def label_counts(metrics: Dict[str, float]) -> Dict[str, int]:
    """Structures scored per quantity (energy, forces, stress) of `evaluate`'s metrics."""
    n = int(metrics["n_structures"])
    out = {}
    for q in ("energy", "forces", "stress"):
        if f"{q}_mae" in metrics:
            out[q] = int(metrics.get(f"n_{q}", n))
    return out
