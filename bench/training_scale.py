"""Training on large data: preprocessing speed, peak memory and time to the first optimizer
step of the preprocessed (HDF5) path against the in-memory extxyz path, steps/s with 0, 1
and 2 DataLoader workers, and 1 vs 2 processes under torchrun, in one run.

    .venv/bin/python bench/training_scale.py --sizes 10000 100000 --json bench/results/training_scale.json

Data: the shipped silicon training set (214 DFT structures, mostly 64 atoms) copied to each
size, every copy with its own small seeded displacement (0.01 Å), written as extxyz once
(cached under --work). Each measurement runs in a fresh subprocess with one torch thread
(OMP_NUM_THREADS=1), so peak RSS (ru_maxrss) and timings are that run's alone. Model: the
default architecture with 8 channels (as a user with a mid-sized set would start).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SILICON = ROOT / "tests" / "datasets" / "silicon" / "train.xyz"
MODEL = {"species": ["Si"], "r_max": 5.0, "channels": 8, "dtype": "float32"}


def make_data(n: int, work: Path) -> Path:
    import ase.io

    path = work / f"si_{n}.xyz"
    if path.is_file():
        return path
    base = ase.io.read(SILICON, ":")
    rng = np.random.default_rng(0)
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w") as fh:
        for k in range(n):
            a = base[k % len(base)].copy()
            a.calc = base[k % len(base)].calc
            results = dict(a.calc.results)
            a.positions = a.positions + rng.normal(0.0, 0.01, a.positions.shape)
            from ase.calculators.singlepoint import SinglePointCalculator

            a.calc = SinglePointCalculator(a, **results)
            ase.io.write(fh, a, format="extxyz")
    tmp.rename(path)
    return path


def child(argv) -> None:
    """Runs in a subprocess: one measurement, JSON on stdout."""
    import torch

    torch.set_num_threads(1)
    mode = argv[0]
    t0 = time.perf_counter()
    out = {}
    if mode == "preprocess":
        from forcefield.data.preprocess import preprocess

        src, dst = argv[1], argv[2]
        s = preprocess([src], dst, r_max=MODEL["r_max"], species=["Si"], valid=0.05, overwrite=True)
        out = {"structures": s["structures"], "seconds": time.perf_counter() - t0}
    elif mode == "read":  # the in-memory path's reading: frames and graphs
        from forcefield.data.frames import read_frames
        from forcefield.data.graph import frame_to_graph

        frames = read_frames(argv[1])
        graphs = [frame_to_graph(f, ["Si"], MODEL["r_max"]) for f in frames]
        out = {"structures": len(graphs), "seconds": time.perf_counter() - t0}
    elif mode in ("first_step", "steps"):
        from forcefield.training import trainer as trainer_module
        from forcefield.training.config import load_config

        data, workers, steps = argv[1], int(argv[2]), int(argv[3])
        data_cfg = {"train": data, "num_workers": workers, "valid_max": 50}
        if not data.endswith(".h5"):
            data_cfg["valid"] = 0.05
        cfg = load_config(
            {
                "data": data_cfg,
                "model": MODEL,
                "training": {
                    "max_epochs": 1,
                    "batch_size": 4,
                    "device": "cpu",
                    "num_threads": 1,
                    "valid_every": 10**9,
                    "warmup_steps": 0,
                },
            }
        )
        times = []
        real = trainer_module.train_step

        def timed(*a, **k):
            r = real(*a, **k)
            times.append(time.perf_counter())
            if len(times) >= steps:
                raise KeyboardInterrupt
            return r

        trainer_module.train_step = timed
        tr = trainer_module.Trainer(cfg, argv[4], quiet=True, overwrite=True)
        try:
            tr.run()
        except KeyboardInterrupt:
            pass
        out = {"first_step_s": times[0] - t0}
        if len(times) > 10:
            out["steps_per_s"] = (len(times) - 11) / (times[-1] - times[10])
            out["structures_per_s"] = 4 * out["steps_per_s"]
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(out))


def run_child(*args, timeout=3600) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}
    r = subprocess.run(
        [sys.executable, __file__, "--child", *map(str, args)], capture_output=True, text=True, env=env, timeout=timeout
    )
    if r.returncode != 0:
        raise RuntimeError(r.stderr[-2000:])
    return json.loads(r.stdout.strip().splitlines()[-1])


def torchrun_throughput(h5: Path, nproc: int, work: Path, seconds: float, batch: int = 16) -> dict:
    """structures/s of the training loop (metrics time_s, steps) under torchrun, one thread each."""
    import yaml

    cfg = {
        "data": {"train": str(h5), "valid_max": 20},
        "model": MODEL,
        "training": {
            "max_epochs": 1000,
            "max_time": seconds,
            "batch_size": batch,
            "device": "cpu",
            "num_threads": 1,
            "valid_every": 10**9,
            "warmup_steps": 0,
        },
    }
    path = work / f"ddp{nproc}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    out = work / f"ddp{nproc}"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={nproc}",
        "-m",
        "forcefield",
        "train",
        str(path),
        "--output",
        str(out),
        "--overwrite",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}
    subprocess.run(cmd, check=True, capture_output=True, env=env, timeout=seconds * 4 + 300)
    from forcefield.model.serialization import read_checkpoint

    ck = read_checkpoint(out / "last.ckpt")
    row = ck["rows"][-1]
    return {"steps": int(row["step"]), "time_s": row["time_s"], "structures_per_s": batch * row["step"] / row["time_s"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[10000, 100000])
    p.add_argument("--in-memory-max", type=int, default=10000, help="largest size for the in-memory path")
    p.add_argument("--work", type=Path, default=ROOT / "bench" / "work_training_scale")
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--ddp-seconds", type=float, default=60.0)
    p.add_argument("--rounds", type=int, default=3, help="alternating 1- and 2-process rounds")
    p.add_argument("--ddp-batch", type=int, default=16, help="global batch of the torchrun runs")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    res = {"sizes": {}, "load_at_start": os.getloadavg()}
    for n in args.sizes:
        xyz = make_data(n, args.work)
        h5 = args.work / f"si_{n}.h5"
        r = {"preprocess": run_child("preprocess", xyz, h5)}
        r["preprocess"]["structures_per_s"] = n / r["preprocess"]["seconds"]
        if n <= args.in_memory_max:
            r["read_extxyz"] = run_child("read", xyz)
            r["read_extxyz"]["structures_per_s"] = n / r["read_extxyz"]["seconds"]
            r["in_memory"] = run_child("first_step", xyz, 0, 1, args.work / "run_mem")
        r["stored"] = run_child("first_step", h5, 0, 1, args.work / "run_h5")
        res["sizes"][n] = r
        print(n, json.dumps(r), flush=True)
    n = args.sizes[0]
    h5 = args.work / f"si_{n}.h5"
    res["workers"] = {w: run_child("steps", h5, w, args.steps, args.work / f"run_w{w}") for w in (0, 1, 2)}
    print("workers", json.dumps(res["workers"]), flush=True)
    ddp = {1: [], 2: []}
    for _ in range(args.rounds):
        for nproc in (1, 2):
            ddp[nproc].append(torchrun_throughput(h5, nproc, args.work, args.ddp_seconds, args.ddp_batch))
    res["torchrun"] = ddp
    s1 = np.median([d["structures_per_s"] for d in ddp[1]])
    s2 = np.median([d["structures_per_s"] for d in ddp[2]])
    res["torchrun_speedup"] = float(s2 / s1)
    res["load_at_end"] = os.getloadavg()
    print("torchrun", json.dumps(ddp), "speedup", res["torchrun_speedup"], flush=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        sys.path.insert(0, str(ROOT))
        child(sys.argv[2:])
    else:
        main()
