"""Training batches: labelled graphs, DeNS corruption and the masks the loss needs."""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import numpy as np
import torch

from forcefield.data.frames import Frame, frame_location
from forcefield.data.graph import Graph, build_graph, collate, neighbour_list
from forcefield.training.config import DensConfig
from forcefield.training.dens import corrupt


def frame_to_graph(frame: Frame, species: Sequence[str], r_max: float) -> Graph:
    return build_graph(frame.numbers, frame.positions, frame.cell, frame.pbc, species, r_max,
                       where=frame_location(frame), energy=frame.energy, forces=frame.forces,
                       stress=frame.stress)


def _corrupted_graph(g: Graph, noise: np.ndarray, species: Sequence[str], r_max: float) -> Graph:
    """Same labels (the original ones), displaced positions, neighbour list rebuilt."""
    pos = g.positions + noise
    edge_index, shifts = neighbour_list(pos, g.cell, g.pbc, r_max)
    return Graph(g.species, pos, g.cell, g.pbc, edge_index, shifts, g.energy, g.forces, g.stress)


def make_batch(graphs: List[Graph], species: Sequence[str], r_max: float, dtype: torch.dtype,
               device, rng: Optional[np.random.Generator] = None,
               dens: Optional[DensConfig] = None) -> Dict[str, torch.Tensor]:
    """Collate `graphs`; with `dens` (and `rng`) turn some of them into DeNS samples.

    Extra keys: noise_mask (N,) displaced atoms; noise_target (N,3) noise/std;
    force_mask (N,) atoms in the force loss; energy_mask (G,) graphs in the energy loss;
    stress_mask (G,) graphs in the stress loss; dens_graph (G,) DeNS samples.
    """
    use = []
    noise_mask, noise_target, force_mask = [], [], []
    for g in graphs:
        n = g.num_atoms
        is_dens = bool(dens is not None and dens.enabled and rng is not None and n > 0
                       and rng.random() < dens.prob)
        if is_dens:
            c = corrupt(n, rng, dens.corrupt_ratio, dens.std, dens.std_range)
            use.append(_corrupted_graph(g, c.noise, species, r_max))
            noise_mask.append(c.mask)
            noise_target.append(c.noise / c.std)
            force_mask.append(~c.mask if dens.uncorrupted_force_loss else np.zeros(n, bool))
        else:
            use.append(g)
            noise_mask.append(np.zeros(n, bool))
            noise_target.append(np.zeros((n, 3)))
            force_mask.append(np.ones(n, bool))
    batch = collate(use, dtype=dtype, device=device)
    dens_graph = torch.tensor([m.any() for m in noise_mask], dtype=torch.bool, device=device)
    batch["dens_graph"] = dens_graph
    batch["noise_mask"] = torch.as_tensor(np.concatenate(noise_mask), device=device)
    batch["noise_target"] = torch.as_tensor(np.concatenate(noise_target), dtype=dtype, device=device)
    batch["force_mask"] = torch.as_tensor(np.concatenate(force_mask), device=device)
    keep_energy = dens is None or dens.energy_loss
    batch["energy_mask"] = torch.ones_like(dens_graph) if keep_energy else ~dens_graph
    if "stress_mask" in batch:
        batch["stress_mask"] = batch["stress_mask"] & ~dens_graph
    return batch
