"""The training loop: Adam/AdamW, warm-up + plateau or cosine LR (training/schedule.py),
a final stage with other loss weights, early stopping, EMA, gradient clipping, DeNS,
per-epoch validation, metrics.csv, best/last checkpoints (atomic) and --resume.

Determinism: all randomness of training (shuffling, DeNS selection and noise) comes from
one numpy Generator seeded by training.seed; its state, torch's RNG state, the optimizer,
schedule and EMA are checkpointed, so a resumed run continues exactly where it stopped.
An epoch cut short by max_time is not recorded as an epoch: last.ckpt then holds the
position inside it (its batch order and next batch), and --resume finishes it.
The LR schedule counts optimizer steps, so it does not depend on timing; only what is
sized from max_time (cosine, the start of the final stage, the DeNS decay) does.
"""

from __future__ import annotations

import csv
import io
import math
import time
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import torch

from forcefield.atomic_io import write_text
from forcefield.data.graph import frame_to_graph
from forcefield.errors import InputError
from forcefield.model.forcefield import ForceField
from forcefield.model.normalization import Normalization
from forcefield.model.serialization import read_checkpoint, write_checkpoint
from forcefield.plots import learning_curve
from forcefield.training.batches import make_batch
from forcefield.training.config import Config, dump_config
from forcefield.training.datasets import fit_normalization, load_datasets
from forcefield.training.dens import DeNS
from forcefield.training.ema import EMA
from forcefield.training.loss import batch_loss
from forcefield.training.resume import check_resume_config
from forcefield.training.schedule import Schedule

METRIC_COLUMNS = [
    "epoch",
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


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise InputError("training.device: cuda requested but no CUDA device is available")
    return torch.device(name)


class Trainer:
    def __init__(
        self, cfg: Config, output: Path | str, resume: bool = False, quiet: bool = False, overwrite: bool = False
    ):
        self.cfg = cfg
        self.out = Path(output).expanduser()
        self.quiet = quiet
        tr = cfg.training
        self._threads_before = torch.get_num_threads()
        self.device = resolve_device(tr.device)
        torch.manual_seed(tr.seed)
        self.rng = np.random.default_rng(tr.seed)
        self.resume_changes: Dict[str, tuple] = {}

        resume_ckpt = None
        existing = [f for f in RUN_FILES if (self.out / f).exists()]
        if resume:
            last = self.out / "last.ckpt"
            if not last.is_file():
                raise InputError(f"{last}: nothing to resume from")
            resume_ckpt = read_checkpoint(last)
            self.resume_changes = check_resume_config(resume_ckpt["config"], cfg.model_dump(mode="json"), self.out)
        self._replace = [f for f in existing if not resume]

        self.data = load_datasets(cfg)  # bad data is reported before a taken output folder
        if self._replace and not overwrite:
            raise InputError(
                f"{self.out}: already holds a training run ({', '.join(existing)}); "
                "continue it with --resume or replace it with --overwrite"
            )
        # model.species and model.r_max are those of a resumed checkpoint too (--resume refuses
        # a changed model section); the statistics count neighbours on these graphs
        self.species, self.r_max = list(cfg.model.species), float(cfg.model.r_max)
        self.train_graphs = [frame_to_graph(f, self.species, self.r_max) for f in self.data.train]
        self.valid_graphs = [frame_to_graph(f, self.species, self.r_max) for f in self.data.valid]
        if resume_ckpt is not None:
            model_cfg = resume_ckpt["model_config"]
            norm = Normalization.model_validate(resume_ckpt["normalization"])
        else:
            model_cfg, norm = cfg.model, fit_normalization(cfg, self.data, self.train_graphs)
        self.model = ForceField.from_config(model_cfg, norm).to(self.device)
        self.dtype = self.model.dtype

        self.dens: Optional[DeNS] = DeNS(cfg.dens, self.model, self.device) if cfg.dens.enabled else None
        params = list(self.model.parameters()) + (self.dens.parameters() if self.dens is not None else [])
        opt_cls = torch.optim.AdamW if tr.optimizer == "adamw" else torch.optim.Adam
        self.optimizer = opt_cls(params, lr=tr.lr, weight_decay=tr.weight_decay, amsgrad=tr.amsgrad)
        steps_per_epoch = math.ceil(len(self.train_graphs) / tr.batch_size)
        self.schedule = Schedule(tr, steps_per_epoch)
        self._set_lr(self.schedule.lr)
        self.ema = EMA(self.model, tr.ema_decay) if tr.ema_decay else None
        self.epoch = 0
        self.best = math.inf
        self.rows: List[Dict[str, float]] = []
        self.elapsed = 0.0
        self.epoch_state: Optional[dict] = None  # position inside an epoch cut short by max_time
        self.stop_reason = ""
        self.test_metrics: Optional[Dict[str, float]] = None
        if resume_ckpt is not None:
            self._load_state(resume_ckpt)

    @property
    def encoder(self):
        """DeNS's force encoder (None without DeNS)."""
        return self.dens.encoder if self.dens is not None else None

    @property
    def head(self):
        """DeNS's noise head (None without DeNS)."""
        return self.dens.head if self.dens is not None else None

    @property
    def weights(self) -> Dict[str, float]:
        return self.schedule.loss_weights()

    def _set_lr(self, lr: float) -> None:
        for g in self.optimizer.param_groups:
            g["lr"] = lr

    # ------------------------------------------------------------------ state
    def _eval_state(self) -> dict:
        return self.ema.shadow if self.ema is not None else self.model.state_dict()

    def _checkpoint(self) -> dict:
        return {
            "model_config": self.model.model_config().model_dump(mode="json"),
            "normalization": self.model.normalization().model_dump(mode="json"),
            "model_state": {k: v.detach().cpu() for k, v in self._eval_state().items()},
            "raw_model_state": self.model.state_dict(),
            **(self.dens.state_dict() if self.dens is not None else {"encoder_state": None, "head_state": None}),
            "optimizer": self.optimizer.state_dict(),
            "schedule": self.schedule.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "numpy_rng": self.rng.bit_generator.state,
            "torch_rng": torch.get_rng_state(),
            "epoch": self.epoch,
            "best": self.best,
            "rows": self.rows,
            "elapsed": self.elapsed,
            "epoch_state": self.epoch_state,
            "config": self.cfg.model_dump(mode="json"),
        }

    def _load_state(self, ckpt: dict) -> None:
        self.model.load_state_dict(ckpt["raw_model_state"])
        if self.dens is not None and ckpt.get("encoder_state") is not None:
            self.dens.load_state_dict(ckpt)
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.schedule.load_state_dict(ckpt.get("schedule"))
        self._set_lr(self.schedule.lr)
        if self.ema is not None and ckpt.get("ema") is not None:
            self.ema.load_state_dict(ckpt["ema"])
        self.rng.bit_generator.state = ckpt["numpy_rng"]
        torch.set_rng_state(ckpt["torch_rng"])
        self.epoch, self.best, self.rows = ckpt["epoch"], ckpt["best"], list(ckpt["rows"])
        self.elapsed = ckpt.get("elapsed", 0.0)
        self.epoch_state = ckpt.get("epoch_state")

    def _save(self, best: bool) -> None:
        ckpt = self._checkpoint()
        write_checkpoint(ckpt, self.out / "last.ckpt")
        if best:
            write_checkpoint(ckpt, self.out / "best.ckpt")

    def _write_metrics(self) -> None:
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=METRIC_COLUMNS, extrasaction="ignore")
        w.writeheader()
        for r in self.rows:
            w.writerow({k: r.get(k, "") for k in METRIC_COLUMNS})
        write_text(buf.getvalue(), self.out / "metrics.csv")
        try:
            learning_curve(self.rows, self.out / "learning_curve.png")
        except Exception as exc:  # noqa: BLE001 - a plot must never stop training
            self._log(f"[yellow]learning curve not drawn: {exc}[/yellow]")

    def _log(self, msg: str) -> None:
        if not self.quiet:
            from rich.console import Console

            Console(stderr=True).print(msg)

    # ------------------------------------------------------------------ loop
    def dens_coefficient(self, progress: float) -> float:
        return self.dens.coefficient(progress) if self.dens is not None else 0.0

    def _out_of_time(self) -> bool:
        tr = self.cfg.training
        return bool(tr.max_time) and self.elapsed >= tr.max_time

    def train_epoch(self, bar=None, task=None) -> Optional[Dict[str, float]]:
        """One epoch (or the rest of one cut short earlier). None if max_time cut it short:
        then `epoch_state` holds where it stopped."""
        tr = self.cfg.training
        if self.epoch_state is None:
            order = self.rng.permutation(len(self.train_graphs))
            state = {"order": order.tolist(), "next": 0, "sums": {}, "counts": {}, "coef": 0.0}
        else:
            state, self.epoch_state = self.epoch_state, None
        order = state["order"]
        batches = [order[k : k + tr.batch_size] for k in range(0, len(order), tr.batch_size)]
        sums, counts = state["sums"], state["counts"]  # a part (dens, stress) is averaged over the batches that have it
        self.model.train()
        t_last = time.perf_counter()
        weights = self.weights
        for b in range(state["next"], len(batches)):
            idx = batches[b]
            state["coef"] = coef = self.dens_coefficient(self.schedule.progress(self.elapsed))
            dens = self.dens.batch_config(coef) if self.dens is not None else None
            batch = make_batch(
                [self.train_graphs[i] for i in idx], self.species, self.r_max, self.dtype, self.device, self.rng, dens
            )
            self.optimizer.zero_grad(set_to_none=True)
            loss, parts, _ = batch_loss(self.model, batch, weights, self.encoder, self.head, coef)
            loss.backward()
            if tr.grad_clip:
                torch.nn.utils.clip_grad_norm_(
                    [p for g in self.optimizer.param_groups for p in g["params"]], tr.grad_clip
                )
            self.optimizer.step()
            if self.ema is not None:
                self.ema.update(self.model)
            for k, v in (("loss", float(loss.detach())), *parts.items()):
                sums[k] = sums.get(k, 0.0) + v
                counts[k] = counts.get(k, 0) + 1
            now = time.perf_counter()
            self.elapsed += now - t_last
            t_last = now
            self._set_lr(self.schedule.after_step(self.elapsed))
            if bar is not None:
                bar.update(
                    task,
                    advance=len(idx),
                    description=f"epoch {self.epoch + 1} loss {sums['loss'] / counts['loss']:.4g}",
                )
            if self._out_of_time() and b + 1 < len(batches):
                state["next"] = b + 1
                self.epoch_state = state
                return None
        out = {f"train_{k}_loss" if k != "loss" else "train_loss": v / counts[k] for k, v in sums.items()}
        out["dens_coefficient"] = state["coef"]
        out["steps"] = len(batches)
        return out

    def validate(self, graphs=None) -> Dict[str, float]:
        """Loss and MAEs (meV/atom, meV/Å, meV/Å^3) of the evaluated (EMA) weights."""
        graphs = self.valid_graphs if graphs is None else graphs
        raw = None
        if self.ema is not None:
            raw = {k: v.clone() for k, v in self.model.state_dict().items()}
            self.model.load_state_dict(self.ema.shadow)
        self.model.eval()
        tot = {"loss": 0.0, "e": 0.0, "f": 0.0, "s": 0.0}
        cnt = {"loss": 0, "e": 0, "f": 0, "s": 0}
        bs = max(self.cfg.training.batch_size, 8)
        try:
            for k in range(0, len(graphs), bs):
                batch = make_batch(graphs[k : k + bs], self.species, self.r_max, self.dtype, self.device)
                loss, _, out = batch_loss(self.model, batch, self.weights, create_graph=False)
                g = int(batch["num_graphs"])
                tot["loss"] += float(loss.detach()) * g
                cnt["loss"] += g
                if "energy" in batch:
                    err = (out["energy"] - batch["energy"]).detach() / batch["num_atoms"]
                    tot["e"] += float(err.abs().sum())
                    cnt["e"] += g
                if "forces" in batch:
                    err = (out["forces"] - batch["forces"]).detach()
                    tot["f"] += float(err.abs().sum())
                    cnt["f"] += err.numel()
                if "virial" in out and "stress" in batch:
                    pred = -out["virial"].detach() / batch["volume"].clamp(min=1e-12).view(-1, 1, 1)
                    m = batch["stress_mask"]
                    tot["s"] += float((pred - batch["stress"]).abs()[m].sum())
                    cnt["s"] += int(m.sum()) * 9
        finally:
            if raw is not None:
                self.model.load_state_dict(raw)
        mean = lambda key: tot[key] / cnt[key] if cnt[key] else float("nan")  # noqa: E731
        return {
            "valid_loss": mean("loss"),
            "valid_energy_mae": 1000 * mean("e"),
            "valid_forces_mae": 1000 * mean("f"),
            "valid_stress_mae": 1000 * mean("s"),
        }

    def _finish_epoch(self, row: Dict[str, float]) -> None:
        tr = self.cfg.training
        stage = self.schedule.stage
        row.update(self.validate())
        self.epoch += 1
        row.update(epoch=self.epoch, lr=self.optimizer.param_groups[0]["lr"], time_s=self.elapsed, stage=stage)
        improved = row["valid_loss"] < self.best
        if improved:
            self.best = row["valid_loss"]
        note = self.schedule.after_epoch(row["valid_loss"], int(row.pop("steps")), self.elapsed)
        self._set_lr(self.schedule.lr)
        if self.schedule.stage != stage:
            self.best = math.inf  # the validation loss changes meaning with the loss weights
        if self.epoch >= tr.max_epochs and not self.schedule.stopped:
            note = "; ".join(filter(None, [note, f"max_epochs ({tr.max_epochs}) reached"]))
        elif self._out_of_time() and not self.schedule.stopped:
            note = "; ".join(filter(None, [note, f"max_time ({tr.max_time:g} s) reached"]))
        row["event"] = note
        if note:
            self._log(f"epoch {self.epoch}: {note}")
        self.stop_reason = self.schedule.stopped
        self.rows.append(row)
        self._save(best=improved)
        self._write_metrics()

    def _prepare_folder(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        for name in self._replace:  # --overwrite: no file of the old run stays beside the new one
            (self.out / name).unlink(missing_ok=True)
        self._replace = []
        for key, (old, new) in self.resume_changes.items():
            self._log(f"resume: {key} {old!r} -> {new!r}")
        write_text(dump_config(self.cfg), self.out / "config.yaml")

    def run(self) -> Dict[str, float]:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        tr = self.cfg.training
        if tr.num_threads:
            torch.set_num_threads(tr.num_threads)
        self._prepare_folder()
        cols = (
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.fields[status]}"),
        )
        try:
            with Progress(*cols, disable=self.quiet, transient=False) as bar:
                while self.epoch < tr.max_epochs and not self._out_of_time() and not self.schedule.stopped:
                    task = bar.add_task(f"epoch {self.epoch + 1}", total=len(self.train_graphs), status="")
                    row = self.train_epoch(bar, task)
                    if row is None:  # max_time inside the epoch: not an epoch, but resumable
                        self._save(best=False)
                        b = self.epoch_state["next"]
                        n = math.ceil(len(self.train_graphs) / tr.batch_size)
                        self._log(
                            f"max_time ({tr.max_time:g} s) reached after batch {b}/{n} of epoch "
                            f"{self.epoch + 1}: not recorded as an epoch; --resume finishes it"
                        )
                        break
                    self._finish_epoch(row)
                    bar.update(
                        task,
                        status=f"valid E {self.rows[-1]['valid_energy_mae']:.2f} meV/atom  "
                        f"F {self.rows[-1]['valid_forces_mae']:.1f} meV/Å",
                    )
        except KeyboardInterrupt:
            # last.ckpt already holds the state at the end of the last completed epoch (or of
            # the last max_time cut); the state of a half-done epoch is not saved here, since
            # it could be mid-step
            if (self.out / "last.ckpt").is_file():
                self._log(
                    f"[yellow]interrupted: {self.out / 'last.ckpt'} holds the last completed "
                    "epoch (continue with --resume)[/yellow]"
                )
            else:
                self._log("[yellow]interrupted before the first epoch ended: nothing to resume[/yellow]")
            raise
        finally:
            torch.set_num_threads(self._threads_before)
        if self.data.test and (self.out / "best.ckpt").is_file():
            self.test_metrics = self.evaluate_test()
        return self.rows[-1] if self.rows else {}

    def evaluate_test(self) -> Dict[str, float]:
        """Errors of best.ckpt on data.test (`evaluate`'s metrics), written to test_metrics.json."""
        import json

        from forcefield.evaluation import evaluate

        d = self.cfg.data
        metrics, _ = evaluate(self.out / "best.ckpt", d.test, d.energy_key, d.forces_key, d.stress_key)
        write_text(json.dumps(metrics, indent=2) + "\n", self.out / "test_metrics.json")
        return metrics


def train(
    cfg: Config, output: Path | str, resume: bool = False, quiet: bool = False, overwrite: bool = False
) -> Trainer:
    trainer = Trainer(cfg, output, resume=resume, quiet=quiet, overwrite=overwrite)
    trainer.run()
    return trainer
