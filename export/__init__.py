"""Deployment side: TorchScript export and the LAMMPS pair style plugin."""
