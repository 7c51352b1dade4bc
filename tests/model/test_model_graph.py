"""Graph building (neighbour lists with periodic shifts) and batching, checked against
ase.neighborlist, and the LAMMPS-style evaluation with ghost atoms and n_local."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from ase import Atoms
from ase.neighborlist import neighbor_list
from model_utils import (
    R_MAX,
    SPECIES,
    call_model,
    evaluate,
    fcc_cu,
    make_model,
    molecule,
    one_thread,  # noqa: F401  (autouse fixture: one intra-op thread)
    rel_err,
    triclinic_cell,
)

from forcefield.data.graph import atoms_to_graph, collate


def _structures():
    rng = np.random.default_rng(7)
    tiny = Atoms("Cu", positions=[[0.1, 0.2, 0.3]], cell=[2.3, 2.5, 2.4], pbc=True)
    skewed = Atoms(
        "CuAu", positions=[[0, 0, 0], [1.1, 0.9, 1.3]], cell=[[2.6, 0, 0], [2.2, 2.0, 0], [-1.5, 1.1, 2.7]], pbc=True
    )  # very oblique
    slab = Atoms(
        "CuCuAu",
        positions=rng.random((3, 3)) * 3 + [0, 0, 5],
        cell=[[3.1, 0, 0], [0.9, 2.9, 0], [0, 0, 15.0]],
        pbc=[True, True, False],
    )
    wire = Atoms(
        "CuO",
        positions=[[0, 0, 0], [1.0, 1.2, 0.8]],
        cell=[[20, 0, 0], [0, 20, 0], [0, 0, 2.9]],
        pbc=[False, False, True],
    )
    # periodic in-plane only, with a zero third cell vector (as ase.build surfaces without vacuum)
    slab0 = Atoms(
        "CuCu",
        positions=[[0, 0, 0], [1.3, 0.7, 1.8]],
        cell=[[2.6, 0, 0], [1.3, 2.25, 0], [0, 0, 0]],
        pbc=[True, True, False],
    )
    chain = Atoms(
        "AuAu",
        positions=[[0, 0, 0], [1.4, 0.3, 0.1]],
        cell=[[2.7, 0, 0], [0, 0, 0], [0, 0, 0]],
        pbc=[True, False, False],
    )
    return {
        "tiny_cubic_1atom": tiny,
        "slab_zero_c_vector": slab0,
        "chain_only_a_vector": chain,  # cell < r_max: dozens of self-images
        "skewed_triclinic": skewed,
        "triclinic": triclinic_cell(),
        "fcc_primitive": fcc_cu(3.61),
        "slab_pbc_TTF": slab,
        "wire_pbc_FFT": wire,
        "molecule": molecule(),
        "molecule_in_unused_cell": Atoms("CO", positions=[[0, 0, 0], [1.2, 0, 0]], cell=[50, 50, 50], pbc=False),
        "single_atom": Atoms("H", positions=[[1.0, 2.0, 3.0]]),
        "single_atom_periodic_big": Atoms("Au", positions=[[1.0, 2.0, 3.0]], cell=[11, 12, 13], pbc=True),
        "no_neighbours": Atoms("HCO", positions=[[0, 0, 0], [6, 0, 0], [0, 7, 0]]),
        "unwrapped_positions": Atoms(
            "CuAu",
            positions=[[-3.0, 8.2, 1.0], [14.1, -0.5, 2.2]],
            cell=[[3.6, 0, 0], [1.0, 3.4, 0], [0.5, 0.3, 3.7]],
            pbc=True,
        ),
    }


STRUCTURES = _structures()


@pytest.mark.parametrize("name", STRUCTURES)
def test_neighbour_list_matches_ase(name):
    atoms = STRUCTURES[name]
    g = atoms_to_graph(atoms, SPECIES, R_MAX)
    i, j, S, d = neighbor_list("ijSd", atoms, R_MAX)
    assert np.all(np.abs(d - R_MAX) > 1e-6)  # no pair sits on the cutoff: the sets are well-defined
    # same multiset of (i, j, integer shift)
    cell = atoms.cell.array
    if atoms.pbc.any():
        s_int = np.linalg.lstsq(cell.T, g.shifts.T, rcond=None)[0].T  # (cell may be singular)
        assert np.allclose(s_int, np.round(s_int), atol=1e-8)
        s_int = np.round(s_int).astype(int)
    else:
        assert np.all(g.shifts == 0.0)
        s_int = np.zeros((g.edge_index.shape[1], 3), dtype=int)
    ours = Counter(zip(g.edge_index[0].tolist(), g.edge_index[1].tolist(), map(tuple, s_int.tolist())))
    ref = Counter(zip(i.tolist(), j.tolist(), map(tuple, S.tolist())))
    assert ours == ref
    assert g.edge_index.shape[1] == len(i)
    # edge vectors all shorter than r_max, no self-edge without a shift
    vec = atoms.positions[g.edge_index[1]] - atoms.positions[g.edge_index[0]] + g.shifts
    assert np.all(np.linalg.norm(vec, axis=1) < R_MAX)
    assert not np.any((g.edge_index[0] == g.edge_index[1]) & np.all(g.shifts == 0, axis=1))
    if name in ("single_atom", "single_atom_periodic_big", "no_neighbours"):
        assert g.edge_index.shape == (2, 0)
    if name == "tiny_cubic_1atom":
        assert len(i) >= 30


def test_species_indices():
    g = atoms_to_graph(Atoms("AuHCu", positions=np.eye(3)), SPECIES, R_MAX)
    assert g.species.tolist() == [SPECIES.index("Au"), SPECIES.index("H"), SPECIES.index("Cu")]


@pytest.fixture(scope="module")
def model():
    return make_model("float64", seed=61)


def test_batch_equals_one_by_one(model):
    structures = list(STRUCTURES.values())
    batched = evaluate(model, structures)
    f_scale = np.max(np.abs(batched["forces"]))
    assert f_scale > 1e-2
    offset = 0
    for k, atoms in enumerate(structures):
        single = evaluate(model, atoms)
        n = len(atoms)
        assert rel_err(batched["energy"][k], single["energy"][0]) < 1e-12
        # (forces that vanish by symmetry are ~1e-17 with different roundoff: compare to the
        # largest force of the batch)
        assert np.max(np.abs(batched["forces"][offset : offset + n] - single["forces"])) < 1e-12 * f_scale
        assert rel_err(batched["node_energy"][offset : offset + n], single["node_energy"]) < 1e-12
        offset += n
    assert offset == len(batched["forces"])


def test_batch_virial_per_structure(model):
    structures = [triclinic_cell(), fcc_cu(3.5).repeat((1, 2, 1)), STRUCTURES["skewed_triclinic"]]
    structures[1].rattle(0.05, seed=1)
    batched = evaluate(model, structures, virial=True)
    for k, atoms in enumerate(structures):
        assert rel_err(batched["stress"][k], evaluate(model, atoms, virial=True)["stress"][0]) < 1e-12


def test_collate_layout():
    graphs = [atoms_to_graph(a, SPECIES, R_MAX) for a in (triclinic_cell(), molecule(), STRUCTURES["single_atom"])]
    b = collate(graphs)
    sizes = [g.num_atoms for g in graphs]
    assert b["pos"].shape == (sum(sizes), 3)
    assert b["batch"].tolist() == sum(([k] * n for k, n in enumerate(sizes)), [])
    assert int(b["num_graphs"]) == 3
    e = b["edge_index"]
    offsets = np.cumsum([0] + sizes)
    for k in range(3):  # every edge stays within its own structure
        in_k = (e[0] >= offsets[k]) & (e[0] < offsets[k + 1])
        assert bool(((e[1][in_k] >= offsets[k]) & (e[1][in_k] < offsets[k + 1])).all())


# ---------------------------------------------------------------- ghost atoms (LAMMPS style)
def _with_ghosts(atoms: Atoms, reach: float):
    """The periodic `atoms` as a cluster: the N originals first, then every periodic image
    within `reach` of an original (the ghosts), plus the image -> original map."""
    cell = atoms.cell.array
    heights = atoms.get_volume() / np.linalg.norm(np.cross(cell[[1, 2, 0]], cell[[2, 0, 1]]), axis=1)
    k = np.ceil(reach / heights).astype(int) + 1
    pos, owner = [atoms.positions], [np.arange(len(atoms))]
    for n in np.ndindex(*(2 * k + 1)):
        n = np.array(n) - k
        if not n.any():
            continue
        p = atoms.positions + n @ cell
        dist = np.min(np.linalg.norm(p[:, None, :] - atoms.positions[None, :, :], axis=2), axis=1)
        keep = dist < reach
        pos.append(p[keep])
        owner.append(np.arange(len(atoms))[keep])
    pos, owner = np.concatenate(pos), np.concatenate(owner)
    cluster = Atoms(atoms.numbers[owner], positions=pos)
    return cluster, owner


def test_ghost_atoms_with_n_local(model):
    """Local atoms + ghosts out to num_layers * r_max, energy over the first n_local atoms,
    ghost forces folded back: the periodic energy, forces and virial (the n_local path
    evaluates only the edges each block needs)."""
    import torch

    atoms = triclinic_cell()
    ref = evaluate(model, atoms, virial=True)
    cluster, owner = _with_ghosts(atoms, model.num_layers * model.r_max + 0.5)
    n = len(atoms)
    g = atoms_to_graph(cluster, model.species, model.r_max)
    b = collate([g], dtype=model.dtype)
    out = call_model(model, b, 1, n_local=n, compute_virial=True)
    assert rel_err(out["energy"].detach().numpy(), ref["energy"]) < 1e-10
    assert rel_err(out["node_energy"][:n].detach().numpy(), ref["node_energy"]) < 1e-10
    folded = np.zeros((n, 3))
    np.add.at(folded, owner, out["forces"].detach().numpy())
    assert rel_err(folded, ref["forces"]) < 1e-10
    stress = -out["virial"][0].detach().numpy() / atoms.get_volume()
    assert rel_err(stress, ref["stress"][0]) < 1e-10
    # the unpruned evaluation of the same cluster gives the same local energies
    full = model(b["pos"], b["species"], b["edge_index"], b["shifts"], b["batch"], 1, compute_forces=False)
    assert rel_err(full["node_energy"][:n].detach().numpy(), ref["node_energy"]) < 1e-10
    assert torch.is_tensor(out["switch"])
