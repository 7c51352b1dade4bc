"""Kept for existing imports: the atomic writers live in forcefield.atomic_io."""

from forcefield.atomic_io import atomic_path, save_torch, write_bytes, write_text  # noqa: F401
