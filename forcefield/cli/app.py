"""The `forcefield` command line: a thin typer layer over library functions.

User errors print one line to stderr and exit 2, without a traceback: the project's own
`forcefield.errors.InputError` (bad config keys, data files, elements, checkpoints),
`PluginBuildError` (building the LAMMPS plugin) and `OSError` (a file that cannot be read or
written, with the file and the reason). Any other exception is a bug and keeps its traceback.
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
    version: bool = typer.Option(
        False, "--version", callback=_version_callback, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """forcefield command line."""


def user_errors(fn):
    """Turn user-input errors (InputError, PluginBuildError, OSError) into one line on stderr
    and exit code 2. Anything else, a ValueError included, propagates with its traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from forcefield.errors import InputError
        from forcefield.export.plugin import PluginBuildError

        try:
            return fn(*args, **kwargs)
        except (InputError, PluginBuildError) as exc:
            msg = " ".join(str(exc).split())
            typer.echo(f"error: {msg}", err=True)
            raise typer.Exit(2) from None
        except OSError as exc:  # permissions, a full disk, ...: the file and the reason
            where = f"{exc.filename}: " if exc.filename else ""
            typer.echo("error: " + " ".join(f"{where}{exc.strerror or exc}".split()), err=True)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            typer.echo("interrupted", err=True)
            raise typer.Exit(130) from None

    return wrapper


def _expand(path: Optional[Path]) -> Optional[Path]:
    """`~` in a path argument (a quoted or --opt=~/x one the shell left alone)."""
    return None if path is None else Path(path).expanduser()


def _check_parents(path: Path, option: str) -> None:
    """The nearest existing ancestor of `path` must be a folder."""
    from forcefield.errors import InputError

    for p in path.parents:
        if p.exists():
            if not p.is_dir():
                raise InputError(f"{option} {path}: {p} is a file, expected a folder")
            return


def _output_file(path: Optional[Path], option: str) -> Optional[Path]:
    """An output file option, checked before any work is done: not an existing folder."""
    path = _expand(path)
    if path is not None:
        if path.is_dir():
            from forcefield.errors import InputError

            raise InputError(f"{option} {path}: is a directory, expected a file name")
        _check_parents(path, option)
    return path


def _output_dir(path: Path, option: str) -> Path:
    """An output folder option: not an existing file (nor inside one)."""
    path = _expand(path)
    if path.exists() and not path.is_dir():
        from forcefield.errors import InputError

        raise InputError(f"{option} {path}: is a file, expected a folder")
    _check_parents(path, option)
    return path


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
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace the training run already in OUTPUT."),
) -> None:
    """Train a model: writes best.ckpt, last.ckpt, metrics.csv, config.yaml and plots into OUTPUT
    (and test_metrics.json when data.test is set)."""
    _quiet_warnings()
    from forcefield.training.config import load_config
    from forcefield.training.trainer import train as run_training

    output = _output_dir(output, "--output")
    cfg = load_config(_expand(config))
    trainer = run_training(cfg, output, resume=resume, overwrite=overwrite)
    row = trainer.rows[-1] if trainer.rows else {}
    typer.echo(
        f"trained {trainer.epoch} epochs; valid energy MAE {row.get('valid_energy_mae', float('nan')):.3f} "
        f"meV/atom, forces MAE {row.get('valid_forces_mae', float('nan')):.2f} meV/Å"
    )
    if trainer.test_metrics:
        t = trainer.test_metrics
        typer.echo(
            f"test ({t['n_structures']} structures): energy MAE {t.get('energy_mae', float('nan')):.3f} "
            f"meV/atom, forces MAE {t.get('forces_mae', float('nan')):.2f} meV/Å "
            f"-> {Path(output) / 'test_metrics.json'}"
        )
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
    from forcefield.atomic_io import write_text
    from forcefield.evaluation import evaluate as run_eval
    from forcefield.evaluation import label_counts

    json_out, plot = _output_file(json_out, "--json"), _output_file(plot, "--plot")
    model, data = _expand(model), _expand(data)
    metrics, arrays = run_eval(model, data, energy_key, forces_key, stress_key)
    counts = label_counts(metrics)
    for k, v in metrics.items():
        if k.startswith("n_") and k != "n_structures":
            continue  # shown beside the metric
        line = f"{k:>14s}  {v:.4f}" if isinstance(v, float) else f"{k:>14s}  {v}"
        q = k.rsplit("_", 1)[0]
        if k.endswith("_mae") and q in counts:
            line += f"  ({counts[q]} structures)"
        typer.echo(line)
    if json_out:
        write_text(json.dumps(metrics, indent=2) + "\n", json_out)
    if plot:
        from forcefield.plots import parity_plot

        parity_plot(
            arrays["energy_ref"],
            arrays["energy_pred"],
            arrays["forces_ref"],
            arrays["forces_pred"],
            plot,
            title=f"{Path(model).name} on {Path(data).name}",
        )


@app.command()
@user_errors
def export(
    checkpoint: Path = typer.Argument(..., help="A training checkpoint (.ckpt)."),
    output: Path = typer.Option(..., "--output", "-o", help="Exported TorchScript file (.pt)."),
    dtype: Optional[str] = typer.Option(None, help="float32 or float64 (default: the model's)."),
    portable: bool = typer.Option(
        False,
        "--portable",
        help="A file that loads with torch alone, without forcefield's operators (slower in LAMMPS).",
    ),
) -> None:
    """Export a checkpoint to TorchScript for LAMMPS and Python (DeNS parts dropped)."""
    _quiet_warnings()
    from forcefield.export.torchscript import export_model

    output = _output_file(output, "--output")
    path = export_model(_expand(checkpoint), output, dtype, fused_ops=not portable)
    typer.echo(str(Path(path).resolve()))


@app.command("lammps-plugin")
@user_errors
def lammps_plugin(
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Build folder (default: a cache)."),
    force: bool = typer.Option(False, "--force", help="Rebuild even if a cached build exists."),
) -> None:
    """Build (or reuse) the LAMMPS plugin; prints the path of forcefieldplugin.so last."""
    from forcefield.export.plugin import build_plugin

    path = build_plugin(None if output is None else _output_dir(output, "--output"), force=force)
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

    run_demo(_output_dir(output, "--output"), quick=quick, train_time=train_time)


def main() -> None:
    app()


if __name__ == "__main__":
    sys.exit(main())
