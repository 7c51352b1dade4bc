"""Accuracy on revised-MD17 ethanol: learning curve, DeNS regimes, and MACE side by side.

Splits: N training structures drawn from tests/datasets/ethanol/train.xyz by a seeded
permutation (seed s: the first N of the permutation), validation = the next 50 of the same
permutation (the rest of train.xyz), test = all 1000 structures of test_MD.xyz. E0 from
isolated_atoms.xyz for both models.

Jobs (each one process, one CPU thread, a wall-clock budget of the training loop):
  ours:<regime>:N<n>:s<seed>   this package, default model and recipe, DeNS regime one of
                                 off | paper | denoise | half (see REGIMES)
  mace:N<n>:s<seed>            MACE (mace-torch, bench env) of matched inference size: 2 layers,
                                 32x0e+32x1o, correlation 3, r_max 5, 8 Bessel; its rMD17
                                 recipe (amsgrad, lr 0.01, batch 5, energy weight 1, forces 1000,
                                 EMA 0.99, plateau factor 0.8 / patience 50). The mace_run_train
                                 process is given the budget plus 10% (it validates every epoch,
                                 our budget excludes validation) plus its start-up, then stopped;
                                 its best (EMA) checkpoint is evaluated on the same test set.

Suites: dens  = N 50, regimes off/paper/denoise/half, seeds 0,1,2
        curve = N 50/250/950, ours:off, ours:<--curve-regime>, mace, seed 0
Jobs run `--lanes` at a time (2 on a 2-core machine). Every finished job appends a line to
<output>/results.jsonl; a rerun skips finished jobs and resumes interrupted ones of ours
from their last.ckpt, so the script can be stopped and started again.

    .venv/bin/python bench/learning_curve.py --output bench_results/lc --suite dens --budget 600
    .venv/bin/python bench/learning_curve.py --output bench_results/lc --report
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DATA = ROOT / "tests" / "datasets" / "ethanol"
N_VALID = 50

REGIMES = {
    "off": {"enabled": False},
    # the DeNS paper's MD17 recipe: p 0.25, std 0.05, ratio 0.25, coefficient 5 decayed to 0,
    # energy of every structure against the original energy, forces of the uncorrupted atoms
    "paper": {"enabled": True, "energy_loss": True, "uncorrupted_force_loss": True},
    "denoise": {"enabled": True, "energy_loss": False, "uncorrupted_force_loss": False},
    # our variant: more DeNS samples over a range of noise, only in the first half of training
    "half": {
        "enabled": True,
        "prob": 0.5,
        "std_range": [0.01, 0.1],
        "end": 0.5,
        "energy_loss": True,
        "uncorrupted_force_loss": True,
    },
}
# Batatia et al., MACE (NeurIPS 2022), rMD17 ethanol: (model, N, E meV/molecule, F meV/Å)
PUBLISHED = [
    ("MACE", 50, 6.7, 32.6),
    ("NequIP", 50, 8.7, 40.2),
    ("ACE", 50, 8.6, 43.0),
    ("MACE", 950, 0.4, 2.1),
    ("Allegro", 950, 0.4, 2.1),
    ("NequIP", 950, 0.4, 2.8),
]


def split_files(out: Path, n: int, seed: int) -> tuple[Path, Path]:
    import ase.io

    folder = out / "splits"
    train, valid = folder / f"train_N{n}_s{seed}.xyz", folder / f"valid_N{n}_s{seed}.xyz"
    if not valid.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        frames = ase.io.read(DATA / "train.xyz", index=":")
        order = np.random.default_rng(seed).permutation(len(frames))
        if n + N_VALID > len(frames):
            raise SystemExit(f"N={n} + {N_VALID} validation exceeds the {len(frames)} structures")
        ase.io.write(train, [frames[i] for i in order[:n]], format="extxyz")
        ase.io.write(valid, [frames[i] for i in order[n : n + N_VALID]], format="extxyz")
    return train, valid


def parse_job(name: str) -> dict:
    m = re.fullmatch(r"(ours:(?P<regime>\w+)|mace):N(?P<n>\d+):s(?P<seed>\d+)", name)
    if not m:
        raise SystemExit(f"bad job name {name!r}")
    return {
        "kind": "mace" if name.startswith("mace") else "ours",
        "regime": m["regime"],
        "n": int(m["n"]),
        "seed": int(m["seed"]),
    }


def test_errors(energy_pred, energy_ref, forces_pred, forces_ref, n_atoms) -> dict:
    e = 1000.0 * np.abs((np.asarray(energy_pred) - np.asarray(energy_ref)))  # per molecule, meV
    f = 1000.0 * np.abs(np.concatenate(forces_pred) - np.concatenate(forces_ref))
    return {
        "test_energy_mae_mev": float(e.mean()),
        "test_energy_mae_mev_atom": float((e / n_atoms).mean()),
        "test_forces_mae": float(f.mean()),
        "test_forces_rmse": float(np.sqrt((f**2).mean())),
        "test_n_structures": int(len(e)),
    }


def reference(test_path: Path):
    import ase.io

    frames = ase.io.read(test_path, index=":")
    return (
        frames,
        [a.get_potential_energy() for a in frames],
        [a.get_forces() for a in frames],
        np.array([len(a) for a in frames], dtype=float),
    )


def test_set_errors(calc) -> dict:
    """Errors of an ASE calculator on all of test_MD.xyz (the same code for both models)."""
    frames, e_ref, f_ref, n_atoms = reference(DATA / "test_MD.xyz")
    e_pred, f_pred = [], []
    for a in frames:
        a = a.copy()
        a.calc = calc
        e_pred.append(a.get_potential_energy())
        f_pred.append(a.get_forces())
    return test_errors(e_pred, e_ref, f_pred, f_ref, n_atoms)


def run_ours(job: dict, args, folder: Path) -> dict:
    import torch

    from forcefield.calculator import ForceFieldCalculator
    from forcefield.training.config import load_config
    from forcefield.training.trainer import Trainer

    train, valid = split_files(args.output, job["n"], job["seed"])
    cfg = load_config(
        {
            "data": {"train": str(train), "valid": str(valid), "isolated_atoms": str(DATA / "isolated_atoms.xyz")},
            "model": {"species": ["H", "C", "O"], **json.loads(args.model_json)},
            "dens": REGIMES[job["regime"]],
            "training": {
                "max_epochs": 1_000_000,
                "max_time": args.budget,
                "seed": job["seed"],
                "device": "cpu",
                "num_threads": 1,
                **json.loads(args.training_json),
            },
        }
    )
    resume = (folder / "last.ckpt").is_file()
    trainer = Trainer(cfg, folder, resume=resume, quiet=True, overwrite=not resume)
    trainer.run()
    torch.set_num_threads(1)
    errors = test_set_errors(ForceFieldCalculator(str(folder / "best.ckpt")))
    rows = trainer.rows
    return {
        "epochs": trainer.epoch,
        "train_loop_s": trainer.elapsed,
        "stop": trainer.stop_reason,
        "best_valid_forces_mae": min(r["valid_forces_mae"] for r in rows),
        "events": [f"{r['epoch']}: {r['event']}" for r in rows if r.get("event")],
        **errors,
    }


def mace_command(args, job: dict, folder: Path, train: Path, valid: Path, max_epochs: int, restart: bool):
    import ase.io

    e0 = {
        int(a.numbers[0]): float(a.get_potential_energy())
        for a in ase.io.read(DATA / "isolated_atoms.xyz", index=":")
        if a.numbers[0] in (1, 6, 8)
    }
    cmd = [
        args.mace_python,
        "-m",
        "mace.cli.run_train",
        "--name",
        "mace",
        "--seed",
        str(job["seed"]),
        "--train_file",
        str(train),
        "--valid_file",
        str(valid),
        "--E0s",
        json.dumps(e0).replace('"', ""),
        "--energy_key",
        "energy",
        "--forces_key",
        "forces",
        "--model",
        "MACE",
        "--r_max",
        "5.0",
        "--num_radial_basis",
        "8",
        "--num_channels",
        "32",
        "--max_L",
        "1",
        "--correlation",
        "3",
        "--num_interactions",
        "2",
        "--batch_size",
        "5",
        "--valid_batch_size",
        "10",
        "--max_num_epochs",
        str(max_epochs),
        "--lr",
        "0.01",
        "--amsgrad",
        "--ema",
        "--ema_decay",
        "0.99",
        "--energy_weight",
        "1",
        "--forces_weight",
        "1000",
        "--scheduler_patience",
        "50",
        "--default_dtype",
        "float32",
        "--device",
        "cpu",
        "--error_table",
        "PerAtomMAE",
        "--work_dir",
        str(folder),
        "--eval_interval",
        "1",
        "--patience",
        "1000000",
    ]
    if restart:
        cmd.append("--restart_latest")
    return cmd


def run_mace(job: dict, args, folder: Path) -> dict:
    train, valid = split_files(args.output, job["n"], job["seed"])
    folder.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    log = open(folder / "train.log", "a")
    t0 = time.perf_counter()
    try:
        subprocess.run(
            mace_command(args, job, folder, train, valid, 1_000_000, False),
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            timeout=args.budget * 1.1 + 30,
        )
    except subprocess.TimeoutExpired:
        pass
    wall = time.perf_counter() - t0
    ckpts = sorted((folder / "checkpoints").glob("*.pt"), key=lambda p: p.stat().st_mtime)
    if not ckpts:
        raise SystemExit(f"{folder}: MACE saved no checkpoint (see train.log)")
    epoch = int(re.search(r"epoch-(\d+)", ckpts[-1].name).group(1))
    # a restart with max_num_epochs below the checkpoint's epoch trains nothing: it evaluates the
    # latest (best-validation, EMA) checkpoint and writes mace.model
    subprocess.run(
        mace_command(args, job, folder, train, valid, 1, True),
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        check=True,
    )
    out = subprocess.run(
        [args.mace_python, __file__, "--output", str(args.output), "--mace-eval", str(folder / "mace.model")],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    res = json.loads(out.stdout.strip().splitlines()[-1])
    return {"epochs": epoch, "train_wall_s": wall, **res}


def mace_eval(model_path: Path) -> None:
    import torch
    from mace.calculators import MACECalculator

    torch.set_num_threads(1)
    calc = MACECalculator(model_paths=str(model_path), device="cpu", default_dtype="float32")
    print(json.dumps(test_set_errors(calc)))


def suite_jobs(args) -> list[str]:
    if args.jobs:
        return [j.strip() for j in args.jobs.split(",") if j.strip()]
    if args.suite == "dens":
        return [f"ours:{r}:N50:s{s}" for s in (0, 1, 2) for r in ("off", "paper", "denoise", "half")]
    jobs = []
    for n in (50, 250, 950):
        jobs += [f"ours:off:N{n}:s0", f"mace:N{n}:s0"]
        if args.curve_regime != "off":
            jobs.append(f"ours:{args.curve_regime}:N{n}:s0")
    return jobs


def done_jobs(out: Path) -> dict:
    path = out / "results.jsonl"
    if not path.is_file():
        return {}
    return {r["job"]: r for r in map(json.loads, path.read_text().splitlines()) if r.get("budget")}


def run_job(name: str, args) -> None:
    job = parse_job(name)
    folder = args.output / "runs" / name.replace(":", "_")
    t0 = time.time()
    res = (run_mace if job["kind"] == "mace" else run_ours)(job, args, folder)
    res.update(
        job=name,
        budget=args.budget,
        **job,
        started=time.strftime("%H:%M:%S", time.localtime(t0)),
        finished=time.strftime("%H:%M:%S"),
        load_avg=os.getloadavg(),
        machine=platform.node(),
    )
    with open(args.output / "results.jsonl", "a") as fh:
        fh.write(json.dumps(res) + "\n")
    print(json.dumps(res), flush=True)


def orchestrate(args) -> None:
    args.output.mkdir(parents=True, exist_ok=True)
    pending = [j for j in suite_jobs(args) if j not in done_jobs(args.output)]
    running: list[tuple[str, subprocess.Popen]] = []
    base = [
        sys.executable,
        __file__,
        "--output",
        str(args.output),
        "--budget",
        str(args.budget),
        "--model-json",
        args.model_json,
        "--training-json",
        args.training_json,
        "--mace-python",
        args.mace_python,
    ]
    env = dict(os.environ, OMP_NUM_THREADS="1", OMP_WAIT_POLICY="PASSIVE")
    while pending or running:
        while pending and len(running) < args.lanes:
            name = pending.pop(0)
            log = open(args.output / f"{name.replace(':', '_')}.log", "a")
            print(f"[{time.strftime('%H:%M:%S')}] start {name}", flush=True)
            running.append(
                (name, subprocess.Popen(base + ["--run-job", name], env=env, stdout=log, stderr=subprocess.STDOUT))
            )
        time.sleep(5)
        for name, proc in list(running):
            if proc.poll() is not None:
                running.remove((name, proc))
                print(f"[{time.strftime('%H:%M:%S')}] {name} exit {proc.returncode}", flush=True)
    report(args)


def report(args) -> None:
    res = done_jobs(args.output)
    groups: dict = {}
    for r in res.values():
        key = ("MACE (matched)" if r["kind"] == "mace" else f"ours, DeNS {r['regime']}", r["n"])
        groups.setdefault(key, []).append(r)
    print(
        f"\nrMD17 ethanol, test on all 1000 structures of test_MD.xyz; budget {args.budget:.0f} s of "
        "training per run, one CPU thread"
    )
    print(f"{'model':28s} {'N':>4s} {'seeds':>5s} {'E MAE meV/mol':>14s} {'F MAE meV/Å':>18s} {'epochs':>7s}")
    for (name, n), rs in sorted(groups.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        e = np.array([r["test_energy_mae_mev"] for r in rs])
        f = np.array([r["test_forces_mae"] for r in rs])
        spread = f" [{f.min():.1f}-{f.max():.1f}]" if len(f) > 1 else ""
        print(
            f"{name:28s} {n:4d} {len(rs):5d} {e.mean():14.2f} {f.mean():8.2f}{spread:>10s} "
            f"{np.mean([r['epochs'] for r in rs]):7.0f}"
        )
    print("published, converged (MACE paper):")
    for name, n, e, f in PUBLISHED:
        print(f"{'  ' + name:28s} {n:4d} {'':5s} {e:14.1f} {f:8.1f}")
    print("\nper run (markdown):\n")
    print("| job | epochs | test E MAE (meV/molecule) | test F MAE (meV/Å) | F vs off, same seed | load avg |")
    print("|---|---|---|---|---|---|")
    off = {(r["n"], r["seed"]): r for r in res.values() if r["kind"] == "ours" and r["regime"] == "off"}
    for r in sorted(res.values(), key=lambda r: (r["n"], r["seed"], r["kind"], r["regime"] or "")):
        base = off.get((r["n"], r["seed"]))
        rel = f"{100 * (r['test_forces_mae'] / base['test_forces_mae'] - 1):+.1f}%" if base and base is not r else ""
        print(
            f"| {r['job']} | {r['epochs']} | {r['test_energy_mae_mev']:.2f} | {r['test_forces_mae']:.2f} | {rel} "
            f"| {r['load_avg'][0]:.1f} |"
        )


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--output", type=Path, required=True)
    p.add_argument("--suite", choices=["dens", "curve"], default="dens")
    p.add_argument("--budget", type=float, default=600.0, help="training seconds per run")
    p.add_argument("--lanes", type=int, default=2, help="runs side by side")
    p.add_argument("--jobs", help="comma-separated job names, run in this order (instead of --suite)")
    p.add_argument("--curve-regime", default="off", help="DeNS regime for the curve's second row of ours")
    p.add_argument("--model-json", default="{}", help="model section overrides for ours (JSON)")
    p.add_argument("--training-json", default="{}", help="training section overrides for ours (JSON)")
    p.add_argument("--mace-python", default=str(ROOT / ".bench-venv" / "bin" / "python"))
    p.add_argument("--run-job", help=argparse.SUPPRESS)
    p.add_argument("--mace-eval", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--report", action="store_true", help="print the table of finished jobs")
    args = p.parse_args(argv)
    import warnings

    warnings.filterwarnings("ignore")
    if args.mace_eval:
        mace_eval(args.mace_eval)
    elif args.run_job:
        run_job(args.run_job, args)
    elif args.report:
        report(args)
    else:
        orchestrate(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
