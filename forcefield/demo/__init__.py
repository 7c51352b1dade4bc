"""`forcefield demo`: built-in EMT Cu-Au data (`forcefield.demo.data`) and the end-to-end
run on it (`forcefield.demo.run`). Not part of the library's layers: it may use them all,
the export package included."""

from forcefield.demo.data import (
    DIMER_DISTANCE_RANGE,
    LATTICE_CONSTANTS,
    dimer_curve,
    generate_demo_dataset,
    generate_demo_frames,
    isolated_atom_energy,
)
from forcefield.demo.run import md_deck, nve_drift, run_demo, slab_with_evaporators

__all__ = [
    "run_demo",
    "slab_with_evaporators",
    "md_deck",
    "nve_drift",
    "generate_demo_dataset",
    "generate_demo_frames",
    "dimer_curve",
    "isolated_atom_energy",
    "DIMER_DISTANCE_RANGE",
    "LATTICE_CONSTANTS",
]
