"""Overhead of the LAMMPS pair style: LAMMPS time per MD step / time of the model alone.

    .venv/bin/python bench/lammps_overhead.py --sizes 1000 8000

For each size: a random Cu-Au FCC alloy (periodic, 300 K), one MPI rank, one thread, a
float32 model (channels 32, lmax 2, 2 layers, r_max 5 A, random weights), exported
portable (`fused_ops=False`), so that LAMMPS and Python run the same operations.

LAMMPS runs inside this Python process (the `lammps` module, the plugin loaded with
`plugin load`), so that both measurements share the process, the allocator and the
machine's momentary load. In rounds, alternately:

- LAMMPS: `run N pre no post no` of `fix nve` with `neighbor 1.0 bin`: everything an MD
  step costs (neighbour lists with ghost neighbours, ghost communication, the pair
  style's C++ work: hop selection, edge list, tensor conversion, force scatter; the
  model; integration);
- Python: N calls of the same exported module on exactly the inputs the pair style
  passed to it at step 0 (saved by the plugin when FORCEFIELD_DUMP_INPUTS is set: owned
  atoms + the ghost atoms within num_layers hops, edges centred within num_layers - 1
  hops, float32 positions relative to the first atom).

overhead = LAMMPS per step / model call - 1 (target <= 10%), the median over the rounds
of the per-round ratio, in wall time and in CPU time of the process (the CPU-time ratio
is less sensitive to other processes on a shared machine).

Checks and references: an independent reconstruction in Python (periodic images within
num_layers * r_max + skin of the box, as LAMMPS' ghost exchange makes them, then the
same hop selection) must give the same atom and edge counts and energy; and the same
model on the periodic cell without ghosts (the ForceFieldCalculator graph), which is
what a ghost-free (per-layer exchange) design would cost.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SPECIES = ["Cu", "Au"]
MASSES = {"Cu": 63.546, "Au": 196.96657}


# --------------------------------------------------------------------------- model and structure


def make_export(
    path: Path,
    dtype: str = "float32",
    channels: int = 32,
    lmax: int = 2,
    num_layers: int = 2,
    r_max: float = 5.0,
    seed: int = 0,
    correlation: int = None,
    fused_ops: bool = True,
) -> Path:
    """A ForceField with random weights (timing does not depend on them), exported.
    correlation None: the default of this version. fused_ops False: a portable export (plain
    torch message product, no forcefield operators)."""
    from forcefield.export.torchscript import export_model
    from forcefield.model.forcefield import ForceField

    torch.manual_seed(seed)
    model = ForceField.from_config(
        {
            "species": SPECIES,
            "r_max": r_max,
            "num_layers": num_layers,
            "channels": channels,
            "lmax": lmax,
            "dtype": dtype,
            **({} if correlation is None else {"correlation": correlation}),
        },
        {"avg_num_neighbors": 40.0, "shift": {"Cu": -3.5, "Au": -3.8}, "e0": {"Cu": -0.2, "Au": -0.3}},
    )
    return export_model(model, path, dtype=dtype, fused_ops=fused_ops)


def export_for(path: Path, args: argparse.Namespace, **options) -> Path:
    """make_export with the model options of add_model_args (and `options`)."""
    return make_export(path, args.dtype, args.channels, args.lmax, args.num_layers, args.r_max, args.seed, **options)


def fcc_alloy(n_atoms: int, a: float = 3.75, au_fraction: float = 0.3, seed: int = 0):
    """A near-cubic supercell of conventional FCC cells with about n_atoms atoms."""
    from ase.build import bulk

    cells = n_atoms / 4.0
    n = max(1, int(round(cells ** (1.0 / 3.0))))
    m = max(1, int(round(cells / (n * n))))
    atoms = bulk("Cu", "fcc", a=a, cubic=True).repeat((n, n, m))
    rng = np.random.default_rng(seed)
    atoms.numbers[rng.random(len(atoms)) < au_fraction] = 79
    atoms.positions += rng.normal(scale=0.05, size=atoms.positions.shape)
    atoms.wrap()
    return atoms


def write_data(path: Path, atoms) -> None:
    import ase.io

    ase.io.write(path, atoms, format="lammps-data", specorder=SPECIES, atom_style="atomic")


# --------------------------------------------------------------------------- the pair style's inputs, in Python


def ghost_configuration(positions: np.ndarray, lengths: np.ndarray, cut: float) -> Tuple[np.ndarray, np.ndarray]:
    """Owned atoms followed by the periodic images within `cut` of an orthogonal box
    [0, L): the atoms one LAMMPS rank holds (owned + ghosts). Returns (positions, owner)."""
    lengths = np.asarray(lengths, dtype=np.float64)
    pos = np.mod(positions, lengths)
    reach = [int(np.ceil(cut / L)) for L in lengths]
    out, owner = [pos], [np.arange(len(pos))]
    for s in itertools.product(*[range(-r, r + 1) for r in reach]):
        if s == (0, 0, 0):
            continue
        p = pos + np.array(s) * lengths
        keep = np.all((p >= -cut) & (p < lengths + cut), axis=1)
        out.append(p[keep])
        owner.append(np.nonzero(keep)[0])
    return np.vstack(out), np.concatenate(owner)


def pair_style_inputs(
    positions: np.ndarray, species: np.ndarray, lengths, r_max: float, num_layers: int, skin: float, dtype: torch.dtype
):
    """(pos, species, edge_index, shifts, n_local, info) as pair_style forcefield builds them."""
    from vesin import NeighborList

    n_local = len(positions)
    allpos, owner = ghost_configuration(positions, lengths, num_layers * r_max + skin)
    nl = NeighborList(cutoff=float(r_max), full_list=True)
    i, j, d = nl.compute(points=allpos, box=np.zeros((3, 3)), periodic=False, quantities="ijd")
    keep = d < r_max
    i, j = i[keep].astype(np.int64), j[keep].astype(np.int64)
    order = np.lexsort((j, i))  # centre-major, like the neighbour list walk
    i, j = i[order], j[order]
    far = num_layers + 1
    hop = np.full(len(allpos), far, dtype=np.int64)
    hop[:n_local] = 0
    for k in range(num_layers):
        src = hop[i] == k
        nxt = j[src]
        hop[nxt[hop[nxt] > k + 1]] = k + 1
    kept = np.nonzero(hop <= num_layers)[0]
    new_index = -np.ones(len(allpos), dtype=np.int64)
    new_index[kept] = np.arange(len(kept))
    sel = hop[i] < num_layers
    edge_index = np.stack([new_index[i[sel]], new_index[j[sel]]])
    p = allpos[kept]
    if dtype == torch.float32:
        p = p - p[0]
    info = {
        "atoms_sent": int(len(kept)),
        "ghosts_lammps": int(len(allpos) - n_local),
        "edges_sent": int(edge_index.shape[1]),
    }
    return (
        torch.as_tensor(p, dtype=dtype),
        torch.as_tensor(species[owner[kept]], dtype=torch.long),
        torch.as_tensor(edge_index),
        torch.zeros((edge_index.shape[1], 3), dtype=dtype),
        n_local,
        info,
    )


def periodic_inputs(atoms, r_max: float, dtype: torch.dtype):
    from forcefield.data.graph import atoms_to_graph

    g = atoms_to_graph(atoms, SPECIES, r_max)
    return (
        torch.as_tensor(g.positions, dtype=dtype),
        torch.as_tensor(g.species, dtype=torch.long),
        torch.as_tensor(g.edge_index, dtype=torch.long),
        torch.as_tensor(g.shifts, dtype=dtype),
        len(atoms),
        {"edges_periodic": int(g.edge_index.shape[1])},
    )


def time_model(module, inputs, calls: int, warmup: int = 3) -> Tuple[float, float]:
    """(seconds per call, energy) of the exported module."""
    pos, species, edge_index, shifts, n_local = inputs[:5]
    for _ in range(warmup):
        out = module(pos, species, edge_index, shifts, n_local)
    t = time.perf_counter()
    for _ in range(calls):
        out = module(pos, species, edge_index, shifts, n_local)
    return (time.perf_counter() - t) / calls, float(out[0])


# --------------------------------------------------------------------------- LAMMPS


def lammps_deck(
    model: Path, warmup: int, steps: int, skin: float, rebuild_every_step: bool = False, device: str = "cpu"
) -> str:
    masses = "\n".join(f"mass {k + 1} {MASSES[s]}" for k, s in enumerate(SPECIES))
    return f"""units metal
atom_style atomic
newton on
boundary p p p
read_data data.lmp
{masses}
pair_style forcefield {model} device {device}
pair_coeff * * {" ".join(SPECIES)}
neighbor {skin} bin
neigh_modify every 1 delay 0 check {"no" if rebuild_every_step else "yes"}
velocity all create 300 4928 mom yes rot yes dist gaussian
fix nve all nve
timestep 0.001
thermo_style custom step pe ke etotal
thermo_modify format float %.10g
thermo {max(1, steps)}
run 0
run {warmup}
run {steps}
"""


def run_lammps(
    workdir: Path,
    deck: str,
    threads: int,
    nprocs: int = 1,
    timeout: float = 3600,
    dump_inputs: Path = None,
    mem_limit_gb: float = None,
    plugin: Path = None,
    usage: dict = None,
) -> str:
    """Run `deck` in `workdir`; returns the log. dump_inputs: where the pair style saves
    the model inputs of its first evaluation (torch.load -> pos, species, edge_index,
    shifts, n_local). mem_limit_gb: address-space limit of LAMMPS (a clean allocation
    failure instead of the kernel's OOM killer on a shared machine). plugin: the plugin
    file to load (default: this checkout's). usage: filled with this run's peak RSS (MB,
    of its largest process) and page faults."""
    import resource

    def limit():
        if mem_limit_gb:
            size = int(mem_limit_gb * 2**30)
            resource.setrlimit(resource.RLIMIT_AS, (size, size))

    from forcefield.export.plugin import lammps_env, lmp_executable, mpirun_executable

    (workdir / "in.lammps").write_text(deck)
    env = {**os.environ, **lammps_env(plugin), "OMP_NUM_THREADS": str(threads)}
    env.pop("FORCEFIELD_DUMP_INPUTS", None)
    if dump_inputs is not None:
        env["FORCEFIELD_DUMP_INPUTS"] = str(dump_inputs)
    cmd = [lmp_executable(), "-in", "in.lammps", "-log", "log.lammps", "-screen", "none", "-nocite"]
    if nprocs > 1:
        cmd = [mpirun_executable(), "-np", str(nprocs)] + cmd
    with open(workdir / "stdout.txt", "w") as out:
        proc = subprocess.Popen(cmd, cwd=workdir, env=env, stdout=out, stderr=subprocess.STDOUT, preexec_fn=limit)
        timer = threading.Timer(timeout, proc.kill)  # wait4 has no timeout of its own
        timer.start()
        try:
            # wait4: this run's own resource usage (its largest process's peak RSS)
            _, status, ru = os.wait4(proc.pid, 0)
        finally:
            timer.cancel()
        proc.returncode = os.waitstatus_to_exitcode(status)
    if usage is not None:
        usage.update(
            peak_rss_mb=ru.ru_maxrss / 1024.0, minor_faults=ru.ru_minflt, sys_s=ru.ru_stime, user_s=ru.ru_utime
        )
    log = (workdir / "log.lammps").read_text() if (workdir / "log.lammps").is_file() else ""
    if proc.returncode != 0:
        tail = (log or (workdir / "stdout.txt").read_text())[-2000:]
        why = f"killed after the {timeout:.0f} s timeout" if proc.returncode == -signal.SIGKILL else "failed"
        raise RuntimeError(f"LAMMPS {why} in {workdir} (exit {proc.returncode}): {tail}")
    return log


def parse_last_run(log: str) -> Dict[str, float]:
    """Loop time, steps, Pair time and step-0 energy of the last run of a log."""
    from forcefield.export.lammps_runner import parse_thermo

    loops = list(re.finditer(r"Loop time of ([0-9.eE+-]+) on (\d+) procs for (\d+) steps with (\d+) atoms", log))
    last = loops[-1]
    tail = log[last.end() :]
    pair = re.search(r"^Pair\s*\|\s*([0-9.eE+-]+)\s*\|\s*([0-9.eE+-]+)", tail, flags=re.M)
    neigh = re.search(r"^Neigh\s*\|\s*([0-9.eE+-]+)\s*\|\s*([0-9.eE+-]+)", tail, flags=re.M)
    builds = re.findall(r"Neighbor list builds = (\d+)", tail)
    rows = parse_thermo(log)
    return {
        "loop_s": float(last.group(1)),
        "procs": int(last.group(2)),
        "steps": int(last.group(3)),
        "atoms": int(last.group(4)),
        "pair_s": float(pair.group(2)) if pair else float("nan"),
        "neigh_s": float(neigh.group(2)) if neigh else float("nan"),
        "neighbor_builds": int(builds[0]) if builds else -1,
        "step0_energy": rows[0]["PotEng"] if rows else float("nan"),
    }


# --------------------------------------------------------------------------- main


def load_lammps_module():
    """`lammps.lammps` with the MPI library the wheel needs loaded first (RTLD_GLOBAL)."""
    import ctypes

    from forcefield.export.plugin import mpi_library_dir

    lib = mpi_library_dir()
    if lib is not None:
        ctypes.CDLL(str(lib / "libmpi.so.12"), mode=ctypes.RTLD_GLOBAL)
    from lammps import lammps

    return lammps


def measure_size(n_atoms: int, model_path: Path, meta: dict, args, work: Path, plugin: Path) -> dict:
    import statistics

    atoms = fcc_alloy(n_atoms, seed=args.seed)
    n = len(atoms)
    d = work / f"n{n}"
    d.mkdir(parents=True, exist_ok=True)
    write_data(d / "data.lmp", atoms)
    dtype = {"float32": torch.float32, "float64": torch.float64}[meta["dtype"]]
    species = np.array([SPECIES.index(s) for s in atoms.get_chemical_symbols()])
    rebuilt = pair_style_inputs(
        atoms.positions, species, atoms.cell.lengths(), meta["r_max"], meta["num_layers"], args.skin, dtype
    )
    periodic = periodic_inputs(atoms, meta["r_max"], dtype)
    module = torch.jit.load(str(model_path))

    lammps = load_lammps_module()
    cwd = os.getcwd()
    os.chdir(d)
    os.environ["FORCEFIELD_DUMP_INPUTS"] = str(d / "inputs.pt")
    os.environ["FORCEFIELD_TIMING"] = "1"  # the pair style logs model / non-model time per run
    try:
        lmp = lammps(cmdargs=["-screen", "none", "-log", "log.lammps", "-nocite"])
        lmp.command(f"plugin load {plugin}")
        for line in lammps_deck(model_path.resolve(), 0, 1, args.skin, args.rebuild_every_step).splitlines():
            if line.strip() and not line.startswith("run"):
                lmp.command(line)
        lmp.command("run 0")  # step 0: the pair style saves its inputs
        e_lammps = float(lmp.get_thermo("pe"))
        inputs = tuple(torch.load(d / "inputs.pt"))
        e_python = float(module(*inputs)[0])
        e_rebuilt = float(module(*rebuilt[:5])[0])
        # warm-up (TorchScript profiling runs, allocator)
        lmp.command(f"run {args.warmup}")
        time_model(module, inputs, 1, warmup=args.warmup)

        rounds = []
        steps = args.steps
        for _ in range(args.repeats):
            w, c = time.perf_counter(), time.process_time()
            lmp.command(f"run {steps} pre no post no")
            lw, lc = (time.perf_counter() - w) / steps, (time.process_time() - c) / steps
            w, c = time.perf_counter(), time.process_time()
            for _ in range(steps):
                module(*inputs)
            pw, pc = (time.perf_counter() - w) / steps, (time.process_time() - c) / steps
            rounds.append({"lammps_wall": lw, "lammps_cpu": lc, "python_wall": pw, "python_cpu": pc})
        periodic_s = float("nan")
        if not args.no_periodic:
            periodic_s, _ = time_model(module, periodic, steps, warmup=1)
        # one more run with LAMMPS' timing breakdown (Pair / Neigh / Comm / Modify) and the
        # pair style's own split (model forward vs the rest of compute())
        lmp.command(f"run {steps} pre no post yes")
        log = (d / "log.lammps").read_text()
        breakdown = parse_last_run(log)
        split = re.findall(
            r"pair_style forcefield timing: (\d+) evaluations, model (\S+) s, "
            r"pair style outside the model (\S+) s",
            log,
        )[-1]
        # the cost of one neighbour-list build (with the ghost atoms' neighbours): rebuild
        # every step for one more run
        lmp.command("neigh_modify every 1 delay 0 check no")
        lmp.command(f"run {steps} post yes")
        rebuild = parse_last_run((d / "log.lammps").read_text())
        lmp.close()
    finally:
        os.environ.pop("FORCEFIELD_DUMP_INPUTS", None)
        os.environ.pop("FORCEFIELD_TIMING", None)
        os.chdir(cwd)

    med = {k: statistics.median(r[k] for r in rounds) for k in rounds[0]}
    ratio_wall = statistics.median(r["lammps_wall"] / r["python_wall"] for r in rounds)
    ratio_cpu = statistics.median(r["lammps_cpu"] / r["python_cpu"] for r in rounds)
    sent = {"atoms_sent": int(inputs[0].shape[0]), "edges_sent": int(inputs[2].shape[1])}
    row = {
        "atoms": n,
        "steps_per_round": steps,
        "rounds": len(rounds),
        **sent,
        "malloc_tuning": os.environ.get("FORCEFIELD_MALLOC_TUNING") == "1",
        "rebuilt_in_python": rebuilt[5],
        **periodic[5],
        "lammps_step_s": med["lammps_wall"],
        "python_call_s": med["python_wall"],
        "lammps_step_cpu_s": med["lammps_cpu"],
        "python_call_cpu_s": med["python_cpu"],
        "overhead_wall_pct": 100.0 * (ratio_wall - 1.0),
        "overhead_cpu_pct": 100.0 * (ratio_cpu - 1.0),
        "neighbor_builds_last_run": breakdown["neighbor_builds"],
        "pair_style_outside_model_pct": 100.0 * float(split[2]) / float(split[1]),
        "neighbor_build_s": rebuild["neigh_s"] / max(1, rebuild["neighbor_builds"]),
        "pair_fraction_of_step": breakdown["pair_s"] / breakdown["loop_s"],
        "neigh_fraction_of_step": breakdown["neigh_s"] / breakdown["loop_s"],
        "periodic_call_s": periodic_s,
        "us_per_atom_step": 1e6 * med["lammps_wall"] / n,
        "energy_lammps": e_lammps,
        "energy_python": e_python,
        "energy_python_rebuilt": e_rebuilt,
        "rounds_raw": rounds,
    }
    for key, e in (("saved inputs", e_python), ("rebuilt inputs", e_rebuilt)):
        if abs(e_lammps - e) > 1e-5 * max(1.0, abs(e)):
            print(f"WARNING: LAMMPS and Python ({key}) energies differ: {e_lammps} vs {e}", file=sys.stderr)
    if (rebuilt[5]["atoms_sent"], rebuilt[5]["edges_sent"]) != (sent["atoms_sent"], sent["edges_sent"]):
        print(f"WARNING: the Python reconstruction sends {rebuilt[5]} but the pair style {sent}", file=sys.stderr)
    return row


def print_table(rows: List[dict]) -> None:
    print(
        "| atoms | atoms sent (incl. ghosts) | edges sent | model from Python (ms) | LAMMPS step (ms) "
        "| overhead, wall | overhead, CPU time | pair style outside the model | one neighbour-list build (ms) "
        "| periodic model, no ghosts (ms) |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['atoms']} | {r['atoms_sent']} | {r['edges_sent']} | {1e3 * r['python_call_s']:.0f} "
            f"| {1e3 * r['lammps_step_s']:.0f} | {r['overhead_wall_pct']:+.1f}% | {r['overhead_cpu_pct']:+.1f}% "
            f"| {r['pair_style_outside_model_pct']:.2f}% | {1e3 * r['neighbor_build_s']:.0f} "
            f"| {1e3 * r['periodic_call_s']:.0f} |"
        )


def add_model_args(ap: argparse.ArgumentParser) -> None:
    """The model and neighbour-skin options shared by the LAMMPS benchmarks."""
    ap.add_argument("--skin", type=float, default=1.0)
    ap.add_argument("--channels", type=int, default=32)
    ap.add_argument("--lmax", type=int, default=2)
    ap.add_argument("--num-layers", type=int, default=2)
    ap.add_argument("--r-max", type=float, default=5.0)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--seed", type=int, default=0)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[1000, 8000])
    ap.add_argument("--steps", type=int, default=3, help="MD steps (and Python calls) per round")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5, help="rounds")
    ap.add_argument("--threads", type=int, default=1)
    add_model_args(ap)
    ap.add_argument("--no-periodic", action="store_true", help="skip the ghost-free reference")
    ap.add_argument(
        "--rebuild-every-step",
        action="store_true",
        help="rebuild LAMMPS' neighbour lists every step (upper bound of their cost; "
        "at 300 K with a 1 A skin LAMMPS rebuilds every few tens of steps)",
    )
    ap.add_argument("--output", type=Path, default=None, help="write the rows as JSON here")
    args = ap.parse_args(argv)

    from forcefield.export.plugin import build_plugin
    from forcefield.export.torchscript import load_exported

    plugin = build_plugin()
    torch.set_num_threads(args.threads)
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    with tempfile.TemporaryDirectory(prefix="ff-lammps-bench-") as tmp:
        work = Path(tmp)
        # portable: the same torch code in LAMMPS and in Python (a default export runs the
        # plugin's fused kernel in LAMMPS but plain torch in Python: no longer the same model)
        model_path = export_for(work / "model.pt", args, fused_ops=False)
        _, meta = load_exported(model_path)
        rows = []
        for size in args.sizes:
            row = measure_size(size, model_path, meta, args, work, plugin)
            rows.append(row)
            print(json.dumps({k: v for k, v in row.items() if k != "rounds_raw"}), flush=True)
    print(
        f"\nmodel: {args.dtype}, channels {args.channels}, lmax {args.lmax}, {args.num_layers} layers, "
        f"r_max {args.r_max}; 1 MPI rank, {args.threads} thread(s); skin {args.skin}"
        + ("; neighbour lists rebuilt every step" if args.rebuild_every_step else "")
    )
    print_table(rows)
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(
            json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "rows": rows}, indent=2) + "\n"
        )


if __name__ == "__main__":
    main()
