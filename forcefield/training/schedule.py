"""Learning-rate schedule, final stage and early stopping, all counted in optimizer steps.

Why steps: a patience of "10 epochs" is 100 optimizer steps on 50 structures and 20 000 on
10 000 structures, so the same number decays the LR far too early on small data and far
too late on large data. Counting steps (and validating once per epoch) gives one default
that works for both; on data so large that one epoch exceeds the patience, every epoch
without improvement counts as a full patience.

    warm-up        LR rises linearly from lr/warmup_steps to lr over `warmup_steps` steps
    plateau        when validation has not improved (relative 1e-3) for `patience_steps`,
                   LR *= factor, never below lr * lr_min_ratio (the floor)
    cosine         LR follows a half cosine from lr to the floor over the budget (max_epochs,
                   or max_time when that is reached first)
    final stage    (optional) from `final_stage.start` of the budget, or as soon as the plateau
                   schedule sits at its floor without improving for `patience_steps`: the loss
                   weights change (typically a larger energy weight, as in MACE's SWA stage),
                   the LR is set to final_stage.lr (default 0.1 lr) and the best-checkpoint tracking restarts
                   (the validation loss has changed meaning)
    early stop     training ends when the last stage sits at its floor (or, for cosine/none,
                   simply) without a validation improvement for `patience_steps`

The state is plain numbers, so it goes into a weights-only checkpoint.
"""

from __future__ import annotations

import math
from typing import Dict, Optional


class Schedule:
    def __init__(self, tr, steps_per_epoch: int):
        self.tr = tr
        self.base_lr = float(tr.lr)
        self.steps_per_epoch = max(1, int(steps_per_epoch))
        self.total_steps = max(1, int(tr.max_epochs) * self.steps_per_epoch)
        self.step = 0  # optimizer steps taken
        self.stage = 1  # 1, then 2 in the final stage
        self.lr = self.base_lr / max(1, tr.warmup_steps) if tr.warmup_steps else self.base_lr
        self.plateau_lr = self.base_lr  # LR of the plateau schedule after warm-up
        self.best = math.inf  # best validation loss of the current stage
        self.since_best = 0  # optimizer steps since the last improvement
        self.stopped = ""  # why training ended early ("" while it goes on)

    # ------------------------------------------------------------------ numbers
    @property
    def floor(self) -> float:
        return self.stage_base_lr * self.tr.lr_min_ratio

    @property
    def stage_base_lr(self) -> float:
        fs = self.tr.final_stage
        if self.stage == 2:
            return float(fs.lr if fs.lr is not None else 0.1 * self.base_lr)
        return self.base_lr

    def progress(self, elapsed: float) -> float:
        """Fraction of the budget used: steps of max_epochs, or time of max_time if larger."""
        p = self.step / self.total_steps
        if self.tr.max_time:
            p = max(p, elapsed / self.tr.max_time)
        return min(1.0, p)

    def loss_weights(self) -> Dict[str, float]:
        tr, fs = self.tr, self.tr.final_stage
        w = {"energy": tr.energy_weight, "forces": tr.forces_weight, "stress": tr.stress_weight}
        if self.stage == 2:
            for key in w:
                value = getattr(fs, f"{key}_weight")
                if value is not None:
                    w[key] = value
        return w

    # ------------------------------------------------------------------ events
    def after_step(self, elapsed: float) -> float:
        """Called after every optimizer step; returns the LR for the next one."""
        self.step += 1
        tr = self.tr
        if self.stage == 1 and tr.warmup_steps and self.step < tr.warmup_steps:
            self.lr = self.base_lr * (self.step + 1) / tr.warmup_steps
        elif tr.scheduler == "cosine":
            p = self.progress(elapsed)
            if self.stage == 2:
                start = tr.final_stage.start
                p = (p - start) / (1.0 - start) if start < 1.0 else 1.0
                p = min(1.0, max(0.0, p))
            self.lr = self.floor + 0.5 * (self.stage_base_lr - self.floor) * (1.0 + math.cos(math.pi * p))
        elif tr.scheduler == "plateau":
            self.lr = self.plateau_lr
        else:
            self.lr = self.stage_base_lr
        return self.lr

    def _enter_final_stage(self) -> None:
        self.stage = 2
        self.plateau_lr = self.stage_base_lr
        self.lr = self.plateau_lr
        self.best = math.inf
        self.since_best = 0

    def after_epoch(self, valid_loss: float, steps: int, elapsed: float) -> str:
        """Called after each validation; returns a note for the log and metrics.csv ("" if none).

        Sets `stopped` when training should end.
        """
        tr, fs = self.tr, self.tr.final_stage
        notes = []
        if valid_loss < self.best * (1.0 - 1e-3) or not math.isfinite(self.best):
            self.best = valid_loss
            self.since_best = 0
        else:
            # an epoch longer than the patience counts as one full patience
            self.since_best += min(steps, tr.patience_steps)
        warmed = self.step >= tr.warmup_steps or self.stage == 2
        stale = self.since_best >= tr.patience_steps
        if tr.scheduler == "plateau" and warmed and stale and self.plateau_lr > self.floor * (1 + 1e-9):
            self.plateau_lr = max(self.floor, self.plateau_lr * tr.plateau_factor)
            self.lr = self.plateau_lr
            self.since_best = 0
            notes.append(f"lr -> {self.plateau_lr:.3g}")
            stale = False
        at_floor = tr.scheduler != "plateau" or self.plateau_lr <= self.floor * (1 + 1e-9)
        exhausted = stale and at_floor and warmed
        if self.stage == 1 and fs.enabled and (exhausted or self.progress(elapsed) >= fs.start):
            why = "stage 1 converged" if exhausted else f"{fs.start:.0%} of the budget"
            self._enter_final_stage()
            notes.append(f"final stage ({why}): weights {self.loss_weights()}, lr {self.lr:.3g}")
        elif exhausted and tr.early_stop:
            self.stopped = f"early stop: validation loss did not improve for {tr.patience_steps} steps" + (
                " at the LR floor" if tr.scheduler == "plateau" else ""
            )
            notes.append(self.stopped)
        return "; ".join(notes)

    # ------------------------------------------------------------------ state
    def state_dict(self) -> Dict[str, object]:
        return {k: getattr(self, k) for k in ("step", "stage", "lr", "plateau_lr", "best", "since_best", "stopped")}

    def load_state_dict(self, state: Optional[Dict[str, object]]) -> None:
        for k, v in (state or {}).items():
            setattr(self, k, v)
