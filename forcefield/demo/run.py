"""`forcefield demo`: the whole job on built-in data, end to end.

generate EMT Cu-Au data -> train (DeNS + isolation switch, bounded time) -> evaluate on
held-out structures -> export (float64 TorchScript) -> build the LAMMPS plugin -> NVE MD of
a Cu-Au slab whose top atoms are launched into the vacuum -> report (report.json + table).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Optional

import numpy as np

from forcefield.demo.data import dimer_curve, generate_demo_dataset, isolated_atom_energy


@dataclass
class DemoSettings:
    train_time: float
    channels: int
    lmax: int
    n_structures_scale: float
    md_steps: int
    slab_size: tuple

    @classmethod
    def make(cls, quick: bool, train_time: Optional[float]) -> "DemoSettings":
        if quick:
            return cls(train_time or 20.0, 8, 1, 0.4, 200, (2, 4, 3))
        return cls(train_time or 180.0, 16, 2, 1.0, 1000, (4, 4, 4))


def _say(msg: str) -> None:
    from rich.console import Console

    Console(stderr=True).print(msg)


def demo_config(data: Dict[str, Path], s: DemoSettings) -> dict:
    return {
        "data": {
            "train": str(data["train"]),
            "valid": 0.1,
            "test": str(data["test"]),
            "isolated_atoms": str(data["isolated_atoms"]),
        },
        "model": {
            "species": ["Cu", "Au"],
            "r_max": 6.0,
            "num_layers": 2,
            "channels": s.channels,
            "lmax": s.lmax,
            "dtype": "float32",
        },
        "dens": {"enabled": True},
        # the default recipe (warm-up, plateau in steps, final energy stage at 80% of max_time)
        "training": {"max_epochs": 10000, "max_time": s.train_time, "batch_size": 4, "seed": 0, "device": "cpu"},
    }


def slab_with_evaporators(size=(4, 4, 4), seed: int = 0):
    """A Cu(111) slab with a few Au atoms, 12 Å vacuum, and the indices of 3 top atoms."""
    from ase.build import fcc111

    rng = np.random.default_rng(seed)
    slab = fcc111("Cu", size=size, a=3.61, vacuum=12.0, orthogonal=True)
    au = rng.choice(len(slab), size=max(1, len(slab) // 8), replace=False)
    slab.numbers[au] = 79
    top = np.argsort(slab.positions[:, 2])[-3:]
    return slab, top


def md_deck(model: Path, steps: int, evaporators, timestep_fs: float = 1.0, seed: int = 7) -> str:
    ids = " ".join(str(int(i) + 1) for i in evaporators)
    return f"""# NVE of a Cu-Au slab (r_max 6 Å: EMT dimers are still bound by 80 meV at 5 Å);
# three top atoms are launched into the vacuum
units metal
atom_style atomic
atom_modify map array
boundary p p m
newton on
read_data slab.data
pair_style forcefield {model} device cpu
pair_coeff * * Cu Au
neighbor 1.0 bin
neigh_modify every 1 delay 0 check yes
velocity all create 300 {seed} mom yes rot no dist gaussian
group evap id {ids}
velocity evap set NULL NULL 45.0 sum yes
thermo_style custom step pe ke etotal temp
thermo_modify format float %.12g norm no
thermo {max(1, steps // 100)}
timestep {timestep_fs / 1000.0}
fix nve all nve
run {steps}
"""


def nve_drift(rows, n_atoms: int) -> Dict[str, float]:
    """max |E(t) - E(0)| / N and the slope of a linear fit (eV/atom/ps is not needed: per run)."""
    et = np.array([r["TotEng"] for r in rows])
    if len(et) < 2:
        return {"max_abs_drift_ev_per_atom": float("nan"), "linear_drift_ev_per_atom": float("nan")}
    dev = (et - et[0]) / n_atoms
    slope = np.polyfit(np.arange(len(et)), et / n_atoms, 1)[0] * (len(et) - 1)
    return {"max_abs_drift_ev_per_atom": float(np.abs(dev).max()), "linear_drift_ev_per_atom": float(slope)}


def dimer_curves(model_path: Path, pairs=(("Cu", "Cu"), ("Cu", "Au"))) -> list:
    """(label, distances, EMT, model) per pair, energies relative to E0_a + E0_b (eV)."""
    from ase import Atoms

    from forcefield.calculator import ForceFieldCalculator

    calc = ForceFieldCalculator(model_path)
    d = np.linspace(1.8, 6.5, 240)
    curves = []
    for a, b in pairs:
        e0 = isolated_atom_energy(a) + isolated_atom_energy(b)
        ref = np.asarray(dimer_curve(a, b, d)) - e0
        pred = []
        for r in d:
            at = Atoms(f"{a}{b}", positions=[[0, 0, 0], [r, 0, 0]])
            at.calc = calc
            pred.append(at.get_potential_energy() - e0)
        curves.append((f"{a}-{b}", d, ref, np.asarray(pred)))
    return curves


def run_demo(output: Path | str = "demo_output", quick: bool = False, train_time: Optional[float] = None) -> dict:
    import ase.io

    from forcefield.atomic_io import write_text
    from forcefield.calculator import ForceFieldCalculator
    from forcefield.evaluation import evaluate
    from forcefield.export.lammps_runner import parse_performance, parse_thermo, run_lammps
    from forcefield.export.plugin import build_plugin
    from forcefield.export.torchscript import export_model
    from forcefield.plots import dimer_plot, parity_plot
    from forcefield.training.config import load_config
    from forcefield.training.trainer import train

    out = Path(output).resolve()
    out.mkdir(parents=True, exist_ok=True)
    s = DemoSettings.make(quick, train_time)
    t0 = time.perf_counter()

    _say("[bold]1/6[/bold] generating Cu-Au training data with ASE's EMT")
    scale = s.n_structures_scale
    data = generate_demo_dataset(
        out / "data",
        seed=0,
        n_bulk=int(70 * scale),
        n_vacancy=int(15 * scale),
        n_surface=int(30 * scale),
        n_adatom=int(20 * scale),
        n_cluster=int(30 * scale),
        n_dimer=int(36 * scale),
        n_test=int(40 * scale),
    )

    _say(f"[bold]2/6[/bold] training with DeNS and the isolation switch for {s.train_time:.0f} s")
    cfg = load_config(demo_config(data, s))
    run_dir = out / "train"
    trainer = train(cfg, run_dir)

    _say("[bold]3/6[/bold] evaluating on the held-out structures")
    metrics, arrays = evaluate(run_dir / "best.ckpt", data["test"])
    write_text(json.dumps(metrics, indent=2) + "\n", out / "test_metrics.json")
    parity_plot(
        arrays["energy_ref"],
        arrays["energy_pred"],
        arrays["forces_ref"],
        arrays["forces_pred"],
        out / "parity.png",
        title="demo model on held-out EMT structures",
    )

    _say("[bold]4/6[/bold] exporting to TorchScript (float64) and building the LAMMPS plugin")
    model_path = export_model(run_dir / "best.ckpt", out / "model.pt", dtype="float64")
    plugin = build_plugin()
    dimer_plot(dimer_curves(model_path), cfg.model.r_max, out / "dimer.png")

    _say(f"[bold]5/6[/bold] LAMMPS NVE, {s.md_steps} steps of 1 fs, slab with atoms evaporating")
    slab, top = slab_with_evaporators(s.slab_size)
    md_dir = out / "lammps"
    md_dir.mkdir(exist_ok=True)
    ase.io.write(
        md_dir / "slab.data",
        slab,
        format="lammps-data",
        specorder=["Cu", "Au"],
        masses=True,
        units="metal",
        atom_style="atomic",
    )
    slab.calc = ForceFieldCalculator(model_path)
    e_python = float(slab.get_potential_energy())
    run_lammps(md_deck(model_path, s.md_steps, top), md_dir, plugin=plugin)
    log = (md_dir / "log.lammps").read_text()
    rows = parse_thermo(log)
    perf = parse_performance(log)
    drift = nve_drift(rows, len(slab))

    report = {
        "test": metrics,
        "training": {
            "epochs": trainer.epoch,
            "seconds": round(trainer.elapsed, 1),
            "valid_energy_mae": trainer.rows[-1]["valid_energy_mae"] if trainer.rows else None,
            "valid_forces_mae": trainer.rows[-1]["valid_forces_mae"] if trainer.rows else None,
        },
        "lammps": {
            "atoms": len(slab),
            "steps": s.md_steps,
            "step0_energy_lammps": rows[0]["PotEng"],
            "step0_energy_python": e_python,
            "step0_energy_difference": abs(rows[0]["PotEng"] - e_python),
            **drift,
            "atom_steps_per_s": perf.get("atom_steps_per_s"),
        },
        "artifacts": {
            "checkpoint": str(run_dir / "best.ckpt"),
            "model": str(model_path),
            "plugin": str(plugin),
            "metrics_csv": str(run_dir / "metrics.csv"),
            "learning_curve": str(run_dir / "learning_curve.png"),
            "parity_plot": str(out / "parity.png"),
            "dimer_plot": str(out / "dimer.png"),
            "lammps_log": str(md_dir / "log.lammps"),
            "lammps_input": str(md_dir / "in.lammps"),
        },
        "wall_time_s": round(time.perf_counter() - t0, 1),
    }
    write_text(json.dumps(report, indent=2) + "\n", out / "report.json")
    _say("[bold]6/6[/bold] report")
    print_report(report)
    return report


def print_report(report: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title="forcefield demo", show_header=False)
    m, lm = report["test"], report["lammps"]
    t.add_row("test energy MAE", f"{m.get('energy_mae', float('nan')):.2f} meV/atom")
    t.add_row("test forces MAE", f"{m.get('forces_mae', float('nan')):.1f} meV/Å")
    if "stress_mae" in m:
        t.add_row("test stress MAE", f"{m['stress_mae']:.3f} meV/Å³")
    t.add_row("training", f"{report['training']['epochs']} epochs in {report['training']['seconds']} s")
    t.add_row("LAMMPS step-0 energy", f"{lm['step0_energy_lammps']:.10f} eV (Python {lm['step0_energy_python']:.10f})")
    t.add_row("NVE max |ΔE|/N", f"{lm['max_abs_drift_ev_per_atom']:.2e} eV/atom over {lm['steps']} steps")
    t.add_row("LAMMPS speed", f"{lm['atom_steps_per_s']:.0f} atom-steps/s ({lm['atoms']} atoms, 1 rank)")
    for k, v in report["artifacts"].items():
        t.add_row(k, v)
    t.add_row("wall time", f"{report['wall_time_s']} s")
    Console().print(t)
