"""``msflow train | eval | sample | list``: the everyday commands."""

from __future__ import annotations

import argparse
from typing import Any

import torch

from msflow.cli._common import bpd_line, positive_int, temperature_arg


def cmd_train(args: argparse.Namespace) -> None:
    from msflow.train import apply_overrides, load_config, train
    from msflow.train.config import replace

    cfg = apply_overrides(load_config(args.config), list(args.overrides))
    # Options are taken literally (not parsed as YAML like the overrides): `--out "run #1"`.
    literal = {k: v for k, v in (("device", args.device), ("out", args.out)) if v}
    cfg = replace(cfg, train=replace(cfg.train, **literal))
    result = train(cfg)
    print(bpd_line("test", result, cfg.data.name, cfg.train.seed))
    print(f"run folder: {result['run_dir']}")
    print("samples: " + ", ".join(result["samples"]))


def cmd_eval(args: argparse.Namespace) -> None:
    from msflow.train.evaluate import evaluate, resolve_device
    from msflow.train.loop import load_data
    from msflow.train.run import load_run

    model, cfg, _ = load_run(args.run, resolve_device(args.device or "auto"))
    batch = args.batch_size or cfg.train.eval_batch_size
    seed = cfg.train.seed if args.seed is None else args.seed
    result = evaluate(model, load_data(cfg, args.split), batch, seed=seed, progress=True)
    print(bpd_line(args.split, result, cfg.data.name, seed))


def cmd_sample(args: argparse.Namespace) -> None:
    from msflow.train.evaluate import resolve_device
    from msflow.train.run import load_run
    from msflow.viz import save_grid

    model, _, _ = load_run(args.run, resolve_device(args.device or "auto"))
    generator = torch.Generator().manual_seed(args.seed)
    with torch.inference_mode():
        images = model.sample(args.n, temperature=args.temperature, generator=generator)
    path = save_grid(images, args.output, scale=max(1, 96 // images.shape[-1]))
    print(f"wrote {args.n} samples at temperature {args.temperature} to {path}")


def cmd_list(args: argparse.Namespace) -> None:
    from msflow.data import list_datasets
    from msflow.models import list_models, model_help

    print("models:")
    for name in list_models():
        print(f"  {name:24s} {model_help(name)}")
    print("datasets:")
    for name in list_datasets():
        print(f"  {name}")


def register(sub: Any) -> None:
    """Add this module's subcommands to ``sub`` (an argparse subparsers object)."""
    p = sub.add_parser("train", help="train a config (YAML path or name in configs/)")
    p.add_argument("config")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.steps=100 model.options.hidden=64")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"])
    p.add_argument("--out", help="run folder (default runs/<config name>)")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="test bits/dim of a trained run")
    p.add_argument("run")
    p.add_argument("--split", choices=["test", "train"], default="test")
    p.add_argument("--batch-size", type=positive_int)
    p.add_argument("--seed", type=int)
    p.add_argument("--device", choices=["auto", "cpu", "cuda"])
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("sample", help="write a grid of samples")
    p.add_argument("run")
    p.add_argument("-n", type=positive_int, default=64)
    p.add_argument("--temperature", "-t", type=temperature_arg, default=0.7)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("-o", "--output", default="samples.png")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"])
    p.set_defaults(func=cmd_sample)

    p = sub.add_parser("list", help="list model presets and datasets")
    p.set_defaults(func=cmd_list)
