#!/usr/bin/env bash
# One call from a bare GPU machine to GPU figures: install, build, test, benchmark.
#
#   bash bench/gpu.sh [OUTDIR]                      # on the GPU machine (device tool: run from the repo root)
#   bash bench/gpu.sh --device cpu --small [OUTDIR] # the dry run on this machine (tests/gpu/test_gpu_dry_run.py)
#
# Options: --device cuda|cpu (default cuda), --small (small sizes: the dry run), --carry DIR
# (default .gpu-carry for cuda; the dry run's is packed here if missing, see pack_gpu.sh),
# --deadline-s S (everything stops by then; default 540 on cuda, 600 for --device cpu),
# --skip STEP[,STEP] (any of the steps below except install and build), --fresh-build.
# OUTDIR: default $OUT (the device tool's output folder) or bench/results/gpu_<UTC date>.
# Env: PYTHON (the interpreter with torch; default python3 on cuda, .venv/bin/python on cpu),
#      GPU_WORK (scratch folder: the fresh venv, LAMMPS, the plugin build; default a new
#      folder in /tmp on cuda; for the dry run ~/.cache/forcefield/gpu-dry-run/work, its
#      plugin build kept beside it and reused while the sources are unchanged: --fresh-build).
#
# Steps, each under its own `timeout` (a hang costs that step, not the run), in this order
# (the LAMMPS size ramp, with the largest sizes, last):
#   install   unpack LAMMPS + mpich (the carried archive), a fresh venv that sees only torch
#             and the machine's own packages of bench/gpu_image_packages.txt (gpu_env.py
#             expose), the carried wheels and `pip install -e .` without an index, MACE
#             (without its e3nn pin; optional), then gpu_env.py check
#   build     the plugin and the native operators against this machine's torch
#             (FORCEFIELD_TORCH_DIRECT=1: no CUDA toolkit needed)
#   tests     pytest -m gpu tests/gpu (FORCEFIELD_TEST_DEVICE=cuda|cpu: tests/gpu/conftest.py)
#   python    bench/gpu_bench.py python    (our model eager + export, MACE, export chunk sweep)
#   training  bench/training_throughput.py --device ... (structures/s with and without DeNS)
#   profile   bench/gpu_bench.py profile   (torch.profiler: one LAMMPS step, one export call)
#   lammps    bench/gpu_bench.py lammps    (µs/atom-step and peak GPU memory, 1k atoms doubling)
# After every step OUTDIR gets summary.md (tables), results.json (all results so far) and
# logs.tar.gz (every step's log, the profiler tables): a run killed at any point keeps what
# it finished, in 3 files (the device tool returns at most 8).
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
T0=$(date +%s)

device=cuda small=0 carry="" outdir="" deadline="" skip="," fresh=0
while [ $# -gt 0 ]; do
  case "$1" in
    --device) device=$2; shift 2 ;;
    --small) small=1; shift ;;
    --carry) carry=$2; shift 2 ;;
    --deadline-s) deadline=$2; shift 2 ;;
    --skip) skip=",$2,"; shift 2 ;;
    --fresh-build) fresh=1; shift ;;
    -h|--help) sed -n '2,32p' "$0"; exit 0 ;;
    -*) echo "gpu.sh: unknown option $1" >&2; exit 2 ;;
    *) outdir=$1; shift ;;
  esac
done
case "$device" in
  cuda|gpu) device=cuda; HOSTPY=${PYTHON:-python3}; carry=${carry:-$ROOT/.gpu-carry}; deadline=${deadline:-540}
            WORK=${GPU_WORK:-$(mktemp -d /tmp/ff-gpu-XXXXXX)}; PLUGIN_CACHE=$WORK/cache ;;
  cpu) cache=${FORCEFIELD_CACHE:-$HOME/.cache/forcefield}
       HOSTPY=${PYTHON:-$ROOT/.venv/bin/python}; carry=${carry:-$cache/gpu-carry-cpu}; deadline=${deadline:-600}
       # a fixed place (the plugin's build key holds the venv's path): the dry run's plugin
       # build is reused while its sources and torch are unchanged (--fresh-build rebuilds)
       WORK=${GPU_WORK:-$cache/gpu-dry-run/work}; PLUGIN_CACHE=$cache/gpu-dry-run/plugin-cache
       [ "$fresh" = 1 ] && rm -rf "$PLUGIN_CACHE" ;;
  *) echo "gpu.sh: --device cuda or cpu, not '$device'" >&2; exit 2 ;;
esac
outdir=${outdir:-${OUT:-$ROOT/bench/results/gpu_$(date -u +%Y%m%d-%H%M%S)}}
mkdir -p "$outdir"; outdir=$(cd "$outdir" && pwd)
if [ "$device" = cpu ]; then rm -rf "$WORK"; fi
mkdir -p "$WORK/logs" "$WORK/json"; WORK=$(cd "$WORK" && pwd)
: >"$WORK/steps.tsv"
SMALL=(); [ "$small" = 1 ] && SMALL=(--small)
VENV=$WORK/venv
PY=$VENV/bin/python
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1 FORCEFIELD_CACHE=$PLUGIN_CACHE FORCEFIELD_TORCH_DIRECT=1
export MPLBACKEND=Agg PIP_NO_INDEX=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1

log() { echo "[gpu.sh $(( $(date +%s) - T0 ))s] $*"; }

publish() {  # what OUTDIR holds after every step (a killed run keeps it)
  "$HOSTPY" "$ROOT/bench/gpu_summary.py" "$WORK" "$outdir" >"$WORK/summary.log" 2>&1 \
    || echo "summary failed (see logs)" >"$outdir/summary.md"
  tar -C "$WORK" -czf "$outdir/logs.tar.gz.tmp" logs && mv "$outdir/logs.tar.gz.tmp" "$outdir/logs.tar.gz"
}

# step NAME LIMIT_S COMMAND...: run with its own time limit (shortened to what the deadline
# leaves), log into logs/NAME.log, record status and seconds, publish
step() {
  local name=$1 limit=$2; shift 2
  if [[ "$skip" == *",$name,"* ]]; then
    printf '%s\tskipped\t0\t%s\n' "$name" "$limit" >>"$WORK/steps.tsv"; publish; return 0
  fi
  local left=$(( deadline - ($(date +%s) - T0) - 5 ))
  [ "$limit" -gt "$left" ] && limit=$left
  if [ "$limit" -lt 10 ]; then
    log "$name: not started, the deadline is near"
    printf '%s\tno time left\t0\t%s\n' "$name" "$limit" >>"$WORK/steps.tsv"; publish; return 1
  fi
  log "$name (limit ${limit}s)"
  local t=$(date +%s) rc status
  if declare -F "$1" >/dev/null; then  # a function of this script: in a bash of its own
    timeout --kill-after=10 "$limit" bash -c "$1" >"$WORK/logs/$name.log" 2>&1
  else
    timeout --kill-after=10 "$limit" "$@" >"$WORK/logs/$name.log" 2>&1
  fi
  rc=$?
  case $rc in 0) status=ok ;; 124|137) status="timed out" ;; *) status="failed ($rc)" ;; esac
  log "$name: $status in $(( $(date +%s) - t ))s"
  [ "$rc" = 0 ] || tail -n 15 "$WORK/logs/$name.log" | sed 's/^/    /'
  printf '%s\t%s\t%s\t%s\n' "$name" "$status" "$(( $(date +%s) - t ))" "$limit" >>"$WORK/steps.tsv"
  publish
  return $rc
}

# --------------------------------------------------------------------------- the steps

do_install() {
  set -e
  [ -f "$carry/STAMP" ] || { echo "no carry folder at $carry (bench/pack_gpu.sh makes it)"; return 1; }
  "$HOSTPY" -c 'import torch, sys; print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available(), "python", sys.version.split()[0])'
  bash "$carry/lammps/unpack.sh" "$WORK/lammps"
  # a fresh venv (its pip from ensurepip; without one, the machine's pip drives it)
  local PIPV=("$PY" -m pip)
  if ! "$HOSTPY" -m venv "$VENV"; then
    rm -rf "$VENV"; "$HOSTPY" -m venv --without-pip "$VENV"; PIPV=("$HOSTPY" -m pip --python "$PY")
  fi
  "${PIPV[@]}" --version
  local site
  site=$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
  # what the new environment sees of the interpreter with torch: torch's closure and the
  # machine's own packages (bench/gpu_image_packages.txt), through symbolic links
  "$HOSTPY" "$ROOT/bench/gpu_env.py" expose "$ROOT/bench/gpu_image_packages.txt" "$WORK/machine-site"
  echo "$WORK/machine-site" >"$site/zz-machine-site.pth"
  echo "$WORK/lammps" >"$site/zz-lammps.pth"
  # the carried wheels first (with their dependencies from what the machine has), then the project
  local wheels=()
  for w in "$carry"/wheels/*.whl; do case "$(basename "$w")" in mace_torch-*) ;; *) wheels+=("$w") ;; esac; done
  # (should a carried wheel want a newer dependency than the machine has and the carry lacks,
  # the wheels go in without dependency resolution: the machine's versions then have to do)
  "${PIPV[@]}" install -q --no-index --find-links "$carry/wheels" --no-compile "${wheels[@]}" \
    || "${PIPV[@]}" install -q --no-index --no-deps --no-compile "${wheels[@]}"
  # (without the test extra: pytest is the machine's, ruff is not needed; no build isolation:
  # setuptools and wheel are the carried ones just installed)
  "${PIPV[@]}" install -q --no-index --find-links "$carry/wheels" --no-compile --no-build-isolation -e "$ROOT"
  # MACE without its e3nn==0.4.4 pin (bench/setup_bench_env.sh); a failure here only skips MACE
  "${PIPV[@]}" install -q --no-index --no-deps --no-compile "$carry"/wheels/mace_torch-*.whl \
    || echo "NOTE: mace-torch not installed: the MACE comparison will be skipped"
  "$PY" "$ROOT/bench/gpu_env.py" check "$VENV"
  "$PY" -c 'import torch, forcefield, e3nn, lammps; print("ok: torch", torch.__version__, "forcefield", forcefield.__file__, "lammps", lammps.__file__)'
}

do_build() {
  set -e
  # the native operators (the fused kernel alone) only for the GPU: tests/gpu checks there
  # that it refuses CUDA tensors; on CPU tests/export/test_channelwise_tp_kernel.py covers it
  "$PY" - "$device" <<'BUILD'
import sys, time
from forcefield.export.plugin import build_native_ops, build_plugin, lammps_include_dir, mpi_include_dir
t = time.time()
print("plugin", build_plugin(), f"{time.time() - t:.0f} s")
if sys.argv[1] == "cuda":
    t = time.time()
    print("native operators", build_native_ops(), f"{time.time() - t:.0f} s")
print("lammps headers", lammps_include_dir(), "mpi.h", mpi_include_dir())
BUILD
  lmp -h | head -n 3
}

do_tests() {
  # (tests/gpu holds the gpu-marked tests; collecting the whole suite would cost ~15 s more here)
  FORCEFIELD_TEST_DEVICE=$device "$PY" -m pytest -q -m gpu -p no:cacheprovider -o console_output_style=classic \
    --rootdir "$ROOT" "$ROOT/tests/gpu" -W ignore::UserWarning
}

do_training() {
  if [ "$small" = 1 ]; then
    "$PY" bench/training_throughput.py --device "$device" --json "$WORK/json/training.json" \
      --steps 2 --rounds 1 --warmup 1 --n-structures 20
  else
    "$PY" bench/training_throughput.py --device "$device" --json "$WORK/json/training.json" \
      --steps 10 --rounds 5 --warmup 3 --n-structures 200
  fi
}

# the dry run packs its carry folder here if it is missing or out of date (the GPU machine has no index)
if [ "$device" = cpu ]; then
  env -u PIP_NO_INDEX -u PIP_NO_CACHE_DIR bash "$ROOT/bench/pack_gpu.sh" --device cpu "$carry" || { log "pack_gpu.sh failed"; exit 1; }
  T0=$(date +%s)  # the deadline and the times count from here (packing is the GPU run's preparation)
fi
export ROOT WORK VENV PY HOSTPY carry device small
export -f do_install do_build do_tests do_training
export PATH="$WORK/lammps/bin:$VENV/bin:$PATH:$(dirname "$("$HOSTPY" -c 'import sys; print(sys.executable)')")"
# the CUDA libraries of the machine's torch (pip's nvidia-* packages) for processes that load
# libtorch without Python (lmp with the plugin): torch's own RUNPATH should find them, this is
# in case it does not
NVLIBS=$("$HOSTPY" - <<'NV'
import glob, os, site, sys
dirs = []
for base in site.getsitepackages() + [site.getusersitepackages()]:
    dirs += sorted(d for d in glob.glob(os.path.join(base, "nvidia", "**", "lib"), recursive=True) if os.path.isdir(d))
print(":".join(dirs))
NV
)
export LD_LIBRARY_PATH="$WORK/lammps/lib:$WORK/lammps/lammps${NVLIBS:+:$NVLIBS}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
"$HOSTPY" - "$WORK/meta.json" "$device" "$small" <<'META'
import json, platform, subprocess, sys, time
meta = {"device": sys.argv[2], "small": sys.argv[3] == "1", "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "host": platform.node()}
try:
    meta["git"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    smi = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                         capture_output=True, text=True, timeout=20)
    meta["nvidia_smi"] = smi.stdout.strip()
except Exception:
    pass
open(sys.argv[1], "w").write(json.dumps(meta))
META
log "device $device, small $small, carry $carry, work $WORK, output $outdir, deadline ${deadline}s"

BENCH_PY=(--device "$device" "${SMALL[@]}")
step install 240 do_install || { log "install failed: nothing else can run"; exit 1; }
step build 300 do_build || { log "build failed: nothing else can run"; exit 1; }
failed=0
step tests 300 do_tests || failed=1
step python 100 "$PY" bench/gpu_bench.py python "${BENCH_PY[@]}" --json "$WORK/json/python.json" --budget-s 80 || failed=1
step training 90 do_training || failed=1
step profile 90 "$PY" bench/gpu_bench.py profile "${BENCH_PY[@]}" --json "$WORK/json/profile.json" \
  --table "$WORK/logs/profile_tables.txt" || failed=1
# the size ramp last: it takes what the deadline leaves (its own budget a little shorter)
left=$(( deadline - ($(date +%s) - T0) - 15 ))
budget=$(( left > 40 ? left - 25 : 15 )); [ "$small" = 1 ] && [ "$budget" -gt 40 ] && budget=40
step lammps 600 "$PY" bench/gpu_bench.py lammps "${BENCH_PY[@]}" --json "$WORK/json/lammps.json" \
  --budget-s "$budget" || failed=1
log "done in $(( $(date +%s) - T0 ))s: $outdir/summary.md"
cat "$outdir/summary.md"
exit $failed
