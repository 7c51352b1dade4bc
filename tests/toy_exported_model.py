"""A toy model with exactly the interface of a forcefield TorchScript export.

Used to test the LAMMPS pair style independently of the real model. It is a
two-layer message-passing potential (so the ghost shell must really reach
``num_layers * r_max``):

    h_i = sum_j w[s_j] fc(r_ij) exp(-r_ij)                       (layer 1)
    e_i = E0[s_i] + sum_j fc(r_ij) (A[s_i, s_j] exp(-2 (r_ij - 2))
                                    - B[s_i, s_j] tanh(h_j))     (layer 2)
          - c[s_i] h_i^2 / (1 + h_i)

with fc the polynomial envelope 1 - 28x^6 + 48x^7 - 21x^8, x = r / r_max
(zero value, first and second derivative at r_max). Forces and virial come
from autograd with respect to the edge vectors, as in the contract:

    forward(pos, species, edge_index, shifts, n_local)
        -> (energy, node_energy, forces, virial[xx, yy, zz, xy, xz, yz])
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

SPECIES = ("Cu", "Au")
E0 = {"Cu": -3.5, "Au": -2.25}


class ToyMessagePassing(torch.nn.Module):
    def __init__(self, n_species: int, r_max: float, dtype: torch.dtype) -> None:
        super().__init__()
        self.r_max = float(r_max)
        g = torch.Generator().manual_seed(1234)
        self.register_buffer("e0", torch.tensor([E0[s] for s in SPECIES][:n_species], dtype=dtype))
        self.register_buffer("w", (0.5 + torch.rand(n_species, generator=g)).to(dtype))
        a = 0.3 + 0.2 * torch.rand(n_species, n_species, generator=g)
        b = 0.2 + 0.2 * torch.rand(n_species, n_species, generator=g)
        self.register_buffer("a", (0.5 * (a + a.T)).to(dtype))
        self.register_buffer("b", b.to(dtype))  # deliberately not symmetric
        self.register_buffer("c", (0.1 + 0.1 * torch.rand(n_species, generator=g)).to(dtype))

    def envelope(self, r: torch.Tensor) -> torch.Tensor:
        x = r / self.r_max
        x6 = x**6
        return torch.where(x < 1.0, 1.0 - 28.0 * x6 + 48.0 * x6 * x - 21.0 * x6 * x * x, torch.zeros_like(x))

    def forward(
        self,
        pos: torch.Tensor,
        species: torch.Tensor,
        edge_index: torch.Tensor,
        shifts: torch.Tensor,
        n_local: int,
    ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        n = pos.shape[0]
        src = edge_index[0]
        dst = edge_index[1]
        vec = (pos[dst] - pos[src] + shifts).detach()
        vec.requires_grad_(True)
        r = torch.sqrt((vec * vec).sum(dim=1))
        fc = self.envelope(r)
        s_src = species[src]
        s_dst = species[dst]

        h = torch.zeros(n, dtype=pos.dtype, device=pos.device)
        h = h.index_add(0, src, self.w[s_dst] * fc * torch.exp(-r))

        msg = fc * (self.a[s_src, s_dst] * torch.exp(-2.0 * (r - 2.0)) - self.b[s_src, s_dst] * torch.tanh(h[dst]))
        node_energy = self.e0[species] - self.c[species] * h * h / (1.0 + h)
        node_energy = node_energy.index_add(0, src, msg)

        energy = node_energy[:n_local].sum()
        if vec.shape[0] > 0:
            grads = torch.autograd.grad([energy], [vec], allow_unused=True)
            g = grads[0]
            if g is None:
                g = torch.zeros_like(vec)
        else:
            g = torch.zeros_like(vec)
        g = g.detach()
        # F_k = -dE/dpos_k ; vec = pos[dst] - pos[src]
        forces = torch.zeros(n, 3, dtype=pos.dtype, device=pos.device)
        forces = forces.index_add(0, src, g).index_add(0, dst, -g)
        w = -(vec.detach().unsqueeze(2) * g.unsqueeze(1)).sum(dim=0)
        virial = torch.stack([w[0, 0], w[1, 1], w[2, 2], w[0, 1], w[0, 2], w[1, 2]])
        return energy.detach(), node_energy.detach(), forces, virial


def make_toy_model(
    dtype: str = "float64", r_max: float = 3.0, species: Sequence[str] = SPECIES
) -> torch.jit.ScriptModule:
    tdt = {"float64": torch.float64, "float32": torch.float32}[dtype]
    return torch.jit.script(ToyMessagePassing(len(species), r_max, tdt))


def toy_extra_files(
    dtype: str = "float64", r_max: float = 3.0, num_layers: int = 2, species: Sequence[str] = SPECIES
) -> Dict[str, str]:
    meta = {
        "format_version": 1,
        "species": list(species),
        "r_max": r_max,
        "num_layers": num_layers,
        "dtype": dtype,
        "E0": {s: E0[s] for s in species},
        "package": "forcefield-toy",
        "torch_version": torch.__version__,
    }
    return {
        "format_version": "1",
        "species": " ".join(species),
        "r_max": repr(float(r_max)),
        "num_layers": str(num_layers),
        "dtype": dtype,
        "metadata.json": json.dumps(meta, indent=2),
    }


def save_toy_model(
    path: Path,
    dtype: str = "float64",
    r_max: float = 3.0,
    num_layers: int = 2,
    extra_override: Optional[Dict[str, Optional[str]]] = None,
) -> Path:
    """Write the toy export; ``extra_override`` replaces (value) or drops (None) metadata keys."""
    extra = toy_extra_files(dtype, r_max, num_layers)
    for k, v in (extra_override or {}).items():
        if v is None:
            extra.pop(k, None)
        else:
            extra[k] = v
    torch.jit.save(make_toy_model(dtype, r_max), str(path), _extra_files=extra)
    return Path(path)


def evaluate_reference(
    model: torch.jit.ScriptModule,
    positions: np.ndarray,
    species_index: np.ndarray,
    cell: np.ndarray,
    pbc: Sequence[bool],
    r_max: float,
    dtype: torch.dtype = torch.float64,
) -> Tuple[float, np.ndarray, np.ndarray, np.ndarray]:
    """Energy, per-atom energies, forces, virial of a periodic structure (no ghosts)."""
    from ase import Atoms
    from ase.neighborlist import neighbor_list

    atoms = Atoms(numbers=np.ones(len(positions), dtype=int), positions=positions, cell=cell, pbc=pbc)
    i, j, S = neighbor_list("ijS", atoms, r_max)
    shifts = S.astype(np.float64) @ np.asarray(cell, dtype=np.float64)
    out = model(
        torch.tensor(positions, dtype=dtype),
        torch.tensor(species_index, dtype=torch.int64),
        torch.tensor(np.stack([i, j]), dtype=torch.int64),
        torch.tensor(shifts, dtype=dtype),
        len(positions),
    )
    e, ne, f, v = (t.detach().to(torch.float64).numpy() for t in out)
    return float(e), ne, f, v


def write_lammps_data(path: Path, positions: np.ndarray, types: np.ndarray, cell: np.ndarray, ntypes: int) -> None:
    """LAMMPS data file (atom_style atomic) for a cell in LAMMPS' lower-triangular form."""
    cell = np.asarray(cell, dtype=np.float64)
    assert abs(cell[0, 1]) < 1e-14 and abs(cell[0, 2]) < 1e-14 and abs(cell[1, 2]) < 1e-14
    lines: List[str] = ["toy configuration", "", f"{len(positions)} atoms", f"{ntypes} atom types", ""]
    lines.append(f"0.0 {float(cell[0, 0])!r} xlo xhi")
    lines.append(f"0.0 {float(cell[1, 1])!r} ylo yhi")
    lines.append(f"0.0 {float(cell[2, 2])!r} zlo zhi")
    if np.any(np.abs([cell[1, 0], cell[2, 0], cell[2, 1]]) > 0):
        lines.append(f"{float(cell[1, 0])!r} {float(cell[2, 0])!r} {float(cell[2, 1])!r} xy xz yz")
    lines += ["", "Atoms # atomic", ""]
    for k, (p, t) in enumerate(zip(positions, types)):
        lines.append(f"{k + 1} {int(t)} {float(p[0])!r} {float(p[1])!r} {float(p[2])!r}")
    Path(path).write_text("\n".join(lines) + "\n")
