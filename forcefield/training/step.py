"""One optimizer step (`train_step`) and one validation pass (`evaluate`), for one process or
several (torch.distributed, forcefield/training/distributed.py).

Batch semantics: `training.batch_size` is the global batch. Each optimizer step takes the
next batch_size structures of the epoch's order; rank r of W takes structures r, r+W, ...
of it. Every loss term is a sum over rows divided by the number of rows of the whole global
batch (counts summed over ranks), and DDP averages the gradients over ranks, so W processes
take the same step as one process with the whole batch, up to the order of floating-point
sums (float64: ~1e-16 relative per step).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Iterable, List, Optional

import numpy as np
import torch
from torch import nn

from forcefield.data.graph import Graph
from forcefield.training.batches import make_batch
from forcefield.training.distributed import Distributed
from forcefield.training.ema import EMA
from forcefield.training.loss import LOSS_TERMS, combine, loss_rows, model_outputs, term_sums, term_weight

TERMS = list(LOSS_TERMS)


class TrainModule(nn.Module):
    """The model with DeNS's encoder and head: the one module DDP wraps, whose forward gives
    the model outputs and the loss sums of a batch."""

    def __init__(self, model: nn.Module, encoder: Optional[nn.Module] = None, head: Optional[nn.Module] = None):
        super().__init__()
        self.model, self.encoder, self.head = model, encoder, head

    def forward(self, batch: Dict[str, torch.Tensor], weights: Dict[str, float], create_graph: bool = True):
        out = model_outputs(self.model, batch, weights, self.encoder, create_graph)
        return out, term_sums(loss_rows(out, batch, weights, float(self.model.scale), self.head))


@dataclass
class StepContext:
    """What a training step needs besides the batch."""

    module: TrainModule
    optimizer: torch.optim.Optimizer
    dist: Distributed
    ema: Optional[EMA] = None
    grad_clip: Optional[float] = None
    ddp: Optional[nn.Module] = None  # DistributedDataParallel(module) when dist.enabled

    @classmethod
    def build(cls, module, optimizer, dist, ema=None, grad_clip=None) -> "StepContext":
        ddp = None
        if dist.enabled:
            device_ids = [dist.device.index] if dist.device is not None and dist.device.type == "cuda" else None
            # terms differ between ranks (a rank without DeNS samples or stress leaves the
            # head or the virial out), hence find_unused_parameters
            ddp = torch.nn.parallel.DistributedDataParallel(
                module, device_ids=device_ids, find_unused_parameters=True, broadcast_buffers=False
            )
        return cls(module, optimizer, dist, ema, grad_clip, ddp)

    @property
    def params(self) -> List[torch.Tensor]:
        return [p for g in self.optimizer.param_groups for p in g["params"]]


def _global_parts(sums, counts: Dict[str, float], dist: Distributed) -> Dict[str, float]:
    local = [float(sums[n][0].detach()) if n in sums else 0.0 for n in TERMS]
    total = dist.sum(local)
    return {n: s / counts[n] for n, s in zip(TERMS, total) if counts[n] > 0}


def train_step(
    ctx: StepContext, batch: Dict[str, torch.Tensor], weights: Dict[str, float], dens_coefficient: float
) -> Dict[str, float]:
    """Forward, loss over the global batch, backward (gradients averaged by DDP), gradient
    clipping, optimizer step, EMA. Returns the global loss and its parts (floats)."""
    module = ctx.ddp if ctx.ddp is not None else ctx.module
    ctx.optimizer.zero_grad(set_to_none=True)
    _, sums = module(batch, weights)
    counts = dict(zip(TERMS, ctx.dist.sum([float(sums[n][1]) if n in sums else 0.0 for n in TERMS])))
    total, _ = combine(sums, weights, dens_coefficient, counts)
    (total * ctx.dist.world).backward()  # DDP divides the summed gradients by the world size
    if ctx.grad_clip:
        torch.nn.utils.clip_grad_norm_(ctx.params, ctx.grad_clip)
    ctx.optimizer.step()
    if ctx.ema is not None:
        ctx.ema.update(ctx.module.model)
    parts = _global_parts(sums, counts, ctx.dist)
    loss = sum(term_weight(n, weights, dens_coefficient) * v for n, v in parts.items())
    return {"loss": float(loss), **parts}


def evaluate(
    model: nn.Module,
    batches: Iterable[List[Graph]],
    weights: Dict[str, float],
    species,
    r_max: float,
    dist: Distributed,
) -> Dict[str, float]:
    """Loss and MAEs (meV/atom, meV/Å, meV/Å^3) of `model` over this rank's share of the
    validation structures, summed over ranks. The loss is sum_k w_k (sum of squared errors /
    rows) over the whole set, so it does not depend on how the set is batched or sharded."""
    model.eval()
    dtype = model.dtype
    device = next(model.parameters()).device
    sums = {n: [0.0, 0.0] for n in TERMS}
    mae = np.zeros(6)  # energy sum, count, forces sum, count, stress sum, count
    for graphs in batches:
        if not graphs:
            continue
        batch = make_batch(graphs, species, r_max, dtype, device)
        out = model_outputs(model, batch, weights, create_graph=False)
        for n, (s, c) in term_sums(loss_rows(out, batch, weights, float(model.scale))).items():
            sums[n][0] += float(s.detach())
            sums[n][1] += float(c)
        g = int(batch["num_graphs"])
        if "energy" in batch:
            mae[0] += float(((out["energy"] - batch["energy"]).detach() / batch["num_atoms"]).abs().sum())
            mae[1] += g
        if "forces" in batch:
            err = (out["forces"] - batch["forces"]).detach()
            mae[2] += float(err.abs().sum())
            mae[3] += err.numel()
        if "virial" in out and "stress" in batch:
            pred = -out["virial"].detach() / batch["volume"].clamp(min=1e-12).view(-1, 1, 1)
            m = batch["stress_mask"]
            mae[4] += float((pred - batch["stress"]).abs()[m].sum())
            mae[5] += int(m.sum()) * 9
    flat = dist.sum([v for n in TERMS for v in sums[n]] + mae.tolist())
    loss = 0.0
    for k, n in enumerate(TERMS):
        s, c = flat[2 * k], flat[2 * k + 1]
        if c > 0:
            loss += term_weight(n, weights, 0.0) * s / c
    mae = flat[2 * len(TERMS) :]
    mean = lambda s, c: s / c if c else float("nan")  # noqa: E731
    return {
        "valid_loss": loss if mae[1] + mae[3] + mae[5] > 0 else float("nan"),
        "valid_energy_mae": 1000 * mean(mae[0], mae[1]),
        "valid_forces_mae": 1000 * mean(mae[2], mae[3]),
        "valid_stress_mae": 1000 * mean(mae[4], mae[5]),
    }
