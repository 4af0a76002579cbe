"""``msflow interpolate | superres | assemble``: commands of one model family (mAR-SCF, MRCNF)."""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any

import torch

from msflow.cli._common import (
    folder_arg,
    int_range,
    json_output,
    learning_rate_arg,
    non_negative_int,
    png_output,
    positive_int,
    seed_arg,
    temperature_arg,
    write_json,
)
from msflow.cli.translate_cmds import tiling_args
from msflow.errors import ConfigError, MsflowError


def _interpolation_pairs(args: argparse.Namespace, model: torch.nn.Module, cfg: Any) -> list[tuple[Any, Any, str]]:
    """``(x_a, x_b, label)`` pairs: the two given images, or random pairs of held-out test images."""
    from msflow.analysis import load_image
    from msflow.runs import load_data

    if args.images:
        if len(args.images) != 2 or args.test_pairs:
            raise ConfigError("give two images (a.png b.png) or --test-pairs N, not both")
        a, b = (load_image(p, model.image_shape) for p in args.images)
        return [(a, b, f"{args.images[0]} -> {args.images[1]}")]
    if not args.test_pairs:
        raise ConfigError("give two images (a.png b.png) or --test-pairs N to use held-out test images")
    test = load_data(cfg, "test").images
    order = torch.randperm(len(test), generator=torch.Generator().manual_seed(args.seed))
    if 2 * args.test_pairs > len(test):
        need = 2 * args.test_pairs
        raise ConfigError(f"--test-pairs {args.test_pairs} needs {need} test images; there are {len(test)}")
    idx = order[: 2 * args.test_pairs].view(-1, 2).tolist()
    return [(test[i], test[j], f"test images {i} -> {j}") for i, j in idx]


def cmd_interpolate(args: argparse.Namespace) -> None:
    from msflow.analysis.interpolate import interpolate, save_interpolation_grid
    from msflow.runs import load_run, resolve_device

    if args.steps < 3:
        raise ConfigError(f"--steps counts both end images and must be >= 3, got {args.steps}")
    if not all(0 <= lam < math.inf for lam in args.lambdas):
        raise ConfigError(f"--lambdas must be two finite numbers >= 0, got {args.lambdas}")
    model, cfg, _ = load_run(args.run, resolve_device(args.device or "auto"))
    if not model.multiscale:
        raise ConfigError(
            f"{args.run} holds a {type(model).__name__}; interpolate optimises paths under the split priors of a "
            "multi-scale flow (glow-*, realnvp-*, marscf-*, balanced-*)"
        )
    pairs = _interpolation_pairs(args, model, cfg)
    rows = []
    print(f"{'pair':40s} {'bits/dim linear':>16s} {'optimised':>10s} {'latent bpd linear':>18s} {'optimised':>10s}")
    for k, (x_a, x_b, label) in enumerate(pairs):
        torch.manual_seed(args.seed + k)
        result = interpolate(model, x_a, x_b, args.steps, args.iters, args.lr, tuple(args.lambdas))
        s = result.summary()
        rows.append({"pair": label, **s})
        print(
            f"{label[-40:]:40s} {s['mean_interior_bpd_linear']:16.4f} {s['mean_interior_bpd_optimised']:10.4f} "
            f"{s['mean_interior_latent_bpd_linear']:18.4f} {s['mean_interior_latent_bpd_optimised']:10.4f}"
        )
        if k == 0:
            path = save_interpolation_grid(result, args.output, scale=max(1, 64 // model.image_shape[-1]))
    if len(rows) > 1:
        mean = {key: sum(r[key] for r in rows) / len(rows) for key in rows[0] if key.startswith("mean_interior")}
        print(
            f"{'mean over ' + str(len(rows)) + ' pairs':40s} {mean['mean_interior_bpd_linear']:16.4f} "
            f"{mean['mean_interior_bpd_optimised']:10.4f} {mean['mean_interior_latent_bpd_linear']:18.4f} "
            f"{mean['mean_interior_latent_bpd_optimised']:10.4f}"
        )
    print("(means over the interior points of each path; image bits/dim use the same seeded noise for both paths)")
    print(f"wrote the first pair's paths to {path} (top row linear, bottom row optimised)")
    if args.json:
        write_json(args.json, {"run": str(args.run), "steps": args.steps, "iters": args.iters, "pairs": rows})


def _superres_image(name: str, channels: int, scale: int, n: int, hr: bool) -> torch.Tensor:
    """A path, or the name of a bundled photo (``chelsea``), loaded at its own size; an image whose
    output would be too large is refused from its header, before it is decoded."""
    from msflow.analysis import load_image
    from msflow.analysis.superres import check_output_size
    from msflow.data.folder import image_header
    from msflow.data.photos import PHOTO_SPLIT, photo_path

    path = Path(name)
    if not path.exists() and name in PHOTO_SPLIT:
        path = photo_path(name)
    if path.is_file():
        (w, h), _ = image_header(path)
        check_output_size(*((h // scale, w // scale) if hr else (h, w)), scale, n)
        return load_image(path, (channels, h, w))
    return load_image(path, (channels, 1, 1))  # raises the usual "no image file" error


def cmd_superres(args: argparse.Namespace) -> None:
    from msflow.analysis.superres import superres
    from msflow.runs import load_run, resolve_device
    from msflow.viz import save_grid, save_image

    if 1 < args.best_of < args.n:
        raise ConfigError(f"--best-of {args.best_of} draws fewer samples than -n {args.n} keeps: raise --best-of")
    model, _, _ = load_run(args.run, resolve_device(args.device or "auto"))
    conditional = model.task == "superres"
    if not model.pyramid_superres and not conditional:
        kind = type(model).__name__
        raise ConfigError(
            f"{args.run} holds a {kind}; superres needs a super-resolution model "
            "(cflow-sr*, factorized-sr*, caflow-sr4) or a multi-resolution one (mrcnf-*)"
        )
    model.eval()
    factor = model.scale if conditional else args.scale or 2
    image = _superres_image(args.image, model.image_shape[0], factor, args.n, args.hr)
    generator = torch.Generator().manual_seed(args.seed)
    out = superres(
        model, image, args.scale if conditional else factor, args.temperature, args.n, generator, args.hr,
        args.best_of, args.tile, args.overlap, progress=True,
    )  # fmt: skip
    h, w = out.low.shape[-2:]
    result = save_image(out.samples[0], args.output)
    what = f"{h * factor}x{w * factor} ground truth reduced to {h}x{w}" if args.hr else f"{h}x{w} input"
    kept = f"the best {args.n} of {args.best_of}" if out.bpd is not None else str(args.n)
    tiles = f", in {out.tiles} tiles of at most {args.tile} pixels" if out.tiles > 1 else ""
    print(f"{args.image}: {what} -> {kept} x{factor} samples at temperature {args.temperature}{tiles}")
    best = f" (the best of {args.best_of}{' per tile' if out.tiles > 1 else ''})" if out.bpd is not None else ""
    print(f"wrote {result}: sample 1{best}, {h * factor}x{w * factor}")
    panel = None
    if args.panel:
        panels = [out.low.repeat_interleave(factor, -1).repeat_interleave(factor, -2), out.bicubic, *out.samples]
        panels += [out.truth] if out.truth is not None else []
        panel = save_grid(torch.stack(panels), args.panel, nrow=len(panels), scale=max(1, 96 // (w * factor)))
        print(f"wrote {panel}: input (enlarged), bicubic, the samples" + (", the ground truth" if args.hr else ""))
    if not conditional:
        print(f"every {factor}x{factor} block of a sample averages to its input pixel before quantization")
    if out.bpd is not None:
        print("conditional bits/dim of the samples, best first: " + ", ".join(f"{b:.4f}" for b in out.bpd.tolist()))
    reduced = "antialiased bicubic" if conditional else "block averages"
    print(
        f"LR-PSNR (the output reduced x{factor} by {reduced}, against the input): "
        + ", ".join(f"{name} {value:.2f} dB" for name, value in out.lr_psnr.items())
    )
    if out.scores:
        print(f"{'':<10} {'PSNR (dB)':>10} {'SSIM':>7}")
        for name, (p, q) in out.scores.items():
            print(f"{name:<10} {p:>10.2f} {q:>7.4f}")
    if args.json:
        payload = {"run": str(args.run), "image": args.image, "scale": factor, "temperature": args.temperature}
        payload |= {"n": args.n, "best_of": args.best_of, "seed": args.seed, "hr": args.hr}
        payload |= {"input": [h, w], "output": [h * factor, w * factor], "tiles": out.tiles}
        payload |= {"tile": args.tile, "overlap": args.overlap, "lr_psnr": out.lr_psnr}
        payload["scores"] = {name: {"psnr": p, "ssim": q} for name, (p, q) in out.scores.items()}
        payload["bpd"] = out.bpd.tolist() if out.bpd is not None else None
        payload |= {"output_file": str(result), "panel": str(panel) if panel else None}
        write_json(args.json, payload)


def cmd_assemble(args: argparse.Namespace) -> None:
    from msflow.metrics.bpd import mean_and_stderr
    from msflow.runs import load_data, load_run, resolve_device
    from msflow.train.assemble import assemble
    from msflow.train.evaluate import dataset_level_bits_per_dim
    from msflow.train.level_curves import LEVEL_PLOT, plot_level_curves

    path = assemble(args.runs, args.out)
    if args.no_eval:
        print(f"assembled {len(args.runs)} runs into {path} (not evaluated: msflow eval {args.out})")
        return
    model, cfg, meta = load_run(args.out, resolve_device(args.device or "auto"))
    test = load_data(cfg, "test")
    totals, levels = dataset_level_bits_per_dim(model, test, cfg.train.eval_batch_size, cfg.train.seed, progress=True)
    print(f"assembled {len(args.runs)} runs into {path}")
    dims, parts = model.level_dims(), 0.0
    for s in range(model.num_resolutions):
        level = levels[:, s].mean().item()
        parts += level * dims[s] / model.num_dims
        source = meta["assembled_from"][str(s)]
        print(f"  level {s}: {level:.6f} bits/dim over its {dims[s]} dimensions (from {source})")
    mean, stderr = mean_and_stderr(totals)
    print(f"test bits/dim: {mean:.6f} +- {stderr:.6f}; sum of the level terms: {parts:.6f}")
    sources = dict.fromkeys(Path(p).parent for p in meta["assembled_from"].values())
    try:
        print(f"per-level training curves: {plot_level_curves(list(sources), Path(args.out) / LEVEL_PLOT)}")
    except (ImportError, MsflowError) as err:
        print(f"no per-level curves: {err}")


def register(sub: Any) -> None:
    """Add this module's subcommands to ``sub`` (an argparse subparsers object)."""
    p = sub.add_parser(
        "interpolate", help="interpolate two images in the prior's latent space, linearly and optimised (mAR-SCF)"
    )
    p.add_argument("run")
    p.add_argument("images", nargs="*", metavar="IMAGE", help="two images of the model's size (a.png b.png)")
    p.add_argument("--test-pairs", type=non_negative_int, default=0, metavar="N", help="use N random test-image pairs")
    p.add_argument("--steps", type=positive_int, default=8, help="images per path, both ends included")
    p.add_argument("--iters", type=positive_int, default=100, help="Adamax iterations")
    p.add_argument("--lr", type=learning_rate_arg, default=5e-2, help="Adamax learning rate")
    p.add_argument("--lambdas", type=float, nargs=2, default=[0.3, 0.3], metavar=("L1", "L2"))
    p.add_argument("--seed", type=seed_arg, default=0, help="seeds the test pairs")
    p.add_argument("-o", "--output", type=png_output, default="interpolation.png")
    p.add_argument("--json", type=json_output, help="also write every number here")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"])
    p.set_defaults(func=cmd_interpolate)

    p = sub.add_parser(
        "superres",
        help="x2 or x4 super-resolution with a conditional flow (cflow-sr*) or a multi-resolution one (mrcnf-*)",
    )
    p.add_argument("run")
    p.add_argument("image", help="a low-resolution image of any size, or a bundled photo's name (e.g. chelsea)")
    p.add_argument("--scale", type=int, choices=[2, 4], help="mrcnf: 2 (default) or 4; conditional models: their own")
    p.add_argument("--hr", action="store_true", help="the image is the ground truth: reduce it, then score PSNR/SSIM")
    p.add_argument("--temperature", "-t", type=temperature_arg, default=1.0)
    p.add_argument(
        "-n", type=int_range(1, 1000, "a number of samples in [1, 1000]"), default=1,
        help="samples drawn (default 1): -o writes the first, --panel shows all, --hr scores each",
    )  # fmt: skip
    p.add_argument(
        "--best-of", type=int_range(1, 1000, "a number of samples in [1, 1000]"), default=1, metavar="M",
        help="CAFLOW: draw M >= n samples and keep the n of highest conditional likelihood (default 1: no ranking)",
    )  # fmt: skip
    p.add_argument("--seed", type=seed_arg, default=0)
    p.add_argument(
        "-o", "--output", type=png_output, default="superres.png",
        help="the result image: sample 1 (the best one with --best-of), at full size (default superres.png)",
    )  # fmt: skip
    p.add_argument("--panel", type=png_output, metavar="PATH", help="also write input, bicubic, samples (and truth)")
    tiling_args(p)
    p.add_argument("--json", type=json_output, help="also write every number here")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"])
    p.set_defaults(func=cmd_superres)

    p = sub.add_parser(
        "assemble", help="put levels trained separately (train.level=s) into one MRCNF run, or grow a coarser model"
    )
    p.add_argument(
        "runs", nargs="+", metavar="RUN",
        help="one run folder per level; optionally one whole coarser model (progressive training) for the top levels",
    )  # fmt: skip
    p.add_argument("--out", type=folder_arg, required=True, help="the new run folder")
    p.add_argument("--no-eval", action="store_true", help="skip the test-set evaluation (slow for CNF levels)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"])
    p.set_defaults(func=cmd_assemble)
