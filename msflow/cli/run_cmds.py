"""``msflow train | eval | sample | list``: the everyday commands."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

import torch

from msflow.cli._common import (
    bpd_line,
    int_range,
    non_negative_int,
    png_output,
    positive_int,
    seed_arg,
    temperature_arg,
)
from msflow.core import evaluation_context
from msflow.train.device import DEVICES


def cmd_train(args: argparse.Namespace) -> None:
    from msflow.train import apply_overrides, load_config, train
    from msflow.train.config import replace

    cfg = apply_overrides(load_config(args.config), list(args.overrides))
    # Options are taken literally (not parsed as YAML like the overrides): `--out "run #1"`.
    literal: dict[str, Any] = {k: v for k, v in (("device", args.device), ("out", args.out)) if v}
    if args.seed is not None:
        literal["seed"] = args.seed
    if args.deterministic:
        literal["deterministic"] = True
    cfg = replace(cfg, train=replace(cfg.train, **literal))
    result = train(cfg)
    if os.environ.get("RANK", "0") != "0":  # torchrun: rank 0 reports for the job
        return
    print(bpd_line("test", result, cfg.data.name, cfg.train.seed))
    print(f"run folder: {result['run_dir']}")
    print("samples: " + ", ".join(result["samples"]))


def cmd_eval(args: argparse.Namespace) -> None:
    from msflow.metrics.invertibility import WARN_ABOVE, reconstruction_errors
    from msflow.runs import load_data, load_run, resolve_device
    from msflow.train.evaluate import evaluate

    model, cfg, _ = load_run(args.run, resolve_device(args.device or "auto"))
    model.to(DTYPES[args.dtype])
    data = load_data(cfg, args.split)
    batch = args.batch_size or cfg.train.eval_batch_size
    seed = cfg.train.seed if args.seed is None else args.seed
    result = evaluate(model, data, batch, seed=seed, progress=True)
    print(bpd_line(args.split, result, cfg.data.name, seed) + f" in {args.dtype}")
    if args.check_images == 0:
        return
    if not model.invertible:
        print("invertibility: not checked, this model is a factorized baseline, not a flow")
        return
    errors = reconstruction_errors(model, data, batch, seed=seed, max_images=args.check_images)
    worst = errors.max().item()
    print(
        f"invertibility: max |x - f^-1(f(x))| = {worst:.2e} over {len(errors)} {args.split} images in {args.dtype} "
        f"(one 8-bit level is {1 / 256:.1e})"
    )
    if not worst <= WARN_ABOVE:  # NaN included
        print(
            f"msflow eval: warning: the model does not invert to within {WARN_ABOVE:g} (worst: image "
            f"{int(errors.nan_to_num(float('inf')).argmax())}, {worst:.2e}), so its bits/dim are those of a function "
            "it cannot undo; check with --dtype float64, and retrain with a lower optim.lr or a balanced-* model",
            file=sys.stderr,
        )


DTYPES = {"float32": torch.float32, "float64": torch.float64}
SAMPLE_COUNT = int_range(1, 10_000, "a number of samples in [1, 10000]")


def cmd_sample(args: argparse.Namespace) -> None:
    from msflow.runs import load_run, resolve_device
    from msflow.viz import save_grid

    model, _, _ = load_run(args.run, resolve_device(args.device or "auto"))
    generator = torch.Generator().manual_seed(args.seed)
    with evaluation_context(model):
        images = model.sample(args.n, temperature=args.temperature, generator=generator)
    path = save_grid(images, args.output, scale=max(1, 96 // images.shape[-1]))
    print(f"wrote {args.n} samples at temperature {args.temperature} to {path}")


def cmd_list(args: argparse.Namespace) -> None:
    from msflow.data import list_datasets
    from msflow.models import list_models, model_capabilities, model_help

    names = list_models(conditional=args.conditional, task=args.task, cnf=args.cnf)
    print("models (kind: density of images, or p(target | condition) for a task; cnf: continuous levels):")
    for name in names:
        caps = model_capabilities(name)
        kind = caps.task or "density"
        print(f"  {name:24s} {kind + (' cnf' if caps.cnf else ''):13s} {model_help(name)}")
    if not names:
        print("  (none match the filters)")
    print("datasets:")
    for name in list_datasets():
        print(f"  {name}")
    from msflow.data.recipes import RECIPES
    from msflow.data.tasks import SOURCES

    print(f"image-to-image tasks (data.task): {', '.join(RECIPES)}")
    print(f"  drawing random data.crop crops from (data.name): {', '.join(SOURCES)}")


def register(sub: Any) -> None:
    """Add this module's subcommands to ``sub`` (an argparse subparsers object)."""
    p = sub.add_parser("train", help="train a config (YAML path or name in configs/)")
    p.add_argument("config")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.steps=100 model.options.hidden=64")
    p.add_argument("--device", choices=DEVICES)
    p.add_argument("--out", help="run folder (default runs/<config name>)")
    p.add_argument("--seed", type=seed_arg, help="train.seed: weights, data order, noise (CPU runs repeat bit for bit)")
    p.add_argument(
        "--deterministic", action="store_true", help="deterministic kernels on GPU too (train.deterministic, slower)"
    )
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="test bits/dim of a trained run")
    p.add_argument("run")
    p.add_argument("--split", choices=["test", "train"], default="test")
    p.add_argument("--batch-size", type=positive_int)
    p.add_argument("--seed", type=seed_arg, help="seed of the dequantization draw (default: the run's train.seed)")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="float32", help="arithmetic of the evaluation")
    p.add_argument(
        "--check-images",
        type=non_negative_int,
        default=500,
        metavar="N",
        help="measure max |x - f^-1(f(x))| on the first N images (0: skip)",
    )
    p.add_argument("--device", choices=DEVICES)
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("sample", help="write a grid of samples")
    p.add_argument("run")
    p.add_argument("-n", type=SAMPLE_COUNT, default=64, help="number of samples")
    p.add_argument("--temperature", "-t", type=temperature_arg, default=0.7)
    p.add_argument("--seed", type=seed_arg, default=0)
    p.add_argument("-o", "--output", type=png_output, default="samples.png")
    p.add_argument("--device", choices=DEVICES)
    p.set_defaults(func=cmd_sample)

    p = sub.add_parser("list", help="list model presets (with what each declares) and datasets")
    kinds = p.add_mutually_exclusive_group()
    kinds.add_argument("--conditional", action="store_const", const=True, help="only image-to-image models")
    kinds.add_argument("--unconditional", dest="conditional", action="store_const", const=False, help="only densities")
    p.add_argument("--task", help="only the models of this task (superres, colorize, inpaint, sketch, segment)")
    p.add_argument("--cnf", action="store_const", const=True, help="only models with continuous (ODE) levels")
    p.set_defaults(func=cmd_list)
