"""The exported-file contract: the Python exporter and the C++ reader (pair_style forcefield)
agree on the format version and on the metadata keys (TorchScript ``_extra_files``).

Python side: ``FORMAT_VERSION`` and ``METADATA_KEYS`` of ``forcefield.export.torchscript``
(and what ``export_model`` and the toy export used by the LAMMPS tests really write).
C++ side: the one definition of each in the pair style's sources (export/pair_style/,
``static constexpr int FORMAT_VERSION = N;`` and ``METADATA_KEYS[] = {"...", ...};``),
read from the source text, so no compiler or LAMMPS is needed. The reader must use
those two constants and nothing hard-coded beside them. A version bump or a key added,
dropped or renamed on one side only fails here; ``test_mismatches_are_detected`` shows
that the comparison does fail on such edits.
"""

from __future__ import annotations

import re
import sys
import zipfile
from typing import List, Sequence, Tuple

import pytest

from forcefield.export.plugin import SOURCE_DIR  # noqa: E402
from forcefield.export.torchscript import FORMAT_VERSION, METADATA_KEYS  # noqa: E402
from forcefield.model.deployed import OPTIONAL_METADATA_KEYS  # noqa: E402

CPP_READER = "pair_forcefield.cpp"  # the file whose load_model() reads the export

_TOKEN = re.compile(r'("(?:\\.|[^"\\\n])*")|//[^\n]*|/\*.*?\*/', re.S)
_VERSION_DEF = re.compile(
    r"\b(?:static\s+)?(?:inline\s+)?constexpr\s+(?:int|long|unsigned)\s+FORMAT_VERSION\s*=\s*(\d+)\s*;"
)
_KEYS_DEF = re.compile(r"\bMETADATA_KEYS\s*(?:\[[^\]]*\])?\s*=?\s*\{([^{}]*)\}\s*;")
_STRING = re.compile(r'"((?:\\.|[^"\\])*)"')


def strip_comments(text: str) -> str:
    """C++ source without // and /* */ comments (string literals kept as they are)."""
    return _TOKEN.sub(lambda m: m.group(1) or " ", text)


def cpp_sources() -> dict:
    files = sorted(SOURCE_DIR.glob("*.h")) + sorted(SOURCE_DIR.glob("*.cpp"))
    assert any(f.name == CPP_READER for f in files), f"{CPP_READER} not in {SOURCE_DIR}"
    return {f.name: f.read_text() for f in files}


def parse_cpp_contract(sources: dict) -> Tuple[List[int], List[Tuple[str, ...]]]:
    """Every definition of FORMAT_VERSION and of METADATA_KEYS in the C++ sources (outside comments)."""
    versions: List[int] = []
    keys: List[Tuple[str, ...]] = []
    for text in map(strip_comments, sources.values()):
        versions += [int(v) for v in _VERSION_DEF.findall(text)]
        for body in _KEYS_DEF.findall(text):
            # only string literals and commas: anything else (a macro, a variable) is not
            # something this parser can read, so it must not be silently half-read
            rest = _STRING.sub("", body)
            assert re.fullmatch(r"[\s,]*", rest), f"METADATA_KEYS holds more than string literals: {body!r}"
            keys.append(tuple(_STRING.findall(body)))
    return versions, keys


def contract_mismatches(sources: dict, py_version: int, py_keys: Sequence[str]) -> List[str]:
    """Empty when the C++ sources read exactly the Python contract; else what disagrees."""
    problems: List[str] = []
    sources = {name: strip_comments(text) for name, text in sources.items()}
    versions, keys = parse_cpp_contract(sources)
    if len(versions) != 1:
        problems.append(f"expected one 'constexpr int FORMAT_VERSION = N;' in the C++ sources, found {versions}")
    elif versions[0] != py_version:
        problems.append(f"format version: C++ reads {versions[0]}, Python writes {py_version}")
    if len(keys) != 1:
        problems.append(f"expected one METADATA_KEYS definition in the C++ sources, found {len(keys)}")
    else:
        cpp_keys = keys[0]
        if len(set(cpp_keys)) != len(cpp_keys):
            problems.append(f"C++ METADATA_KEYS has duplicates: {cpp_keys}")
        if tuple(cpp_keys) != tuple(py_keys):
            problems.append(
                f"metadata keys: C++ requires {list(cpp_keys)}, Python writes {list(py_keys)} "
                f"(only in C++: {sorted(set(cpp_keys) - set(py_keys))}, "
                f"only in Python: {sorted(set(py_keys) - set(cpp_keys))})"
            )

    reader = sources.get(CPP_READER, "")
    # the reader fills the extra-files map from METADATA_KEYS, checks every key is
    # present, and compares format_version with FORMAT_VERSION
    if len(re.findall(r"\bfor\s*\([^;)]*:\s*METADATA_KEYS\s*\)", reader)) < 2:
        problems.append(f"{CPP_READER} does not loop over METADATA_KEYS to request and check the keys")
    if not re.search(
        r"!=\s*std::to_string\(\s*FORMAT_VERSION\s*\)|std::to_string\(\s*FORMAT_VERSION\s*\)\s*!=", reader
    ):
        problems.append(f"{CPP_READER} does not compare the file's format_version with FORMAT_VERSION")
    # no metadata key read by name outside the contract, no version number hard-coded
    read = set(re.findall(r'\bextra\s*\[\s*"([^"]*)"\s*\]', reader))
    if not read:
        problems.append(f'{CPP_READER} reads no metadata as extra["key"]: update this test with the reader')
    outside = sorted(read - set(py_keys) - set(OPTIONAL_METADATA_KEYS))
    if outside:
        problems.append(f"{CPP_READER} reads metadata keys the exporter does not write: {outside}")
    for name, text in sources.items():
        for m in re.finditer(r"format_version\W{0,3}\d", text):
            problems.append(f"{name}: hard-coded format version {m.group(0)!r} (use FORMAT_VERSION)")
    return problems


# --------------------------------------------------------------------------- tests


def test_python_contract_is_well_formed():
    assert isinstance(FORMAT_VERSION, int) and FORMAT_VERSION >= 1
    assert isinstance(METADATA_KEYS, tuple) and all(isinstance(k, str) and k for k in METADATA_KEYS)
    assert len(set(METADATA_KEYS)) == len(METADATA_KEYS)
    assert "format_version" in METADATA_KEYS


def test_cpp_reader_matches_python_exporter():
    problems = contract_mismatches(cpp_sources(), FORMAT_VERSION, METADATA_KEYS)
    assert problems == [], "\n".join(problems)


def test_cpp_contract_parsed_from_the_sources():
    """The parser found real values (not a vacuous pass): one version, the full key list."""
    versions, keys = parse_cpp_contract(cpp_sources())
    assert versions == [FORMAT_VERSION]
    assert keys == [tuple(METADATA_KEYS)]


def _edit(sources: dict, old: str, new: str) -> dict:
    hits = [name for name, text in sources.items() if old in text]
    assert hits, f"{old!r} not found in the C++ sources: update this test with the sources"
    return {name: text.replace(old, new) for name, text in sources.items()}


def test_mismatches_are_detected():
    """Each one-sided change of the contract makes contract_mismatches() report it."""
    sources = cpp_sources()
    cpp_version = f"FORMAT_VERSION = {FORMAT_VERSION};"
    first, last = f'"{METADATA_KEYS[0]}"', f'"{METADATA_KEYS[-1]}"'
    cases = {
        "C++ version bumped": (
            _edit(sources, cpp_version, f"FORMAT_VERSION = {FORMAT_VERSION + 1};"),
            FORMAT_VERSION,
            METADATA_KEYS,
        ),
        "Python version bumped": (sources, FORMAT_VERSION + 1, METADATA_KEYS),
        "key added in Python": (sources, FORMAT_VERSION, tuple(METADATA_KEYS) + ("charges",)),
        "key dropped in Python": (sources, FORMAT_VERSION, tuple(METADATA_KEYS)[:-1]),
        "key renamed in C++": (_edit(sources, last, '"meta.json"'), FORMAT_VERSION, METADATA_KEYS),
        "key dropped in C++": (_edit(sources, first + ", ", ""), FORMAT_VERSION, METADATA_KEYS),
        "version hard-coded in C++": (
            _edit(sources, "std::to_string(FORMAT_VERSION)", '"1"'),
            FORMAT_VERSION,
            METADATA_KEYS,
        ),
        "C++ reads an unlisted key": (
            {**sources, CPP_READER: sources[CPP_READER] + '\nauto q = extra["charges"];\n'},
            FORMAT_VERSION,
            METADATA_KEYS,
        ),
        "second C++ definition": (
            {**sources, "extra.h": f"static constexpr int FORMAT_VERSION = {FORMAT_VERSION};"},
            FORMAT_VERSION,
            METADATA_KEYS,
        ),
    }
    for what, (src, version, keys) in cases.items():
        assert contract_mismatches(src, version, keys), f"not detected: {what}"
    # comments do not count: a commented-out definition is not a definition
    commented = {
        **sources,
        "old.h": f'// static constexpr int FORMAT_VERSION = {FORMAT_VERSION + 7};\n/* METADATA_KEYS[] = {{"x"}}; */\n',
    }
    assert contract_mismatches(commented, FORMAT_VERSION, METADATA_KEYS) == []


def test_toy_export_writes_the_contract_keys():
    """The toy model of tests/test_lammps_plugin_build.py stands in for a real export."""
    from toy_exported_model import toy_extra_files

    extra = toy_extra_files()
    assert set(extra) == set(METADATA_KEYS)
    assert extra["format_version"] == str(FORMAT_VERSION)


def test_export_model_writes_the_contract_keys(tmp_path):
    """export_model writes exactly METADATA_KEYS (and the optional keys) as extra files,
    format_version = FORMAT_VERSION."""
    from model_utils import make_model

    from forcefield.export.torchscript import export_model

    path = export_model(make_model("float64", seed=3, channels=4, lmax=1, num_layers=1), tmp_path / "m.pt")
    with zipfile.ZipFile(path) as zf:
        extra = {n.split("/extra/", 1)[1]: n for n in zf.namelist() if "/extra/" in n}
        assert set(extra) == set(METADATA_KEYS) | set(OPTIONAL_METADATA_KEYS)
        assert zf.read(extra["format_version"]).decode().strip() == str(FORMAT_VERSION)


@pytest.mark.parametrize("fused", [True, False])
def test_export_names_its_operators(tmp_path, fused):
    """The `operators` entry (what the pair style reads to pick the fused kernel) lists the
    operators the file calls, and agrees with metadata.json."""
    import json

    import torch
    from model_utils import make_model

    from forcefield.export.torchscript import FUSED_OPERATORS, export_model

    model = make_model("float64", seed=1, channels=4, lmax=1, num_layers=1)
    path = export_model(model, tmp_path / "m.pt", fused_ops=fused)
    extra = {"operators": "", "metadata.json": ""}
    torch.jit.load(str(path), _extra_files=extra)
    extra = {k: v.decode() if isinstance(v, bytes) else v for k, v in extra.items()}
    assert extra["operators"].split() == (list(FUSED_OPERATORS) if fused else [])
    assert json.loads(extra["metadata.json"])["operators"] == extra["operators"].split()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-q"]))
