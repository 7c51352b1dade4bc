"""Accuracy of DeNS regimes on revised-MD17 ethanol (DESIGN.md §4, "caveat worth measuring").

Trains the same model (same seed, same data split, same budget) three times:

  off        dens.enabled: false                        (plain energy + force training)
  paper      DeNS as in the paper: noise loss + force loss on the uncorrupted atoms
             + energy loss of the DeNS samples against the original energy
  denoise    DeNS with only the noise-prediction loss on DeNS samples
             (dens.energy_loss: false, dens.uncorrupted_force_loss: false)

on 950 training / 50 validation structures of tests/datasets/ethanol/train.xyz (E0 from
isolated_atoms.xyz), then evaluates the best (EMA) checkpoint of each on test_MD.xyz
(1000 structures) and prints a table next to the published numbers (MACE paper, Table 1,
950 training structures; energy MAE in meV per molecule, forces meV/Å).

The budget is wall time of the training loop per regime (`--time-per-regime`, seconds;
validation and evaluation are not counted) and/or a number of epochs (`--epochs`). A run
stops at whichever comes first. Results: <output>/results.json, and one training folder
per regime (metrics.csv, best.ckpt, learning_curve.png).

    .venv/bin/python bench/accuracy.py --output bench_results/accuracy --time-per-regime 600
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DEFAULT_DATA = ROOT / "tests" / "datasets" / "ethanol"

REGIMES = {
    "off": {"enabled": False},
    "paper": {"enabled": True, "energy_loss": True, "uncorrupted_force_loss": True},
    "denoise": {"enabled": True, "energy_loss": False, "uncorrupted_force_loss": False},
}
REGIME_TEXT = {
    "off": "DeNS off",
    "paper": "DeNS (paper: + E and F of DeNS samples)",
    "denoise": "DeNS, denoising loss only",
}
# Batatia et al., MACE (NeurIPS 2022), Table 1, rMD17 ethanol, 950 training structures
PUBLISHED = [
    ("MACE", 0.4, 2.1),
    ("Allegro", 0.4, 2.1),
    ("NequIP", 0.4, 2.8),
    ("BOTNet", 0.4, 3.2),
    ("ACE", 1.2, 7.3),
    ("GAP", 3.5, 18.1),
]


def make_config(args, regime: str, data: Path) -> dict:
    dens = dict(REGIMES[regime])
    return {
        "data": {
            "train": str(data / "train.xyz"),
            "valid": args.n_valid / 1000.0,
            "isolated_atoms": str(data / "isolated_atoms.xyz"),
        },
        "model": {
            "species": ["H", "C", "O"],
            "r_max": args.r_max,
            "num_layers": args.num_layers,
            "channels": args.channels,
            "lmax": args.lmax,
            "dtype": args.dtype,
        },
        "dens": dens,
        "training": {
            "max_epochs": args.epochs,
            "max_time": args.time_per_regime,
            "batch_size": args.batch_size,
            "lr": args.lr,
            "seed": args.seed,
            "device": args.device,
            "energy_weight": args.energy_weight,
            "forces_weight": args.forces_weight,
            "plateau_patience": args.plateau_patience,
            "num_threads": args.threads,
        },
    }


def energy_mae_per_molecule(arrays, frames) -> float:
    """Total-energy MAE (meV per structure), the unit of the published rMD17 tables."""
    n = np.array([len(f.numbers) for f in frames], dtype=float)
    d = (arrays["energy_pred"] - arrays["energy_ref"]) * n
    return 1000.0 * float(np.mean(np.abs(d)))


def run_regime(args, regime: str, data: Path, out: Path) -> dict:
    from forcefield.data.frames import read_frames
    from forcefield.data.split import extract_e0
    from forcefield.evaluation import evaluate
    from forcefield.training.config import load_config
    from forcefield.training.trainer import Trainer

    cfg = load_config(make_config(args, regime, data))
    folder = out / regime
    t0 = time.perf_counter()
    trainer = Trainer(cfg, folder, resume=args.resume and (folder / "last.ckpt").is_file(), quiet=True)
    trainer.run()
    wall = time.perf_counter() - t0
    test_path = data / "test_MD.xyz"
    frames = extract_e0(read_frames(test_path))[0][: args.n_test]
    test_file = out / "test_subset.xyz"
    if args.n_test < 1000 and not test_file.is_file():
        from forcefield.data.frames import write_frames

        write_frames(frames, test_file)
    metrics, arrays = evaluate(folder / "best.ckpt", test_file if args.n_test < 1000 else test_path)
    rows = trainer.rows
    best = min(rows, key=lambda r: r["valid_loss"])
    res = {
        "regime": regime,
        "description": REGIME_TEXT[regime],
        "dens": cfg.dens.model_dump(mode="json"),
        "epochs": trainer.epoch,
        "train_loop_s": trainer.elapsed,
        "wall_s": wall,
        "best_epoch": best["epoch"],
        "valid_energy_mae_mev_atom": best["valid_energy_mae"],
        "valid_forces_mae": best["valid_forces_mae"],
        "test_n_structures": metrics["n_structures"],
        "test_energy_mae_mev": energy_mae_per_molecule(arrays, frames),
        "test_energy_mae_mev_atom": metrics["energy_mae"],
        "test_energy_rmse_mev_atom": metrics["energy_rmse"],
        "test_forces_mae": metrics["forces_mae"],
        "test_forces_rmse": metrics["forces_rmse"],
    }
    return res


def table(results, args) -> str:
    lines = [f"{'model / regime':44s} {'E MAE (meV)':>12s} {'F MAE (meV/Å)':>14s} {'epochs':>7s} {'train s':>8s}"]
    lines.append("-" * len(lines[0]))
    for r in results:
        lines.append(
            f"{'this, ' + r['description']:44s} {r['test_energy_mae_mev']:12.2f} "
            f"{r['test_forces_mae']:14.2f} {r['epochs']:7d} {r['train_loop_s']:8.0f}"
        )
    base = next((r for r in results if r["regime"] == "off"), None)
    if base is not None:
        for r in results:
            if r is not base:
                d = 100.0 * (r["test_forces_mae"] / base["test_forces_mae"] - 1.0)
                lines.append(f"{'  forces MAE vs DeNS off, ' + r['regime']:44s} {'':12s} {d:+13.1f}%")
    lines.append("published (MACE paper Table 1, 950 train, converged training):")
    for name, e, f in PUBLISHED:
        lines.append(f"{'  ' + name:44s} {e:12.1f} {f:14.1f}")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--output", type=Path, required=True, help="results folder (results.json, runs)")
    p.add_argument("--data-dir", type=Path, default=DEFAULT_DATA)
    p.add_argument("--regimes", default="off,paper,denoise", help="comma-separated subset of off,paper,denoise")
    p.add_argument("--time-per-regime", type=float, default=600.0, help="training-loop seconds per regime")
    p.add_argument("--epochs", type=int, default=100000, help="epoch cap per regime")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n-valid", type=int, default=50, help="validation structures held out of 1000")
    p.add_argument("--n-test", type=int, default=1000, help="test structures evaluated (of 1000)")
    p.add_argument("--channels", type=int, default=32)
    p.add_argument("--lmax", type=int, default=2)
    p.add_argument("--num-layers", type=int, default=2)
    p.add_argument("--r-max", type=float, default=5.0)
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    p.add_argument("--batch-size", type=int, default=5)
    p.add_argument("--lr", type=float, default=5e-3)
    p.add_argument("--energy-weight", type=float, default=1.0)
    p.add_argument("--forces-weight", type=float, default=10.0)
    p.add_argument("--plateau-patience", type=int, default=10)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--device", default="auto", choices=["cpu", "cuda", "auto"])
    p.add_argument("--resume", action="store_true", help="continue regimes that have a last.ckpt")
    args = p.parse_args(argv)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", category=UserWarning)

    regimes = [r.strip() for r in args.regimes.split(",") if r.strip()]
    for r in regimes:
        if r not in REGIMES:
            p.error(f"unknown regime {r!r}; choose from {', '.join(REGIMES)}")
    out = args.output
    out.mkdir(parents=True, exist_ok=True)
    results = []
    for regime in regimes:
        print(
            f"[{time.strftime('%H:%M:%S')}] training regime {regime!r} "
            f"(budget {args.time_per_regime:.0f} s / {args.epochs} epochs)",
            flush=True,
        )
        r = run_regime(args, regime, args.data_dir, out)
        results.append(r)
        print(
            f"[{time.strftime('%H:%M:%S')}]   {r['epochs']} epochs in {r['train_loop_s']:.0f} s: "
            f"test E {r['test_energy_mae_mev']:.2f} meV, F {r['test_forces_mae']:.2f} meV/Å",
            flush=True,
        )
        payload = {
            "settings": vars(args) | {"output": str(out), "data_dir": str(args.data_dir)},
            "machine": {
                "platform": platform.platform(),
                "torch": torch.__version__,
                "threads": torch.get_num_threads(),
                "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            },
            "published": [{"model": n, "energy_mae_mev": e, "forces_mae": f} for n, e, f in PUBLISHED],
            "results": results,
        }
        (out / "results.json").write_text(json.dumps(payload, indent=2) + "\n")
    print()
    print(table(results, args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
