"""LAMMPS cost per atom-step against system size, this checkout against a baseline commit.

    .venv/bin/python bench/lammps_scaling.py --sizes 1000 8000 32000 64000 100000 \\
        --baseline f0df4c6 --baseline-sizes 1000 8000 16000 --output bench/results/lammps_scaling.json

A random Cu-Au FCC alloy at 300 K, NVE, `pair_style forcefield`, one thread per rank, the
default float32 model of each version (channels 32, lmax 2, 2 layers, r_max 5 Å, random
weights: the cost does not depend on them). Contenders:

- `ours`: this checkout (its default model, correlation 3 since the product basis);
- `ours-corr1` (--correlation-1): this checkout with the two-body model (correlation 1),
  the architecture the baseline had, so the pair-style and memory changes can be told apart
  from the model's cost;
- `ours-portable` (--portable): this checkout's default model exported with
  `fused_ops=False` (`forcefield export --portable`): the message product in plain torch
  instead of the plugin's fused kernel (export/pair_style/channelwise_tp.cpp);
- `baseline`: commit --baseline (default f0df4c6, the pair style's first release), extracted with
  `git archive` into the work folder, its own plugin built from its own sources and its own
  export of its default model, run by the same LAMMPS.

--slab: the demo's 64-atom slab (run with --sizes 64 --channels 16 --r-max 6, the demo's
model; its z images are farther than the ghost cutoff, so `boundary p p p` is the demo's
`p p m`).

For each size the contenders run one after the other, alternating which goes first, so
that they share the machine's momentary load. Each run: `run 0`, a warm-up run (20 / 3 / 2 / 1
steps for <= 100 / 2000 / 20000 / more atoms: the first steps cost more), then a few
timed steps (fewer for larger systems). Reported per run: µs per atom-step (LAMMPS loop
time), atoms and edges the pair style sent to the model (rank 0's, FORCEFIELD_DUMP_INPUTS),
atoms sent per owned atom, peak RSS of the LAMMPS process (wait4, the largest rank) and
per edge sent, minor page faults per step.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

from lammps_overhead import add_model_args, export_for, fcc_alloy, lammps_deck, parse_last_run, run_lammps, write_data  # noqa: E402


def default_steps(n: int) -> int:
    return 200 if n <= 100 else 20 if n <= 2000 else 2 if n <= 20000 else 1


def default_warmup(n: int) -> int:
    """Warm-up steps before the timed ones. The first steps of a run cost more (f0df4c6's
    page faults per step fall over the first few steps as glibc raises its mmap threshold;
    at 1k atoms 1 warm-up step gave it 1440 µs per atom-step, 3 gave 856-1096), so short
    runs warm up for longer."""
    return 20 if n <= 100 else 3 if n <= 2000 else 2 if n <= 20000 else 1


def demo_slab():
    """The demo's 64-atom Cu-Au(111) slab (periodic in x and y, 24 Å of vacuum in z)."""
    from forcefield.demo.run import slab_with_evaporators

    return slab_with_evaporators((4, 4, 4))[0]


_BASELINE_SETUP = """
import sys, json
from pathlib import Path
sys.path.insert(0, str(Path.cwd() / "bench"))
from forcefield.export.plugin import build_plugin
from lammps_overhead import make_export
plugin = build_plugin(Path(sys.argv[1]))
a = json.loads(sys.argv[3])
model = make_export(Path(sys.argv[2]), a["dtype"], a["channels"], a["lmax"], a["num_layers"], a["r_max"], a["seed"])
print(json.dumps({"plugin": str(plugin), "model": str(model)}))
"""


def prepare_baseline(ref: str, work: Path, args) -> dict:
    """Extract `ref`, build its plugin and export its default model, all with its own code.
    Kept in ~/.cache/forcefield-bench/baseline-<commit> and reused by later runs."""
    commit = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", ref], capture_output=True, text=True, check=True
    ).stdout.strip()
    home = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "forcefield-bench" / f"baseline-{commit}"
    src = home / "src"
    if not (src / "forcefield").is_dir():
        shutil.rmtree(src, ignore_errors=True)
        src.mkdir(parents=True)
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", ref], check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(src)], input=archive, check=True)
        # `forcefield.export` is the top-level export/ folder (package-dir in pyproject.toml):
        # make it importable from the extracted tree so that nothing of this checkout is used
        if (src / "export").is_dir() and not (src / "forcefield" / "export").exists():
            shutil.copytree(src / "export", src / "forcefield" / "export")
    arch = {k: getattr(args, k) for k in ("dtype", "channels", "lmax", "num_layers", "r_max", "seed")}
    model = home / ("model_" + "_".join(f"{k}{v}" for k, v in arch.items()) + ".pt")
    env = {**os.environ, "PYTHONPATH": str(src)}
    proc = subprocess.run(
        [sys.executable, "-c", _BASELINE_SETUP, str(home / "plugin"), str(model), json.dumps(arch)],
        cwd=src,
        env=env,
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"baseline {ref}: setup failed: {proc.stderr[-2000:]}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    return {"plugin": Path(out["plugin"]), "model": Path(out["model"]), "commit": commit}


def measure(name: str, contender: dict, atoms, args, work: Path) -> dict:
    n = len(atoms)
    d = work / f"{name}_n{n}_np{args.nprocs}"
    d.mkdir()
    write_data(d / "data.lmp", atoms)
    steps = args.steps or default_steps(n)
    warmup = args.warmup if args.warmup is not None else default_warmup(n)
    usage: dict = {}
    t = time.perf_counter()
    log = run_lammps(
        d,
        lammps_deck(contender["model"].resolve(), warmup, steps, args.skin),
        args.threads,
        nprocs=args.nprocs,
        dump_inputs=d / "inputs.pt",
        mem_limit_gb=args.mem_limit_gb,
        plugin=contender["plugin"],
        usage=usage,
    )
    wall = time.perf_counter() - t
    sent = torch.load(d / "inputs.pt")  # what the pair style sent to the model (rank 0)
    atoms_sent, edges_sent, owned = int(sent[0].shape[0]), int(sent[2].shape[1]), int(sent[4])
    del sent
    res = parse_last_run(log)
    step_s = res["loop_s"] / res["steps"]
    evaluations = 1 + warmup + res["steps"]  # run 0, warm-up, timed
    row = {
        "contender": name,
        "atoms": n,
        "nprocs": args.nprocs,
        "threads": args.threads,
        "steps": res["steps"],
        "step_s": step_s,
        "us_per_atom_step": 1e6 * step_s / n,
        "atoms_sent": atoms_sent,
        "edges_sent": edges_sent,
        "owned_rank0": owned,
        "atoms_sent_per_owned": atoms_sent / max(1, owned),
        "edges_sent_per_owned": edges_sent / max(1, owned),
        "peak_rss_mb": usage["peak_rss_mb"],
        # per edge of the largest rank's input (rank 0's on one rank; approximate on several)
        "peak_rss_bytes_per_edge": usage["peak_rss_mb"] * 2**20 / max(1, edges_sent),
        "minor_faults_per_evaluation": usage["minor_faults"] / evaluations,
        "sys_s": usage["sys_s"],
        "user_s": usage["user_s"],
        "wall_s": wall,
        "load_avg_1min": os.getloadavg()[0],
        "FORCEFIELD_MALLOC_TUNING": os.environ.get("FORCEFIELD_MALLOC_TUNING"),
        "step0_energy": res["step0_energy"],
    }
    shutil.rmtree(d, ignore_errors=True)
    return row


def print_table(rows) -> None:
    print(
        "| contender | atoms | ranks | µs / atom-step | atoms sent per owned (rank 0) | edges sent (rank 0) "
        "| peak RSS (MB) | bytes / edge | page faults / evaluation | load |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['contender']} | {r['atoms']} | {r['nprocs']} | {r['us_per_atom_step']:.0f} "
            f"| {r['atoms_sent_per_owned']:.2f} | {r['edges_sent']} | {r['peak_rss_mb']:.0f} "
            f"| {r['peak_rss_bytes_per_edge']:.0f} | {r['minor_faults_per_evaluation']:.0f} "
            f"| {r['load_avg_1min']:.1f} |"
        )
    by = {(r["contender"], r["atoms"], r["nprocs"]): r for r in rows}
    for (name, n, npr), r in sorted(by.items(), key=lambda kv: (kv[0][2], kv[0][1], kv[0][0])):
        base = by.get(("baseline", n, npr))
        if name != "baseline" and base is not None:
            ratio = base["us_per_atom_step"] / r["us_per_atom_step"]
            print(f"{name} vs baseline at {n} atoms, {npr} rank(s): {ratio:.2f}x fewer µs per atom-step")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[1000, 8000, 32000])
    ap.add_argument("--steps", type=int, default=None, help="timed steps (default: 200 / 20 / 2 / 1 by size)")
    ap.add_argument("--warmup", type=int, default=None, help="warm-up steps (default: 20 / 3 / 2 / 1 by size)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--nprocs", type=int, default=1, help="MPI ranks")
    ap.add_argument(
        "--baseline", default=None, help="git ref to compare against (f0df4c6: the pair style's first release)"
    )
    ap.add_argument(
        "--baseline-sizes", type=int, nargs="*", default=None, help="sizes for the baseline (default: --sizes)"
    )
    ap.add_argument("--correlation-1", action="store_true", help="also run this checkout's two-body model")
    ap.add_argument(
        "--portable",
        action="store_true",
        help="also run this checkout's default model exported without the fused operators (export --portable)",
    )
    ap.add_argument(
        "--slab",
        action="store_true",
        help="the demo's 64-atom slab instead of the FCC alloy (use with --sizes 64 --channels 16 --r-max 6, "
        "the demo's model)",
    )
    add_model_args(ap)
    ap.add_argument("--mem-limit-gb", type=float, default=None, help="address-space limit per LAMMPS process")
    ap.add_argument("--output", type=Path, default=None, help="write (and extend) the rows as JSON here")
    args = ap.parse_args(argv)

    from forcefield.export.plugin import build_plugin

    plugin = build_plugin()
    rows = []
    if args.output and args.output.is_file():
        rows = json.loads(args.output.read_text()).get("rows", [])
    with tempfile.TemporaryDirectory(prefix="ff-lammps-scaling-") as tmp:
        work = Path(tmp)
        variants = {"ours": {}}  # this checkout's exports: name -> make_export options
        if args.correlation_1:
            variants["ours-corr1"] = {"correlation": 1}
        if args.portable:
            variants["ours-portable"] = {"fused_ops": False}
        contenders = {
            name: {"plugin": plugin, "model": export_for(work / f"{name}.pt", args, **options)}
            for name, options in variants.items()
        }
        if args.baseline:
            contenders["baseline"] = prepare_baseline(args.baseline, work, args)
            print(f"baseline: {contenders['baseline']['commit']}", flush=True)
        for k, size in enumerate(args.sizes):
            atoms = fcc_alloy(size, seed=args.seed) if not args.slab else demo_slab()
            names = list(contenders)
            if k % 2:
                names.reverse()
            for name in names:
                if name == "baseline" and args.baseline_sizes is not None and size not in args.baseline_sizes:
                    continue
                try:
                    row = measure(name, contenders[name], atoms, args, work)
                except RuntimeError as exc:
                    row = {"contender": name, "atoms": len(atoms), "nprocs": args.nprocs, "failed": str(exc)[-300:]}
                    print(json.dumps(row), flush=True)
                    continue
                rows.append(row)
                print(json.dumps(row), flush=True)
                if args.output:
                    args.output.parent.mkdir(parents=True, exist_ok=True)
                    args.output.write_text(json.dumps({"rows": rows}, indent=2) + "\n")
    print(
        f"\nmodel: {args.dtype}, channels {args.channels}, lmax {args.lmax}, {args.num_layers} layers, "
        f"r_max {args.r_max}; {args.threads} thread(s) per rank; skin {args.skin}"
    )
    print_table([r for r in rows if "failed" not in r])


if __name__ == "__main__":
    main()
