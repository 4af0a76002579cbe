"""The ``msflow`` command: parses arguments, then calls library functions.

Every error caused by the user (bad config, missing data, foreign checkpoint, bad shape) is
printed as one line on stderr with exit code 2; nothing half-written is left behind.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

import torch

from msflow.errors import MsflowError


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _temperature(text: str) -> float:
    value = float(text)
    if not 0 <= value <= 10:
        raise argparse.ArgumentTypeError(f"temperature must be in [0, 10], got {text}")
    return value


def _bpd_line(split: str, result: dict, data: str, seed: int) -> str:
    mean, stderr, n = result["bpd"], result["bpd_stderr"], result["n"]
    return f"{split} bits/dim: {mean:.6f} +- {stderr:.6f} ({n} {split} images of {data}, dequantization seed {seed})"


def cmd_train(args: argparse.Namespace) -> None:
    from msflow.train import apply_overrides, load_config, train
    from msflow.train.config import replace

    cfg = apply_overrides(load_config(args.config), list(args.overrides))
    # Options are taken literally (not parsed as YAML like the overrides): `--out "run #1"`.
    literal = {k: v for k, v in (("device", args.device), ("out", args.out)) if v}
    cfg = replace(cfg, train=replace(cfg.train, **literal))
    result = train(cfg)
    print(_bpd_line("test", result, cfg.data.name, cfg.train.seed))
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
    print(_bpd_line(args.split, result, cfg.data.name, seed))


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


def cmd_bound(args: argparse.Namespace) -> None:
    from msflow.data import get_dataset
    from msflow.metrics import linear_flow_bound

    train, test = (get_dataset(args.data, split, root=args.root, pad_to=args.pad_to) for split in ("train", "test"))
    r = linear_flow_bound(train.images, test.images, n_bits=train.n_bits, seed=args.seed)
    print(f"best linear (PPCA) flow on {args.data} ({r['images']} training images, {r['dims']} dims):")
    print(f"  training-set optimum (eq. 6): {r['train_bpd']:.4f} bits/dim")
    print(f"  test images under that Gaussian: {r['test_bpd']:.4f} +- {r['test_bpd_stderr']:.4f} bits/dim")
    if r["images"] < 10 * r["dims"]:
        print("  (few images per dimension: the fitted covariance overfits, so the test figure is pessimistic)")


def cmd_perturb(args: argparse.Namespace) -> None:
    from msflow.analysis import load_image, perturb_levels
    from msflow.train.evaluate import resolve_device
    from msflow.train.run import load_run
    from msflow.viz import save_grid

    model, _, _ = load_run(args.run, resolve_device(args.device or "auto"))
    x = load_image(args.image, model.image_shape)
    generator = torch.Generator().manual_seed(args.seed)
    images = perturb_levels(model, x, temperature=args.temperature, generator=generator)
    levels = len(model.latent_shapes())
    path = save_grid(images, args.output, nrow=levels + 1, scale=max(1, 96 // images.shape[-1]))
    print(f"wrote level perturbations of {args.image} ({levels} levels, temperature {args.temperature}) to {path}")
    print(f"  row 1: the image, then keeping the k finest levels and resampling the rest, k = 1..{levels}")
    print(f"  row 2: the image, then resampling the k finest levels and keeping the rest, k = 1..{levels}")


def cmd_toy(args: argparse.Namespace) -> None:
    from msflow.analysis import TOYS, fit_toy, toy_figure, toy_log_likelihood

    flow, _ = fit_toy(args.name, blocks=args.blocks, steps=args.steps, lr=args.lr, seed=args.seed, progress=True)
    mean, stderr = toy_log_likelihood(flow, args.name, n=args.n, seed=args.seed)
    toy_figure(flow, TOYS[args.name](2000, generator=torch.Generator().manual_seed(args.seed)), args.output)
    print(f"held-out log-likelihood: {mean:.4f} +- {stderr:.4f} nats ({args.n} fresh samples of {args.name})")
    print(f"wrote the data, its image after each of the {args.blocks} blocks and the density to {args.output}")


def _bpd_fn(model: torch.nn.Module, batch_size: int, seed: int) -> Callable[[torch.Tensor], torch.Tensor]:
    from msflow.data import ImageDataset
    from msflow.train.evaluate import dataset_bits_per_dim

    # The one evaluation loop of `msflow eval`, with the same seeded dequantization draw for every set.
    return lambda images: dataset_bits_per_dim(model, ImageDataset(images), batch_size, seed)


def _in_distribution(args: argparse.Namespace, cfg: Any, model: torch.nn.Module, split: str) -> torch.Tensor:
    from msflow.data import get_dataset
    from msflow.data.convert import to_shape
    from msflow.train.loop import load_data

    if getattr(args, "in_data", None) in (None, cfg.data.name):
        return load_data(cfg, split).images
    images = get_dataset(args.in_data, split, root=args.root).images
    return to_shape(images, tuple(model.image_shape), args.fit)[0]


def _write_json(path: str, payload: dict) -> None:
    import json
    from pathlib import Path

    from msflow._io import atomic_write

    text = json.dumps(payload, indent=1)
    atomic_write(Path(path), lambda tmp: Path(tmp).write_text(text))
    print(f"wrote every number to {path}")


def cmd_ood(args: argparse.Namespace) -> None:
    from msflow.analysis.ood import ood_histogram, ood_table, run_ood
    from msflow.data.ood_sets import check_ood_names
    from msflow.metrics.complexity import get_codec
    from msflow.train.evaluate import resolve_device
    from msflow.train.run import load_run

    check_ood_names(args.ood)
    get_codec(args.codec)
    model, cfg, _ = load_run(args.run, resolve_device(args.device or "auto"))
    test, train = (_in_distribution(args, cfg, model, split) for split in ("test", "train"))
    bpd_fn = _bpd_fn(model, cfg.train.eval_batch_size, args.seed)
    in_name = args.in_data or cfg.data.name
    result = run_ood(bpd_fn, test, train, args.ood, args.codec, args.n, args.seed, args.root, args.fit, in_name)
    print(f"in-distribution: {in_name} test, {len(result.inlier.bpd)} images; model {args.run}")
    print(f"typical bits/dim (mean over {result.n_train} {in_name} training images): {result.typical_bpd:.4f}")
    for s in result.outliers:
        print(f"  {s.name}: {s.how}")
    print(ood_table(result))
    ood_histogram(result, args.output, title=f"{args.run}: {in_name} test vs OOD sets")
    print(f"wrote the -bits/dim histograms to {args.output}")
    if args.json:
        _write_json(args.json, {"run": str(args.run), "seed": args.seed, **result.to_dict()})


def cmd_shuffle_patches(args: argparse.Namespace) -> None:
    from msflow.analysis.shuffle_patches import shuffle_patch_bpd, shuffle_patch_figure, shuffle_patch_table
    from msflow.data.ood_sets import check_patch_sizes, patch_sizes, subset
    from msflow.train.evaluate import resolve_device
    from msflow.train.run import load_run

    model, cfg, _ = load_run(args.run, resolve_device(args.device or "auto"))
    _, h, w = model.image_shape
    ks = args.k or patch_sizes(h, w)
    check_patch_sizes(ks, h, w)
    test = subset(_in_distribution(args, cfg, model, "test"), args.n, args.seed)
    rows = shuffle_patch_bpd(_bpd_fn(model, cfg.train.eval_batch_size, args.seed), test, ks, args.seed)
    print(f"{cfg.data.name} test, {len(test)} images of {h}x{w}, k x k patches shuffled per image (seed {args.seed}):")
    print(shuffle_patch_table(rows))
    shuffle_patch_figure(rows, args.output, title=f"{args.run}: {cfg.data.name} test with shuffled patches")
    print(f"wrote the examples and the bits/dim-vs-k plot to {args.output}")
    if args.json:
        _write_json(args.json, {"run": str(args.run), "seed": args.seed, "rows": [r.to_dict() for r in rows]})


def cmd_temperature(args: argparse.Namespace) -> None:
    from msflow.analysis.temperature import format_table, result_json, temperature_figure, temperature_sweep
    from msflow.train.evaluate import resolve_device
    from msflow.train.loop import load_data
    from msflow.train.run import load_run

    inception = None
    if args.inception:
        from msflow.nn.inception import load_fid_inception

        inception = load_fid_inception(args.inception)  # before the run loads: a bad file fails fast
    model, cfg, meta = load_run(args.run, resolve_device(args.device or "auto"))
    train, test = load_data(cfg, "train"), load_data(cfg, "test")
    result = temperature_sweep(
        model, train, test, args.temperatures, args.n, args.seed, args.cache_dir, progress=True, inception=inception
    )
    print(f"model: {args.run}, checkpoint at step {meta.get('step')}")
    c = result["classifier"]
    if c is None:
        print(f"features: 2048-d pool features of FID's Inception-v3 with the weights in {args.inception}")
    else:
        how = f"trained in {c['train_seconds']:.1f} s" if c["trained"] else "cached"
        print(
            f"feature classifier ({how}): {c['path']}, test accuracy {c['test_accuracy']:.4f}, {c['features']} features"
        )
    print(format_table(result))
    temperature_figure(result, args.output, title=f"{args.run} (step {meta.get('step')}): {result['metric']}")
    print(f"wrote the {result['column']}-vs-temperature plot and sample grids to {args.output}")
    if args.json:
        _write_json(args.json, {**result_json(result, args.run), "step": meta.get("step")})


def cmd_report(args: argparse.Namespace) -> None:
    from msflow.analysis.report import check_tensorboard, write_report, write_tensorboard
    from msflow.train.evaluate import resolve_device

    if args.tensorboard:
        check_tensorboard()  # before anything is written
    options = {"ood_json": args.ood_json, "temperature_json": args.temperature_json, "seed": args.seed}
    device = resolve_device(args.device or "auto")
    path = write_report(args.run, args.output, temperatures=args.temperatures, device=device, **options)
    print(f"wrote the report to {path}")
    if args.tensorboard:
        print(f"wrote the metrics.jsonl scalars to {write_tensorboard(args.run)}")


def cmd_list(args: argparse.Namespace) -> None:
    from msflow.data import list_datasets
    from msflow.models import list_models, model_help

    print("models:")
    for name in list_models():
        print(f"  {name:24s} {model_help(name)}")
    print("datasets:")
    for name in list_datasets():
        print(f"  {name}")


def build_parser() -> argparse.ArgumentParser:
    from msflow.analysis.toys import TOYS

    parser = argparse.ArgumentParser(prog="msflow", description="Multi-scale normalizing flows on images.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a config (YAML path or name in configs/)")
    p.add_argument("config")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.steps=100 model.options.hidden=64")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"])
    p.add_argument("--out", help="run folder (default runs/<config name>)")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="test bits/dim of a trained run")
    p.add_argument("run")
    p.add_argument("--split", choices=["test", "train"], default="test")
    p.add_argument("--batch-size", type=_positive_int)
    p.add_argument("--seed", type=int)
    p.add_argument("--device", choices=["auto", "cpu", "cuda"])
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("sample", help="write a grid of samples")
    p.add_argument("run")
    p.add_argument("-n", type=_positive_int, default=64)
    p.add_argument("--temperature", "-t", type=_temperature, default=0.7)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("-o", "--output", default="samples.png")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"])
    p.set_defaults(func=cmd_sample)

    p = sub.add_parser("bound", help="bits/dim of the best linear (PPCA) flow on a dataset")
    p.add_argument("data", help="dataset name (see `msflow list`)")
    p.add_argument("--root", help="folder of your data for the non-bundled datasets")
    p.add_argument("--pad-to", type=_positive_int)
    p.add_argument("--seed", type=int, default=0, help="seed of the dequantization noise")
    p.set_defaults(func=cmd_bound)

    p = sub.add_parser("perturb", help="resample an image's latents level by level (Liao & He, Fig. 5)")
    p.add_argument("run")
    p.add_argument("image", help="an image file of the model's size (greyscale/RGB converted)")
    p.add_argument("--temperature", "-t", type=_temperature, default=1.0, help="std of the resampled latents")
    p.add_argument("--seed", type=int, default=0, help="seed of the resampled latents")
    p.add_argument("-o", "--output", default="perturb.png")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"])
    p.set_defaults(func=cmd_perturb)

    p = sub.add_parser("toy", help="fit a balanced flow to a 2-D toy density and plot it (Liao & He, Fig. 3, 7)")
    p.add_argument("name", choices=sorted(TOYS), help="the toy density")
    p.add_argument("--blocks", type=_positive_int, default=8, help="balanced blocks")
    p.add_argument("--steps", type=_positive_int, default=2000, help="training steps (fresh minibatch of 512 each)")
    p.add_argument("--lr", type=float, default=1e-2, help="initial Adamax learning rate (decays to a tenth)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("-n", type=_positive_int, default=10_000, help="held-out samples for the log-likelihood")
    p.add_argument("-o", "--output", default="toy.png")
    p.set_defaults(func=cmd_toy)

    from msflow.data.convert import FITS
    from msflow.metrics.complexity import CODECS

    p = sub.add_parser("ood", help="out-of-distribution scores and AUROCs: -bpd, complexity-corrected S, typicality")
    p.add_argument("run")
    p.add_argument("--in", dest="in_data", help="in-distribution dataset (default: the run's)")
    p.add_argument("--ood", nargs="+", required=True, metavar="NAME", help="constant, noise, shuffled or a dataset")
    p.add_argument("--codec", choices=CODECS, default="png", help="lossless codec of the complexity L(x)")
    p.add_argument("-n", "--n", type=_positive_int, default=1000, help="at most this many images per set")
    p.add_argument("--seed", type=int, default=0, help="seeds the subsets, synthetic sets and dequantization")
    p.add_argument("--fit", choices=FITS, default="auto", help="how other datasets reach the model's size")
    p.add_argument("--root", help="folder of your data for the non-bundled datasets")
    p.add_argument("-o", "--output", default="ood.png", help="histogram PNG")
    p.add_argument("--json", help="also write every number (summaries and per-image values) here")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"])
    p.set_defaults(func=cmd_ood)

    p = sub.add_parser("shuffle-patches", help="bits/dim of test images with k x k patches shuffled (MRCNF, Fig. 5)")
    p.add_argument("run")
    p.add_argument("--k", nargs="+", type=_positive_int, help="patch sizes (default: every divisor of the side)")
    p.add_argument("-n", "--n", type=_positive_int, default=1000, help="at most this many test images")
    p.add_argument("--seed", type=int, default=0, help="seeds the subset, the permutations and dequantization")
    p.add_argument("-o", "--output", default="patches.png")
    p.add_argument("--json", help="also write the numbers here")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"])
    p.set_defaults(func=cmd_shuffle_patches)

    p = sub.add_parser("temperature", help="sample quality vs temperature, Frechet classifier distance (MRCNF Table 5)")
    p.add_argument("run")
    p.add_argument(
        "--temperatures",
        nargs="+",
        type=_temperature,
        default=[0, 0.25, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0],
        metavar="T",
        help="latent standard deviations to sample at",
    )
    p.add_argument("-n", "--n", type=_positive_int, default=1000, help="samples per temperature")
    p.add_argument("--seed", type=int, default=0, help="seeds the latents (same for every temperature)")
    p.add_argument("-o", "--output", default="temperature.png", help="plot and sample grids (PNG)")
    p.add_argument("--json", help="also write the numbers here")
    p.add_argument("--cache-dir", help="feature classifier cache (default $MSFLOW_CACHE, else ~/.cache/msflow)")
    p.add_argument(
        "--inception",
        metavar="PATH",
        help="FID instead of FCD: a state dict (.safetensors, or weights-only .pt/.pth) of FID's Inception-v3, "
        "e.g. pytorch-fid's pt_inception-2015-12-05 weights (not shipped; numbers unverified against reference FIDs)",
    )
    p.add_argument("--device", choices=["auto", "cpu", "cuda"])
    p.set_defaults(func=cmd_temperature)

    p = sub.add_parser("report", help="one self-contained HTML page of a run: curves, bits/dim, levels, samples")
    p.add_argument("run")
    p.add_argument("-o", "--output", help="HTML file (default RUN/report.html)")
    p.add_argument("--temperatures", nargs="+", type=_temperature, default=[0.5, 0.7, 1.0], metavar="T")
    p.add_argument("--seed", type=int, default=0, help="seeds the samples and the dequantization of the level terms")
    p.add_argument("--ood-json", help="output of `msflow ood --json` (default RUN/ood.json if it exists)")
    p.add_argument("--temperature-json", help="output of `msflow temperature --json` (default RUN/temperature.json)")
    p.add_argument("--tensorboard", action="store_true", help="also write the metrics to RUN/tensorboard")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"])
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("list", help="list model presets and datasets")
    p.set_defaults(func=cmd_list)
    return parser


def _split_dashed_overrides(argv: Sequence[str]) -> list[str]:
    """Accept ``--train.steps 100`` and ``--train.steps=100`` as ``train.steps=100``."""
    out: list[str] = []
    it = iter(argv)
    for arg in it:
        if arg.startswith("--") and "." in arg.split("=", 1)[0]:
            out.append(arg[2:] if "=" in arg else f"{arg[2:]}={next(it, '')}")
        else:
            out.append(arg)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``msflow`` console script; returns the exit code."""
    parser = build_parser()
    # parse_known_args, because argparse cannot take positional overrides after an option
    # (`msflow train CFG --out D k=v`): the leftovers are the train command's overrides.
    args, extra = parser.parse_known_args(_split_dashed_overrides(sys.argv[1:] if argv is None else argv))
    if extra and (args.command != "train" or any("=" not in e or e.startswith("-") for e in extra)):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if extra:
        args.overrides = [*args.overrides, *extra]
    func: Callable[[argparse.Namespace], None] = args.func
    try:
        func(args)
    except MsflowError as err:
        print(f"msflow {args.command}: error: {err}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        # Output piped into `head` and the like: stop quietly, as Unix tools do.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except OSError as err:
        # An output path that is a folder, read-only, on a full disk...: the user's to fix.
        print(f"msflow {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"msflow {args.command}: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
