"""``msflow bound | perturb | toy | ood | shuffle-patches | temperature | report``: analysis commands."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch

from msflow.cli._common import (
    bpd_fn,
    folder_arg,
    html_output,
    in_distribution,
    int_range,
    json_output,
    learning_rate_arg,
    png_output,
    positive_int,
    seed_arg,
    temperature_arg,
    write_json,
)

# Sizes that are allocated at once: larger values cannot fit in memory, so they are usage errors.
PAD_TO = int_range(1, 4096, "a positive integer")
TOY_BLOCKS = int_range(1, 1024, "a positive integer")
TOY_SAMPLES = int_range(1, 10**7, "a positive integer")
SAMPLES = int_range(1, 100_000, "a positive integer")


def cmd_bound(args: argparse.Namespace) -> None:
    from msflow.metrics import linear_flow_bound
    from msflow.train.data import padded_dataset

    train, test = (
        padded_dataset(args.data, split, args.root, args.pad_to, option="--pad-to") for split in ("train", "test")
    )
    r = linear_flow_bound(train.images, test.images, n_bits=train.n_bits, seed=args.seed)
    print(f"best linear (PPCA) flow on {args.data} ({r['images']} training images, {r['dims']} dims):")
    print(f"  training-set optimum (eq. 6): {r['train_bpd']:.4f} bits/dim")
    print(f"  test images under that Gaussian: {r['test_bpd']:.4f} +- {r['test_bpd_stderr']:.4f} bits/dim")
    if r["images"] < 10 * r["dims"]:
        print("  (few images per dimension: the fitted covariance overfits, so the test figure is pessimistic)")


def cmd_perturb(args: argparse.Namespace) -> None:
    from msflow.analysis import load_image, perturb_levels
    from msflow.runs import load_run, resolve_device
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


def cmd_ood(args: argparse.Namespace) -> None:
    from msflow.analysis.ood import ood_histogram, ood_table, run_ood
    from msflow.data.ood_sets import check_ood_names
    from msflow.metrics.complexity import get_codec
    from msflow.runs import load_run, resolve_device

    check_ood_names(args.ood)
    get_codec(args.codec)
    model, cfg, _ = load_run(args.run, resolve_device(args.device or "auto"))
    test, train = (in_distribution(args, cfg, model, split) for split in ("test", "train"))
    scorer = bpd_fn(model, cfg.train.eval_batch_size, args.seed)
    in_name = args.in_data or cfg.data.name
    result = run_ood(scorer, test, train, args.ood, args.codec, args.n, args.seed, args.root, args.fit, in_name)
    print(f"in-distribution: {in_name} test, {len(result.inlier.bpd)} images; model {args.run}")
    print(f"typical bits/dim (mean over {result.n_train} {in_name} training images): {result.typical_bpd:.4f}")
    for s in result.outliers:
        print(f"  {s.name}: {s.how}")
    print(ood_table(result))
    ood_histogram(result, args.output, title=f"{args.run}: {in_name} test vs OOD sets")
    print(f"wrote the -bits/dim histograms to {args.output}")
    if args.json:
        write_json(args.json, {"run": str(args.run), "seed": args.seed, **result.to_dict()})


def cmd_shuffle_patches(args: argparse.Namespace) -> None:
    from msflow.analysis.shuffle_patches import shuffle_patch_bpd, shuffle_patch_figure, shuffle_patch_table
    from msflow.data.ood_sets import check_patch_sizes, patch_sizes, subset
    from msflow.runs import load_run, resolve_device

    model, cfg, _ = load_run(args.run, resolve_device(args.device or "auto"))
    _, h, w = model.image_shape
    ks = args.k or patch_sizes(h, w)
    check_patch_sizes(ks, h, w)
    test = subset(in_distribution(args, cfg, model, "test"), args.n, args.seed)
    rows = shuffle_patch_bpd(bpd_fn(model, cfg.train.eval_batch_size, args.seed), test, ks, args.seed)
    print(f"{cfg.data.name} test, {len(test)} images of {h}x{w}, k x k patches shuffled per image (seed {args.seed}):")
    print(shuffle_patch_table(rows))
    shuffle_patch_figure(rows, args.output, title=f"{args.run}: {cfg.data.name} test with shuffled patches")
    print(f"wrote the examples and the bits/dim-vs-k plot to {args.output}")
    if args.json:
        write_json(args.json, {"run": str(args.run), "seed": args.seed, "rows": [r.to_dict() for r in rows]})


def cmd_temperature(args: argparse.Namespace) -> None:
    from msflow.analysis.temperature import format_table, result_json, temperature_figure, temperature_sweep
    from msflow.runs import load_data, load_run, resolve_device

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
        write_json(args.json, {**result_json(result, args.run), "step": meta.get("step")})


def _report_file(args: argparse.Namespace) -> list[tuple[Path, str]]:
    """The report's default file, ``RUN/report.html``, when ``-o`` does not name one."""
    from msflow.analysis.report import REPORT

    return [] if args.output else [(Path(args.run) / REPORT, "-o")]


def cmd_report(args: argparse.Namespace) -> None:
    from msflow.analysis.report import check_tensorboard, write_report, write_tensorboard
    from msflow.runs import resolve_device

    if args.tensorboard:
        check_tensorboard()  # before anything is written
    options = {"ood_json": args.ood_json, "temperature_json": args.temperature_json, "seed": args.seed}
    device = resolve_device(args.device or "auto")
    path = write_report(args.run, args.output, temperatures=args.temperatures, device=device, **options)
    print(f"wrote the report to {path}")
    if args.tensorboard:
        print(f"wrote the metrics.jsonl scalars to {write_tensorboard(args.run)}")


def register(sub: Any) -> None:
    """Add this module's subcommands to ``sub`` (an argparse subparsers object)."""
    from msflow.analysis.toys import TOYS

    p = sub.add_parser("bound", help="bits/dim of the best linear (PPCA) flow on a dataset")
    p.add_argument("data", help="dataset name (see `msflow list`)")
    p.add_argument("--root", help="folder of your data for the non-bundled datasets")
    p.add_argument("--pad-to", type=PAD_TO)
    p.add_argument("--seed", type=seed_arg, default=0, help="seed of the dequantization noise")
    p.set_defaults(func=cmd_bound)

    p = sub.add_parser("perturb", help="resample an image's latents level by level (Liao & He, Fig. 5)")
    p.add_argument("run")
    p.add_argument("image", help="an image file of the model's size (greyscale/RGB converted)")
    p.add_argument("--temperature", "-t", type=temperature_arg, default=1.0, help="std of the resampled latents")
    p.add_argument("--seed", type=seed_arg, default=0, help="seed of the resampled latents")
    p.add_argument("-o", "--output", type=png_output, default="perturb.png")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"])
    p.set_defaults(func=cmd_perturb)

    p = sub.add_parser("toy", help="fit a balanced flow to a 2-D toy density and plot it (Liao & He, Fig. 3, 7)")
    p.add_argument("name", choices=sorted(TOYS), help="the toy density")
    p.add_argument("--blocks", type=TOY_BLOCKS, default=8, help="balanced blocks")
    p.add_argument("--steps", type=positive_int, default=2000, help="training steps (fresh minibatch of 512 each)")
    p.add_argument(
        "--lr", type=learning_rate_arg, default=1e-2, help="initial Adamax learning rate (decays to a tenth)"
    )
    p.add_argument("--seed", type=seed_arg, default=0)
    p.add_argument("-n", type=TOY_SAMPLES, default=10_000, help="held-out samples for the log-likelihood")
    p.add_argument("-o", "--output", type=png_output, default="toy.png")
    p.set_defaults(func=cmd_toy)

    from msflow.data.convert import FITS
    from msflow.metrics.complexity import CODECS

    p = sub.add_parser("ood", help="out-of-distribution scores and AUROCs: -bpd, complexity-corrected S, typicality")
    p.add_argument("run")
    p.add_argument("--in", dest="in_data", help="in-distribution dataset (default: the run's)")
    p.add_argument("--ood", nargs="+", required=True, metavar="NAME", help="constant, noise, shuffled or a dataset")
    p.add_argument("--codec", choices=CODECS, default="png", help="lossless codec of the complexity L(x)")
    p.add_argument("-n", "--n", type=positive_int, default=1000, help="at most this many images per set")
    p.add_argument("--seed", type=seed_arg, default=0, help="seeds the subsets, synthetic sets and dequantization")
    p.add_argument("--fit", choices=FITS, default="auto", help="how other datasets reach the model's size")
    p.add_argument("--root", help="folder of your data for the non-bundled datasets")
    p.add_argument("-o", "--output", type=png_output, default="ood.png", help="histogram PNG")
    p.add_argument("--json", type=json_output, help="also write every number (summaries and per-image values) here")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"])
    p.set_defaults(func=cmd_ood)

    p = sub.add_parser("shuffle-patches", help="bits/dim of test images with k x k patches shuffled (MRCNF, Fig. 5)")
    p.add_argument("run")
    p.add_argument("--k", nargs="+", type=positive_int, help="patch sizes (default: every divisor of the side)")
    p.add_argument("-n", "--n", type=positive_int, default=1000, help="at most this many test images")
    p.add_argument("--seed", type=seed_arg, default=0, help="seeds the subset, the permutations and dequantization")
    p.add_argument("-o", "--output", type=png_output, default="patches.png")
    p.add_argument("--json", type=json_output, help="also write the numbers here")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"])
    p.set_defaults(func=cmd_shuffle_patches)

    p = sub.add_parser("temperature", help="sample quality vs temperature, Frechet classifier distance (MRCNF Table 5)")
    p.add_argument("run")
    p.add_argument(
        "--temperatures",
        nargs="+",
        type=temperature_arg,
        default=[0, 0.25, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0],
        metavar="T",
        help="latent standard deviations to sample at",
    )
    p.add_argument("-n", "--n", type=SAMPLES, default=1000, help="samples per temperature")
    p.add_argument("--seed", type=seed_arg, default=0, help="seeds the latents (same for every temperature)")
    p.add_argument("-o", "--output", type=png_output, default="temperature.png", help="plot and sample grids (PNG)")
    p.add_argument("--json", type=json_output, help="also write the numbers here")
    p.add_argument(
        "--cache-dir", type=folder_arg, help="feature classifier cache (default $MSFLOW_CACHE, else ~/.cache/msflow)"
    )
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
    p.add_argument("-o", "--output", type=html_output, help="HTML file (default RUN/report.html)")
    p.add_argument("--temperatures", nargs="+", type=temperature_arg, default=[0.5, 0.7, 1.0], metavar="T")
    p.add_argument(
        "--seed", type=seed_arg, default=0, help="seeds the samples and the dequantization of the level terms"
    )
    p.add_argument("--ood-json", help="output of `msflow ood --json` (default RUN/ood.json if it exists)")
    p.add_argument("--temperature-json", help="output of `msflow temperature --json` (default RUN/temperature.json)")
    p.add_argument("--tensorboard", action="store_true", help="also write the metrics to RUN/tensorboard")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"])
    p.set_defaults(func=cmd_report, derived_outputs=_report_file)
