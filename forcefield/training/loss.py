"""Loss of one batch: energy per atom, forces, stress (all in units of the energy scale
sigma, so the weights are dimensionless) and, on DeNS samples, the noise-prediction loss
(the force encoding and the noise loss are those of forcefield/training/dens.py: the
encoder's `encode` and the head's `loss`)."""

from __future__ import annotations

from typing import Dict, Optional, Tuple

import torch
from torch import nn


def masked_mse(err: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of err^2 over the rows selected by mask (0 when none is)."""
    if err.dim() > 1:
        err = err.reshape(err.shape[0], -1)
        sq = (err * err).mean(dim=1)
    else:
        sq = err * err
    m = mask.to(sq.dtype)
    return (sq * m).sum() / m.sum().clamp(min=1.0)


def batch_loss(
    model: nn.Module,
    batch: Dict[str, torch.Tensor],
    weights: Dict[str, float],
    encoder: Optional[nn.Module] = None,
    head: Optional[nn.Module] = None,
    dens_coefficient: float = 0.0,
    create_graph: bool = True,
) -> Tuple[torch.Tensor, Dict[str, float], Dict[str, torch.Tensor]]:
    """(total loss, float parts, model outputs). `encoder` and `head`: DeNS's ForceEncoder
    and NoiseHead (`DeNS.encoder`, `DeNS.head`), used on batches with displaced atoms."""
    sigma = float(model.scale)
    n_graphs = int(batch["num_graphs"])
    want_stress = "stress" in batch and weights.get("stress", 0.0) > 0
    node_features = encoder.encode(batch, sigma) if encoder is not None else None
    has_dens = node_features is not None
    out = model(
        batch["pos"],
        batch["species"],
        batch["edge_index"],
        batch["shifts"],
        batch["batch"],
        n_graphs,
        compute_forces=True,
        compute_virial=want_stress,
        create_graph=create_graph,
        node_features=node_features,
    )
    n_atoms = batch["num_atoms"].to(out["energy"].dtype)
    parts: Dict[str, torch.Tensor] = {}
    total = torch.zeros((), dtype=out["energy"].dtype, device=out["energy"].device)
    # a term whose mask selects nothing in this batch (e.g. stress when every periodic structure
    # is a DeNS sample) is left out of `parts`, so that epoch averages are over real values
    if "energy" in batch and weights.get("energy", 0.0) > 0:
        emask = batch.get("energy_mask", torch.ones(n_graphs, dtype=torch.bool, device=n_atoms.device))
        if bool(emask.any()):
            err = (out["energy"] - batch["energy"]) / n_atoms / sigma
            parts["energy"] = masked_mse(err, emask)
            total = total + weights["energy"] * parts["energy"]
    if "forces" in batch and weights.get("forces", 0.0) > 0:
        fmask = batch.get("force_mask", torch.ones(out["forces"].shape[0], dtype=torch.bool, device=n_atoms.device))
        if bool(fmask.any()):
            err = (out["forces"] - batch["forces"]) / sigma
            parts["forces"] = masked_mse(err, fmask)
            total = total + weights["forces"] * parts["forces"]
    if want_stress and bool(batch["stress_mask"].any()):
        volume = batch["volume"].clamp(min=1e-12)
        pred = -out["virial"] / volume.view(-1, 1, 1)
        err = (pred - batch["stress"]) * (volume / n_atoms).view(-1, 1, 1) / sigma
        parts["stress"] = masked_mse(err, batch["stress_mask"])
        total = total + weights["stress"] * parts["stress"]
    if has_dens and head is not None:
        parts["dens"] = head.loss(out, batch)
        total = total + dens_coefficient * parts["dens"]
    return total, {k: float(v.detach()) for k, v in parts.items()}, out
