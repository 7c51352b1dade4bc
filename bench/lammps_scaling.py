"""LAMMPS cost per atom-step against system size (CPU, one MPI rank).

    .venv/bin/python bench/lammps_scaling.py --sizes 1000 8000 32000

A random Cu-Au FCC alloy at 300 K, NVE, `pair_style forcefield` with a float32 model
(channels 32, lmax 2, 2 layers, r_max 5 A, random weights: the cost does not depend on
them). For each size: a warm-up run, then a few timed steps (fewer for larger systems);
prints microseconds per atom-step, the atoms and edges the pair style sends to the model
(rank 0's, from FORCEFIELD_DUMP_INPUTS), atoms sent per owned atom, and the peak memory
of LAMMPS.

By default the pair style folds periodic images of owned atoms onto their owners, so on
one rank it sends exactly the owned atoms (1.0 per owned atom) and the periodic graph's
edges. --no-fold (FORCEFIELD_FOLD=0) sends them as ghost atoms instead (owned atoms + the
ghosts within num_layers hops, as before folding): there the ghost shell (num_layers *
r_max + skin deep) is a large part of the work for small boxes and a shrinking one for
large boxes.
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
    ap.add_argument(
        "--no-fold",
        action="store_true",
        help="FORCEFIELD_FOLD=0: periodic images as ghost atoms (the pre-folding path)",
    )
    add_model_args(ap)
    ap.add_argument(
        "--mem-limit-gb",
        type=float,
        default=None,
        help="address-space limit for LAMMPS (fail cleanly instead of the OOM killer)",
    )
    ap.add_argument("--output", type=Path, default=None, help="write the rows as JSON here")
    args = ap.parse_args(argv)

    from forcefield.export.plugin import build_plugin

    build_plugin()
    os.environ["FORCEFIELD_FOLD"] = "0" if args.no_fold else "1"  # run_lammps passes os.environ on
    rows = []
    with tempfile.TemporaryDirectory(prefix="ff-lammps-scaling-") as tmp:
        work = Path(tmp)
        model_path = make_export(
            work / "model.pt", args.dtype, args.channels, args.lmax, args.num_layers, args.r_max, args.seed
        )
        for size in args.sizes:
            atoms = fcc_alloy(size, seed=args.seed)
            n = len(atoms)
            d = work / f"n{n}"
            d.mkdir()
            write_data(d / "data.lmp", atoms)
            steps = args.steps or default_steps(n)
            t = time.perf_counter()
            log = run_lammps(
                d,
                lammps_deck(model_path.resolve(), args.warmup, steps, args.skin),
                args.threads,
                nprocs=args.nprocs,
                dump_inputs=d / "inputs.pt",
                mem_limit_gb=args.mem_limit_gb,
            )
            wall = time.perf_counter() - t
            # what the pair style sent to the model (rank 0)
            sent = torch.load(d / "inputs.pt")
            info = {
                "atoms_sent": int(sent[0].shape[0]),
                "edges_sent": int(sent[2].shape[1]),
                "owned_rank0": int(sent[4]),
                "atoms_sent_per_owned": sent[0].shape[0] / max(1, int(sent[4])),
            }
            del sent
            peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024.0
            res = parse_last_run(log)
            step_s = res["loop_s"] / res["steps"]
            row = {
                "atoms": n,
                "steps": res["steps"],
                "step_s": step_s,
                "pair_s": res["pair_s"] / res["steps"],
                "us_per_atom_step": 1e6 * step_s / n,
                **info,
                "us_per_sent_atom_step": (1e6 * step_s / info["atoms_sent"]) if args.nprocs == 1 else None,
                "peak_rss_mb_max_so_far": peak_mb,
                "wall_s": wall,
                "nprocs": args.nprocs,
                "threads": args.threads,
                "fold": not args.no_fold,
                "malloc_tuning": os.environ.get("FORCEFIELD_MALLOC_TUNING") == "1",
            }
            rows.append(row)
            print(json.dumps(row), flush=True)
    print(
        f"\nmodel: {args.dtype}, channels {args.channels}, lmax {args.lmax}, {args.num_layers} layers, "
        f"r_max {args.r_max}; {args.nprocs} MPI rank(s), {args.threads} thread(s); skin {args.skin}; "
        f"periodic images {'as ghost atoms (--no-fold)' if args.no_fold else 'folded onto their owners'}"
    )
    print(
        "| atoms | timed steps | s / step | µs / atom-step | atoms sent, rank 0 (incl. ghosts) "
        "| per owned atom | edges sent, rank 0 | µs / sent atom-step | peak RSS (MB) |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        per_sent = f"{r['us_per_sent_atom_step']:.0f}" if r["us_per_sent_atom_step"] else "-"
        print(
            f"| {r['atoms']} | {r['steps']} | {r['step_s']:.2f} | {r['us_per_atom_step']:.0f} | {r['atoms_sent']} "
            f"| {r['atoms_sent_per_owned']:.2f} | {r['edges_sent']} | {per_sent} "
            f"| {r['peak_rss_mb_max_so_far']:.0f} |"
        )
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(
            json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "rows": rows}, indent=2) + "\n"
        )


if __name__ == "__main__":
    main()
