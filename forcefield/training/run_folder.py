"""The run folder of a training run: config.yaml, metrics.csv, learning_curve.png,
best.ckpt / last.ckpt (atomic writes) and test_metrics.json. Only the main process (rank 0)
writes; the others hold a RunFolder that does nothing."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Dict, List

from forcefield.atomic_io import write_text
from forcefield.errors import InputError
from forcefield.model.serialization import write_checkpoint
from forcefield.plots import learning_curve

METRIC_COLUMNS = [
    "epoch",
    "step",
    "lr",
    "train_loss",
    "train_energy_loss",
    "train_forces_loss",
    "train_stress_loss",
    "train_dens_loss",
    "dens_coefficient",
    "valid_loss",
    "valid_energy_mae",
    "valid_forces_mae",
    "valid_stress_mae",
    "time_s",
    "stage",
    "event",
]
RUN_FILES = ("best.ckpt", "last.ckpt", "metrics.csv", "config.yaml", "learning_curve.png", "test_metrics.json")


class RunFolder:
    def __init__(self, path: Path, writes: bool = True):
        self.path, self.writes = Path(path).expanduser(), writes
        self.replace: List[str] = []

    def existing(self) -> List[str]:
        return [f for f in RUN_FILES if (self.path / f).exists()]

    def check_free(self, resume: bool, overwrite: bool) -> None:
        """InputError for a folder holding another run (unless resumed or overwritten)."""
        existing = self.existing()
        self.replace = [] if resume else existing
        if self.replace and not overwrite:
            raise InputError(
                f"{self.path}: already holds a training run ({', '.join(existing)}); "
                "continue it with --resume or replace it with --overwrite"
            )

    def prepare(self, config_text: str) -> None:
        if not self.writes:
            return
        self.path.mkdir(parents=True, exist_ok=True)
        for name in self.replace:  # --overwrite: no file of the old run stays beside the new one
            (self.path / name).unlink(missing_ok=True)
        self.replace = []
        write_text(config_text, self.path / "config.yaml")

    def save(self, ckpt: dict, best: bool) -> None:
        if not self.writes:
            return
        write_checkpoint(ckpt, self.path / "last.ckpt")
        if best:
            write_checkpoint(ckpt, self.path / "best.ckpt")

    def write_metrics(self, rows: List[Dict[str, float]], log) -> None:
        if not self.writes:
            return
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=METRIC_COLUMNS, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: r.get(k, "") for k in METRIC_COLUMNS})
        write_text(buf.getvalue(), self.path / "metrics.csv")
        try:
            learning_curve(rows, self.path / "learning_curve.png")
        except Exception as exc:  # noqa: BLE001 - a plot must never stop training
            log(f"[yellow]learning curve not drawn: {exc}[/yellow]")

    def write_text(self, name: str, text: str) -> None:
        if self.writes:
            write_text(text, self.path / name)
