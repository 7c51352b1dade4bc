"""Moved to forcefield.demo.data (the demo is no part of the data layer). This alias stays
only because tests/test_lammps_model.py still imports it from here; it imports nothing but
its new home (tests/test_imports.py checks that). Import from forcefield.demo instead."""

from forcefield.demo.data import (  # noqa: F401
    DIMER_DISTANCE_RANGE,
    LATTICE_CONSTANTS,
    dimer_curve,
    generate_demo_dataset,
    generate_demo_frames,
    isolated_atom_energy,
)
