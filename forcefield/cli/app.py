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
    if not trainer.dist.is_main:
        return  # under torchrun / srun only rank 0 reports
    if not trainer.rows:
        typer.echo("no validation ran: the run ended before its first optimizer step (no best.ckpt)")
        return
    row = trainer.rows[-1]
    steps = int(row.get("step") or 0)
    typer.echo(
        f"trained {trainer.epoch} epochs ({steps} steps); valid energy MAE {row['valid_energy_mae']:.3f} "
        f"meV/atom, forces MAE {row['valid_forces_mae']:.2f} meV/Å"
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
def preprocess(
    inputs: list[Path] = typer.Argument(..., help="Training structures (extxyz or anything ase.io reads)."),
    output: Path = typer.Option(..., "--output", "-o", help="The dataset file to write (HDF5)."),
    r_max: float = typer.Option(5.0, "--r-max", help="Cutoff of the stored neighbour lists, Å (= model.r_max)."),
    species: Optional[str] = typer.Option(None, help="Comma-separated elements allowed (default: those in the data)."),
    valid: str = typer.Option("0.1", help="Fraction of the inputs held out (seeded), or a file of valid structures."),
    test: Optional[Path] = typer.Option(None, help="A file of test structures to store beside them."),
    isolated_atoms: Optional[Path] = typer.Option(None, "--isolated-atoms", help="Isolated-atom energies (E0)."),
    energy_key: str = typer.Option("energy", help="Energy key in the files."),
    forces_key: str = typer.Option("forces", help="Forces key in the files."),
    stress_key: str = typer.Option("stress", help="Stress key in the files."),
    require: str = typer.Option("energy,forces", help="Labels every structure must have ('none' for none)."),
    seed: int = typer.Option(0, help="Seed of the valid split (= training.seed gives the split training makes)."),
    neighbours: bool = typer.Option(True, "--neighbours/--no-neighbours", help="Store neighbour lists."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing OUTPUT."),
) -> None:
    """Read structures once, check them, and write one HDF5 dataset (with statistics) that
    training streams from: data.train / data.valid / data.test accept it like a file."""
    import time

    from forcefield.data.preprocess import preprocess as run_preprocess
    from forcefield.errors import InputError

    output = _output_file(output, "--output")
    try:
        valid_arg = float(valid)
    except ValueError:
        valid_arg = str(_expand(Path(valid)))
    if isinstance(valid_arg, float) and not 0.0 <= valid_arg < 1.0:
        raise InputError(f"--valid {valid}: a fraction must lie in [0, 1)")
    t0 = time.perf_counter()
    summary = run_preprocess(
        [str(_expand(p)) for p in inputs],
        output,
        r_max=r_max,
        species=None if species is None else [s.strip() for s in species.split(",") if s.strip()],
        valid=valid_arg,
        test=None if test is None else [str(_expand(test))],
        isolated_atoms=None if isolated_atoms is None else str(_expand(isolated_atoms)),
        energy_key=energy_key,
        forces_key=forces_key,
        stress_key=stress_key,
        require=[] if require.strip() == "none" else [r.strip() for r in require.split(",") if r.strip()],
        seed=seed,
        neighbours=neighbours,
        overwrite=overwrite,
    )
    dt = time.perf_counter() - t0
    typer.echo(
        f"{summary['structures']} structures ({summary['train']} train, {summary['valid']} valid, "
        f"{summary['test']} test; {summary['atoms']} atoms, {summary['edges']} edges) in {dt:.1f} s "
        f"({summary['structures'] / max(dt, 1e-9):.0f} structures/s)"
    )
    typer.echo(str(Path(summary["output"]).resolve()))


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
