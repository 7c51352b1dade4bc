"""DeNS (docs/design.md, section "DeNS"): corruption, the batch it produces, which atoms each loss term sees,
equivariance of the force encoding and of the noise head, and DeNS off == plain training."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from e3nn import o3
from model_utils import randomize
from training_helpers import SPECIES, TINY_MODEL, ethanol_graphs, tiny_config, write_ethanol

from forcefield.data.graph import collate, neighbour_list
from forcefield.model.forcefield import ForceField
from forcefield.training.batches import make_batch
from forcefield.training.config import DensConfig, load_config
from forcefield.training.dens import ForceEncoder, NoiseHead, corrupt
from forcefield.training.loss import batch_loss
from forcefield.training.trainer import Trainer

R_MAX = TINY_MODEL["r_max"]
F64 = torch.float64
WEIGHTS = {"energy": 1.0, "forces": 10.0, "stress": 1.0}


def loss(model, batch, encoder=None, head=None, coefficient=5.0):
    """batch_loss without the double-backward graph (nothing here is back-propagated)."""
    return batch_loss(model, batch, WEIGHTS, encoder, head, coefficient, create_graph=False)


def tiny_model(lmax: int = 1, seed: int = 0) -> ForceField:
    cfg = dict(TINY_MODEL, lmax=lmax)
    model = randomize(ForceField.from_config(cfg, {"e0": {"H": -13.57, "C": -1025.28, "O": -2035.57}}), seed)
    # a shift near the data's energy per atom keeps the energy loss O(1)
    with torch.no_grad():
        model.shift.copy_(torch.tensor([-13.6 - 4.7, -1025.3 - 4.7, -2035.6 - 4.7], dtype=F64))
    return model


def dens_modules(model: ForceField, seed: int = 1):
    torch.manual_seed(seed)
    mc = model.model_config()
    encoder = ForceEncoder(mc.lmax, model.irreps_dens).to(F64)
    head = NoiseHead(model, mc.channels, mc.num_basis, mc.radial_hidden, model.avg_num_neighbors).to(F64)
    return encoder, head


def dens_batch(graphs, seed: int = 1, **dens) -> dict:
    cfg = DensConfig(
        **{
            "enabled": True,
            "energy_loss": True,
            "uncorrupted_force_loss": True,
            "prob": 1.0,
            "corrupt_ratio": 0.3,
            "std": 0.05,
            **dens,
        }
    )
    return make_batch(graphs, SPECIES, R_MAX, F64, "cpu", np.random.default_rng(seed), cfg)


@pytest.fixture(scope="module")
def graphs():
    return ethanol_graphs(6, R_MAX)


# ----------------------------------------------------------------- corrupt()


def test_corrupt_at_least_one_atom_never_all_unless_ratio_one():
    rng = np.random.default_rng(0)
    for _ in range(300):
        assert corrupt(9, rng, 1e-9, 0.05).mask.sum() == 1  # at least one
        assert 1 <= corrupt(3, rng, 0.999, 0.05).mask.sum() <= 2  # not all
        assert 1 <= corrupt(2, rng, 0.5, 0.05).mask.sum() == 1
        assert 1 <= corrupt(9, rng, 0.25, 0.05).mask.sum() <= 8
    assert corrupt(7, rng, 1.0, 0.05).mask.all()  # all only for ratio 1
    assert corrupt(1, rng, 0.25, 0.05).mask.tolist() == [True]  # a single atom is the one


def test_corrupt_noise_statistics():
    rng = np.random.default_rng(1)
    masks, noise = [], []
    for _ in range(200):
        c = corrupt(100, rng, 0.25, 0.05)
        assert np.all(c.noise[~c.mask] == 0.0) and np.all(c.noise[c.mask] != 0.0)
        assert c.std == 0.05
        masks.append(c.mask)
        noise.append(c.noise[c.mask])
    assert abs(np.mean(masks) - 0.25) < 0.01
    assert abs(np.std(np.concatenate(noise)) - 0.05) < 0.002
    stds = [corrupt(5, rng, 0.5, 0.05, std_range=(0.01, 0.1)).std for _ in range(400)]
    assert 0.01 <= min(stds) and max(stds) <= 0.1
    # log-uniform: the median is near the geometric mean of the range
    assert abs(np.log(np.median(stds)) - np.log(np.sqrt(0.01 * 0.1))) < 0.15


# ----------------------------------------------------------------- the batch


def test_only_corrupted_atoms_move(graphs):
    before = [g.positions.copy() for g in graphs]
    batch = dens_batch(graphs)
    orig = np.concatenate(before)
    pos = batch["pos"].numpy()
    mask = batch["noise_mask"].numpy()
    moved = np.any(pos != orig, axis=1)
    assert np.array_equal(moved, mask)
    assert mask.any() and not mask.all() and batch["dens_graph"].all()
    # the displacement is exactly the target times std; no target on unmoved atoms
    np.testing.assert_allclose(pos - orig, batch["noise_target"].numpy() * 0.05, rtol=0, atol=1e-12)
    assert np.all(batch["noise_target"].numpy()[~mask] == 0.0)
    # the stored graphs are not modified (they are reused every epoch)
    for g, p in zip(graphs, before):
        assert np.array_equal(g.positions, p)
    # labels are the original ones; force loss on the others; energy loss kept (paper regime)
    np.testing.assert_array_equal(batch["forces"].numpy(), np.concatenate([g.forces for g in graphs]))
    np.testing.assert_array_equal(batch["energy"].numpy(), [g.energy for g in graphs])
    assert torch.equal(batch["force_mask"], ~batch["noise_mask"])
    assert batch["energy_mask"].all()
    # the neighbour list is that of the displaced positions
    offsets = np.cumsum([0] + [g.num_atoms for g in graphs])
    edges = []
    for k, g in enumerate(graphs):
        ei, _ = neighbour_list(pos[offsets[k] : offsets[k + 1]], g.cell, g.pbc, R_MAX)
        edges += [tuple(e) for e in (ei + offsets[k]).T]
    assert sorted(edges) == sorted(tuple(e) for e in batch["edge_index"].numpy().T)


def test_dens_fraction_and_regime_masks(graphs):
    many = graphs * 10
    batch = dens_batch(many, seed=3, prob=0.5, energy_loss=False, uncorrupted_force_loss=False)
    dens_graph = batch["dens_graph"].numpy()
    assert 0 < dens_graph.sum() < len(many)
    atom_graph = batch["batch"].numpy()
    is_dens_atom = dens_graph[atom_graph]
    orig = np.concatenate([g.positions for g in many])
    moved = np.any(batch["pos"].numpy() != orig, axis=1)
    assert not moved[~is_dens_atom].any()  # other structures untouched
    assert np.array_equal(moved, batch["noise_mask"].numpy())
    # denoising-only regime: no force loss on any atom of a DeNS sample, no energy loss for it
    assert np.array_equal(batch["force_mask"].numpy(), ~is_dens_atom)
    assert np.array_equal(batch["energy_mask"].numpy(), ~dens_graph)
    # without DeNS nothing moves and every label counts
    plain = make_batch(many, SPECIES, R_MAX, F64, "cpu")
    assert torch.equal(plain["pos"], torch.as_tensor(orig))
    assert plain["force_mask"].all() and plain["energy_mask"].all() and not plain["noise_mask"].any()


# ----------------------------------------------------------------- the loss terms


def test_noise_loss_sees_only_corrupted_atoms(graphs):
    model = tiny_model()
    encoder, head = dens_modules(model)
    batch = dens_batch(graphs)
    mask = batch["noise_mask"]
    total, parts, _ = loss(model, batch, encoder, head)
    assert parts["dens"] > 0
    no_dens, parts0, _ = loss(model, batch, encoder, head, 0.0)
    assert float(total.detach()) == pytest.approx(float(no_dens.detach()) + 5.0 * parts["dens"], rel=1e-12)

    other = dict(batch)
    target = batch["noise_target"].clone()
    target[~mask] += 3.0
    other["noise_target"] = target
    assert loss(model, other, encoder, head)[1]["dens"] == parts["dens"]

    first = int(torch.nonzero(mask)[0])
    target = batch["noise_target"].clone()
    target[first] += 0.5
    other["noise_target"] = target
    assert loss(model, other, encoder, head)[1]["dens"] != parts["dens"]


def test_force_loss_sees_only_uncorrupted_atoms(graphs):
    model = tiny_model()
    encoder, head = dens_modules(model)
    batch = dens_batch(graphs)
    mask = batch["noise_mask"]
    # the mask: without the force encoding (which reads the reference forces of the corrupted
    # atoms), changing those reference forces does not change the force loss
    f_loss = loss(model, batch)[1]["forces"]
    other = dict(batch)
    forces = batch["forces"].clone()
    forces[mask] += 1.0
    other["forces"] = forces
    assert loss(model, other)[1]["forces"] == f_loss
    forces = batch["forces"].clone()
    forces[int(torch.nonzero(~mask)[0])] += 1.0
    other["forces"] = forces
    assert loss(model, other)[1]["forces"] != f_loss

    # with the encoding: predictions depend on the reference forces of corrupted atoms only
    _, _, out = loss(model, batch, encoder, head)
    forces = batch["forces"].clone()
    forces[~mask] += 1.0
    other["forces"] = forces
    _, _, out_other = loss(model, other, encoder, head)
    assert torch.equal(out["energy"], out_other["energy"])
    assert torch.equal(out["forces"], out_other["forces"])
    forces = batch["forces"].clone()
    forces[mask] += 1.0
    other["forces"] = forces
    _, _, out_other = loss(model, other, encoder, head)
    assert not torch.allclose(out["energy"], out_other["energy"], rtol=0, atol=1e-9)


def test_energy_loss_of_dens_samples_follows_config(graphs):
    model = tiny_model()
    encoder, head = dens_modules(model)
    for energy_loss in (True, False):
        batch = dens_batch(graphs + graphs, seed=5, prob=0.5, energy_loss=energy_loss)
        dens_graph = batch["dens_graph"]
        assert dens_graph.any() and not dens_graph.all()
        e_loss = loss(model, batch, encoder, head)[1]["energy"]
        other = dict(batch)
        energy = batch["energy"].clone()
        energy[dens_graph] += 1.0
        other["energy"] = energy
        changed = loss(model, other, encoder, head)[1]["energy"] != e_loss
        assert changed == energy_loss


def test_dens_loss_trains_encoder_and_head(graphs):
    model = tiny_model()
    encoder, head = dens_modules(model)
    total, _, _ = batch_loss(model, dens_batch(graphs), WEIGHTS, encoder, head, 5.0)
    total.backward()
    for module in (encoder, head, model):
        grads = [p.grad for p in module.parameters() if p.requires_grad]
        assert any(g is not None and float(g.abs().sum()) > 0 for g in grads), type(module).__name__


# ----------------------------------------------------------------- equivariance


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach(), b.detach()
    return float(torch.linalg.norm(a - b) / torch.linalg.norm(b))


def _random_rotation(seed: int, improper: bool = False) -> torch.Tensor:
    torch.manual_seed(seed)
    R = o3.rand_matrix(dtype=F64)
    return -R if improper else R


@pytest.mark.parametrize("improper", [False, True])
def test_force_encoder_equivariant(improper):
    model = tiny_model(lmax=2)
    encoder, _ = dens_modules(model)
    torch.manual_seed(3)
    f = torch.randn(11, 3, dtype=F64)
    f[4] = 0.0  # a zero force gives a zero (finite) encoding
    mask = torch.tensor([True, False] * 5 + [True])
    R = _random_rotation(7, improper)
    # e3nn's D_from_matrix goes through Euler angles and is accurate to ~1e-7 only
    D = model.irreps_dens.D_from_matrix(R)
    out = encoder(f, mask).detach()
    assert out.shape == (11, model.irreps_dens.dim)
    torch.testing.assert_close(encoder(f @ R.T, mask).detach(), out @ D.T, rtol=0, atol=1e-5)
    assert torch.all(out[~mask] == 0) and torch.isfinite(out).all() and float(out[4].abs().max()) < 1e-10
    assert float(out[mask].abs().max()) > 0.1
    # |f| Y^l(f/|f|) keeps the magnitude: the encoding is homogeneous of degree one
    torch.testing.assert_close(encoder(2.5 * f, mask).detach(), 2.5 * out, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("improper", [False, True])
def test_dens_forward_invariant_energy_equivariant_noise(graphs, improper):
    """Rotating the (corrupted) structure together with the encoded forces leaves the energy
    unchanged and rotates the forces and the predicted noise."""
    model = tiny_model(lmax=2)
    encoder, head = dens_modules(model)
    batch = dens_batch(graphs)
    R = _random_rotation(11, improper)
    rot = dict(batch)
    rot["pos"] = batch["pos"] @ R.T
    rot["forces"] = batch["forces"] @ R.T
    rot["noise_target"] = batch["noise_target"] @ R.T
    results = []
    for b in (batch, rot):
        _, parts, out = loss(model, b, encoder, head)
        noise = head(out["penultimate"], out["edge_sh"], out["edge_radial"], b["edge_index"], b["noise_mask"])
        results.append((parts, out, noise))
    (p0, o0, n0), (p1, o1, n1) = results
    m = batch["noise_mask"]
    assert rel_err(o1["energy"], o0["energy"]) < 1e-12
    assert rel_err(o1["forces"], o0["forces"] @ R.T) < 1e-9
    assert rel_err(n1[m], n0[m] @ R.T) < 1e-9
    assert float(n0[m].detach().abs().max()) > 1e-3
    for k in p0:
        assert p1[k] == pytest.approx(p0[k], rel=1e-9)


# ----------------------------------------------------------------- DeNS off


def test_dens_disabled_equals_plain_training(graphs):
    model = tiny_model()
    encoder, head = dens_modules(model)
    plain = collate(graphs, dtype=F64)
    ref, ref_parts, _ = loss(model, plain)
    assert set(ref_parts) == {"energy", "forces"}
    for batch, enc, hd in (
        (
            make_batch(graphs, SPECIES, R_MAX, F64, "cpu", np.random.default_rng(0), DensConfig(enabled=False)),
            None,
            None,
        ),
        (make_batch(graphs, SPECIES, R_MAX, F64, "cpu"), None, None),
        # DeNS on but no structure selected: the encoder and head are never used
        (
            make_batch(
                graphs, SPECIES, R_MAX, F64, "cpu", np.random.default_rng(0), DensConfig(enabled=True, prob=0.0)
            ),
            encoder,
            head,
        ),
    ):
        value, parts, _ = loss(model, batch, enc, hd)
        assert float(value.detach()) == float(ref.detach())
        assert parts == ref_parts


def test_trainer_dens_disabled_matches_dens_never_selected(tmp_path):
    """One epoch with dens.enabled: false and one with DeNS on but prob 0: same model weights
    (same seed, same shuffling), and the disabled trainer has no DeNS modules at all."""
    train = write_ethanol(tmp_path / "train.xyz", n=8)
    states, losses = [], []
    for dens in ({"enabled": False}, {"enabled": True, "prob": 0.0}):
        cfg = load_config(tiny_config(train, dens=dens, training={"ema_decay": None}))
        trainer = Trainer(cfg, tmp_path / "run", quiet=True)
        if not dens["enabled"]:
            assert trainer.encoder is None and trainer.head is None
            n_opt = sum(len(g["params"]) for g in trainer.optimizer.param_groups)
            assert n_opt == len(list(trainer.model.parameters()))
        row = trainer.train_epoch()
        assert "train_dens_loss" not in row
        states.append(trainer.model.state_dict())
        losses.append(row["train_loss"])
    assert losses[0] == losses[1]
    for k in states[0]:
        assert torch.equal(states[0][k], states[1][k]), k


def test_terms_without_any_selected_atom_are_left_out(graphs):
    """Denoising-only regime, every structure a DeNS sample: no energy or force term at all
    (not a zero that would drag the epoch averages down); the loss is the noise term alone."""
    model = tiny_model()
    encoder, head = dens_modules(model)
    batch = dens_batch(graphs, energy_loss=False, uncorrupted_force_loss=False)
    total, parts, _ = batch_loss(model, batch, WEIGHTS, encoder, head, 5.0)
    assert set(parts) == {"dens"}
    assert float(total.detach()) == pytest.approx(5.0 * parts["dens"], rel=1e-12)
    total.backward()
    assert any(p.grad is not None for p in head.parameters())
