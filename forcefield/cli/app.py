"""The `forcefield` command line: a thin typer layer over library functions.

User errors (InputError, bad config, missing files) print one line to stderr and exit 2,
without a traceback.
"""
from __future__ import annotations

import functools
import json
import sys
from pathlib import Path
from typing import Optional

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


def user_errors(fn):
    """Turn user-input errors into one line on stderr and exit code 2."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from forcefield.errors import InputError
        from forcefield.export.plugin import PluginBuildError
        try:
            return fn(*args, **kwargs)
        except (InputError, ValueError, FileNotFoundError, PluginBuildError) as exc:
            msg = " ".join(str(exc).split())
            typer.echo(f"error: {msg}", err=True)
            raise typer.Exit(2)
        except KeyboardInterrupt:
            typer.echo("interrupted", err=True)
            raise typer.Exit(130)
    return wrapper


def _quiet_warnings() -> None:
    import warnings
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", category=UserWarning, module="torch.jit")


@app.command()
def template() -> None:
    """Print a complete, commented default YAML config."""
    from forcefield.training.config import TEMPLATE
    typer.echo(TEMPLATE, nl=False)


@app.command()
@user_errors
def train(
    config: Path = typer.Argument(..., help="YAML config (see `forcefield template`)."),
    output: Path = typer.Option(Path("run"), "--output", "-o", help="Output folder."),
    resume: bool = typer.Option(False, "--resume", help="Continue from OUTPUT/last.ckpt."),
) -> None:
    """Train a model: writes best.ckpt, last.ckpt, metrics.csv, config.yaml and plots into OUTPUT
    (and test_metrics.json when data.test is set)."""
    _quiet_warnings()
    from forcefield.training.config import load_config
    from forcefield.training.trainer import train as run_training
    cfg = load_config(config)
    trainer = run_training(cfg, output, resume=resume)
    row = trainer.rows[-1] if trainer.rows else {}
    typer.echo(f"trained {trainer.epoch} epochs; valid energy MAE {row.get('valid_energy_mae', float('nan')):.3f} "
               f"meV/atom, forces MAE {row.get('valid_forces_mae', float('nan')):.2f} meV/Å")
    if trainer.test_metrics:
        t = trainer.test_metrics
        typer.echo(f"test ({t['n_structures']} structures): energy MAE {t.get('energy_mae', float('nan')):.3f} "
                   f"meV/atom, forces MAE {t.get('forces_mae', float('nan')):.2f} meV/Å "
                   f"-> {Path(output) / 'test_metrics.json'}")
    typer.echo(str((Path(output) / "best.ckpt").resolve()))


@app.command()
@user_errors
def evaluate(
    model: Path = typer.Argument(..., help="A checkpoint (.ckpt) or an exported model (.pt)."),
    data: Path = typer.Argument(..., help="Labelled structures (extxyz or anything ase.io reads)."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Write the metrics as JSON."),
    plot: Optional[Path] = typer.Option(None, "--plot", help="Write a parity plot (PNG)."),
    energy_key: str = typer.Option("energy", help="Energy key in the file."),
    forces_key: str = typer.Option("forces", help="Forces key in the file."),
    stress_key: str = typer.Option("stress", help="Stress key in the file."),
) -> None:
    """Energy / force / stress errors of MODEL on DATA (meV/atom, meV/Å, meV/Å^3)."""
    _quiet_warnings()
    from forcefield.evaluation import evaluate as run_eval
    from forcefield.training.atomic_io import write_text
    metrics, arrays = run_eval(model, data, energy_key, forces_key, stress_key)
    for k, v in metrics.items():
        typer.echo(f"{k:>14s}  {v:.4f}" if isinstance(v, float) else f"{k:>14s}  {v}")
    if json_out:
        write_text(json.dumps(metrics, indent=2) + "\n", json_out)
    if plot:
        from forcefield.training.plots import parity_plot
        parity_plot(arrays["energy_ref"], arrays["energy_pred"], arrays["forces_ref"], arrays["forces_pred"],
                    plot, title=f"{Path(model).name} on {Path(data).name}")


@app.command()
@user_errors
def export(
    checkpoint: Path = typer.Argument(..., help="A training checkpoint (.ckpt)."),
    output: Path = typer.Option(..., "--output", "-o", help="Exported TorchScript file (.pt)."),
    dtype: Optional[str] = typer.Option(None, help="float32 or float64 (default: the model's)."),
) -> None:
    """Export a checkpoint to TorchScript for LAMMPS and Python (DeNS parts dropped)."""
    _quiet_warnings()
    from forcefield.export.torchscript import export_model
    path = export_model(checkpoint, output, dtype)
    typer.echo(str(Path(path).resolve()))


@app.command("lammps-plugin")
@user_errors
def lammps_plugin(
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Build folder (default: a cache)."),
    force: bool = typer.Option(False, "--force", help="Rebuild even if a cached build exists."),
) -> None:
    """Build (or reuse) the LAMMPS plugin; prints the path of forcefieldplugin.so last."""
    from forcefield.export.plugin import build_plugin
    path = build_plugin(output, force=force)
    typer.echo(str(Path(path).resolve()))


@app.command()
@user_errors
def demo(
    output: Path = typer.Option(Path("demo_output"), "--output", "-o", help="Output folder."),
    quick: bool = typer.Option(False, "--quick", help="Seconds instead of minutes (smoke test)."),
    train_time: Optional[float] = typer.Option(None, help="Training budget in seconds."),
) -> None:
    """The main job on built-in data: generate, train (DeNS + switch), evaluate, export, LAMMPS MD."""
    _quiet_warnings()
    from forcefield.demo import run_demo
    run_demo(output, quick=quick, train_time=train_time)


def main() -> None:
    app()


if __name__ == "__main__":
    sys.exit(main())
