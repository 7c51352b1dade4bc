"""LAMMPS with the REAL exported model (pair_style forcefield + export_model).

tests/test_lammps_plugin_build.py tests the pair style against a toy model; here the
model is a real ForceField (tiny: 8 channels, 2 layers) exported with export_model:

- step 0 (energy, per-atom energies, forces, virial pressure) of a periodic triclinic
  Cu/Au cell equals ForceFieldCalculator on the exported file (float64: 1e-10);
- mpirun -np 1, 2 and 4 give the same step 0 and the same 100-step NVE trajectory;
- NVE of a Cu slab whose top atoms evaporate through the vacuum (a model trained for a
  few seconds on the built-in EMT data): energy drift < 1e-4 eV/atom, no trend, and the
  Verlet dt^2 signature (halving dt shrinks the fluctuation about 4x);
- an isolated atom has exactly E0 and zero force; an element the model lacks is a clear
  error that lists the model's species.

Models with random weights are re-drawn under a seed (tests/model_utils.randomize: every
parameter, nonzero shift, scale and E0), so nothing passes vacuously.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from lammps_utils import (
    MASSES,
    NKTV2P_METAL,
    R_MAX,
    SPECIES,
    VOIGT_ASE_TO_LAMMPS,
    calc_results,
    header,
    lammps_run,
    nve_block,
    ok,
    read_dump,
)
from model_utils import make_model  # noqa: E402
from toy_exported_model import write_lammps_data  # noqa: E402

from forcefield.export.lammps_runner import parse_thermo  # noqa: E402
from forcefield.export.torchscript import export_model, load_exported  # noqa: E402

TRAJ_STEPS = 100


# --------------------------------------------------------------------------- helpers


def step0_deck(plugin: Path, model: Path) -> str:
    """header() plus a dump of forces and per-atom energies of step 0 (f.dump) and `run 0`."""
    return (
        header(plugin, model)
        + """dump d all custom 1 f.dump id fx fy fz c_pea
dump_modify d format float %.17g sort id
thermo_style custom step pe
thermo_modify format float %.17g
run 0
"""
    )


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def mpi_runs(bulk_case, random_models, plugin_path):
    """The same 100-step NVE run (600 K, 1 fs) under mpirun -np 1, 2 and 4.

    Step 0 and step 100 are dumped (id-sorted: ids come from read_data, so they match
    across rank counts); returns {np: (stdout, thermo rows, dumps)}.
    """
    d, atoms = bulk_case
    text = header(plugin_path, random_models["f64"]) + nve_block(TRAJ_STEPS)
    out = {}
    for np_ in (1, 2, 4):
        work = d / f"np{np_}"
        work.mkdir(exist_ok=True)
        (work / "data.lmp").write_bytes((d / "data.lmp").read_bytes())
        stdout = ok(lammps_run(work, text, plugin_path, np_=np_, mpirun=True))
        out[np_] = (stdout, parse_thermo(stdout), read_dump(work / "traj.dump"))
    return out


# --------------------------------------------------------------------------- step 0 vs Python


def test_step0_matches_calculator_float64(bulk_case, random_models, mpi_runs):
    d, atoms = bulk_case
    stdout, rows, dumps = mpi_runs[1]
    assert "dtype: float64" in stdout and "ghost atom cutoff = 9" in stdout  # 2 * 4.0 + skin 1.0
    ref = calc_results(random_models["f64"], atoms)
    step0 = dumps[0]
    assert np.array_equal(step0[:, 0], np.arange(1, len(atoms) + 1))
    np.testing.assert_allclose(step0[:, 2:5], atoms.positions, rtol=0, atol=1e-12)

    assert abs(rows[0]["PotEng"] - ref["energy"]) < 1e-10
    np.testing.assert_allclose(step0[:, 8:11], ref["forces"], rtol=0, atol=1e-10)
    np.testing.assert_allclose(step0[:, 11], ref["energies"], rtol=0, atol=1e-10)

    # compute pressure NULL virial (bar) = W / V * nktv2p, and the ASE stress is -W / V
    pvir = np.array([rows[0][f"c_vir[{k}]"] for k in range(1, 7)])
    expected = -ref["stress"][VOIGT_ASE_TO_LAMMPS] * NKTV2P_METAL
    np.testing.assert_allclose(pvir, expected, rtol=1e-10, atol=1e-6)

    # not vacuous: real forces, a real stress, species-dependent energies
    assert np.abs(ref["forces"]).max() > 0.1
    assert np.abs(expected).max() > 1e3
    assert np.ptp(ref["energies"]) > 0.1


def test_step0_matches_calculator_float32(bulk_case, random_models, plugin_path, tmp_path):
    d, atoms = bulk_case
    (tmp_path / "data.lmp").write_bytes((d / "data.lmp").read_bytes())
    stdout = ok(lammps_run(tmp_path, step0_deck(plugin_path, random_models["f32"]), plugin_path))
    assert "dtype: float32" in stdout
    ref = calc_results(random_models["f32"], atoms)
    ref64 = calc_results(random_models["f64"], atoms)
    rows = read_dump(tmp_path / "f.dump")[0]
    energy = parse_thermo(stdout)[0]["PotEng"]
    # the same float32 model: agreement to float32 round-off (different summation order)
    assert energy == pytest.approx(ref["energy"], rel=2e-6)
    np.testing.assert_allclose(rows[:, 1:4], ref["forces"], rtol=0, atol=2e-4)
    # and close to the float64 export of the same weights
    np.testing.assert_allclose(rows[:, 1:4], ref64["forces"], rtol=0, atol=2e-3)


def test_message_product_kernel_and_pieces(bulk_case, random_models, plugin_path, tmp_path):
    """Exports call the fused kernel (export/pair_style/channelwise_tp.cpp), portable ones
    (plain torch inside) do not; either way the pair style splits the message product into
    pieces on one thread only. The 108-atom cell has more edges than one chunk, so the
    inference path runs. All agree to float64 round-off: the kernel in LAMMPS against the
    plain torch product in LAMMPS and the calculator in Python."""
    d, atoms = bulk_case
    model = make_model("float64", seed=11, species=SPECIES, channels=8, lmax=2, num_layers=2, r_max=R_MAX)
    portable = export_model(model, tmp_path / "portable.pt", fused_ops=False)
    rows, energies = {}, {}
    runs = [
        (random_models["f64"], 1, "fused kernel, pieces of 256 edges (CPU, 1 thread)"),
        (random_models["f64"], 2, "fused kernel, whole edge chunks of 4096 edges (CPU, 2 threads)"),
        (portable, 1, "pieces of 256 edges (CPU, 1 thread)"),
        (portable, 2, "whole edge chunks of 4096 edges (CPU, 2 threads)"),
    ]
    for n, (path, threads, expected) in enumerate(runs):
        run_dir = tmp_path / f"run{n}"
        run_dir.mkdir()
        (run_dir / "data.lmp").write_bytes((d / "data.lmp").read_bytes())
        deck = step0_deck(plugin_path, path)
        stdout = ok(lammps_run(run_dir, deck, plugin_path, extra_env={"OMP_NUM_THREADS": str(threads)}))
        assert f"message product: {expected}\n" in stdout, stdout[-2000:]
        rows[n] = read_dump(run_dir / "f.dump")[0]
        energies[n] = parse_thermo(stdout)[0]["PotEng"]
    ref = calc_results(random_models["f64"], atoms)
    for n in range(1, len(runs)):
        assert energies[n] == pytest.approx(energies[0], rel=1e-12)
        np.testing.assert_allclose(rows[n], rows[0], rtol=0, atol=1e-10)
    np.testing.assert_allclose(rows[0][:, 1:4], ref["forces"], rtol=0, atol=1e-8)


def test_pair_style_sends_only_the_receptive_field(bulk_case, random_models, plugin_path, tmp_path):
    """FORCEFIELD_DUMP_INPUTS saves what the pair style passes to the model: the owned atoms
    first, then only the ghosts within num_layers hops, edges shorter than r_max centred
    within num_layers - 1 hops; the module gives LAMMPS' energy on them."""
    d, atoms = bulk_case
    (tmp_path / "data.lmp").write_bytes((d / "data.lmp").read_bytes())
    text = (
        header(plugin_path, random_models["f64"])
        + """thermo_style custom step pe
thermo_modify format float %.17g
run 0
"""
    )
    # unfolded: this checks the hop selection that remains with several ranks (folding: test_lammps_folding.py)
    env = {"FORCEFIELD_DUMP_INPUTS": str(tmp_path / "in.pt"), "FORCEFIELD_TIMING": "1", "FORCEFIELD_FOLD": "0"}
    stdout = ok(lammps_run(tmp_path, text, plugin_path, extra_env=env))
    assert re.search(r"pair_style forcefield timing: 1 evaluations, model \S+ s, pair style outside", stdout)
    pos, species, edge_index, shifts, n_local = torch.load(tmp_path / "in.pt")
    n = len(atoms)
    nghost = int(re.search(r"Nghost:\s+(\d+)", stdout).group(1))
    assert n_local == n and n < pos.shape[0] < n + nghost
    # the owned atoms come first (in LAMMPS' order, spatially sorted)
    sent = np.column_stack([pos[:n].numpy(), species[:n].numpy()])
    ref = np.column_stack([atoms.positions, [SPECIES.index(s) for s in atoms.get_chemical_symbols()]])
    np.testing.assert_allclose(sent[np.lexsort(sent.T)], ref[np.lexsort(ref.T)], rtol=0, atol=1e-12)
    assert torch.all(shifts == 0)
    vec = pos[edge_index[1]] - pos[edge_index[0]]
    assert float(vec.norm(dim=1).max()) < R_MAX
    # hops from the owned atoms along the edges: every atom sent within 2, every centre within 1
    hop = torch.full((pos.shape[0],), 9)
    hop[:n] = 0
    for k in range(2):
        src = edge_index[1][hop[edge_index[0]] == k]
        hop[src[hop[src] > k + 1]] = k + 1
    assert int(hop.max()) == 2 and int(hop[edge_index[0]].max()) == 1
    module, _ = load_exported(random_models["f64"])
    energy = float(module(pos, species, edge_index, shifts, n_local)[0])
    assert abs(energy - parse_thermo(stdout)[0]["PotEng"]) < 1e-10


# --------------------------------------------------------------------------- MPI


def test_mpi_ranks_same_step0(mpi_runs):
    procs = {}
    for np_, (stdout, rows, dumps) in mpi_runs.items():
        m = re.search(r"(\d+) by (\d+) by (\d+) MPI processor grid", stdout)
        procs[np_] = int(m.group(1)) * int(m.group(2)) * int(m.group(3))
    assert procs == {1: 1, 2: 2, 4: 4}
    _, rows1, dumps1 = mpi_runs[1]
    for np_ in (2, 4):
        _, rows, dumps = mpi_runs[np_]
        assert abs(rows[0]["PotEng"] - rows1[0]["PotEng"]) < 1e-10
        for k in range(1, 7):
            assert rows[0][f"c_vir[{k}]"] == pytest.approx(rows1[0][f"c_vir[{k}]"], rel=1e-10, abs=1e-6)
        np.testing.assert_array_equal(dumps[0][:, 0], dumps1[0][:, 0])
        np.testing.assert_allclose(dumps[0][:, 8:12], dumps1[0][:, 8:12], rtol=0, atol=1e-10)


def test_mpi_ranks_same_trajectory(mpi_runs):
    _, rows1, dumps1 = mpi_runs[1]
    assert sorted(dumps1) == [0, TRAJ_STEPS]
    end1 = dumps1[TRAJ_STEPS]
    # the atoms really moved, and the run conserves energy
    assert np.abs(end1[:, 2:5] - dumps1[0][:, 2:5]).max() > 0.1
    etot = np.array([r["TotEng"] for r in rows1])
    assert len(etot) == TRAJ_STEPS // 10 + 1 and np.ptp(etot) / len(end1) < 1e-4
    for np_ in (2, 4):
        _, rows, dumps = mpi_runs[np_]
        end = dumps[TRAJ_STEPS]
        np.testing.assert_array_equal(end[:, 0], end1[:, 0])
        # round-off (summation order differs between decompositions) grows over 100 steps
        # but stays far below anything physical
        np.testing.assert_allclose(end[:, 2:5], end1[:, 2:5], rtol=0, atol=1e-9)  # positions
        np.testing.assert_allclose(end[:, 5:8], end1[:, 5:8], rtol=0, atol=1e-8)  # velocities
        np.testing.assert_allclose(end[:, 8:12], end1[:, 8:12], rtol=0, atol=1e-8)  # forces, pe/atom
        e = np.array([r["TotEng"] for r in rows])
        np.testing.assert_allclose(e, etot, rtol=0, atol=1e-8)


# --------------------------------------------------------------------------- isolated atom, errors


def test_isolated_atoms_have_e0_and_no_force(random_models, plugin_path, tmp_path):
    """Two atoms farther apart than r_max (also through the periodic images): no edge at all."""
    _, meta = load_exported(random_models["f64"])
    e0 = meta["e0"]
    assert abs(e0["Cu"] - meta["shift"]["Cu"]) > 0.1  # E0 differs from the bulk shift
    pos = np.array([[1.0, 1.0, 1.0], [9.0, 8.5, 9.5]])
    write_lammps_data(tmp_path / "data.lmp", pos, np.array([1, 2]), np.diag([18.0] * 3), 2)
    text = (
        header(plugin_path, random_models["f64"])
        + """dump d all custom 1 f.dump id fx fy fz c_pea
dump_modify d format float %.17g sort id
thermo_style custom step pe c_vir[1] c_vir[2] c_vir[3] c_vir[4] c_vir[5] c_vir[6]
thermo_modify format float %.17g
run 0
"""
    )
    stdout = ok(lammps_run(tmp_path, text, plugin_path))
    row = parse_thermo(stdout)[0]
    rows = read_dump(tmp_path / "f.dump")[0]
    assert row["PotEng"] == pytest.approx(e0["Cu"] + e0["Au"], abs=1e-12)
    np.testing.assert_allclose(rows[:, 4], [e0["Cu"], e0["Au"]], rtol=0, atol=1e-12)
    assert np.all(rows[:, 1:4] == 0.0)
    assert all(row[f"c_vir[{k}]"] == 0.0 for k in range(1, 7))


def test_element_not_in_model(bulk_case, random_models, plugin_path, tmp_path):
    d, _ = bulk_case
    (tmp_path / "data.lmp").write_bytes((d / "data.lmp").read_bytes())
    text = header(plugin_path, random_models["f64"]).replace("pair_coeff * * Cu Au", "pair_coeff * * Cu Ag") + "run 0\n"
    text = text.replace(f"mass 2 {MASSES['Au']}", "mass 2 107.87")
    proc = lammps_run(tmp_path, text, plugin_path)
    assert proc.returncode == 1, proc.stdout[-3000:]
    assert "ERROR" in proc.stdout
    assert "element 'Ag' (atom type 2) is not in the model" in proc.stdout, proc.stdout[-3000:]
    assert "the model's species are: Cu Au" in proc.stdout


# --------------------------------------------------------------------------- NVE with evaporation


@pytest.fixture(scope="session")
def trained_model(tmp_path_factory) -> Path:
    """A tiny model fitted for a few seconds to the built-in EMT data (a bound, smooth
    potential; random weights do not hold a slab together), exported in float64."""
    from forcefield.data.demo_data import generate_demo_dataset
    from forcefield.training.config import load_config
    from forcefield.training.trainer import train

    d = tmp_path_factory.mktemp("trained")
    data = generate_demo_dataset(
        d / "data", seed=0, n_bulk=6, n_vacancy=0, n_surface=6, n_adatom=6, n_cluster=4, n_dimer=8, n_test=0
    )
    cfg = load_config(
        {
            "data": {"train": str(data["train"]), "valid": 0.1, "isolated_atoms": str(data["isolated_atoms"])},
            "model": {
                "species": SPECIES,
                "r_max": R_MAX,
                "num_layers": 2,
                "channels": 8,
                "lmax": 1,
                "radial_hidden": 16,
                "dtype": "float32",
            },
            "dens": {"enabled": False},
            "training": {
                "max_epochs": 10,
                "batch_size": 4,
                "lr": 0.01,
                "seed": 0,
                "device": "cpu",
                "forces_weight": 10.0,
                "num_threads": 1,
                # the short plain recipe this test was calibrated with (10 epochs at full LR):
                # no warm-up, no final energy stage, plain Adam
                "warmup_steps": 0,
                "amsgrad": False,
                "final_stage": {"enabled": False},
            },
        }
    )
    threads = torch.get_num_threads()
    try:
        train(cfg, d / "run", quiet=True)
    finally:
        torch.set_num_threads(threads)
    return export_model(d / "run" / "best.ckpt", d / "model.pt", dtype="float64")


def slab_with_adatoms():
    """The demo's Cu(111) slab with a few Au atoms (4x4x3, 48 atoms, 12 A vacuum) and two
    Cu adatoms in hollow sites half a cell apart; returns (atoms, adatom indices)."""
    from ase.build import add_adsorbate

    from forcefield.demo import slab_with_evaporators

    slab, _ = slab_with_evaporators((4, 4, 3))
    n = len(slab)
    for frac in ((0.0, 0.0), (0.5, 0.5)):
        xy = np.array(frac) @ slab.cell.array[:2, :2] + np.array([1.276, 0.737])
        add_adsorbate(slab, "Cu", 2.1, position=tuple(xy))
    return slab, [n, n + 1]


def nve_slab_deck(plugin: Path, model: Path, evaporators, dt_fs: float, steps: int, speed: float) -> str:
    ids = " ".join(str(int(i) + 1) for i in evaporators)
    return (
        header(plugin, model, data="slab.data", boundary="p p m")
        + f"""neighbor 1.0 bin
neigh_modify every 1 delay 0 check yes
velocity all create 300 7 mom yes rot no dist gaussian
group evap id {ids}
velocity evap set NULL NULL {speed} sum yes
dump d all custom {steps} slab.dump id type x y z fx fy fz c_pea
dump_modify d format float %.17g sort id
thermo_style custom step time pe ke etotal
thermo_modify format float %.17g norm no
thermo {int(round(1.0 / dt_fs))}
timestep {dt_fs / 1000.0}
fix nve all nve
run {steps}
"""
    )


def test_nve_slab_with_evaporating_atoms(trained_model, plugin_path, tmp_path):
    """2000 steps of 1 fs: energy conserved while two adatoms launched at 35 A/ps leave the
    surface, cross the isolation switch and the cutoff and fly on at exactly E0; halving dt
    shrinks the fluctuation ~4x (the dt^2 error of velocity Verlet on a smooth potential)."""
    import ase.io

    slab, evaporators = slab_with_adatoms()
    n = len(slab)
    assert n == 50
    ase.io.write(
        tmp_path / "slab.data", slab, format="lammps-data", specorder=SPECIES, units="metal", atom_style="atomic"
    )
    ref = calc_results(trained_model, slab)  # pbc (T, T, F): boundary p p m
    runs = {}
    for dt_fs, steps in ((1.0, 2000), (0.5, 1000)):
        work = tmp_path / f"dt{dt_fs}"
        work.mkdir()
        (work / "slab.data").write_bytes((tmp_path / "slab.data").read_bytes())
        stdout = ok(
            lammps_run(work, nve_slab_deck(plugin_path, trained_model, evaporators, dt_fs, steps, 35.0), plugin_path)
        )
        rows = parse_thermo(stdout)
        assert len(rows) == int(steps * dt_fs) + 1
        runs[dt_fs] = (
            np.array([r["Time"] for r in rows]),
            np.array([r["TotEng"] for r in rows]),
            rows,
            read_dump(work / "slab.dump"),
        )

    t1, e1, rows1, dump1 = runs[1.0]
    t2, e2, _, _ = runs[0.5]
    # step 0 agrees with Python on the slab (periodic in x and y only) too
    assert abs(rows1[0]["PotEng"] - ref["energy"]) < 1e-10
    np.testing.assert_allclose(dump1[0][:, 5:8], ref["forces"], rtol=0, atol=1e-10)
    np.testing.assert_allclose(dump1[0][:, 8], ref["energies"], rtol=0, atol=1e-10)

    # the adatoms left: far beyond r_max from every other atom, at exactly E0 with zero
    # force (the isolation switch), while the slab stayed bound
    end = dump1[2000]
    pos = end[:, 2:5]
    _, meta = load_exported(trained_model)
    for i in evaporators:
        assert end[i, 1] == 1  # Cu
        dist = np.linalg.norm(np.delete(pos, i, axis=0) - pos[i], axis=1).min()
        assert dist > R_MAX + 5.0, (i, dist)
        assert end[i, 8] == pytest.approx(meta["e0"]["Cu"], abs=1e-12)
        assert np.all(end[i, 5:8] == 0.0)
    assert dump1[0][evaporators[0], 8] < meta["e0"]["Cu"] - 1.0  # bound at the start
    rest = np.setdiff1d(np.arange(n), evaporators)
    assert np.ptp(pos[rest, 2]) < np.ptp(dump1[0][rest, 4]) + 3.0, "the slab itself must stay bound"

    # energy conservation over 2 ps at 1 fs, without a systematic trend
    dev = (e1 - e1[0]) / n
    assert np.abs(dev).max() < 1e-4, np.abs(dev).max()
    slope = np.polyfit(t1, e1 / n, 1)[0]  # eV/atom/ps
    assert abs(slope * t1[-1]) < 1e-5, slope
    assert abs(dev[len(dev) // 2 :].mean() - dev[: len(dev) // 2].mean()) < 1e-5

    # Verlet: fluctuation ~ dt^2, over the same 0.5 ps (which includes the evaporation),
    # sampled at the same times (every fs)
    window = t1 <= t2[-1] + 1e-9
    assert np.allclose(t1[window], t2)
    ratio = np.std(e1[window]) / np.std(e2)
    assert 2.5 < ratio < 6.0, ratio
