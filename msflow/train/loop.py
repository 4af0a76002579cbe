"""The training loop: one readable function, resumable exactly after a crash.

Everything random in training is a function of saved state: the data order of epoch ``e`` is
a permutation seeded by ``(seed, e)``, the position inside it follows from the step count, and
the dequantization noise comes from a generator whose state is checkpointed. A run killed at
any point and restarted with the same command therefore ends with the same weights as one that
was never interrupted.
"""

from __future__ import annotations

import json
import math
import os
import time
import warnings
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import Tensor, nn

from msflow._io import finite_json, remove_stale_temp_files, write_text
from msflow.core import set_gradient_checkpointing
from msflow.data.batches import StepBatches, epoch_order  # noqa: F401  (epoch_order: re-exported)
from msflow.errors import CheckpointError, ConfigError, MsflowError
from msflow.models import create_model
from msflow.nn.subnets import subnet_precision
from msflow.train.checkpoint import (
    save_checkpoint,
)
from msflow.train.compatibility import check_compatible
from msflow.train.config import Config, config_to_dict
from msflow.train.data import load_data, loader_workers, with_crop_size
from msflow.train.distributed import init_distributed, skip_noise
from msflow.train.ema import EMA
from msflow.train.evaluate import evaluate, resolve_device, sample_grids
from msflow.train.lock import run_lock
from msflow.train.logdets import LogdetTracker
from msflow.train.metrics_log import MetricsLog
from msflow.train.objective import bpd_score, function_evaluations, objective_schedule
from msflow.train.precision import resolve_precision
from msflow.train.progress import TrainingBar
from msflow.train.run import CHECKPOINT
from msflow.train.run_state import _Guard, _meta, _plateau, _resume, _state_tensors, versions  # noqa: F401
from msflow.transforms.ode_solver import solver_errors_in_backward

OPTIMIZERS = {"adam": torch.optim.Adam, "adamax": torch.optim.Adamax}


class TrainingDiverged(MsflowError):
    """Too many consecutive steps with a non-finite loss or gradient."""


def build_model(cfg: Config, device: torch.device) -> nn.Module:
    """The configured model, seeded by ``train.seed``, on ``device``."""
    torch.manual_seed(cfg.train.seed)
    model = create_model(cfg.model.name, **cfg.model.options).to(device)
    return set_gradient_checkpointing(model, cfg.train.gradient_checkpointing)


def learning_rate(cfg: Config, step: int) -> float:
    """The scheduled learning rate of step ``step`` (counted from 0), before the plateau drop and
    the roll-back scale.

    Linear warm-up ``lr * (step + 1) / warmup_steps`` over the first ``warmup_steps`` steps; after
    it, with ``u = step - warmup_steps``: ``constant`` keeps ``lr``; ``cosine`` decays to 0 at
    ``train.steps``; ``exponential`` is ``lr * decay_rate^(u / decay_steps)`` and ``step``
    (PyTorch's ``StepLR``) is ``lr * decay_rate^floor(u / decay_steps)``, both floored at ``min_lr``.

    Example:
        >>> from msflow.train.config import config_from_dict
        >>> cfg = config_from_dict({"optim": {"schedule": "step", "lr": 1.0, "warmup_steps": 2,
        ...                                   "decay_rate": 0.5, "decay_steps": 3}})
        >>> [learning_rate(cfg, s) for s in range(9)]
        [0.5, 1.0, 1.0, 1.0, 1.0, 0.5, 0.5, 0.5, 0.25]
    """
    o = cfg.optim
    warm = min(1.0, (step + 1) / o.warmup_steps) if o.warmup_steps > 0 else 1.0
    if o.schedule == "cosine" and step >= o.warmup_steps:
        progress = (step - o.warmup_steps) / max(1, cfg.train.steps - o.warmup_steps)
        return o.lr * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    if o.schedule == "exponential" and step >= o.warmup_steps:
        return max(o.min_lr, o.lr * o.decay_rate ** ((step - o.warmup_steps) / o.decay_steps))
    if o.schedule == "step" and step >= o.warmup_steps:
        return max(o.min_lr, o.lr * o.decay_rate ** ((step - o.warmup_steps) // o.decay_steps))
    return o.lr * warm


def _non_finite(tensors: dict[str, Tensor]) -> str | None:
    """The name of the first floating-point tensor holding a NaN or infinity, if any."""
    return next((k for k, v in tensors.items() if v.is_floating_point() and not torch.isfinite(v).all()), None)


def _every(step: int, period: int) -> bool:
    """True every ``period`` steps; a period of 0 means never."""
    return period > 0 and step % period == 0


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
        return _train(cfg)
    with run_lock(cfg.run_dir):
        return _train(cfg)


def _train(cfg: Config) -> dict[str, Any]:
    t = cfg.train
    run_dir = cfg.run_dir
    device = resolve_device(t.device)
    # The checkpoint stores the precision the run really used, not "auto".
    cfg = with_crop_size(replace(cfg, train=replace(t, precision=resolve_precision(t.precision, device))))
    t = cfg.train
    ranks = init_distributed(device)
    if t.deterministic:
        make_deterministic()
    train_set, test_set = load_data(cfg, "train"), load_data(cfg, "test")
    model = build_model(cfg, device)
    check_compatible(model, train_set, cfg)
    objective_at = objective_schedule(model, t.objective, t.level, t.finetune_fraction)
    conds = getattr(test_set, "conds", None)
    if conds is not None and t.logdet_every:
        raise ConfigError("train.logdet_every tracks unconditional flows only; set it to 0 for a conditional model")
    rows = min(t.num_samples, 8)  # a conditional grid has a row per test condition
    pairs = (test_set.images[:rows], conds[:rows]) if conds is not None else None
    score = bpd_score(t.level)
    first, stop = ranks.shard(t.batch_size)
    batches = StepBatches(train_set, t.batch_size, t.seed, (first, stop), loader_workers(cfg))
    o = cfg.optim
    opt = OPTIMIZERS[o.optimizer](model.parameters(), lr=o.lr, betas=o.betas, weight_decay=o.weight_decay)
    ema = EMA(model, o.ema_decay) if o.ema_decay > 0 else None
    noise = torch.Generator().manual_seed(t.seed + 1)
    ckpt = run_dir / CHECKPOINT
    step, guard = _resume(ckpt, cfg, model, opt, ema, noise) if ckpt.exists() else (0, _Guard(plateau=_plateau(cfg)))
    reported = step >= t.steps  # a finished run, rerun: report it again, log nothing twice
    clock_fn = time.process_time if t.budget_clock == "cpu" else time.perf_counter
    started, spent_before = clock_fn(), guard.train_seconds
    paused = 0.0  # budget-clock seconds of evaluations during training: not training time

    def spent() -> float:
        return spent_before + clock_fn() - started - paused

    if ranks.main:
        for folder in (run_dir, run_dir / "samples"):
            remove_stale_temp_files(folder)
    log = MetricsLog(run_dir / "metrics.jsonl", resume_step=step) if ranks.main else _NoLog()
    logdets = LogdetTracker(model, run_dir, resume_step=step, seed=t.seed) if t.logdet_every and ranks.main else None

    def state() -> tuple[dict[str, Tensor], dict]:
        return _state_tensors(model, opt, ema, noise)

    def checkpoint(tensors: dict[str, Tensor], optim_meta: dict, results: dict | None = None) -> None:
        guard.train_seconds = spent() if results is None else trained
        if ranks.main:
            save_checkpoint(ckpt, tensors, finite_json(_meta(cfg, model, step, guard, optim_meta, results)))

    def rollback(why: str) -> int:
        """Reload the last checkpoint with a lower learning rate; returns its step."""
        if guard.rollbacks >= o.max_rollbacks:
            raise TrainingDiverged(
                f"{why}, and the run already rolled back {guard.rollbacks} time(s) (optim.max_rollbacks); "
                "lower optim.lr or raise optim.warmup_steps"
            )
        lr_scale, rollbacks = guard.lr_scale * o.rollback_lr_factor, guard.rollbacks + 1
        ranks.barrier()  # rank 0's last checkpoint is on disk
        back, saved = _resume(ckpt, cfg, model, opt, ema, noise)
        guard.bad_in_a_row, guard.lr_scale, guard.rollbacks = 0, lr_scale, rollbacks
        # The loss tracking goes back with the weights, but a drop already taken stays: like
        # lr_scale, a roll-back never raises the learning rate.
        if guard.plateau.drop_step is None:
            guard.plateau = saved.plateau
        log.write({"step": step, "event": "rollback", "why": why, "to_step": back, "lr_scale": lr_scale})
        bar.write(f"step {step}: {why}; rolled back to step {back} with the learning rate x {lr_scale:g}")
        bar.rewind(back, spent())
        return back

    def eval_now(progress: bool = False) -> dict[str, float]:
        with ema.applied(model) if ema else nullcontext():
            return evaluate(
                model, test_set, t.eval_batch_size, seed=t.seed, progress=progress, score=score, limit=t.eval_images
            )

    if step == 0:
        if ranks.main:
            run_dir.mkdir(parents=True, exist_ok=True)
            write_text(run_dir / "config.yaml", yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
        checkpoint(*state())  # the state a roll-back returns to before the first periodic checkpoint
    show = t.progress and ranks.main
    bar = TrainingBar(t.steps, step, t.max_seconds, spent(), f"train {cfg.name}", show, t.budget_clock)
    seen, clock = 0, time.perf_counter()
    next_eval = (math.floor(spent() / t.eval_seconds) + 1) * t.eval_seconds if t.eval_seconds else 0.0
    model.train()
    # Every rank must agree on when the time budget ends.
    stream, stream_step, pending = batches.iterate(step), step, False
    while step < t.steps and not ranks.any(bool(t.max_seconds) and spent() >= t.max_seconds):
        if stream_step != step:  # a roll-back: the batches go back with the weights
            stream.close()
            stream, stream_step, pending = batches.iterate(step), step, False
        x, cond = next(stream)
        stream_step += 1
        x, cond = x.to(device), None if cond is None else cond.to(device)
        lr = learning_rate(cfg, step) * guard.lr_scale * guard.plateau.scale
        for group in opt.param_groups:
            group["lr"] = lr
        nfe_before = function_evaluations(model)
        noise_state = noise.get_state()
        skip_noise(noise, first, x.shape[1:])  # the other ranks' images come first in the global batch
        progress = spent() / t.max_seconds if t.max_seconds else step / t.steps
        with subnet_precision(t.precision):
            loss, logged = objective_at(progress)(model, x, noise, cond)
        if ranks.world > 1:  # every rank logs and decides on the global batch's mean
            noise.set_state(noise_state)
            skip_noise(noise, t.batch_size, x.shape[1:])
            logged = {k: ranks.mean(v) for k, v in logged.items()}
        opt.zero_grad(set_to_none=True)
        grad_norm = torch.tensor(float("nan"))
        mean_loss = ranks.mean(loss.detach())
        if torch.isfinite(mean_loss):
            with solver_errors_in_backward():
                loss.backward()
            ranks.average_gradients(model)
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), o.grad_clip)
        step += 1
        seen += x.shape[0] * ranks.world
        if not (torch.isfinite(mean_loss) and torch.isfinite(grad_norm)):
            guard.bad_in_a_row += 1
            event = {"step": step, "event": "skipped_non_finite_step", "loss": mean_loss.item()}
            log.write({**event, "in_a_row": guard.bad_in_a_row})
            if guard.bad_in_a_row >= o.max_bad_steps:
                step = rollback(f"{guard.bad_in_a_row} steps in a row had a non-finite loss or gradient")
                continue
        else:
            guard.bad_in_a_row = 0
            opt.step()
            if ema is not None:
                ema.update(model, step)
            # mean_loss is the mean over ranks, so every rank drops at the same step.
            if guard.plateau.active and guard.plateau.update(mean_loss.item(), step):
                plateau = guard.plateau
                event = {"step": step, "event": "lr_drop", "factor": plateau.factor, "smoothed_loss": plateau.smoothed}
                log.write({**event, "best_smoothed_loss": plateau.best})
                bar.write(
                    f"step {step}: the smoothed training loss has not improved for {plateau.since} steps; "
                    f"learning rate x {plateau.factor:g} from here on"
                )
        bar.advance(step, spent())
        if _every(step, t.log_every) or step == t.steps:
            elapsed = time.perf_counter() - clock
            record = {"step": step, **{k: v.item() for k, v in logged.items()}, "lr": lr}
            record["grad_norm"] = grad_norm.item()
            if nfe_before is not None:  # a continuous flow: its solver work
                record["nfe"] = function_evaluations(model) - nfe_before
            log.write({**record, "img_per_s": seen / elapsed})
            shown = "loss_bpd" if "loss_bpd" in record else "loss_fm"
            bar.set_loss(shown[5:], record[shown])
            seen, clock = 0, time.perf_counter()
        due = _every(step, t.checkpoint_every) or step == t.steps or pending
        bad = _non_finite(state()[0]) if due else None
        if bad is not None:
            # Never evaluated or written to disk: go back to the last state that was.
            step = rollback(f"non-finite values in {bad}")
            continue
        if logdets is not None and _every(step, t.logdet_every):
            logdets.measure(x, step)
        # A timed evaluation at the step that spends the budget is left to the final evaluation.
        timed = bool(t.eval_seconds) and next_eval <= spent() < (t.max_seconds or math.inf)
        if (_every(step, t.eval_every) or timed) and step < t.steps and ranks.main:
            at, before = spent(), clock_fn()
            result = eval_now()
            paused += clock_fn() - before
            next_eval = (math.floor(at / t.eval_seconds) + 1) * t.eval_seconds if t.eval_seconds else 0.0
            record = {"step": step, "train_seconds": at, "test_bpd": result["bpd"]}
            log.write({**record, "test_bpd_stderr": result["bpd_stderr"]})
            bar.write(f"step {step}: test bits/dim {result['bpd']:.4f} +- {result['bpd_stderr']:.4f}")
        if _every(step, t.sample_every) and t.num_samples and ranks.main:
            with ema.applied(model) if ema else nullcontext():
                sample_grids(
                    model, run_dir / "samples", t.num_samples, t.temperatures, t.seed, f"step{step:06d}", pairs
                )
        # Last, so a checkpoint of step s means that everything of step s (logs, grids) is done.
        # Only a step that trained (finite loss and gradient) is a state to roll back to: during a
        # streak of skipped steps the checkpoint waits for the first good one.
        pending = due and step < t.steps and guard.bad_in_a_row > 0
        if due and step < t.steps and not pending:
            _periodic_checkpoint(partial(checkpoint, *state()), ckpt, step, log, bar)
    bar.close()
    stream.close()
    trained = spent()  # the budget counts training only, not the evaluation and sampling below
    if guard.bad_in_a_row:
        raise TrainingDiverged(
            f"training ended inside a streak of {guard.bad_in_a_row} steps with a non-finite loss or gradient; "
            f"the checkpoint in {run_dir} holds the last state that trained: lower optim.lr (now {o.lr:g}) "
            "or raise optim.warmup_steps, and rerun the same command to go on from it"
        )
    if not ranks.main:  # rank 0 evaluates and writes the results
        ranks.barrier()
        return json.loads((run_dir / "results.json").read_text())
    if logdets is not None:
        logdets.plot()
    if model.independent_levels:
        _plot_levels(run_dir)
    wall_before_eval = time.perf_counter()
    result = eval_now(progress=show)
    if not reported:
        record = {"step": step, "train_seconds": trained, "test_bpd": result["bpd"]}
        log.write({**record, "test_bpd_stderr": result["bpd_stderr"], "final": True})
    grids = []
    if t.num_samples:
        with ema.applied(model) if ema else nullcontext():
            grids = sample_grids(
                model, run_dir / "samples", t.num_samples, t.temperatures, t.seed, "final", pairs, progress=show
            )
    result.update({"run_dir": str(run_dir), "samples": [str(p) for p in grids], "steps": step})
    # What the budget bought, and what the report after it cost (issue 26: at most a quarter).
    result.update(train_seconds=trained, report_wall_seconds=time.perf_counter() - wall_before_eval)
    if o.plateau_patience or guard.plateau.drop_step is not None:
        result["lr_drop_step"] = guard.plateau.drop_step
    if step < t.steps:
        bar.write(f"stopped at step {step} of {t.steps}: train.max_seconds={t.max_seconds:g} was spent")
    try:
        checkpoint(*state(), results=result)
    except OSError as err:
        raise CheckpointError(
            f"could not write the final checkpoint {ckpt} ({err.strerror or err}); the previous one is intact: "
            "free some space and rerun the same command to finish"
        ) from None
    write_text(run_dir / "results.json", json.dumps(finite_json(result), indent=2))
    ranks.barrier()
    return result


class _NoLog:
    """The metrics log of ranks other than 0: they write nothing."""

    def write(self, record: dict[str, Any]) -> None:  # noqa: D102
        pass


def _plot_levels(run_dir: Path) -> None:
    """Per-level curves of a multi-resolution run (``levels.png``); a warning if they cannot be drawn."""
    from msflow.analysis.level_curves import LEVEL_PLOT, plot_level_curves

    try:
        plot_level_curves([run_dir], run_dir / LEVEL_PLOT)
    except (ImportError, MsflowError) as err:
        warnings.warn(f"no {LEVEL_PLOT}: {err}", stacklevel=2)


def _periodic_checkpoint(write: Callable[[], None], path: Path, step: int, log: MetricsLog, bar: Any) -> None:
    """Write a periodic checkpoint; a failed write (full disk, say) warns and training goes on.

    The write is atomic, so the previous checkpoint stays whole and a later one may succeed;
    stopping would throw away the steps since then for nothing.
    """
    try:
        write()
    except OSError as err:
        log.write({"step": step, "event": "checkpoint_failed", "error": str(err)})
        bar.write(f"step {step}: could not write {path} ({err.strerror or err}); keeping the previous checkpoint")


def make_deterministic() -> None:
    """Ask PyTorch for deterministic kernels (bit-for-bit repeatable runs on one device).

    CPU runs with a fixed thread count already repeat exactly; on CUDA this turns off cuDNN's
    autotuner and makes cuBLAS use a fixed workspace, at some speed cost.
    """
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.backends.cudnn.benchmark = False
    torch.use_deterministic_algorithms(True, warn_only=True)
