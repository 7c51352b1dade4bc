"""Training throughput with and without DeNS: structures per second of the training step
(batch construction incl. DeNS corruption and neighbour-list rebuild, forward, force
gradient, loss, backward, optimizer step, EMA), same model, same data, same steps.

    .venv/bin/python bench/training_throughput.py --threads 1

Prints structures/s for DeNS off and on and the overhead in percent (target <= 15%,
the DeNS paper reports about +12% for its conservative model). Rounds alternate
between the two settings so that machine noise hits both alike; the median round counts.
Both wall time and this process's CPU time are reported: on a shared machine, with
`--threads 1`, the CPU-time figure is the one other processes do not disturb.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DEFAULT_DATA = ROOT / "tests" / "datasets" / "ethanol" / "train.xyz"


def build(args, dens_on: bool):
    """Model (+ encoder and head when DeNS is on), optimizer, EMA: the trainer's objects."""
    from forcefield.model.forcefield import ForceField
    from forcefield.training.dens import ForceEncoder, NoiseHead
    from forcefield.training.ema import EMA

    torch.manual_seed(args.seed)
    cfg = {
        "species": args.species,
        "r_max": args.r_max,
        "num_layers": args.num_layers,
        "channels": args.channels,
        "lmax": args.lmax,
        "dtype": args.dtype,
    }
    model = ForceField.from_config(cfg, {"avg_num_neighbors": 8.0}).to(args.device)
    params = list(model.parameters())
    encoder = head = None
    if dens_on:
        mc = model.model_config()
        encoder = ForceEncoder(mc.lmax, model.irreps_dens).to(args.device, model.dtype)
        head = NoiseHead(model, mc.channels, mc.num_basis, mc.radial_hidden, model.avg_num_neighbors).to(
            args.device, model.dtype
        )
        params += list(encoder.parameters()) + list(head.parameters())
    opt = torch.optim.Adam(params, lr=1e-3)
    ema = EMA(model, 0.99)
    return model, encoder, head, opt, ema, params


def make_stepper(args, graphs, dens_on: bool, seed: int):
    """A function running one training step of a fresh setup (warmed up already): the
    library's `train_step` on a batch made as the trainer makes it."""
    from forcefield.training.batches import make_batch
    from forcefield.training.config import DensConfig
    from forcefield.training.distributed import Distributed
    from forcefield.training.step import StepContext, TrainModule, train_step

    model, encoder, head, opt, ema, params = build(args, dens_on)
    ctx = StepContext.build(TrainModule(model, encoder, head), opt, Distributed(), ema, grad_clip=10.0)
    dens = DensConfig(enabled=True) if dens_on else None
    rng = np.random.default_rng(seed)
    weights = {"energy": 1.0, "forces": 10.0, "stress": 0.0}
    species = model.species

    def step():
        idx = rng.choice(len(graphs), size=args.batch_size, replace=False)
        batch = make_batch([graphs[i] for i in idx], species, model.r_max, model.dtype, args.device, rng, dens)
        train_step(ctx, batch, weights, 5.0)

    for _ in range(args.warmup):
        step()
    return step


def time_steps(step, steps: int, device: str):
    """(wall seconds, CPU seconds of this process) for `steps` steps."""
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    sync()
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(steps):
        step()
    sync()
    return time.perf_counter() - t0, time.process_time() - c0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=DEFAULT_DATA)
    p.add_argument("--species", nargs="+", default=["H", "C", "O"])
    p.add_argument("--n-structures", type=int, default=200)
    p.add_argument("--steps", type=int, default=20, help="timed steps per round and setting")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--rounds", type=int, default=15, help="alternating off/on rounds; the median counts")
    p.add_argument("--batch-size", type=int, default=5)
    p.add_argument("--channels", type=int, default=32)
    p.add_argument("--lmax", type=int, default=2)
    p.add_argument("--num-layers", type=int, default=2)
    p.add_argument("--r-max", type=float, default=5.0)
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = p.parse_args(argv)
    warnings.filterwarnings("ignore")
    if args.threads:
        torch.set_num_threads(args.threads)

    from forcefield.data.frames import read_frames
    from forcefield.data.split import extract_e0
    from forcefield.training.batches import frame_to_graph

    frames = extract_e0(read_frames(args.data, index=f":{args.n_structures}"))[0]
    graphs = [frame_to_graph(f, args.species, args.r_max) for f in frames]
    n_atoms = float(np.mean([g.num_atoms for g in graphs]))
    wall = {"off": [], "on": []}
    cpu = {"off": [], "on": []}
    n_struct = args.steps * args.batch_size
    # both setups live side by side and take turns, block by block, so that a change in the
    # machine's load hits both alike
    steppers = {name: make_stepper(args, graphs, name == "on", args.seed) for name in ("off", "on")}
    for r in range(args.rounds):
        for name in ("off", "on"):
            t, c = time_steps(steppers[name], args.steps, args.device)
            wall[name].append(t)
            cpu[name].append(c)
            print(
                f"round {r + 1} DeNS {name:3s}: {n_struct / t:8.1f} structures/s wall, "
                f"{n_struct / c:8.1f} per CPU second",
                flush=True,
            )
    med = {k: statistics.median(v) for k, v in wall.items()}
    med_cpu = {k: statistics.median(v) for k, v in cpu.items()}
    rate = {k: n_struct / v for k, v in med.items()}
    rate_cpu = {k: n_struct / v for k, v in med_cpu.items()}
    overhead = 100.0 * (med["on"] / med["off"] - 1.0)
    overhead_cpu = 100.0 * (med_cpu["on"] / med_cpu["off"] - 1.0)
    print()
    print(
        f"model: channels {args.channels}, lmax {args.lmax}, {args.num_layers} layers, {args.dtype}, "
        f"r_max {args.r_max}; {args.data.name} ({n_atoms:.0f} atoms/structure), batch {args.batch_size}, "
        f"{args.steps} steps x {args.rounds} rounds on {args.device} ({torch.get_num_threads()} threads)"
    )
    print(f"{'':10s}{'structures/s (wall)':>22s}{'per CPU second':>18s}")
    print(f"{'DeNS off':10s}{rate['off']:22.1f}{rate_cpu['off']:18.1f}")
    print(f"{'DeNS on':10s}{rate['on']:22.1f}{rate_cpu['on']:18.1f}   (prob 0.25, corrupt_ratio 0.25)")
    print(f"{'overhead':10s}{overhead:+21.1f}%{overhead_cpu:+17.1f}%   (target <= 15%)")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(
            json.dumps(
                {
                    "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
                    "wall_s": wall,
                    "cpu_s": cpu,
                    "structures_per_s": rate,
                    "structures_per_cpu_s": rate_cpu,
                    "overhead_percent": overhead,
                    "overhead_percent_cpu": overhead_cpu,
                },
                indent=2,
            )
            + "\n"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
