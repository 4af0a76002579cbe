"""Training stability (Liao & He, section 6.2): the balanced flow against a Glow of equal size.

Both models train on the bundled MNIST-5k with the same optimiser, schedule, batches and
preprocessing, at each learning rate given. A run counts as *unstable* when it has any step
with a non-finite loss or gradient (msflow's loop skips those and stops the run after
``optim.max_bad_steps`` in a row) or when its training loss (logged every ``--log-every``
steps, then averaged over ``--smooth`` consecutive values) climbs more than ``--max-rise``
bits/dim above the best value it had reached.
Gradient clipping is set very high (1e6) by default, so it does not mask the instability the
paper studies; ``--clip`` puts msflow's default back.

Output (in ``--out``): one run folder per (model, lr) with the usual ``metrics.jsonl``,
``stability.json`` (every figure), ``stability.md`` (the table) and ``stability.png`` (the
training curves, one panel per learning rate).

Usage::

    python benchmarks/stability.py --lrs 1e-3 1e-2 --steps 1500 --jobs 2
    python benchmarks/stability.py --smoke          # seconds: what the tests run
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

# name -> (model preset, options); sizes matched by parameter count (printed in the table).
MODELS: dict[str, tuple[str, dict[str, Any]]] = {
    "balanced": ("balanced-mnist", {"steps": 4, "hidden": 48}),
    "glow": ("glow-mnist", {"steps": 8, "hidden": 88}),
}
SMOKE: dict[str, tuple[str, dict[str, Any]]] = {
    "balanced": ("balanced-mnist", {"steps": 1, "hidden": 8, "image_shape": [1, 8, 8], "levels": 1}),
    "glow": ("glow-mnist", {"steps": 1, "hidden": 8, "image_shape": [1, 8, 8], "levels": 1}),
}


def run_config(model: str, lr: float, args: argparse.Namespace) -> dict[str, Any]:
    """The msflow config of one run, as a plain mapping."""
    preset, options = (SMOKE if args.smoke else MODELS)[model]
    return {
        "name": f"{model}-lr{lr:g}",
        "data": {"name": "digits8" if args.smoke else "mnist5k"},
        "model": {"name": preset, "options": options},
        "optim": {
            "optimizer": args.optimizer,
            "lr": lr,
            "warmup_steps": args.warmup,
            "schedule": "constant",
            "grad_clip": args.clip,
            "ema_decay": 0.0,
            "max_bad_steps": args.max_bad_steps,
        },
        "train": {
            "steps": args.steps,
            "batch_size": args.batch_size,
            "eval_every": 0,
            "checkpoint_every": 0,
            "log_every": args.log_every,
            "logdet_every": args.logdet_every,
            "num_samples": 0,
            "seed": args.seed,
            "device": "cpu",
            "progress": False,
            "out": str(Path(args.out) / f"{model}-lr{lr:g}"),
        },
    }


def train_one(model: str, lr: float, args: argparse.Namespace) -> dict[str, Any]:
    """Train one (model, lr) pair in this process; returns its summary."""
    import torch

    torch.set_num_threads(args.threads)
    from msflow.train import train
    from msflow.train.config import config_from_dict
    from msflow.train.loop import TrainingDiverged

    cfg = config_from_dict(run_config(model, lr, args))
    run_dir = Path(cfg.run_dir)
    (run_dir / "metrics.jsonl").unlink(missing_ok=True)
    (run_dir / "checkpoint.safetensors").unlink(missing_ok=True)
    summary: dict[str, Any] = {"model": model, "lr": lr, "preset": cfg.model.name, "options": cfg.model.options}
    try:
        result = train(cfg)
        summary.update(test_bpd=result["bpd"], test_bpd_stderr=result["bpd_stderr"], stopped=None)
    except TrainingDiverged as err:
        summary.update(test_bpd=None, test_bpd_stderr=None, stopped=str(err))
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    curve = [(r["step"], r["loss_bpd"]) for r in records if "loss_bpd" in r]
    skipped = [r["step"] for r in records if r.get("event") == "skipped_non_finite_step"]
    finite = [b for _, b in curve if b is not None and math.isfinite(b)]
    summary.update(
        curve=curve,
        non_finite_steps=len(skipped),
        first_non_finite_step=skipped[0] if skipped else None,
        first_loss=finite[0] if finite else None,
        last_loss=finite[-1] if finite else None,
        params=_num_params(cfg),
    )
    return assess(summary, args)


def assess(summary: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """Add ``worst_rise`` and ``stable`` to a run's summary (from its curve; see the module docstring)."""
    losses = [b for _, b in summary["curve"] if b is not None and math.isfinite(b)]
    summary["worst_rise"] = worst_rise(smooth(losses, args.smooth)) if losses else math.inf
    summary["stable"] = (
        not summary["non_finite_steps"] and summary["stopped"] is None and summary["worst_rise"] <= args.max_rise
    )
    return summary


def smooth(values: list[float], window: int) -> list[float]:
    """Moving average over ``window`` consecutive values (single-batch losses are noisy)."""
    if len(values) < window:
        return values
    return [sum(values[i : i + window]) / window for i in range(len(values) - window + 1)]


def worst_rise(losses: list[float]) -> float:
    """Largest climb of the loss above its best value so far (0 for a monotone curve)."""
    best, rise = math.inf, 0.0
    for loss in losses:
        best = min(best, loss)
        rise = max(rise, loss - best)
    return rise


def _num_params(cfg: Any) -> int:
    from msflow import create_model

    return sum(p.numel() for p in create_model(cfg.model.name, **cfg.model.options).parameters())


def markdown(results: list[dict[str, Any]], args: argparse.Namespace) -> str:
    """The results table."""
    lines = [
        f"Stability on {'digits8 (smoke)' if args.smoke else 'MNIST-5k'}: {args.optimizer}, constant lr after "
        f"{args.warmup} warm-up steps, batch {args.batch_size}, {args.steps} steps, gradient clip {args.clip:g}, "
        f"seed {args.seed}. Worst rise: largest climb of the training loss (mean of {args.smooth} logged values, "
        f"logged every {args.log_every} steps) above its best so far; unstable above {args.max_rise:g} bits/dim "
        "or with any non-finite step.",
        "",
        "| model | params | lr | non-finite steps (first) | stopped | first -> last train bpd | worst rise | test bpd "
        "| stable |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        first = f" ({r['first_non_finite_step']})" if r["first_non_finite_step"] else ""
        loss = "n/a" if r["first_loss"] is None else f"{r['first_loss']:.3f} -> {r['last_loss']:.3f}"
        test = "n/a" if r["test_bpd"] is None else f"{r['test_bpd']:.4f} +- {r['test_bpd_stderr']:.4f}"
        stopped = "diverged" if r["stopped"] else "no"
        lines.append(
            f"| {r['model']} | {r['params'] / 1e3:.0f}k | {r['lr']:g} | {r['non_finite_steps']}{first} | {stopped} "
            f"| {loss} | {r['worst_rise']:.2f} | {test} | {'yes' if r['stable'] else 'NO'} |"
        )
    return "\n".join(lines) + "\n"


def plot(results: list[dict[str, Any]], path: Path) -> None:
    """Training curves: one panel per learning rate, both models in each."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lrs = sorted({r["lr"] for r in results})
    fig, axes = plt.subplots(1, len(lrs), figsize=(5 * len(lrs), 3.6), squeeze=False)
    for ax, lr in zip(axes[0], lrs, strict=True):
        for r in (r for r in results if r["lr"] == lr):
            steps = [s for s, b in r["curve"] if b is not None]
            bpd = [b for _, b in r["curve"] if b is not None]
            ax.plot(steps, bpd, label=f"{r['model']} ({r['non_finite_steps']} non-finite steps)")
            if r["first_non_finite_step"]:
                ax.axvline(r["first_non_finite_step"], ls=":", color=ax.lines[-1].get_color())
        ax.set(title=f"lr = {lr:g}", xlabel="step", ylabel="training bits/dim", yscale="log")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--lrs", type=float, nargs="+", default=[1e-3, 1e-2])
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--optimizer", choices=["adam", "adamax"], default="adamax")
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--clip", type=float, default=1e6, help="gradient clipping norm (msflow's default is 50)")
    p.add_argument("--max-bad-steps", type=int, default=20)
    p.add_argument("--max-rise", type=float, default=1.0, help="bits/dim climb above the best that counts as unstable")
    p.add_argument("--smooth", type=int, default=10, help="logged losses averaged before looking for climbs")
    p.add_argument("--report-only", action="store_true", help="re-assess and re-plot OUT/stability.json, no training")
    p.add_argument("--log-every", type=int, default=10)
    p.add_argument("--logdet-every", type=int, default=0, help="per-block log-dets every N steps (0: off)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--jobs", type=int, default=2, help="runs in parallel (one process each)")
    p.add_argument("--threads", type=int, default=1, help="torch threads per run")
    p.add_argument("--models", nargs="+", choices=sorted(MODELS), default=sorted(MODELS))
    p.add_argument("--out", default="runs/stability")
    p.add_argument("--smoke", action="store_true", help="tiny models on 8x8 digits, a few steps")
    args = p.parse_args(argv)
    if args.smoke:
        args.steps, args.log_every, args.warmup = min(args.steps, 6), 2, 2
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.report_only:
        saved = json.loads((out / "stability.json").read_text())
        for key in ("steps", "optimizer", "warmup", "batch_size", "clip", "log_every", "seed", "smoke"):
            setattr(args, key, saved["args"][key])
        results = [assess(r, args) for r in saved["results"]]
    else:
        pairs = [(m, lr) for lr in args.lrs for m in args.models]
        with ProcessPoolExecutor(max_workers=args.jobs) as pool:
            results = list(pool.map(train_one, *zip(*pairs, strict=True), [args] * len(pairs)))
    table = markdown(results, args)
    (out / "stability.json").write_text(json.dumps({"args": vars(args), "results": results}, indent=1))
    (out / "stability.md").write_text(table)
    plot(results, out / "stability.png")
    print(table)
    print(f"wrote {out / 'stability.json'}, {out / 'stability.md'}, {out / 'stability.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
