"""Loss of one batch: energy per atom, forces, stress (all in units of the energy scale
sigma, so the weights are dimensionless) and, on DeNS samples, the noise-prediction loss
(the force encoding and the noise head are those of forcefield/training/dens.py).

Each term is an entry of LOSS_TERMS: a function giving per-row squared errors and the mask
of rows it counts; its value is sum(sq * mask) / count. Keeping the sum and the count apart
is what lets several processes add up their parts of one global batch exactly
(`combine` with counts reduced over ranks). A new loss term is one function and one entry
here (its weight is `weights[name]`; the DeNS term's weight is the DeNS coefficient).
"""

from __future__ import annotations

from typing import Callable, Dict, Optional, Tuple

import torch
from torch import nn

Rows = Tuple[torch.Tensor, torch.Tensor]  # (per-row squared error, bool mask of rows counted)


def masked_mse(err: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of err^2 over the rows selected by mask (0 when none is)."""
    sq, m = _row_sq(err), mask.to(err.dtype)
    return (sq * m).sum() / m.sum().clamp(min=1.0)


def _row_sq(err: torch.Tensor) -> torch.Tensor:
    if err.dim() > 1:
        err = err.reshape(err.shape[0], -1)
        return (err * err).mean(dim=1)
    return err * err


def _energy(out, batch, sigma, weights, head) -> Optional[Rows]:
    if "energy" not in batch or weights.get("energy", 0.0) <= 0:
        return None
    n_atoms = batch["num_atoms"].to(out["energy"].dtype)
    mask = batch.get("energy_mask", torch.ones_like(n_atoms, dtype=torch.bool))
    return _row_sq((out["energy"] - batch["energy"]) / n_atoms / sigma), mask


def _forces(out, batch, sigma, weights, head) -> Optional[Rows]:
    if "forces" not in batch or weights.get("forces", 0.0) <= 0:
        return None
    f = out["forces"]
    mask = batch.get("force_mask", torch.ones(f.shape[0], dtype=torch.bool, device=f.device))
    return _row_sq((f - batch["forces"]) / sigma), mask


def _stress(out, batch, sigma, weights, head) -> Optional[Rows]:
    if "virial" not in out or "stress" not in batch:
        return None
    n_atoms = batch["num_atoms"].to(out["energy"].dtype)
    volume = batch["volume"].clamp(min=1e-12)
    pred = -out["virial"] / volume.view(-1, 1, 1)
    return _row_sq((pred - batch["stress"]) * (volume / n_atoms).view(-1, 1, 1) / sigma), batch["stress_mask"]


def _dens(out, batch, sigma, weights, head) -> Optional[Rows]:
    if head is None or not out.get("has_dens", False):
        return None
    return _row_sq(head.residual(out, batch)), batch["noise_mask"]


# name -> rows function; the weight of a term is weights[name] ("dens": the DeNS coefficient)
LOSS_TERMS: Dict[str, Callable[..., Optional[Rows]]] = {
    "energy": _energy,
    "forces": _forces,
    "stress": _stress,
    "dens": _dens,
}


def model_outputs(
    model: nn.Module,
    batch: Dict[str, torch.Tensor],
    weights: Dict[str, float],
    encoder: Optional[nn.Module] = None,
    create_graph: bool = True,
) -> Dict[str, torch.Tensor]:
    """The model's outputs on `batch` (forces always; the virial when the stress term is on;
    the DeNS force encoding of displaced atoms through the `node_features` hook)."""
    sigma = float(model.scale)
    want_stress = "stress" in batch and weights.get("stress", 0.0) > 0
    node_features = encoder.encode(batch, sigma) if encoder is not None else None
    out = model(
        batch["pos"],
        batch["species"],
        batch["edge_index"],
        batch["shifts"],
        batch["batch"],
        int(batch["num_graphs"]),
        compute_forces=True,
        compute_virial=want_stress,
        create_graph=create_graph,
        node_features=node_features,
    )
    out["has_dens"] = node_features is not None
    return out


def loss_rows(
    out: Dict[str, torch.Tensor], batch, weights: Dict[str, float], sigma: float, head=None
) -> Dict[str, Rows]:
    """{term: (rows, mask)} of every term that applies to this batch."""
    rows = {}
    for name, fn in LOSS_TERMS.items():
        r = fn(out, batch, sigma, weights, head)
        if r is not None:
            rows[name] = r
    return rows


def term_sums(rows: Dict[str, Rows]) -> Dict[str, Tuple[torch.Tensor, torch.Tensor]]:
    """{term: (sum of masked squared errors (differentiable), number of rows counted)}."""
    out = {}
    for name, (sq, mask) in rows.items():
        m = mask.to(sq.dtype)
        out[name] = ((sq * m).sum(), m.sum().detach())
    return out


def term_weight(name: str, weights: Dict[str, float], dens_coefficient: float) -> float:
    return dens_coefficient if name == "dens" else float(weights.get(name, 0.0))


def combine(
    sums: Dict[str, Tuple[torch.Tensor, torch.Tensor]],
    weights: Dict[str, float],
    dens_coefficient: float,
    counts: Optional[Dict[str, float]] = None,
) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
    """(weighted total, {term: value}) with value = sum / count; `counts` (e.g. summed over
    ranks) replace the local ones. A term that counts no row is left out."""
    total, parts = None, {}
    for name, (s, c) in sums.items():
        n = float(c) if counts is None else float(counts[name])
        if n <= 0:
            continue
        parts[name] = s / n
        term = term_weight(name, weights, dens_coefficient) * parts[name]
        total = term if total is None else total + term
    if total is None:
        ref = next(iter(sums.values()))[0] if sums else torch.zeros(())
        total = ref * 0.0
    return total, parts


def batch_loss(
    model: nn.Module,
    batch: Dict[str, torch.Tensor],
    weights: Dict[str, float],
    encoder: Optional[nn.Module] = None,
    head: Optional[nn.Module] = None,
    dens_coefficient: float = 0.0,
    create_graph: bool = True,
) -> Tuple[torch.Tensor, Dict[str, float], Dict[str, torch.Tensor]]:
    """(total loss, float parts, model outputs) of one batch in one process. `encoder` and
    `head`: DeNS's ForceEncoder and NoiseHead, used on batches with displaced atoms."""
    out = model_outputs(model, batch, weights, encoder, create_graph)
    rows = loss_rows(out, batch, weights, float(model.scale), head)
    total, parts = combine(term_sums(rows), weights, dens_coefficient)
    return total, {k: float(v.detach()) for k, v in parts.items()}, out
