"""The training loop: a run's state and its steps, resumable exactly after a crash.

Everything random in training is a function of saved state: the data order of epoch ``e`` is
a permutation seeded by ``(seed, e)``, the position inside it follows from the step count, and
the dequantization noise comes from a generator whose state is checkpointed. A run killed at
any point and restarted with the same command therefore ends with the same weights as one that
was never interrupted.

:func:`train` is the entry point; :class:`TrainingRun` holds one run's state and reads top to
bottom: :meth:`~TrainingRun.run` repeats :meth:`~TrainingRun.optimise` (one optimiser step,
skipping non-finite ones) and :meth:`~TrainingRun.after_step` (logs, evaluations, sample grids,
checkpoints), rolling back to the last checkpoint when a step goes bad, then
:meth:`~TrainingRun.finish` evaluates, samples and writes the results.
"""

from __future__ import annotations

import json
import math
import os
import time
from contextlib import AbstractContextManager, nullcontext
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import Tensor

from msflow._io import finite_json, remove_stale_temp_files, write_text
from msflow.data.batches import StepBatches
from msflow.errors import CheckpointError, ConfigError, MsflowError, NonFiniteSamples
from msflow.nn.subnets import subnet_precision
from msflow.train.checkpoint import CHECKPOINT, save_checkpoint
from msflow.train.compatibility import check_compatible
from msflow.train.config import Config, config_to_dict
from msflow.train.data import load_data, loader_workers, with_crop_size
from msflow.train.device import resolve_device
from msflow.train.distributed import init_distributed, skip_noise
from msflow.train.ema import EMA
from msflow.train.evaluate import evaluate, sample_grids
from msflow.train.level_curves import plot_run_levels
from msflow.train.lock import run_lock
from msflow.train.logdets import LogdetTracker
from msflow.train.metrics_log import MetricsLog, NullLog
from msflow.train.objective import bpd_score, function_evaluations, objective_schedule
from msflow.train.precision import resolve_precision
from msflow.train.progress import TrainingBar
from msflow.train.recipe import BUDGET_CLOCKS, build_model, build_optimizer, learning_rate, make_deterministic
from msflow.train.run_state import _Guard, _meta, _plateau, _resume, _state_tensors, periodic_checkpoint
from msflow.transforms.ode_solver import solver_errors_in_backward


class TrainingDiverged(MsflowError):
    """Too many consecutive steps with a non-finite loss or gradient."""


def train(cfg: Config) -> dict[str, Any]:
    """Train ``cfg`` to ``train.steps`` (resuming from the run folder's checkpoint), then report.

    Returns the final results: test bits/dim (mean and standard error, EMA weights when EMA is
    on), the run folder, the sample grid paths. The run folder is locked for the whole run
    (:func:`~msflow.train.lock.run_lock`, by rank 0 of a distributed run): a second trainer of the
    same folder refuses at once. The CPU allocator of the process is tuned first
    (:func:`msflow.tune_cpu_allocator`).
    """
    from msflow._allocator import tune_cpu_allocator

    tune_cpu_allocator()
    if int(os.environ.get("RANK", "0")) != 0:
        return TrainingRun(cfg).run()
    with run_lock(cfg.run_dir):
        return TrainingRun(cfg).run()


def _non_finite(tensors: dict[str, Tensor]) -> str | None:
    """The name of the first floating-point tensor holding a NaN or infinity, if any."""
    return next((k for k, v in tensors.items() if v.is_floating_point() and not torch.isfinite(v).all()), None)


def _every(step: int, period: int) -> bool:
    """True every ``period`` steps; a period of 0 means never."""
    return period > 0 and step % period == 0


class TrainingRun:
    """One run of :func:`train`: its data, model, optimiser, counters, clock, log and bar.

    Built from the config (resuming from the run folder's checkpoint when there is one); then
    :meth:`run` trains to ``train.steps`` or the time budget and returns the results.
    """

    def __init__(self, cfg: Config) -> None:
        t = cfg.train
        self.device = resolve_device(t.device)
        # The checkpoint stores the precision the run really used, not "auto".
        precision = resolve_precision(t.precision, self.device)
        self.cfg = cfg = with_crop_size(replace(cfg, train=replace(t, precision=precision)))
        self.t, self.o, self.run_dir = t, o, run_dir = cfg.train, cfg.optim, cfg.run_dir
        self.ranks = ranks = init_distributed(self.device)
        if t.deterministic:
            make_deterministic()
        train_set, self.test_set = load_data(cfg, "train"), load_data(cfg, "test")
        self.model = model = build_model(cfg, self.device)
        check_compatible(model, train_set, cfg)
        self.objective_at = objective_schedule(model, t.objective, t.level, t.finetune_fraction)
        conds = getattr(self.test_set, "conds", None)  # a paired dataset's conditions
        if conds is not None and t.logdet_every:
            raise ConfigError("train.logdet_every tracks unconditional flows only; set it to 0 for a conditional model")
        rows = min(t.num_samples, 8)  # a conditional grid has a row per test condition
        self.pairs = (self.test_set.images[:rows], conds[:rows]) if conds is not None else None
        self.score = bpd_score(t.level)
        self.first, stop = ranks.shard(t.batch_size)
        self.batches = StepBatches(train_set, t.batch_size, t.seed, (self.first, stop), loader_workers(cfg))
        self.opt = build_optimizer(cfg, model)
        self.ema = EMA(model, o.ema_decay) if o.ema_decay > 0 else None
        self.noise = torch.Generator().manual_seed(t.seed + 1)
        self.ckpt = run_dir / CHECKPOINT
        if self.ckpt.exists():
            self.step, self.guard = _resume(self.ckpt, cfg, model, self.opt, self.ema, self.noise)
        else:
            self.step, self.guard = 0, _Guard(plateau=_plateau(cfg))
        self.reported = self.step >= t.steps  # a finished run, rerun: report it again, log nothing twice
        self.clock_fn = BUDGET_CLOCKS[t.budget_clock]
        self.started, self.spent_before = self.clock_fn(), self.guard.train_seconds
        self.paused = 0.0  # budget-clock seconds of evaluations during training: not training time
        self.trained: float | None = None  # training seconds, once training has ended
        if ranks.main:
            for folder in (run_dir, run_dir / "samples"):
                remove_stale_temp_files(folder)
        self.log = MetricsLog(run_dir / "metrics.jsonl", resume_step=self.step) if ranks.main else NullLog()
        track = t.logdet_every and ranks.main
        self.logdets = LogdetTracker(model, run_dir, resume_step=self.step, seed=t.seed) if track else None
        if self.step == 0:
            if ranks.main:
                run_dir.mkdir(parents=True, exist_ok=True)
                write_text(run_dir / "config.yaml", yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
            self.checkpoint(*self.state())  # the state a roll-back returns to before the first periodic checkpoint
        self.show = t.progress and ranks.main
        self.bar = TrainingBar(
            t.steps, self.step, t.max_seconds, self.spent(), f"train {cfg.name}", self.show, t.budget_clock
        )

    # -- state ------------------------------------------------------------------------------------

    def spent(self) -> float:
        """Training seconds on ``train.budget_clock``, over every resume, evaluations excluded."""
        return self.spent_before + self.clock_fn() - self.started - self.paused

    def state(self) -> tuple[dict[str, Tensor], dict]:
        """The tensors and optimiser metadata a checkpoint stores."""
        return _state_tensors(self.model, self.opt, self.ema, self.noise)

    def checkpoint(self, tensors: dict[str, Tensor], optim_meta: dict, results: dict | None = None) -> None:
        """Write the run's checkpoint (rank 0); with ``results``, the final one."""
        self.guard.train_seconds = self.spent() if results is None else self.trained
        if self.ranks.main:
            meta = _meta(self.cfg, self.model, self.step, self.guard, optim_meta, results)
            save_checkpoint(self.ckpt, tensors, finite_json(meta))

    def rollback(self, why: str) -> int:
        """Reload the last checkpoint with a lower learning rate; returns its step."""
        guard, o = self.guard, self.o
        if guard.rollbacks >= o.max_rollbacks:
            raise TrainingDiverged(
                f"{why}, and the run already rolled back {guard.rollbacks} time(s) (optim.max_rollbacks); "
                "lower optim.lr or raise optim.warmup_steps"
            )
        lr_scale, rollbacks = guard.lr_scale * o.rollback_lr_factor, guard.rollbacks + 1
        self.ranks.barrier()  # rank 0's last checkpoint is on disk
        back, saved = _resume(self.ckpt, self.cfg, self.model, self.opt, self.ema, self.noise)
        guard.bad_in_a_row, guard.lr_scale, guard.rollbacks = 0, lr_scale, rollbacks
        # The loss tracking goes back with the weights, but a drop already taken stays: like
        # lr_scale, a roll-back never raises the learning rate.
        if guard.plateau.drop_step is None:
            guard.plateau = saved.plateau
        self.log.write({"step": self.step, "event": "rollback", "why": why, "to_step": back, "lr_scale": lr_scale})
        self.bar.write(f"step {self.step}: {why}; rolled back to step {back} with the learning rate x {lr_scale:g}")
        self.bar.rewind(back, self.spent())
        return back

    def averaged(self) -> AbstractContextManager:
        """The EMA weights in the model for the duration (a no-op without EMA)."""
        return self.ema.applied(self.model) if self.ema else nullcontext()

    def evaluate(self, progress: bool = False) -> dict[str, float]:
        """Test bits/dim (EMA weights), on ``train.eval_images`` test images."""
        t = self.t
        with self.averaged():
            return evaluate(
                self.model, self.test_set, t.eval_batch_size, seed=t.seed, progress=progress,
                score=self.score, limit=t.eval_images,
            )  # fmt: skip

    def sample(self, tag: str, progress: bool = False) -> list[Path]:
        """Sample grids at every ``train.temperatures`` (EMA weights), named by ``tag``.

        Samples that are not finite draw no grid: the run logs a ``samples_failed`` event, says so,
        and goes on (the final results are still written), since the weights may be fine at a lower
        temperature or in float64 (``msflow sample``).
        """
        t = self.t
        try:
            with self.averaged():
                return sample_grids(
                    self.model, self.run_dir / "samples", t.num_samples, t.temperatures, t.seed, tag, self.pairs,
                    progress=progress,
                )  # fmt: skip
        except NonFiniteSamples as err:
            self.log.write({"step": self.step, "event": "samples_failed", "tag": tag, "error": str(err)})
            self.bar.write(f"step {self.step}: no {tag} sample grids: {err}")
            return []

    # -- the loop ---------------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        """Train until ``train.steps`` or the time budget, then :meth:`finish`."""
        t, ranks = self.t, self.ranks
        self.seen, self.clock = 0, time.perf_counter()
        self.next_eval = self._next_eval(self.spent())
        self.model.train()
        # Every rank must agree on when the time budget ends.
        self.stream, self.stream_step, self.pending = self.batches.iterate(self.step), self.step, False
        while self.step < t.steps and not ranks.any(bool(t.max_seconds) and self.spent() >= t.max_seconds):
            if self.stream_step != self.step:  # a roll-back: the batches go back with the weights
                self.stream.close()
                self.stream, self.stream_step, self.pending = self.batches.iterate(self.step), self.step, False
            x, cond = next(self.stream)
            self.stream_step += 1
            x, cond = x.to(self.device), None if cond is None else cond.to(self.device)
            if self.optimise(x, cond):
                self.after_step(x)
        self.bar.close()
        self.stream.close()
        self.trained = self.spent()  # the budget counts training only, not the evaluation and sampling below
        return self.finish()

    def _next_eval(self, at: float) -> float:
        """The budget second of the next timed evaluation after ``at`` (0: none)."""
        every = self.t.eval_seconds
        return (math.floor(at / every) + 1) * every if every else 0.0

    def optimise(self, x: Tensor, cond: Tensor | None) -> bool:
        """One optimiser step on the batch; a non-finite loss or gradient skips it.

        Returns False when the step ended in a roll-back (too many bad steps in a row).
        """
        t, o, ranks, guard, model = self.t, self.o, self.ranks, self.guard, self.model
        lr = learning_rate(self.cfg, self.step) * guard.lr_scale * guard.plateau.scale
        for group in self.opt.param_groups:
            group["lr"] = lr
        nfe_before = function_evaluations(model)
        noise_state = self.noise.get_state()
        skip_noise(self.noise, self.first, x.shape[1:])  # the other ranks' images come first in the global batch
        progress = self.spent() / t.max_seconds if t.max_seconds else self.step / t.steps
        with subnet_precision(t.precision):
            loss, logged = self.objective_at(progress)(model, x, self.noise, cond)
        if ranks.world > 1:  # every rank logs and decides on the global batch's mean
            self.noise.set_state(noise_state)
            skip_noise(self.noise, t.batch_size, x.shape[1:])
            logged = {k: ranks.mean(v) for k, v in logged.items()}
        self.opt.zero_grad(set_to_none=True)
        grad_norm = torch.tensor(float("nan"))
        mean_loss = ranks.mean(loss.detach())
        if torch.isfinite(mean_loss):
            with solver_errors_in_backward():
                loss.backward()
            ranks.average_gradients(model)
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), o.grad_clip)
        self.step += 1
        self.seen += x.shape[0] * ranks.world
        if not (torch.isfinite(mean_loss) and torch.isfinite(grad_norm)):
            guard.bad_in_a_row += 1
            event = {"step": self.step, "event": "skipped_non_finite_step", "loss": mean_loss.item()}
            self.log.write({**event, "in_a_row": guard.bad_in_a_row})
            if guard.bad_in_a_row >= o.max_bad_steps:
                self.step = self.rollback(f"{guard.bad_in_a_row} steps in a row had a non-finite loss or gradient")
                return False
        else:
            guard.bad_in_a_row = 0
            self.opt.step()
            if self.ema is not None:
                self.ema.update(model, self.step)
            self._plateau(mean_loss.item())
        self.bar.advance(self.step, self.spent())
        if _every(self.step, t.log_every) or self.step == t.steps:
            self._log_step(logged, lr, grad_norm, nfe_before)
        return True

    def _plateau(self, mean_loss: float) -> None:
        """Feed the plateau drop; log and show a drop. ``mean_loss`` is the mean over ranks, so every
        rank drops at the same step."""
        plateau = self.guard.plateau
        if plateau.active and plateau.update(mean_loss, self.step):
            event = {"step": self.step, "event": "lr_drop", "factor": plateau.factor, "smoothed_loss": plateau.smoothed}
            self.log.write({**event, "best_smoothed_loss": plateau.best})
            self.bar.write(
                f"step {self.step}: the smoothed training loss has not improved for {plateau.since} steps; "
                f"learning rate x {plateau.factor:g} from here on"
            )

    def _log_step(self, logged: dict[str, Tensor], lr: float, grad_norm: Tensor, nfe_before: int | None) -> None:
        elapsed = time.perf_counter() - self.clock
        record = {"step": self.step, **{k: v.item() for k, v in logged.items()}, "lr": lr}
        record["grad_norm"] = grad_norm.item()
        if nfe_before is not None:  # a continuous flow: its solver work
            record["nfe"] = function_evaluations(self.model) - nfe_before
        self.log.write({**record, "img_per_s": self.seen / elapsed})
        shown = "loss_bpd" if "loss_bpd" in record else "loss_fm"
        self.bar.set_loss(shown[5:], record[shown])
        self.seen, self.clock = 0, time.perf_counter()

    def after_step(self, x: Tensor) -> None:
        """What follows a step: the weights check, log-dets, timed evaluations, grids, checkpoint."""
        t, step, main = self.t, self.step, self.ranks.main
        due = _every(step, t.checkpoint_every) or step == t.steps or self.pending
        bad = _non_finite(self.state()[0]) if due else None
        if bad is not None:
            # Never evaluated or written to disk: go back to the last state that was.
            self.step = self.rollback(f"non-finite values in {bad}")
            return
        if self.logdets is not None and _every(step, t.logdet_every):
            self.logdets.measure(x, step)
        # A timed evaluation at the step that spends the budget is left to the final evaluation.
        timed = bool(t.eval_seconds) and self.next_eval <= self.spent() < (t.max_seconds or math.inf)
        if (_every(step, t.eval_every) or timed) and step < t.steps and main:
            self._evaluate_during_training()
        if _every(step, t.sample_every) and t.num_samples and main:
            self.sample(f"step{step:06d}")
        # Last, so a checkpoint of step s means that everything of step s (logs, grids) is done.
        # Only a step that trained (finite loss and gradient) is a state to roll back to: during a
        # streak of skipped steps the checkpoint waits for the first good one.
        self.pending = due and step < t.steps and self.guard.bad_in_a_row > 0
        if due and step < t.steps and not self.pending:
            periodic_checkpoint(partial(self.checkpoint, *self.state()), self.ckpt, step, self.log, self.bar)

    def _evaluate_during_training(self) -> None:
        """A test evaluation whose time is left out of the budget."""
        at, before = self.spent(), self.clock_fn()
        result = self.evaluate()
        self.paused += self.clock_fn() - before
        self.next_eval = self._next_eval(at)
        record = {"step": self.step, "train_seconds": at, "test_bpd": result["bpd"]}
        self.log.write({**record, "test_bpd_stderr": result["bpd_stderr"]})
        self.bar.write(f"step {self.step}: test bits/dim {result['bpd']:.4f} +- {result['bpd_stderr']:.4f}")

    # -- the end ----------------------------------------------------------------------------------

    def finish(self) -> dict[str, Any]:
        """Final evaluation, sample grids, results and the last checkpoint (rank 0)."""
        step, guard, o, run_dir = self.step, self.guard, self.o, self.run_dir
        if guard.bad_in_a_row:
            raise TrainingDiverged(
                f"training ended inside a streak of {guard.bad_in_a_row} steps with a non-finite loss or gradient; "
                f"the checkpoint in {run_dir} holds the last state that trained: lower optim.lr (now {o.lr:g}) "
                "or raise optim.warmup_steps, and rerun the same command to go on from it"
            )
        if not self.ranks.main:  # rank 0 evaluates and writes the results
            self.ranks.barrier()
            return json.loads((run_dir / "results.json").read_text())
        if self.logdets is not None:
            self.logdets.plot()
        if self.model.independent_levels:
            plot_run_levels(run_dir)
        wall_before_eval = time.perf_counter()
        result = self.evaluate(progress=self.show)
        if not self.reported:
            record = {"step": step, "train_seconds": self.trained, "test_bpd": result["bpd"]}
            self.log.write({**record, "test_bpd_stderr": result["bpd_stderr"], "final": True})
        grids = self.sample("final", progress=self.show) if self.t.num_samples else []
        result.update({"run_dir": str(run_dir), "samples": [str(p) for p in grids], "steps": step})
        # What the budget bought, and what the report after it cost (issue 26: at most a quarter).
        result.update(train_seconds=self.trained, report_wall_seconds=time.perf_counter() - wall_before_eval)
        if o.plateau_patience or guard.plateau.drop_step is not None:
            result["lr_drop_step"] = guard.plateau.drop_step
        if step < self.t.steps:
            self.bar.write(
                f"stopped at step {step} of {self.t.steps}: train.max_seconds={self.t.max_seconds:g} was spent"
            )
        try:
            self.checkpoint(*self.state(), results=result)
        except OSError as err:
            raise CheckpointError(
                f"could not write the final checkpoint {self.ckpt} ({err.strerror or err}); the previous one is "
                "intact: free some space and rerun the same command to finish"
            ) from None
        write_text(run_dir / "results.json", json.dumps(finite_json(result), indent=2))
        self.ranks.barrier()
        return result
