"""LAMMPS cost per atom-step against system size (CPU, one MPI rank).

    .venv/bin/python bench/lammps_scaling.py --sizes 1000 8000 32000

A random Cu-Au FCC alloy at 300 K, NVE, `pair_style forcefield` with a float32 model
(channels 32, lmax 2, 2 layers, r_max 5 A, random weights: the cost does not depend on
them). For each size: a warm-up run, then a few timed steps (fewer for larger systems);
prints microseconds per atom-step, the atoms and edges the pair style sends to the model
(owned atoms + the ghost atoms within num_layers hops) and the peak memory of LAMMPS.

With one rank and a periodic box, the ghost shell (num_layers * r_max + skin deep) is a
large part of the work for small boxes and a shrinking one for large boxes; the cost per
atom sent to the model is what stays constant.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from lammps_overhead import add_model_args, fcc_alloy, lammps_deck, make_export, parse_last_run, run_lammps, write_data  # noqa: E402


def default_steps(n: int) -> int:
    return 10 if n <= 2000 else 4 if n <= 10000 else 2


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[1000, 8000, 32000])
    ap.add_argument("--steps", type=int, default=None, help="timed steps (default: 10 / 4 / 2 by size)")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--nprocs", type=int, default=1, help="MPI ranks")
    add_model_args(ap)
    ap.add_argument("--mem-limit-gb", type=float, default=None,
                    help="address-space limit for LAMMPS (fail cleanly instead of the OOM killer)")
    ap.add_argument("--output", type=Path, default=None, help="write the rows as JSON here")
    args = ap.parse_args(argv)

    from forcefield.export.plugin import build_plugin

    build_plugin()
    rows = []
    with tempfile.TemporaryDirectory(prefix="ff-lammps-scaling-") as tmp:
        work = Path(tmp)
        model_path = make_export(work / "model.pt", args.dtype, args.channels, args.lmax, args.num_layers,
                                 args.r_max, args.seed)
        for size in args.sizes:
            atoms = fcc_alloy(size, seed=args.seed)
            n = len(atoms)
            d = work / f"n{n}"
            d.mkdir()
            write_data(d / "data.lmp", atoms)
            steps = args.steps or default_steps(n)
            t = time.perf_counter()
            log = run_lammps(d, lammps_deck(model_path.resolve(), args.warmup, steps, args.skin), args.threads,
                             nprocs=args.nprocs, dump_inputs=d / "inputs.pt", mem_limit_gb=args.mem_limit_gb)
            wall = time.perf_counter() - t
            info = {}
            if args.nprocs == 1:  # what the pair style sent to the model (rank 0)
                sent = torch.load(d / "inputs.pt")
                info = {"atoms_sent": int(sent[0].shape[0]), "edges_sent": int(sent[2].shape[1])}
                del sent
            peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024.0
            res = parse_last_run(log)
            step_s = res["loop_s"] / res["steps"]
            row = {"atoms": n, "steps": res["steps"], "step_s": step_s, "pair_s": res["pair_s"] / res["steps"],
                   "us_per_atom_step": 1e6 * step_s / n, **info,
                   "us_per_sent_atom_step": (1e6 * step_s / info["atoms_sent"]) if info else None,
                   "peak_rss_mb_max_so_far": peak_mb, "wall_s": wall, "nprocs": args.nprocs,
                   "threads": args.threads, "malloc_tuning": os.environ.get("FORCEFIELD_MALLOC_TUNING") == "1"}
            rows.append(row)
            print(json.dumps(row), flush=True)
    print(f"\nmodel: {args.dtype}, channels {args.channels}, lmax {args.lmax}, {args.num_layers} layers, "
          f"r_max {args.r_max}; {args.nprocs} MPI rank(s), {args.threads} thread(s); skin {args.skin}")
    print("| atoms | timed steps | s / step | µs / atom-step | atoms sent (incl. ghosts) | edges sent "
          "| µs / sent atom-step | peak RSS (MB) |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        sent = f"{r['atoms_sent']}" if "atoms_sent" in r else "-"
        edges = f"{r['edges_sent']}" if "edges_sent" in r else "-"
        per_sent = f"{r['us_per_sent_atom_step']:.0f}" if r["us_per_sent_atom_step"] else "-"
        print(f"| {r['atoms']} | {r['steps']} | {r['step_s']:.2f} | {r['us_per_atom_step']:.0f} | {sent} | {edges} "
              f"| {per_sent} | {r['peak_rss_mb_max_so_far']:.0f} |")
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "rows": rows},
                                          indent=2) + "\n")


if __name__ == "__main__":
    main()
