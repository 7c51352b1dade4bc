#!/usr/bin/env bash
# Copy pair_style forcefield into a LAMMPS source tree, for LAMMPS builds made
# from source (e.g. with KOKKOS/GPU packages) instead of the plugin.
#
#   export/pair_style/install_into_lammps_source.sh /path/to/lammps [--patch-cmake]
#
# Copies pair_forcefield.h/.cpp and the fused message-product kernel
# (channelwise_tp.cpp, channelwise_tp_rows.h) into /path/to/lammps/src/ (LAMMPS' CMake
# build compiles every src/*.cpp and registers the style through the
# PairStyle(forcefield,PairForcefield) line in the header). The pair style
# needs libtorch; LAMMPS' CMake has no option for it, so --patch-cmake appends
# this block (once) to /path/to/lammps/cmake/CMakeLists.txt:
#
#   find_package(Torch REQUIRED)
#   target_compile_features(lammps PUBLIC cxx_std_17)
#   target_link_libraries(lammps PUBLIC ${TORCH_LIBRARIES})
#
# Then configure with torch's CMake files on the prefix path, e.g.
#
#   cmake -S /path/to/lammps/cmake -B build -D BUILD_MPI=on \
#     -D CMAKE_PREFIX_PATH="$(python -c 'import torch; print(torch.utils.cmake_prefix_path)')" \
#     [-D PKG_KOKKOS=on -D Kokkos_ENABLE_CUDA=on ...]
#   cmake --build build -j
#
# With a CUDA build of torch, find_package(Torch) also needs the CUDA toolkit
# (nvcc) and, depending on the torch version, cuDNN headers.
set -euo pipefail

usage() {
  sed -n '2,6p' "$0" | sed 's/^# \{0,1\}//'
  exit "${1:-1}"
}

[[ $# -ge 1 ]] || usage 1
[[ "$1" == "-h" || "$1" == "--help" ]] && usage 0

LAMMPS_DIR="$1"
PATCH_CMAKE=0
shift
for arg in "$@"; do
  case "$arg" in
    --patch-cmake) PATCH_CMAKE=1 ;;
    -h|--help) usage 0 ;;
    *) echo "error: unknown option '$arg'" >&2; usage 1 ;;
  esac
done

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
SRC="$LAMMPS_DIR/src"
CMAKE_FILE="$LAMMPS_DIR/cmake/CMakeLists.txt"

if [[ ! -f "$SRC/pair.h" || ! -f "$SRC/lammps.cpp" ]]; then
  echo "error: '$LAMMPS_DIR' is not a LAMMPS source tree (no src/pair.h, src/lammps.cpp)" >&2
  exit 1
fi

for f in pair_forcefield.h pair_forcefield.cpp channelwise_tp.cpp channelwise_tp_rows.h; do
  cp "$HERE/$f" "$SRC/$f"
  echo "copied $f -> $SRC/$f"
done

MARK_BEGIN="# >>> forcefield pair style: libtorch (added by install_into_lammps_source.sh)"
MARK_END="# <<< forcefield pair style"
if [[ $PATCH_CMAKE -eq 1 ]]; then
  if [[ ! -f "$CMAKE_FILE" ]]; then
    echo "error: $CMAKE_FILE not found" >&2
    exit 1
  fi
  if grep -qF "$MARK_BEGIN" "$CMAKE_FILE"; then
    echo "$CMAKE_FILE already links libtorch (left unchanged)"
  else
    cat >> "$CMAKE_FILE" <<EOF

$MARK_BEGIN
find_package(Torch REQUIRED)
target_compile_features(lammps PUBLIC cxx_std_17)
target_link_libraries(lammps PUBLIC \${TORCH_LIBRARIES})
$MARK_END
EOF
    echo "patched $CMAKE_FILE to link libtorch"
  fi
else
  echo "note: link libtorch into the lammps target (rerun with --patch-cmake to append the block"
  echo "      to $CMAKE_FILE), then configure with"
  echo "      -D CMAKE_PREFIX_PATH=\$(python -c 'import torch; print(torch.utils.cmake_prefix_path)')"
fi
