"""Every fenced code block of README.md and export/pair_style/README.md runs, so that a
stale example fails the tests.

The convention, for whoever edits these files:

- The blocks of one file run in order, in one scratch folder (their working directory),
  which starts with `train.xyz` and `test.xyz` (small Cu-Au sets, EMT energies, forces and
  stress) and `model.pt` (a tiny exported Cu-Au model). Files a block writes stay there for
  the blocks after it (the README's `forcefield train` writes `run/`, `export` `model.pt`).
- ```python blocks run in a fresh interpreter (the one running the tests).
- ```bash (or sh, shell) blocks run in `bash` with `set -euo pipefail`, the interpreter's
  bin folder (`forcefield`, `lmp`, `mpirun`) first on PATH and OMP_NUM_THREADS=1. One
  substitution keeps training short: there `forcefield template` prints the real template
  with the model and the budget shrunk to TINY below, so `forcefield train` on it takes
  seconds. Every command is the real one.
- A block right after the line `<!-- file: NAME -->` is not run: its text is written to
  NAME in the scratch folder, for a later block to use (a LAMMPS input `in.lammps` that a
  later `lmp -in in.lammps` runs). NAME must appear in a later block that runs.
- A block right after the line `<!-- not run: REASON -->` is skipped (installs, builds of
  minutes, cluster launchers); REASON must say why. The marker shows in the raw file.
- Any other block, e.g. one without a language, fails the tests: run it, or mark it.

The markers are HTML comments on the last non-blank line before the opening fence (```
or ~~~, indented too, as in a list item), so they do not show on the rendered page. The run takes about a minute (training, export and
LAMMPS of tiny models, the plugin build is cached).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

import pytest
from paths import ROOT

READMES = ["README.md", "export/pair_style/README.md"]
SHELL = {"bash", "sh", "shell"}
PYTHON = {"python", "py"}

# what `forcefield template` in a shell block changes in the template it prints
TINY = {
    "model": {"channels": 4, "lmax": 1, "num_basis": 4, "radial_hidden": 8},
    "training": {"max_epochs": 1, "batch_size": 4, "device": "cpu", "num_threads": 1},
}
SHRINK = f"""
import sys, yaml
cfg = yaml.safe_load(sys.stdin)
for section, values in {TINY!r}.items():
    cfg[section].update(values)
sys.stdout.write(yaml.safe_dump(cfg, sort_keys=False))
"""
PRELUDE = """set -euo pipefail
forcefield() {
  if [ "${1-}" = template ]; then command forcefield "$@" | "$README_PYTHON" -c "$README_SHRINK"
  else command forcefield "$@"; fi
}
"""

FENCE = re.compile(r"^(\s*)(```|~~~)\s*([\w+-]*)\s*$")
MARKER = re.compile(r"^<!--\s*(not run|file)\b(.*?)-->\s*$")


@dataclass
class Block:
    where: str  # file:line of the opening fence
    lang: str
    text: str
    marker: Optional[str] = None  # "not run" | "file"
    value: Optional[str] = None  # the marker's reason / file name (None: no colon)


def parse_blocks(text: str, name: str) -> List[Block]:
    """The fenced blocks of a Markdown text, each with the marker on the line before it."""
    blocks: List[Block] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        start, body, indent, fence = i, [], len(m.group(1)), m.group(2)
        i += 1
        while i < len(lines) and not lines[i].strip().startswith(fence):
            body.append(lines[i][indent:] if lines[i][:indent].isspace() else lines[i].lstrip())
            i += 1
        block = Block(f"{name}:{start + 1}", m.group(3).lower(), "\n".join(body) + "\n")
        before = next((line.strip() for line in reversed(lines[:start]) if line.strip()), "")
        mk = MARKER.match(before)
        if mk:
            rest = mk.group(2).strip()
            block.marker = mk.group(1)
            block.value = rest[1:].strip() if rest.startswith(":") else None
        blocks.append(block)
        i += 1
    return blocks


def problems(blocks: List[Block]) -> List[str]:
    """What breaks the convention (see the module docstring); empty when all is well."""
    out = []
    for k, b in enumerate(blocks):
        if b.marker == "not run":
            if not b.value:
                out.append(f"{b.where}: `<!-- not run: REASON -->` needs a reason")
        elif b.marker == "file":
            if not b.value:
                out.append(f"{b.where}: `<!-- file: NAME -->` needs a file name")
            elif not any(b.value in later.text for later in blocks[k + 1 :] if runs(later)):
                out.append(f"{b.where}: file {b.value} is used by no later block that runs")
        elif not runs(b):
            out.append(
                f"{b.where}: a ```{b.lang} block cannot be run: make it python or bash, or mark it "
                "`<!-- not run: REASON -->` or `<!-- file: NAME -->` on the line before"
            )
    return out


def runs(block: Block) -> bool:
    return block.marker is None and (block.lang in SHELL or block.lang in PYTHON)


# ----------------------------------------------------------------- the convention


@pytest.mark.parametrize("readme", READMES)
def test_every_block_runs_or_is_marked(readme):
    blocks = parse_blocks((ROOT / readme).read_text(), readme)
    assert blocks, readme
    assert problems(blocks) == []


def test_unmarked_or_badly_marked_blocks_are_refused():
    text = "\n".join(
        [
            "```",  # 1: no language, no marker
            "units metal",
            "```",
            "<!-- not run: -->",
            "```bash",  # 5: empty reason
            "make demo",
            "```",
            "<!-- not run -->",
            "",
            "```bash",  # 10: no colon, no reason
            "make demo",
            "```",
            "<!-- file: in.lammps -->",
            "```",  # 14: a file nobody uses
            "units metal",
            "```",
            "```text",  # 17: a language that does not run
            "hello",
            "```",
            "- a list item:",
            "  ```",  # 21: indented, no language
            "  units metal",
            "  ```",
            "~~~",  # 24: tildes
            "units metal",
            "~~~",
        ]
    )
    found = problems(parse_blocks(text, "X.md"))
    assert [p.split(":")[1] for p in found] == ["1", "5", "10", "14", "17", "21", "24"], found
    fine = "<!-- not run: installs packages -->\n```bash\npip install x\n```\n"
    fine += "<!-- file: in.lammps -->\n```\nunits metal\n```\n```bash\nlmp -in in.lammps\n```\n"
    fine += "```python\nprint(1)\n```\n- in a list:\n\n  ```bash\n  echo indented\n  ```\n"
    assert problems(parse_blocks(fine, "Y.md")) == []


# ----------------------------------------------------------------- running them


def cu_au_frames(n: int, seed: int) -> list:
    import numpy as np
    from ase.build import bulk
    from ase.calculators.emt import EMT
    from ase.calculators.singlepoint import SinglePointCalculator

    rng = np.random.default_rng(seed)
    frames = []
    for k in range(n):
        atoms = bulk("Cu", "fcc", a=3.6, cubic=True)
        atoms.symbols[rng.choice(4, size=1 + k % 3, replace=False)] = "Au"
        atoms.rattle(0.1, seed=100 * seed + k)
        atoms.calc = EMT()
        labels = dict(energy=atoms.get_potential_energy(), forces=atoms.get_forces(), stress=atoms.get_stress())
        atoms.calc = SinglePointCalculator(atoms, **labels)
        frames.append(atoms)
    return frames


@pytest.fixture(scope="module")
def starting_files(tmp_path_factory) -> Path:
    """What a scratch folder starts with: train.xyz, test.xyz and model.pt (Cu, Au)."""
    import ase.io

    from forcefield import ForceField
    from forcefield.export.torchscript import export_model

    d = tmp_path_factory.mktemp("readme_files")
    ase.io.write(d / "train.xyz", cu_au_frames(12, 1), format="extxyz")
    ase.io.write(d / "test.xyz", cu_au_frames(4, 2), format="extxyz")
    tiny = {"species": ["Cu", "Au"], "r_max": 4.0, "num_layers": 2, **TINY["model"]}
    export_model(ForceField.from_config(tiny), d / "model.pt")
    return d


def run_block(block: Block, cwd: Path) -> subprocess.CompletedProcess:
    bindir = str(Path(sys.executable).parent)
    env = {
        **os.environ,
        "PATH": bindir + os.pathsep + os.environ.get("PATH", ""),
        "OMP_NUM_THREADS": "1",
        "README_PYTHON": sys.executable,
        "README_SHRINK": SHRINK,
    }
    if block.lang in PYTHON:
        cmd = [sys.executable, "-c", block.text]
    else:
        cmd = ["bash", "-c", PRELUDE + block.text]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.lammps
@pytest.mark.parametrize("readme", READMES)
def test_readme_blocks_run(readme, starting_files, plugin_path, tmp_path):
    """plugin_path: the plugin built (once, cached) before the blocks ask for it."""
    blocks = parse_blocks((ROOT / readme).read_text(), readme)
    assert problems(blocks) == []
    for f in starting_files.iterdir():
        shutil.copy(f, tmp_path / f.name)
    ran = 0
    for block in blocks:
        if block.marker == "not run":
            continue
        if block.marker == "file":
            (tmp_path / block.value).write_text(block.text)
            continue
        proc = run_block(block, tmp_path)
        tail = (proc.stdout + proc.stderr).strip()[-3000:]
        assert proc.returncode == 0, f"{block.where} failed (exit {proc.returncode}):\n{block.text}\n{tail}"
        ran += 1
    assert ran > 0
