"""summary.md and results.json of a bench/gpu.sh run, from its work folder (steps.tsv,
json/*.json written by bench/gpu_bench.py and bench/training_throughput.py, logs/tests.log):
whatever has finished so far. Standard library only (gpu.sh calls it after every step).

    python bench/gpu_summary.py WORK OUTDIR
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Optional

# profiler events counted by bench/gpu_bench.py profile: name prefixes
WATCH = {
    "host_to_device_copies": ("Memcpy HtoD",),
    "device_to_host_copies": ("Memcpy DtoH",),
    "cudaMemcpy_calls": ("cudaMemcpy",),
    "stream_synchronize": ("cudaStreamSynchronize",),
    "device_synchronize": ("cudaDeviceSynchronize",),
    "item_calls": ("aten::_local_scalar_dense", "aten::item"),
    "nonzero": ("aten::nonzero",),
    "unique": ("aten::unique", "aten::_unique"),
    "copy_": ("aten::copy_",),
    "kernel_launches": ("cudaLaunchKernel", "cuLaunchKernel"),
}


def _load(path: Path) -> Optional[dict]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def summary(work: Path, out: Path) -> int:
    """OUT/summary.md and OUT/results.json from a gpu.sh run's WORK folder (steps.tsv, json/,
    logs/): whatever has finished so far."""
    steps = []
    if (work / "steps.tsv").is_file():
        for line in (work / "steps.tsv").read_text().splitlines():
            name, status, seconds, limit = (line.split("\t") + ["", "", "", ""])[:4]
            steps.append({"step": name, "status": status, "seconds": seconds, "limit_s": limit})
    results = {"steps": steps}
    for f in sorted((work / "json").glob("*.json")):
        results[f.stem] = _load(f)
    meta = _load(work / "meta.json") or {}
    results["meta"] = meta
    md = [
        f"# bench/gpu.sh: {meta.get('device', '?')}{' --small' if meta.get('small') else ''}, {meta.get('date', '')}",
        "",
    ]
    md.append(" ".join(f"{k}: {v}" for k, v in meta.items() if k not in ("date",)))
    md += ["", "| step | status | seconds | limit (s) |", "|---|---|---:|---:|"]
    md += [f"| {s['step']} | {s['status']} | {s['seconds']} | {s['limit_s']} |" for s in steps]
    tests_log = work / "logs" / "tests.log"
    if tests_log.is_file():
        last = [line for line in tests_log.read_text().splitlines() if re.search(r"\d+ (passed|failed|error)", line)]
        md += ["", f"tests: {last[-1].strip('= ') if last else 'no result line'}"]
    lam = results.get("lammps")
    if lam:
        mem = "peak_gpu_allocated_mib" if on_cuda(lam["environment"]["device"]) else "peak_rss_mib"
        md += ["", f"## LAMMPS (`pair_style forcefield`, {lam.get('model')}, 1 rank)", ""]
        md += [
            f"| atoms | µs / atom-step | step (ms) | {mem} | outside the model (%) | edges sent |",
            "|---:|---:|---:|---:|---:|---:|",
        ]
        for r in lam["rows"]:
            md.append(
                f"| {r['atoms']} | {r['us_per_atom_step']:.2f} | {1e3 * r['step_s']:.1f} "
                f"| {r.get(mem, float('nan')):.0f} "
                f"| {r.get('outside_model_pct', float('nan')):.1f} | {r.get('edges_sent', '')} |"
            )
        md += [f"- {n}" for n in lam.get("notes", [])]
    py = results.get("python")
    if py:
        mem = "peak_gpu_allocated_mib" if on_cuda(py["environment"]["device"]) else "peak_rss_mib"
        md += ["", "## From Python (FCC Cu), µs / atom-step and peak memory (MiB)", ""]
        md += [f"| model | atoms | µs / atom-step | {mem} |", "|---|---:|---:|---:|"]
        md += [
            f"| {r['model']} | {r['atoms']} | {r['us_per_atom_step']:.2f} | {r.get(mem, float('nan')):.0f} |"
            for r in py["rows"]
        ]
        if py.get("chunk_sweep"):
            md += [
                "",
                "| edge chunk | atoms | edges | µs / atom-step | peak memory (MiB) |",
                "|---:|---:|---:|---:|---:|",
            ]
            md += [
                f"| {r['edge_chunk']} | {r['atoms']} | {r['edges']} | {r['us_per_atom_step']:.2f} "
                f"| {r.get(mem, float('nan')):.0f} |"
                for r in py["chunk_sweep"]
            ]
        md += [f"- {n}" for n in py.get("notes", [])]
    tr = results.get("training")
    if tr:
        s = tr.get("structures_per_s", {})
        md += ["", "## Training throughput (bench/training_throughput.py)", ""]
        md += [
            f"structures/s: DeNS off {s.get('off', float('nan')):.1f}, on {s.get('on', float('nan')):.1f}, "
            f"overhead {tr.get('overhead_percent', float('nan')):+.1f}%"
        ]
    prof = results.get("profile")
    if prof:
        md += ["", "## Profiler counts (one LAMMPS step; one export call)", ""]
        keys = list(WATCH) + ["events"]
        md += ["| | " + " | ".join(keys) + " |", "|---|" + "---:|" * len(keys)]
        for part in ("lammps_step", "model_call"):
            if part in prof:
                md.append(f"| {part} | " + " | ".join(str(prof[part].get(k, "")) for k in keys) + " |")
        md += [f"- {n}" for n in prof.get("notes", [])]
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.md").write_text("\n".join(md) + "\n")
    write_json(out / "results.json", results)
    return 0


def on_cuda(device: str) -> bool:
    return str(device).startswith("cuda")


def write_json(path: Path, payload: dict) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    tmp.replace(path)


if __name__ == "__main__":
    sys.exit(summary(Path(sys.argv[1]), Path(sys.argv[2])))
