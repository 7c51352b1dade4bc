"""`python -m forcefield ...`: the CLI (the form torchrun and srun start: `torchrun -m forcefield train ...`)."""

from forcefield.cli.app import main

main()
