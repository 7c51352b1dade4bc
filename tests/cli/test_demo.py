"""`forcefield demo --quick` end to end through the real console script."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path


def test_demo_quick_end_to_end(tmp_path):
    exe = Path(sys.executable).parent / "forcefield"
    out = tmp_path / "demo"
    env = {**os.environ, "COLUMNS": "200"}
    proc = subprocess.run(
        [str(exe), "demo", "--quick", "--output", str(out)], capture_output=True, text=True, env=env, timeout=900
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())

    test = report["test"]
    assert test["n_structures"] > 0
    for key in ("energy_mae", "forces_mae"):
        assert math.isfinite(test[key]) and 0 < test[key] < 5000, (key, test[key])

    lm = report["lammps"]
    # same exported file, same configuration: LAMMPS and Python agree to round-off
    assert lm["step0_energy_difference"] < 1e-8 * max(1.0, abs(lm["step0_energy_python"]))
    # 1 fs NVE with fast atoms leaving the slab: energy conserved to well below 1 meV/atom
    assert lm["max_abs_drift_ev_per_atom"] < 1e-3
    assert lm["atom_steps_per_s"] > 0

    for key in ("checkpoint", "model", "plugin", "parity_plot", "dimer_plot", "learning_curve", "metrics_csv"):
        assert Path(report["artifacts"][key]).is_file(), key
    assert Path(report["artifacts"]["plugin"]).name == "forcefieldplugin.so"
    assert "forcefield demo" in proc.stdout
