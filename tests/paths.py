"""Where the tests' files are: the real reference data sets kept in the repository."""

from pathlib import Path

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
DATASETS = TESTS / "datasets"  # rMD17 ethanol and the Zuo silicon set (see datasets/README.md)
