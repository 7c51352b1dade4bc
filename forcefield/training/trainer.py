"""The training loop: Adam/AdamW, warm-up + plateau or cosine LR (training/schedule.py),
a final stage with other loss weights, early stopping, EMA, gradient clipping, DeNS,
validation every `valid_every` steps and at epoch ends, metrics.csv, best/last checkpoints
(atomic) and --resume; one process or several (torchrun / srun, training/distributed.py).

Pieces: data (training/datasets.py: in-memory or a preprocessed dataset, read by a
torch DataLoader with `data.num_workers` workers), one step (`step.train_step`), one
validation (`step.evaluate`), the run folder (training/run_folder.py); this module keeps the
state and the loop.

Determinism: the order of epoch e is a permutation drawn from numpy's default_rng([seed, e]);
the DeNS draw of structure i in epoch e comes from default_rng([seed, e, i, 1]). Neither
depends on the number of processes, workers or on where a run was resumed; the optimizer,
schedule, EMA and torch's RNG are checkpointed. A validation inside an epoch (valid_every,
or max_time running out) saves last.ckpt with the position inside the epoch, and --resume
continues from there. The LR schedule counts optimizer steps; only what is sized from
max_time (cosine, the start of the final stage, the DeNS decay) reads the clock, and under
several processes the clock of the slowest rank is used by all.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import torch

from forcefield.errors import InputError
from forcefield.model.forcefield import ForceField
from forcefield.model.normalization import Normalization
from forcefield.model.serialization import read_checkpoint
from forcefield.training.batches import make_batch
from forcefield.training.config import Config, dump_config
from forcefield.training.datasets import GraphSource, fit_normalization, load_training_data
from forcefield.training.dens import DeNS
from forcefield.training.distributed import from_environment, shutdown
from forcefield.training.ema import EMA
from forcefield.training.loader import Failed, batch_loader
from forcefield.training.resume import check_resume_config
from forcefield.training.run_folder import METRIC_COLUMNS, RUN_FILES, RunFolder  # noqa: F401 - re-exported
from forcefield.training.schedule import Schedule
from forcefield.training.step import StepContext, TrainModule, evaluate, train_step


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
        tr = cfg.training
        self._threads_before = torch.get_num_threads()
        self.dist = from_environment(resolve_device(tr.device))
        self.device = self.dist.device
        self.quiet = quiet or not self.dist.is_main
        self.folder = RunFolder(output, writes=self.dist.is_main)
        self.out = self.folder.path
        torch.manual_seed(tr.seed)
        self.resume_changes: Dict[str, tuple] = {}
        resume_ckpt = None
        if resume:
            last = self.out / "last.ckpt"
            if not last.is_file():
                raise InputError(f"{last}: nothing to resume from")
            resume_ckpt = read_checkpoint(last)
            self.resume_changes = check_resume_config(resume_ckpt["config"], cfg.model_dump(mode="json"), self.out)
        if tr.batch_size < self.dist.world:
            raise InputError(
                f"training.batch_size {tr.batch_size} is smaller than the number of processes "
                f"({self.dist.world}): it is the global batch, and every process needs a structure per step"
            )
        self.data = load_training_data(cfg)  # bad data is reported before a taken output folder
        self.folder.check_free(resume, overwrite)
        # model.species and model.r_max are those of a resumed checkpoint too (--resume refuses
        # a changed model section)
        self.species, self.r_max = list(cfg.model.species), float(cfg.model.r_max)
        self.train_data: GraphSource = self.data.train
        self.valid_data: GraphSource = self._valid_subset(self.data.valid)
        if resume_ckpt is not None:
            model_cfg = resume_ckpt["model_config"]
            norm = Normalization.model_validate(resume_ckpt["normalization"])
        else:
            model_cfg, norm = cfg.model, fit_normalization(cfg, self.data)
        self.model = ForceField.from_config(model_cfg, norm).to(self.device)
        self.dtype = self.model.dtype
        self.dens: Optional[DeNS] = DeNS(cfg.dens, self.model, self.device) if cfg.dens.enabled else None
        params = list(self.model.parameters()) + (self.dens.parameters() if self.dens is not None else [])
        opt_cls = torch.optim.AdamW if tr.optimizer == "adamw" else torch.optim.Adam
        self.optimizer = opt_cls(params, lr=tr.lr, weight_decay=tr.weight_decay, amsgrad=tr.amsgrad)
        self.schedule = Schedule(tr, self.steps_per_epoch)
        self._set_lr(self.schedule.lr)
        self.ema = EMA(self.model, tr.ema_decay) if tr.ema_decay else None
        module = TrainModule(self.model, self.encoder, self.head)
        self.step_ctx = StepContext.build(module, self.optimizer, self.dist, self.ema, tr.grad_clip)
        self.epoch = 0
        self.best = math.inf
        self.rows: List[Dict[str, float]] = []
        self.elapsed = 0.0
        self.epoch_state: Optional[dict] = None  # position inside an epoch (mid-epoch checkpoint)
        self.since_valid = 0  # optimizer steps since the last validation
        self.stop_reason = ""
        self.test_metrics: Optional[Dict[str, float]] = None
        if resume_ckpt is not None:
            self._load_state(resume_ckpt)

    # ------------------------------------------------------------------ pieces
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

    @property
    def steps_per_epoch(self) -> int:
        return len(self._epoch_batches(0))

    def _set_lr(self, lr: float) -> None:
        for g in self.optimizer.param_groups:
            g["lr"] = lr

    def _log(self, msg: str) -> None:
        if not self.quiet:
            from rich.console import Console

            Console(stderr=True).print(msg)

    def _valid_subset(self, source: GraphSource) -> GraphSource:
        """data.valid_max structures of the validation set (a seeded, fixed choice)."""
        n_max = self.cfg.data.valid_max
        if n_max is None or n_max >= len(source):
            return source
        pick = np.sort(np.random.default_rng([self.cfg.training.seed, 2]).permutation(len(source))[:n_max])
        return source.subset(pick)

    def _epoch_batches(self, epoch: int, order=None) -> List[np.ndarray]:
        """The global batches of `epoch` (indices into the train source). Under W processes a
        last batch with fewer than W structures is dropped (every rank needs one). `order`:
        the one a checkpoint of the previous version stored inside an epoch."""
        n, bs, w = len(self.train_data), self.cfg.training.batch_size, self.dist.world
        if order is None:
            order = np.random.default_rng([self.cfg.training.seed, epoch]).permutation(n)
        order = np.asarray(order, dtype=np.int64)
        batches = [order[k : k + bs] for k in range(0, n, bs)]
        if batches and len(batches[-1]) < w:
            batches.pop()
        return batches

    def _share(self, idx: np.ndarray) -> np.ndarray:
        return idx[self.dist.rank :: self.dist.world]

    def dens_coefficient(self, progress: float) -> float:
        return self.dens.coefficient(progress) if self.dens is not None else 0.0

    def _out_of_time(self) -> bool:
        tr = self.cfg.training
        return bool(tr.max_time) and self.elapsed >= tr.max_time

    # ------------------------------------------------------------------ state
    def _checkpoint(self) -> dict:
        eval_state = self.ema.shadow if self.ema is not None else self.model.state_dict()
        return {
            "model_config": self.model.model_config().model_dump(mode="json"),
            "normalization": self.model.normalization().model_dump(mode="json"),
            "model_state": {k: v.detach().cpu() for k, v in eval_state.items()},
            "raw_model_state": self.model.state_dict(),
            **(self.dens.state_dict() if self.dens is not None else {"encoder_state": None, "head_state": None}),
            "optimizer": self.optimizer.state_dict(),
            "schedule": self.schedule.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "torch_rng": torch.get_rng_state(),
            "epoch": self.epoch,
            "best": self.best,
            "rows": self.rows,
            "elapsed": self.elapsed,
            "epoch_state": self.epoch_state,
            "since_valid": self.since_valid,
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
        torch.set_rng_state(ckpt["torch_rng"])
        self.epoch, self.best, self.rows = ckpt["epoch"], ckpt["best"], list(ckpt["rows"])
        self.elapsed = ckpt.get("elapsed", 0.0)
        self.epoch_state = ckpt.get("epoch_state")
        self.since_valid = int(ckpt.get("since_valid", 0))

    def _save(self, best: bool) -> None:
        self.folder.save(self._checkpoint(), best=best)

    # ------------------------------------------------------------------ loop
    def train_epoch(self, bar=None, task=None) -> Optional[Dict[str, float]]:
        """One epoch (or the rest of one). Validates every `valid_every` steps inside it; None
        if max_time or an early stop ended it inside (then `epoch_state` holds where)."""
        tr = self.cfg.training
        if self.epoch_state is None:
            state = {"next": 0, "sums": {}, "counts": {}, "coef": 0.0}
        else:
            state, self.epoch_state = self.epoch_state, None
        batches = self._epoch_batches(self.epoch, state.get("order"))
        sums, counts = state["sums"], state["counts"]  # a part (dens, stress) is averaged over the batches that have it
        self.model.train()
        t_last = time.perf_counter()
        weights = self.weights
        start = state["next"]
        shares = [self._share(b) for b in batches[start:]]
        for b, graphs in enumerate(batch_loader(self.train_data, shares, self.cfg.data.num_workers), start):
            if isinstance(graphs, Failed):
                raise InputError(graphs.message)
            state["coef"] = coef = self.dens_coefficient(self.schedule.progress(self.elapsed))
            dens = self.dens.batch_config(coef) if self.dens is not None else None
            rngs = [np.random.default_rng([tr.seed, self.epoch, int(i), 1]) for i in shares[b - start]]
            batch = make_batch(graphs, self.species, self.r_max, self.dtype, self.device, rngs, dens)
            parts = train_step(self.step_ctx, batch, weights, coef)
            for k, v in parts.items():
                sums[k] = sums.get(k, 0.0) + v
                counts[k] = counts.get(k, 0) + 1
            now = time.perf_counter()
            self.elapsed = self.dist.max(self.elapsed + (now - t_last))
            t_last = now
            self._set_lr(self.schedule.after_step(self.elapsed))
            self.since_valid += 1
            if bar is not None:
                bar.update(
                    task, advance=len(batches[b]), description=f"epoch {self.epoch + 1} loss {parts['loss']:.4g}"
                )
            if b + 1 == len(batches):
                break
            timed_out = self._out_of_time()
            if timed_out or (tr.valid_every and self.since_valid >= tr.valid_every):
                row = self._train_row(state)
                state = self.epoch_state = {**state, "next": b + 1, "sums": {}, "counts": {}}
                sums, counts = state["sums"], state["counts"]
                where = f"batch {b + 1}/{len(batches)} of epoch {self.epoch + 1}"
                note = f"max_time ({tr.max_time:g} s) reached after {where}; --resume continues it" if timed_out else ""
                self._record(row, self.epoch + (b + 1) / len(batches), lambda n=note: n)
                if timed_out or self.schedule.stopped:
                    return None
                self.epoch_state = None
                weights = self.weights
                self.model.train()
                t_last = time.perf_counter()
        return self._train_row(state)

    @staticmethod
    def _train_row(state: dict) -> Dict[str, float]:
        sums, counts = state["sums"], state["counts"]
        out = {f"train_{k}_loss" if k != "loss" else "train_loss": v / counts[k] for k, v in sums.items()}
        out["dens_coefficient"] = state["coef"]
        return out

    def validate(self) -> Dict[str, float]:
        """Loss and MAEs (meV/atom, meV/Å, meV/Å^3) of the evaluated (EMA) weights on this
        rank's share of the validation set, reduced over ranks."""
        raw = None
        if self.ema is not None:
            raw = {k: v.clone() for k, v in self.model.state_dict().items()}
            self.model.load_state_dict(self.ema.shadow)
        bs = max(self.cfg.training.batch_size, 8)
        mine = np.arange(len(self.valid_data))[self.dist.rank :: self.dist.world]
        shares = [mine[k : k + bs] for k in range(0, len(mine), bs)]
        loader = batch_loader(self.valid_data, shares, self.cfg.data.num_workers)
        try:
            return evaluate(self.model, _checked(loader), self.weights, self.species, self.r_max, self.dist)
        finally:
            if raw is not None:
                self.model.load_state_dict(raw)

    def _record(self, row: Dict[str, float], epoch: float, end_note=lambda: "") -> None:
        """Validate, append a metrics row, step the schedule, save last (and best) checkpoint.
        `end_note()`: a note read after the schedule's step (why the run ends, if it does)."""
        stage = self.schedule.stage
        row.update(self.validate())
        row.update(
            epoch=round(epoch, 4) if epoch != int(epoch) else int(epoch),
            step=self.schedule.step,
            lr=self.optimizer.param_groups[0]["lr"],
            time_s=self.elapsed,
            stage=stage,
        )
        improved = row["valid_loss"] < self.best
        if improved:
            self.best = row["valid_loss"]
        sched_note = self.schedule.after_epoch(row["valid_loss"], self.since_valid, self.elapsed)
        self.since_valid = 0
        self._set_lr(self.schedule.lr)
        if self.schedule.stage != stage:
            self.best = math.inf  # the validation loss changes meaning with the loss weights
        note = "; ".join(filter(None, [sched_note, end_note()]))
        row["event"] = note
        if note:
            self._log(f"epoch {row['epoch']}: {note}")
        self.stop_reason = self.schedule.stopped
        self.rows.append(row)
        self._save(best=improved)
        self.folder.write_metrics(self.rows, self._log)

    def _finish_epoch(self, row: Dict[str, float]) -> None:
        tr = self.cfg.training
        self.epoch += 1

        def end_note() -> str:
            if self.schedule.stopped:
                return ""
            if self.epoch >= tr.max_epochs:
                return f"max_epochs ({tr.max_epochs}) reached"
            return f"max_time ({tr.max_time:g} s) reached" if self._out_of_time() else ""

        self._record(row, self.epoch, end_note)

    def run(self) -> Dict[str, float]:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        tr = self.cfg.training
        if tr.num_threads:
            torch.set_num_threads(tr.num_threads)
        for key, (old, new) in self.resume_changes.items():
            self._log(f"resume: {key} {old!r} -> {new!r}")
        self.folder.prepare(dump_config(self.cfg))
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
                    task = bar.add_task(f"epoch {self.epoch + 1}", total=len(self.train_data), status="")
                    row = self.train_epoch(bar, task)
                    if row is None:  # max_time or an early stop inside the epoch; validated, resumable
                        break
                    self._finish_epoch(row)
                    bar.update(
                        task,
                        status=f"valid E {self.rows[-1]['valid_energy_mae']:.2f} meV/atom  "
                        f"F {self.rows[-1]['valid_forces_mae']:.1f} meV/Å",
                    )
        except KeyboardInterrupt:
            # last.ckpt holds the state at the last validation (an epoch end, valid_every or a
            # max_time cut); the half-done steps since are not saved here, since it could be mid-step
            if (self.out / "last.ckpt").is_file():
                self._log(
                    f"[yellow]interrupted: {self.out / 'last.ckpt'} holds the state at the last "
                    "validation (continue with --resume)[/yellow]"
                )
            else:
                self._log("[yellow]interrupted before the first validation: nothing to resume[/yellow]")
            raise
        finally:
            torch.set_num_threads(self._threads_before)
            self.train_data.close()
            self.valid_data.close()
        if not self.rows:
            self._log("[yellow]no validation ran: the run ended before its first optimizer step[/yellow]")
        if self.data.test and self.dist.is_main and (self.out / "best.ckpt").is_file():
            self.test_metrics = self.evaluate_test()
        return self.rows[-1] if self.rows else {}

    def evaluate_test(self) -> Dict[str, float]:
        """Errors of best.ckpt on data.test (`evaluate`'s metrics), written to test_metrics.json."""
        import json

        from forcefield.evaluation import evaluate as evaluate_file

        d = self.cfg.data
        metrics, _ = evaluate_file(self.out / "best.ckpt", d.test, d.energy_key, d.forces_key, d.stress_key)
        self.folder.write_text("test_metrics.json", json.dumps(metrics, indent=2) + "\n")
        return metrics


def _checked(loader):
    for graphs in loader:
        if isinstance(graphs, Failed):
            raise InputError(graphs.message)
        yield graphs


def train(
    cfg: Config, output: Path | str, resume: bool = False, quiet: bool = False, overwrite: bool = False
) -> Trainer:
    trainer = Trainer(cfg, output, resume=resume, quiet=quiet, overwrite=overwrite)
    try:
        trainer.run()
    finally:
        shutdown(trainer.dist)
    return trainer
