#!/usr/bin/env bash
# Run the LAMMPS examples end to end:
#
#   lammps_examples/run.sh [CHECKPOINT.ckpt]
#
# 1. a model: CHECKPOINT if given (a Cu-Au model: pair_coeff * * Cu Au), else a quick demo
#    model from `forcefield demo --quick` (about a minute of CPU);
# 2. export it to TorchScript (float64) with `forcefield export`;
# 3. build (or reuse) the LAMMPS plugin with `forcefield lammps-plugin`;
# 4. write the data files with ASE;
# 5. run NVT, NPT and the evaporating slab with `lmp`, and NVT again under `mpirun -np 2`.
#
# Outputs go to $WORK (default lammps_examples/work). STEPS_SCALE=10 makes every run 10x
# longer (the defaults are short: a few minutes in all on 2 CPU cores); NP=4 for 4 ranks;
# SPEED=50 launches the slab's adatoms at 50 A/ps (default 35); DEMO_ARGS="--train-time 300"
# trains the demo model longer than --quick does (a --quick model is a smoke test: trained
# for seconds, its NPT volume and adatom binding are far from EMT's).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
WORK="${WORK:-$HERE/work}"
STEPS_SCALE="${STEPS_SCALE:-1}"
NP="${NP:-2}"

# the forcefield / lmp / mpirun / python of the repository's venv if there is one, else PATH
if [[ -n "${VIRTUAL_ENV:-}" && -x "$VIRTUAL_ENV/bin/forcefield" ]]; then
  BIN="$VIRTUAL_ENV/bin/"
elif [[ -x "$HERE/../.venv/bin/forcefield" ]]; then
  BIN="$(cd "$HERE/../.venv/bin" && pwd)/"
else
  BIN=""
fi
FORCEFIELD="${BIN}forcefield"
PYTHON="${BIN}python"
LMP="${BIN}lmp"
MPIRUN="${BIN}mpirun"
[[ -x "$MPIRUN" ]] || MPIRUN="mpirun"

mkdir -p "$WORK"
cd "$WORK"

steps() { "$PYTHON" -c "print(max(10, int(round($1 * $STEPS_SCALE))))"; }

# ---- 1. model
if [[ $# -ge 1 ]]; then
  CKPT="$(cd "$(dirname "$1")" && pwd)/$(basename "$1")"
  echo "== using checkpoint $CKPT"
elif [[ -f "$WORK/demo/train/best.ckpt" && -z "${RETRAIN:-}" ]]; then
  CKPT="$WORK/demo/train/best.ckpt"
  echo "== reusing the demo model of an earlier run: $CKPT (RETRAIN=1 to train it again)"
else
  echo "== no checkpoint given: training a demo model (forcefield demo ${DEMO_ARGS:---quick})"
  # shellcheck disable=SC2086  # DEMO_ARGS is a list of options
  "$FORCEFIELD" demo ${DEMO_ARGS:---quick} --output "$WORK/demo" > "$WORK/demo.log" 2>&1 \
    || { echo "forcefield demo failed, see $WORK/demo.log" >&2; exit 1; }
  CKPT="$WORK/demo/train/best.ckpt"
fi

# ---- 2. export
echo "== exporting to $WORK/model.pt"
"$FORCEFIELD" export "$CKPT" --output "$WORK/model.pt" --dtype float64 > /dev/null

# ---- 3. plugin (the path is the last line of stdout)
echo "== building (or reusing) the LAMMPS plugin"
PLUGIN="$("$FORCEFIELD" lammps-plugin | tail -n 1)"
echo "   $PLUGIN"
export LAMMPS_PLUGIN_PATH="$(dirname "$PLUGIN")${LAMMPS_PLUGIN_PATH:+:$LAMMPS_PLUGIN_PATH}"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"

# ---- 4. data files
echo "== writing bulk_CuAu.data and slab.data"
"$PYTHON" - <<'PY'
import numpy as np
import ase.io
from ase.build import add_adsorbate, bulk, fcc111

rng = np.random.default_rng(0)
# bulk: 3x3x3 conventional FCC cells (108 atoms), 30 % Au at random, Vegard lattice constant
b = bulk("Cu", "fcc", a=3.61, cubic=True).repeat((3, 3, 3))
au = rng.random(len(b)) < 0.3
b.numbers[au] = 79
b.set_cell(b.cell * ((3.61 * (1 - au.mean()) + 4.08 * au.mean()) / 3.61), scale_atoms=True)
ase.io.write("bulk_CuAu.data", b, format="lammps-data", specorder=["Cu", "Au"], atom_style="atomic")

# slab: Cu(111) 4x4x3 with a few Au, 12 A vacuum, two Cu adatoms in hollow sites
s = fcc111("Cu", size=(4, 4, 3), a=3.61, vacuum=12.0, orthogonal=True)
s.numbers[rng.choice(len(s), size=len(s) // 8, replace=False)] = 79
for frac in ((0.0, 0.0), (0.5, 0.5)):
    xy = np.array(frac) @ s.cell.array[:2, :2] + np.array([1.276, 0.737])
    add_adsorbate(s, "Cu", 2.1, position=tuple(xy))
ase.io.write("slab.data", s, format="lammps-data", specorder=["Cu", "Au"], atom_style="atomic")
print(f"   bulk: {len(b)} atoms ({au.sum()} Au), slab: {len(s)} atoms (2 adatoms)")
PY

# ---- 5. LAMMPS
run() {  # run <name> <deck> <nprocs> [lmp args...]
  local name="$1" deck="$2" np="$3"; shift 3
  local cmd=("$LMP" -in "$HERE/$deck" -var model model.pt -log "$name.log" -screen none "$@")
  [[ "$np" -gt 1 ]] && cmd=("$MPIRUN" -np "$np" "${cmd[@]}")
  echo "== $name: ${cmd[*]}"
  local t0=$SECONDS
  "${cmd[@]}" || { echo "LAMMPS failed, see $WORK/$name.log" >&2; tail -n 5 "$name.log" >&2; exit 1; }
  grep -E "^Loop time" "$name.log" | tail -n 1 | sed 's/^/   /'
  echo "   $((SECONDS - t0)) s wall; last thermo line:"
  awk '/^ *Step/{h=$0; n=NR} /^Loop time/{print "   " h; print "   " last} {last=$0}' "$name.log" | tail -n 2
}

run nvt        in.bulk_nvt.lammps         1     -var steps "$(steps 100)"
run npt        in.bulk_npt.lammps         1     -var steps "$(steps 200)"
run slab       in.slab_evaporation.lammps 1     -var steps "$(steps 500)" -var speed "${SPEED:-35.0}"
run nvt_np$NP  in.bulk_nvt.lammps         "$NP" -var steps "$(steps 100)"

grep -h "^NPT:" npt.log | sed 's/^/== /'
grep -h "^evaporated atoms" slab.log | sed 's/^/== /'
echo "== E0 of the model (the energy an evaporated atom must have):"
"$PYTHON" -c "
from forcefield.export.torchscript import load_exported
_, m = load_exported('model.pt'); print('   ', m['e0'])"
echo "== done: logs in $WORK"
