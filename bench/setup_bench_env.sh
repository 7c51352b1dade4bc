#!/usr/bin/env bash
# Create .bench-venv: this package + MACE + NequIP, for bench/inference.py only.
#
# MACE and NequIP never go into the project's .venv. They also cannot be resolved
# together by pip: every mace-torch release pins e3nn==0.4.4, while nequip>=0.7 and
# this package require e3nn 0.6. Constructing and evaluating a MACE model works with
# e3nn 0.6.0 (only loading pickled MACE models trained under 0.4.4 does not), so
# mace-torch is installed with --no-deps and its other dependencies are added by hand.
#
# Usage (from the repository root):  bash bench/setup_bench_env.sh
# Env: BENCH_VENV (default .bench-venv), PYTHON (default python3),
#      TORCH_PIP_ARGS (extra args for the torch install, e.g.
#      "--index-url https://download.pytorch.org/whl/cpu" to get the CPU-only wheel).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${BENCH_VENV:-.bench-venv}
PYTHON=${PYTHON:-python3}
PIP="$VENV/bin/python -m pip"

[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
$PIP install --upgrade pip
# torch first, pinned: anything unpinned would pull a multi-GB CUDA build
$PIP install ${TORCH_PIP_ARGS:-} torch==2.13.0
# this package (e3nn 0.6.0, ase, vesin, ...) and pytest, to check that its tests still pass here
$PIP install -c constraints.txt -e ".[test]"
# NequIP (e3nn >=0.6,<0.7: same e3nn as ours)
$PIP install -c constraints.txt nequip
# MACE without its e3nn==0.4.4 pin, then its remaining runtime dependencies
$PIP install -c constraints.txt --no-deps mace-torch
$PIP install -c constraints.txt opt_einsum torch-ema prettytable matscipy h5py torchmetrics \
    python-hostlist configargparse GitPython pyYAML tqdm lmdb orjson matplotlib pandas
# the only expected complaint is mace-torch's e3nn pin
$PIP check || true
"$VENV/bin/python" - <<'PY'
import mace, nequip, e3nn, torch, forcefield  # noqa: F401  (mace first, then the rest)
from mace.modules import MACE  # noqa: F401
print("bench env ok: torch", torch.__version__, "e3nn", e3nn.__version__,
      "mace", getattr(mace, "__version__", "?"), "nequip", getattr(nequip, "__version__", "?"))
PY
