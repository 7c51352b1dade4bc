"""Every plot of the package (PNG, matplotlib Agg backend, written atomically): the
learning curve of a training run, parity plots of `evaluate`, the demo's dimer curves."""

from __future__ import annotations

from pathlib import Path
from typing import List, Sequence, Tuple

import numpy as np

from forcefield.atomic_io import atomic_path


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> None:
    plt = _plt()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)


def learning_curve(rows: List[dict], path: Path) -> None:
    """train/valid loss and validation MAEs against epoch."""
    plt = _plt()
    epochs = [r["epoch"] for r in rows]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    axes[0].semilogy(epochs, [r["train_loss"] for r in rows], label="train")
    axes[0].semilogy(epochs, [r["valid_loss"] for r in rows], label="valid")
    axes[0].set_ylabel("loss")
    axes[0].legend()
    axes[1].semilogy(epochs, [r["valid_energy_mae"] for r in rows], color="C2")
    axes[1].set_ylabel("valid energy MAE (meV/atom)")
    axes[2].semilogy(epochs, [r["valid_forces_mae"] for r in rows], color="C3")
    axes[2].set_ylabel("valid forces MAE (meV/Å)")
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    _save(fig, path)


def parity_plot(energy_ref, energy_pred, forces_ref, forces_pred, path: Path, title: str = "") -> None:
    """Energy per atom and force components, predicted against reference."""
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(9, 4.2))
    for ax, ref, pred, unit, name in (
        (axes[0], energy_ref, energy_pred, "eV/atom", "energy"),
        (axes[1], forces_ref, forces_pred, "eV/Å", "forces"),
    ):
        ref, pred = np.ravel(ref), np.ravel(pred)
        if ref.size:
            lo, hi = float(min(ref.min(), pred.min())), float(max(ref.max(), pred.max()))
            ax.plot([lo, hi], [lo, hi], "k--", lw=0.8)
            ax.scatter(ref, pred, s=4, alpha=0.5)
            mae = float(np.mean(np.abs(pred - ref))) * 1000
            ax.set_title(f"{name}: MAE {mae:.2f} m{unit}")
        ax.set_xlabel(f"reference ({unit})")
        ax.set_ylabel(f"predicted ({unit})")
    if title:
        fig.suptitle(title)
    _save(fig, path)


def dimer_plot(curves: Sequence[Tuple[str, np.ndarray, np.ndarray, np.ndarray]], r_max: float, path: Path) -> None:
    """Dimer dissociation curves: per (label, distances, reference, model) one colour, the
    reference dashed and the model solid, energies relative to the isolated atoms (E0)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for k, (label, d, ref, pred) in enumerate(curves):
        ax.plot(d, ref, "--", color=f"C{k}", label=f"{label} EMT")
        ax.plot(d, pred, "-", color=f"C{k}", label=f"{label} model")
    ax.axhline(0.0, color="k", lw=0.7)
    ax.axvline(r_max, color="grey", lw=0.7, ls=":", label="r_max")
    ax.set_xlabel("distance (Å)")
    ax.set_ylabel("E - (E0_a + E0_b)  (eV)")
    ax.set_title("dimer dissociation: smooth fall-back to E0")
    ax.set_ylim(min(-2.5, ax.get_ylim()[0]), 1.5)
    ax.legend(fontsize=8)
    _save(fig, path)
