"""The `forcefield` command line: a thin typer layer over library functions."""
from __future__ import annotations

import typer

from forcefield import __version__

app = typer.Typer(
    name="forcefield",
    help="Train, evaluate, export and deploy (LAMMPS) an equivariant interatomic potential.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"forcefield {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version_callback, is_eager=True,
                                 help="Print the version and exit."),
) -> None:
    """forcefield command line."""


def main() -> None:
    app()
