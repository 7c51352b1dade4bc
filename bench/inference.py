"""Inference speed: energy + forces, µs per atom per step, on FCC Cu.

    .bench-venv/bin/python bench/inference.py [--sizes 256 1024 4096] [--repeats 7]

Models, all with random weights, float32, cutoff 5 Å:
  ours          this package, eager: num_layers 2, channels 32, lmax 2, correlation 3 (default)
  ours_c1       the same with correlation 1 (two-body messages only, the earlier default)
  ours (TS)     the same weights exported with export_model (TorchScript, what LAMMPS runs;
                its forward also returns the virial)
  MACE          mace-torch ScaleShiftMACE, 2 layers, hidden 32x0e+32x1o, correlation 3,
                max_ell 3, r_max 5, the mace_run_train defaults otherwise (8 Bessel,
                p = 5 cutoff, radial MLP [64, 64, 64], MLP 16x0e, residual interactions)
  NequIP        nequip NequIPGNNModel, 3 layers, 32 features, l_max 2, parity on (the
                default; its forward also returns the stress when there is a cell)
  NequIP (p=F)  the same with parity off: 32x0e+32x1o+32x2e, our model's hidden irreps

The neighbour list is built once per structure and model (each with its own library) and
is not timed; the timed call is the full model call returning energy and forces. Each
size: warm-up calls first, then the median of --repeats calls, the models taking turns
(round-robin) so that load from other processes hits all of them alike.
torch.set_num_threads(2) unless --threads; OMP_WAIT_POLICY=PASSIVE unless set. Models that
are not installed (MACE, NequIP outside .bench-venv) are skipped with a note. See
bench/README.md for the set-up (bench/setup_bench_env.sh) and
measured tables.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import warnings
from typing import Callable, Dict, List, Tuple

import numpy as np

warnings.filterwarnings("ignore")
# Idle OpenMP workers sleep instead of spinning (read when torch loads libgomp, so before the
# import). On a machine shared with other jobs, spinning workers that wait for a descheduled
# one made every model 3-10x slower and the timings erratic; set OMP_WAIT_POLICY=ACTIVE to
# measure the other way.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

# MACE first: with its e3nn pin it would want e3nn 0.4.4 loaded before anything else
# imports e3nn (here all share e3nn 0.6.0, see setup_bench_env.sh; the order is harmless)
try:
    import mace  # noqa: F401
    from mace import data as mace_data
    from mace import modules as mace_modules
    from mace import tools as mace_tools
    from mace.tools import torch_geometric as mace_tg

    HAVE_MACE = True
except Exception as exc:  # noqa: BLE001
    HAVE_MACE, MACE_ERROR = False, f"{type(exc).__name__}: {exc}"

import torch  # noqa: E402
from ase.build import bulk  # noqa: E402
from e3nn import o3  # noqa: E402

R_MAX = 5.0
A_CU = 3.61

Step = Callable[[], Tuple[torch.Tensor, torch.Tensor]]


def fcc_cu(n_atoms: int):
    """FCC Cu, a = 3.61 Å, from the 4-atom cubic cell repeated to n_atoms (256, 1024, 4096)."""
    reps = {
        256: (4, 4, 4),
        1024: (8, 8, 4),
        4096: (8, 8, 16),
        32: (2, 2, 2),
        108: (3, 3, 3),
        500: (5, 5, 5),
        2048: (8, 8, 8),
        8192: (16, 16, 8),
    }[n_atoms]
    atoms = bulk("Cu", "fcc", a=A_CU, cubic=True).repeat(reps)
    atoms.rattle(0.02, seed=0)  # generic positions: no accidental symmetry shortcuts
    return atoms


# ---------------------------------------------------------------- our model
def ours_model(correlation: int = 3):
    from forcefield import ForceField

    torch.manual_seed(0)
    return ForceField.from_config(
        {
            "species": ["Cu"],
            "r_max": R_MAX,
            "num_layers": 2,
            "channels": 32,
            "lmax": 2,
            "correlation": correlation,
            "dtype": "float32",
        },
        {"avg_num_neighbors": 42.0},
    ).eval()


def ours_step(atoms, model=None, device: str = "cpu") -> Step:
    from forcefield.data.graph import atoms_to_graph, collate

    model = (model or ours_model()).to(device)
    b = collate([atoms_to_graph(atoms, model.species, model.r_max)], dtype=torch.float32, device=device)

    def step():
        out = model(
            b["pos"],
            b["species"],
            b["edge_index"],
            b["shifts"],
            b["batch"],
            1,
            compute_forces=True,
            compute_virial=False,
        )
        return out["energy"], out["forces"]

    return step


_EXPORTED: Dict[str, object] = {}


def ours_script_step(atoms) -> Step:
    from forcefield.data.graph import atoms_to_graph, collate
    from forcefield.export.torchscript import export_model, load_exported

    if "module" not in _EXPORTED:
        with tempfile.TemporaryDirectory() as tmp:
            path = export_model(ours_model(), os.path.join(tmp, "bench.pt"))
            _EXPORTED["module"], _EXPORTED["meta"] = load_exported(path)
    module, meta = _EXPORTED["module"], _EXPORTED["meta"]
    b = collate([atoms_to_graph(atoms, meta["species"], meta["r_max"])], dtype=torch.float32)
    n = len(atoms)

    def step():
        # as the pair style and the calculator run it: TorchScript's graph optimiser off
        with torch.jit.optimized_execution(False):
            energy, _, forces, _ = module(b["pos"], b["species"], b["edge_index"], b["shifts"], n)
        return energy, forces

    return step


# ---------------------------------------------------------------- MACE
def mace_step(atoms, device: str = "cpu") -> Step:
    torch.set_default_dtype(torch.float32)
    torch.manual_seed(0)
    z_table = mace_tools.AtomicNumberTable([29])
    residual = mace_modules.interaction_classes["RealAgnosticResidualInteractionBlock"]
    model = mace_modules.ScaleShiftMACE(
        r_max=R_MAX,
        num_bessel=8,
        num_polynomial_cutoff=5,
        max_ell=3,
        interaction_cls=residual,
        interaction_cls_first=residual,
        num_interactions=2,
        num_elements=1,
        hidden_irreps=o3.Irreps("32x0e+32x1o"),
        MLP_irreps=o3.Irreps("16x0e"),
        atomic_energies=np.array([-3.5]),
        avg_num_neighbors=42.0,
        atomic_numbers=[29],
        correlation=3,
        gate=torch.nn.functional.silu,
        radial_MLP=[64, 64, 64],
        radial_type="bessel",
        atomic_inter_scale=1.0,
        atomic_inter_shift=0.0,
    ).eval()
    model = model.to(device)
    config = mace_data.config_from_atoms(atoms, key_specification=mace_data.KeySpecification())
    graph = mace_data.AtomicData.from_config(config, z_table=z_table, cutoff=R_MAX, heads=["Default"])
    loader = mace_tg.dataloader.DataLoader([graph], batch_size=1, shuffle=False, drop_last=False)
    data = {k: v.to(device) if torch.is_tensor(v) else v for k, v in next(iter(loader)).to_dict().items()}

    def step():
        out = model(data, training=False, compute_force=True, compute_stress=False)
        return out["energy"], out["forces"]

    return step


# ---------------------------------------------------------------- NequIP
def nequip_step(atoms, parity: bool = True) -> Step:
    from nequip.data import AtomicDataDict, compute_neighborlist_, from_ase
    from nequip.model import NequIPGNNModel
    from nequip.utils.global_state import set_global_state

    set_global_state()  # required before building a NequIP model (sets float64 as the default dtype)
    torch.set_default_dtype(torch.float32)
    model = NequIPGNNModel(
        seed=0,
        model_dtype="float32",
        type_names=["Cu"],
        r_max=R_MAX,
        num_layers=3,
        l_max=2,
        num_features=32,
        parity=parity,
        avg_num_neighbors=42.0,
        per_type_energy_shifts={"Cu": -3.5},
    ).eval()
    data = compute_neighborlist_(from_ase(atoms), r_max=R_MAX)
    data[AtomicDataDict.ATOM_TYPE_KEY] = torch.zeros(len(atoms), dtype=torch.long)
    data = {k: (v.to(torch.float32) if torch.is_tensor(v) and v.is_floating_point() else v) for k, v in data.items()}

    def step():
        out = model(dict(data))
        return out[AtomicDataDict.TOTAL_ENERGY_KEY], out[AtomicDataDict.FORCE_KEY]

    return step


MODELS: Dict[str, Tuple[str, Callable]] = {
    "ours": ("ours (eager)", ours_step),
    "ours_ts": ("ours (TorchScript export)", ours_script_step),
    "ours_c1": ("ours, correlation 1 (eager)", lambda a: ours_step(a, ours_model(correlation=1))),
    "mace": ("MACE", mace_step),
    "nequip": ("NequIP", nequip_step),
    "nequip_noparity": ("NequIP (parity off)", lambda a: nequip_step(a, parity=False)),
}


def available(key: str) -> Tuple[bool, str]:
    if key == "mace" and not HAVE_MACE:
        return False, f"mace-torch not importable ({MACE_ERROR})"
    if key.startswith("nequip"):
        try:
            import nequip  # noqa: F401
        except Exception as exc:  # noqa: BLE001
            return False, f"nequip not importable ({type(exc).__name__}: {exc})"
    return True, ""


def time_step(step: Step, warmup: int, repeats: int) -> List[float]:
    for _ in range(warmup):
        e, f = step()
        assert torch.isfinite(e).all() and torch.isfinite(f).all()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        e, f = step()
        float(e.sum())  # make sure everything ran
        times.append(time.perf_counter() - t0)
    return times


def profile_ours(n: int, warmup: int) -> int:
    """Where our model's time goes: operator table (self CPU time) and per-module totals."""
    from torch.profiler import ProfilerActivity, profile, record_function

    model = ours_model()
    step = ours_step(fcc_cu(n), model)
    time_step(step, warmup, 0)
    # label the main stages with record_function via forward hooks
    handles = []
    for name, mod in (
        [("radial_mlp_L%d" % k, layer.radial) for k, layer in enumerate(model.layers)]
        + [("tensor_product_L%d" % k, layer.tp_fast) for k, layer in enumerate(model.layers)]
        + [("linear_up_L%d" % k, layer.linear_up) for k, layer in enumerate(model.layers)]
        + [("linear_down_L%d" % k, layer.linear_down) for k, layer in enumerate(model.layers)]
        + [("gate_L%d" % k, layer.act) for k, layer in enumerate(model.layers)]
        + [("spherical_harmonics", model.spherical_harmonics), ("switch", model.switch)]
    ):

        def pre(m, inp, name=name):
            m._rf = record_function("stage::" + name)
            m._rf.__enter__()

        def post(m, inp, out):
            m._rf.__exit__(None, None, None)

        handles += [mod.register_forward_pre_hook(pre), mod.register_forward_hook(post)]
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    for h in handles:
        h.remove()
    table = prof.key_averages()
    print(table.table(sort_by="self_cpu_time_total", row_limit=25))
    total = sum(e.self_cpu_time_total for e in table)
    print(f"total self CPU {total / 1e3:.1f} ms; forward stages (CPU total, backward not included):")
    for e in sorted((e for e in table if e.key.startswith("stage::")), key=lambda e: -e.cpu_time_total):
        print(f"  {e.key[7:]:24s} {e.cpu_time_total / 1e3:9.1f} ms")
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[256, 1024, 4096])
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", help="also write the results here")
    ap.add_argument(
        "--profile", type=int, metavar="N", help="instead: torch.profiler table of our eager model on N atoms"
    )
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    versions = {"python": platform.python_version(), "torch": torch.__version__}
    for mod in ("e3nn", "mace", "nequip"):
        try:
            versions[mod] = __import__(mod).__version__
        except Exception:  # noqa: BLE001
            pass
    print(
        f"# threads={torch.get_num_threads()} cpus={os.cpu_count()} OMP_WAIT_POLICY={os.environ['OMP_WAIT_POLICY']} "
        f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}  "
        + " ".join(f"{k}={v}" for k, v in versions.items()),
        flush=True,
    )

    keys = []
    for key in args.models:
        ok, why = available(key)
        if ok:
            keys.append(key)
        else:
            print(f"# skipping {MODELS[key][0]}: {why}", flush=True)

    # The models are timed round-robin (one call of each per round, the order rotating),
    # so that load from other processes on the machine hits all of them alike.
    if args.profile:
        return profile_ours(args.profile, args.warmup)

    results: Dict[str, Dict[int, Dict[str, float]]] = {k: {} for k in keys}
    for n in args.sizes:
        atoms = fcc_cu(n)
        steps = {k: MODELS[k][1](atoms) for k in keys}
        for k in keys:
            time_step(steps[k], args.warmup, 0)
        times: Dict[str, List[float]] = {k: [] for k in keys}
        for r in range(args.repeats):
            order = keys[r % len(keys) :] + keys[: r % len(keys)]
            for k in order:
                times[k] += time_step(steps[k], 0, 1)
        for k in keys:
            med = statistics.median(times[k])
            results[k][n] = {"median_s": med, "min_s": min(times[k]), "us_per_atom": med / n * 1e6, "times_s": times[k]}
            print(
                f"# {MODELS[k][0]:28s} N={n:5d}  median {med * 1e3:9.1f} ms  "
                f"{med / n * 1e6:8.1f} µs/atom/step  (min {min(times[k]) * 1e3:.1f} ms)",
                flush=True,
            )
        del steps
    print(f"# load average after the run: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")

    # table
    print()
    header = "| model | " + " | ".join(f"{n} atoms µs/atom/step (× MACE)" for n in args.sizes) + " |"
    print(header)
    print("|" + "---|" * (len(args.sizes) + 1))
    for key, per_size in results.items():
        cells = []
        for n in args.sizes:
            us = per_size[n]["us_per_atom"]
            ratio = us / results["mace"][n]["us_per_atom"] if "mace" in results else float("nan")
            cells.append(f"{us:.1f} ({ratio:.2f})")
        print(f"| {MODELS[key][0]} | " + " | ".join(cells) + " |")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"versions": versions, "threads": args.threads, "results": results}, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
