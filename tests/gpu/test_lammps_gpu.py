"""LAMMPS with `pair_style forcefield ... device cuda` against `device cpu`, on the real
(tiny, every weight re-drawn) exported model of tests/export/test_lammps_model.py, driven by
that file's helpers:

- step 0: energy, per-atom energies, forces and virial to 1e-10 (float64), float32 to its
  round-off;
- a 50-step NVE run: the same trajectory and the same energy conservation as on CPU;
- `mpirun -np 2` on one GPU gives what one rank gives;
- `device auto` picks the GPU;
- on the GPU the message product takes the torch path, never the fused CPU kernel, and the
  pair style takes its device path (one copy in, one copy out per step) and GPU-sized chunks.

Marked `gpu` (and `lammps` by tests/conftest.py): skipped only when no CUDA device is
present. With FORCEFIELD_TEST_DEVICE=cpu (the dry run of bench/gpu.sh) the "device" runs are
`device cpu` through the pair style's device path (FORCEFIELD_DEVICE_PATH=1), compared with
its CPU path."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from lammps_utils import nve_block

pytestmark = pytest.mark.gpu

STEPS = 50


def lammps_device(device: str) -> str:
    """The pair style's `device` keyword for the test device."""
    return "cuda" if device.startswith("cuda") else "cpu"


def deck(lm, plugin: Path, model: Path, device: str, body: str) -> str:
    head = lm.header(plugin, model)
    assert "device cpu" in head
    return head.replace("device cpu", f"device {device}") + body


STEP0 = """dump d all custom 1 f.dump id fx fy fz c_pea
dump_modify d format float %.17g sort id
thermo_style custom step pe c_vir[1] c_vir[2] c_vir[3] c_vir[4] c_vir[5] c_vir[6]
thermo_modify format float %.17g
run 0
"""

NVE = nve_block(STEPS)


def run(lm, work: Path, data: Path, text: str, plugin: Path, env=None, np_: int = 1, dump: str = "f.dump"):
    """(stdout, thermo rows, dumps) of `text` run in `work`."""
    work.mkdir(parents=True, exist_ok=True)
    (work / "data.lmp").write_bytes(data.read_bytes())
    stdout = lm.ok(lm.lammps_run(work, text, plugin, np_=np_, mpirun=np_ > 1, extra_env=env))
    return stdout, lm.parse_thermo(stdout), lm.read_dump(work / dump)


def line_of(stdout: str, start: str) -> str:
    found = [line for line in stdout.splitlines() if line.strip().startswith(start)]
    assert found, f"no line starting with {start!r}"
    return found[0].strip()


@pytest.fixture(scope="module")
def step0_runs(lm, device, device_env, gpu_models, alloy_cell, plugin_path, tmp_path_factory):
    """Step 0 of the alloy cell, float64 and float32, on the device and on CPU."""
    d, _ = alloy_cell
    work = tmp_path_factory.mktemp("gpu_step0")
    out = {}
    for key in ("f64", "f32"):
        for where, dev, env in (("cpu", "cpu", {}), ("device", lammps_device(device), device_env)):
            text = deck(lm, plugin_path, gpu_models[key], dev, STEP0)
            out[key, where] = run(lm, work / f"{key}_{where}", d / "data.lmp", text, plugin_path, env)
    return out


def _compare_step0(a, b, atol_e, atol_f, rel_vir):
    (_, rows_a, dumps_a), (_, rows_b, dumps_b) = a, b
    assert abs(rows_a[0]["PotEng"] - rows_b[0]["PotEng"]) < atol_e
    np.testing.assert_array_equal(dumps_a[0][:, 0], dumps_b[0][:, 0])
    np.testing.assert_allclose(dumps_a[0][:, 1:4], dumps_b[0][:, 1:4], rtol=0, atol=atol_f)  # forces
    np.testing.assert_allclose(dumps_a[0][:, 4], dumps_b[0][:, 4], rtol=0, atol=atol_e)  # per-atom energies
    for k in range(1, 7):
        assert rows_a[0][f"c_vir[{k}]"] == pytest.approx(rows_b[0][f"c_vir[{k}]"], rel=rel_vir, abs=1e-6)


def test_step0_on_device_matches_cpu_float64(step0_runs, device):
    """Energy, per-atom energies, forces, virial (pressure) to 1e-10; the device run took
    the device path and (on a GPU) the GPU."""
    cpu, dev = step0_runs["f64", "cpu"], step0_runs["f64", "device"]
    _compare_step0(dev, cpu, 1e-10, 1e-10, 1e-10)
    assert "inputs and outputs: CPU path" in cpu[0]
    assert "inputs and outputs: device path" in dev[0]
    if device.startswith("cuda"):
        assert "pair_style forcefield: device cuda:0 (requested cuda)" in dev[0]
    _, rows, dumps = cpu
    assert np.abs(dumps[0][:, 1:4]).max() > 0.1 and np.ptp(dumps[0][:, 4]) > 0.1  # not vacuous
    assert max(abs(rows[0][f"c_vir[{k}]"]) for k in range(1, 7)) > 1e3


def test_step0_on_device_matches_cpu_float32(step0_runs):
    """float32: the same to float32 round-off (the device sums in another order), and
    close to the float64 export of the same weights."""
    cpu, dev = step0_runs["f32", "cpu"], step0_runs["f32", "device"]
    scale = max(1.0, abs(cpu[1][0]["PotEng"]))
    _compare_step0(dev, cpu, 2e-6 * scale, 2e-4, 1e-4)
    _compare_step0(dev, step0_runs["f64", "cpu"], 2e-5 * scale, 2e-3, 1e-3)


@pytest.fixture(scope="module")
def nve_runs(lm, device, device_env, gpu_models, alloy_cell, plugin_path, tmp_path_factory):
    """The NVE run (600 K, 1 fs) of tests/export/test_lammps_model.py (50 steps) on CPU, on the
    device with one rank and with `mpirun -np 2` (both ranks on the one GPU)."""
    d, _ = alloy_cell
    work = tmp_path_factory.mktemp("gpu_nve")
    cpu_text = deck(lm, plugin_path, gpu_models["f64"], "cpu", NVE)
    dev_text = deck(lm, plugin_path, gpu_models["f64"], lammps_device(device), NVE)
    return {
        "cpu": run(lm, work / "cpu", d / "data.lmp", cpu_text, plugin_path, dump="traj.dump"),
        "device": run(lm, work / "dev", d / "data.lmp", dev_text, plugin_path, device_env, dump="traj.dump"),
        "device_np2": run(lm, work / "dev2", d / "data.lmp", dev_text, plugin_path, device_env, 2, "traj.dump"),
    }


def _same_trajectory(a, b):
    (_, rows_a, dumps_a), (_, rows_b, dumps_b) = a, b
    assert sorted(dumps_a) == sorted(dumps_b) == [0, STEPS]
    end_a, end_b = dumps_a[STEPS], dumps_b[STEPS]
    np.testing.assert_array_equal(end_a[:, 0], end_b[:, 0])
    # round-off (another summation order) grows over the steps but stays far below anything physical
    np.testing.assert_allclose(end_a[:, 2:5], end_b[:, 2:5], rtol=0, atol=1e-9)  # positions
    np.testing.assert_allclose(end_a[:, 5:8], end_b[:, 5:8], rtol=0, atol=1e-8)  # velocities
    np.testing.assert_allclose(end_a[:, 8:12], end_b[:, 8:12], rtol=0, atol=1e-8)  # forces, pe/atom
    np.testing.assert_allclose([r["TotEng"] for r in rows_a], [r["TotEng"] for r in rows_b], rtol=0, atol=1e-8)


def test_nve_on_device_same_trajectory_and_drift_as_cpu(nve_runs):
    cpu, dev = nve_runs["cpu"], nve_runs["device"]
    _same_trajectory(dev, cpu)
    _, rows, dumps = dev
    n = len(dumps[0])
    assert np.abs(dumps[STEPS][:, 2:5] - dumps[0][:, 2:5]).max() > 0.1  # the atoms really moved
    drift = {k: np.ptp([r["TotEng"] for r in v[1]]) / n for k, v in (("cpu", cpu), ("device", dev))}
    assert drift["device"] < 1e-4 and drift["device"] == pytest.approx(drift["cpu"], rel=1e-3, abs=1e-9)


def test_mpirun_np2_on_one_device_equals_np1(nve_runs, device):
    """Two ranks sharing the one GPU (node-local rank % GPUs: both on GPU 0) give the
    one-rank step 0 (1e-10) and trajectory."""
    one, two = nve_runs["device"], nve_runs["device_np2"]
    m = re.search(r"(\d+) by (\d+) by (\d+) MPI processor grid", two[0])
    assert int(m.group(1)) * int(m.group(2)) * int(m.group(3)) == 2
    assert abs(two[1][0]["PotEng"] - one[1][0]["PotEng"]) < 1e-10
    np.testing.assert_allclose(two[2][0][:, 8:12], one[2][0][:, 8:12], rtol=0, atol=1e-10)
    _same_trajectory(two, one)
    if device.startswith("cuda"):
        assert "device cuda:0 (requested cuda)" in two[0]


def test_device_auto_picks_the_gpu(lm, device, device_env, gpu_models, alloy_cell, plugin_path, step0_runs, tmp_path):
    """`device auto` (the default): the GPU when torch sees one (here: when the tests run on
    one), else the CPU; the same numbers as the explicit device."""
    d, _ = alloy_cell
    text = deck(lm, plugin_path, gpu_models["f64"], "auto", STEP0)
    env = device_env if device.startswith("cuda") else {}
    got = run(lm, tmp_path / "auto", d / "data.lmp", text, plugin_path, env)
    expected = "cuda:0" if device.startswith("cuda") else "cpu"
    assert f"pair_style forcefield: device {expected} (requested auto)" in got[0]
    # (1e-10: the GPU's atomic sums need not repeat to the last bit)
    _compare_step0(got, step0_runs["f64", "device" if device.startswith("cuda") else "cpu"], 1e-10, 1e-10, 1e-10)


def test_fused_cpu_kernel_not_used_on_device(
    lm, device, device_env, gpu_models, alloy_cell, plugin_path, step0_runs, tmp_path
):
    """On a GPU the exported model's message product runs in torch (the plugin's fused
    kernel is for CPU tensors: the pair style says which it uses), in whole GPU-sized edge
    chunks; a portable export (no operators at all) gives the same numbers."""
    d, _ = alloy_cell
    stdout = step0_runs["f64", "device"][0]
    product = line_of(stdout, "message product:")
    chunks = line_of(stdout, "inference chunks:")
    if device.startswith("cuda"):
        assert "fused kernel" not in product and "(GPU, " in product and "whole edge chunks" in product
        assert chunks == "inference chunks: 32768 edges, 16384 atoms"
    else:
        assert "fused kernel" in product and "(CPU, 1 thread)" in product
        assert chunks == "inference chunks: 4096 edges, 2048 atoms"
    text = deck(lm, plugin_path, gpu_models["portable"], lammps_device(device), STEP0)
    portable = run(lm, tmp_path / "portable", d / "data.lmp", text, plugin_path, device_env)
    assert "fused kernel" not in line_of(portable[0], "message product:")
    _compare_step0(portable, step0_runs["f64", "device"], 1e-10, 1e-10, 1e-10)
