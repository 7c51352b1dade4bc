"""Training batches: labelled graphs, DeNS samples (forcefield/training/dens.py) and the masks
the loss needs."""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import numpy as np
import torch

from forcefield.data.graph import (
    Graph,
    collate,
    frame_to_graph,  # noqa: F401 - re-exported for bench/training_throughput.py
)
from forcefield.training.config import DensConfig
from forcefield.training.dens import dens_sample


def make_batch(
    graphs: List[Graph],
    species: Sequence[str],
    r_max: float,
    dtype: torch.dtype,
    device,
    rng=None,
    dens: Optional[DensConfig] = None,
) -> Dict[str, torch.Tensor]:
    """Collate `graphs`; with `dens` (and `rng`: one numpy Generator, or one per graph) turn some
    of them into DeNS samples (`dens_sample`).

    Extra keys: noise_mask (N,) displaced atoms; noise_target (N,3) noise/std;
    force_mask (N,) atoms in the force loss; energy_mask (G,) graphs in the energy loss;
    stress_mask (G,) graphs in the stress loss; dens_graph (G,) DeNS samples.
    """
    use = []
    noise_mask, noise_target, force_mask = [], [], []
    rngs = rng if isinstance(rng, (list, tuple)) else [rng] * len(graphs)
    for g, r in zip(graphs, rngs):
        graph, moved, target, fmask = dens_sample(g, r, dens, r_max)
        use.append(graph)
        noise_mask.append(moved)
        noise_target.append(target)
        force_mask.append(fmask)
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
