"""``msflow colorize | inpaint | translate | translate-table``: image-to-image translation with CAFLOW."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch

from msflow.cli._common import int_range, json_output, pair_index, png_output, seed_arg, temperature_arg, write_json
from msflow.errors import ConfigError

# command -> (the task of the CAFLOW model it needs, what it does, its default output)
COMMANDS = {
    "colorize": ("colorize", "colorize a greyscale image (an RGB one is made grey first, and scored)", "colorized.png"),
    "inpaint": ("inpaint", "fill in the masked centre (or --mask) of an RGB image", "inpainted.png"),
    "translate": (
        "sketch",
        "sketch-to-image: a photo from an edge map (or from a photo's own edges)",
        "translated.png",
    ),
}
SAMPLES = int_range(1, 1000, "a number of samples in [1, 1000]")
PRESETS = {
    "superres": "caflow-sr4",
    "colorize": "caflow-colorize",
    "inpaint": "caflow-inpaint",
    "sketch": "caflow-sketch",
}


def _load(runs: list[str], device: str | None, task: str | None) -> list[tuple[Any, Any]]:
    """CAFLOW runs (of ``task`` unless None) as ``(model, config)``; every file is read before any is judged."""
    from msflow.analysis.translate import can_rank
    from msflow.runs import load_run, resolve_device

    loaded = [load_run(run, resolve_device(device or "auto"))[:2] for run in runs]
    for run, (model, _) in zip(runs, loaded, strict=True):
        if not can_rank(model) or (task is not None and model.task != task):
            what = f"a CAFLOW {model.task} model" if can_rank(model) else f"a {type(model).__name__}"
            presets = ", ".join(PRESETS.values())
            wanted = f"a CAFLOW {task} model ({PRESETS[task]})" if task else f"CAFLOW models ({presets})"
            raise ConfigError(f"{run} holds {what}; this command needs {wanted}")
        model.eval()
    return loaded


def _image(spec: str, scale: int, n: int = 1) -> torch.Tensor:
    """An image file or a bundled photo's name, in its own channels (grey or RGB) and size; one whose
    ``n`` outputs would be too large is refused from its header, before it is decoded."""
    from msflow.analysis import load_image
    from msflow.analysis.superres import check_output_size
    from msflow.data.folder import image_header, read_image
    from msflow.data.photos import PHOTO_SPLIT, photo_path

    path = Path(spec)
    if not path.exists() and spec in PHOTO_SPLIT:
        path = photo_path(spec)
    if not path.is_file():
        load_image(path, (3, 1, 1))  # raises the usual "no image file" error
    (w, h), _ = image_header(path)
    check_output_size(h, w, scale, n)
    return torch.from_numpy(read_image(path)).permute(2, 0, 1).contiguous()


def _mask(spec: str | None) -> torch.Tensor | None:
    """A mask image as ``(H, W)`` bool, True where its pixels are bright (hidden)."""
    if spec is None:
        return None
    pixels = _image(spec, 1)
    return pixels.float().mean(0) > 127.5


def _input(args: argparse.Namespace, model: Any, cfg: Any, mask: torch.Tensor | None) -> tuple[Any, Any]:
    """``(condition (Cc, h, w), truth or None)`` for ``test:K``, a file or a bundled photo."""
    from msflow.analysis.translate import prepare_condition

    if args.input.startswith("test:"):
        from msflow.runs import load_data

        if mask is not None:
            raise ConfigError("test pairs carry their own mask (the central square); drop --mask")
        test = load_data(cfg, "test")
        k = pair_index(args.input, len(test))
        return test.conds[k], test.images[k]
    return prepare_condition(model, _image(args.input, model.scale, args.n), mask)


def cmd_translate(args: argparse.Namespace) -> None:
    from msflow.analysis.tiling import tiled_best_of
    from msflow.analysis.translate import TEMPERATURES, fidelity, show_condition
    from msflow.viz import save_grid, save_image

    task = COMMANDS[args.command][0]
    if args.best_of < args.n:
        raise ConfigError(f"--best-of {args.best_of} draws fewer samples than -n {args.n} keeps: raise --best-of")
    mask = _mask(getattr(args, "mask", None))
    ((model, cfg),) = _load([args.run], args.device, task)
    cond, truth = _input(args, model, cfg, mask)
    temperature = TEMPERATURES[task] if args.temperature is None else args.temperature
    gen = torch.Generator().manual_seed(args.seed)
    samples, bpd, tiles = tiled_best_of(
        model, cond, args.n, args.best_of, temperature, gen, args.seed, args.tile, args.overlap, progress=True
    )
    out = save_image(samples[0], args.output)
    h, w = samples.shape[-2:]
    per_tile = f", ranked per tile in {tiles} tiles of at most {args.tile} pixels" if tiles > 1 else ""
    print(
        f"{args.input}: {h}x{w}, the best {args.n} of {args.best_of} samples at temperature {temperature:g}{per_tile}"
    )
    print(f"wrote {out}: the best sample, {h}x{w}")
    panel = None
    if args.panel:
        panels = [show_condition(model, cond), *samples] + ([truth] if truth is not None else [])
        panel = save_grid(torch.stack(panels), args.panel, nrow=len(panels), scale=max(1, 96 // samples.shape[-1]))
        print(f"wrote {panel}: condition, samples best first" + (", truth" if truth is not None else ""))
    scores = [fidelity(s, truth) for s in samples] if truth is not None else []
    header = f"{'sample':<8} {'cond bits/dim':>13}" + (f" {'PSNR (dB)':>10} {'SSIM':>7} {'RMSE':>7}" if scores else "")
    print(header)
    for i, b in enumerate(bpd.tolist()):
        line = f"{i + 1:<8} {b:>13.4f}"
        if scores:
            line += f" {scores[i]['psnr']:>10.2f} {scores[i]['ssim']:>7.4f} {scores[i]['rmse']:>7.2f}"
        print(line)
    if args.json:
        payload = {"run": str(args.run), "input": args.input, "task": task, "temperature": temperature}
        payload |= {"n": args.n, "best_of": args.best_of, "seed": args.seed, "bpd": bpd.tolist(), "scores": scores}
        payload |= {"size": [h, w], "tiles": tiles, "tile": args.tile, "overlap": args.overlap}
        payload |= {"output_file": str(out), "panel": str(panel) if panel else None}
        write_json(args.json, payload)


def _labels(runs: list[str], models: list[Any]) -> list[str]:
    """Row names from the model options (``autoregressive``, ``dual-glow``), else the run folder."""
    labels: list[str] = []
    for run, model in zip(runs, models, strict=True):
        label = model.factorization + (", shared weights" if model.share_weights else "")
        labels.append(label if label not in labels else f"{label} ({run})")
    return labels


def cmd_translate_table(args: argparse.Namespace) -> None:
    from msflow.analysis.translate import (
        TEMPERATURES,
        evaluate_translation,
        format_translation_table,
        likelihood_grid,
    )
    from msflow.data.pairs import PairedDataset
    from msflow.runs import load_data

    loaded = _load(args.runs, args.device, None)
    tasks = {model.task for model, _ in loaded}
    if len(tasks) > 1:
        got = ", ".join(f"{run}: {model.task}" for run, (model, _) in zip(args.runs, loaded, strict=True))
        raise ConfigError(f"compare runs of one task; got {got}")
    task = tasks.pop()
    test = load_data(loaded[0][1], "test")
    if args.limit:
        test = PairedDataset(test.images[: args.limit], test.conds[: args.limit], task=test.task, name=test.name)
    if args.count > len(test):
        raise ConfigError(f"--count {args.count} needs {args.count} test pairs; there are {len(test)}: lower --count")
    temperature = TEMPERATURES[task] if args.temperature is None else args.temperature
    labels = _labels(args.runs, [m for m, _ in loaded])
    results = {}
    for label, (model, _) in zip(labels, loaded, strict=True):
        print(f"evaluating {label}: {args.count} test pairs, {args.best_of} samples each, then the test bits/dim")
        results[label] = evaluate_translation(model, test, args.count, args.best_of, temperature, args.seed)
    print(f"\n{task} on {args.count} of the {len(test)} test pairs of {test.name}, temperature {temperature:g}\n")
    print(format_translation_table(results))
    grid = str(_table_grid(args)[0][0])
    rows = torch.linspace(0, len(test) - 1, min(6, len(test))).round().long()
    shown = min(args.best_of, 6)
    model = loaded[0][0]
    likelihood_grid(model, test.conds[rows], shown, args.best_of, temperature, grid, test.images[rows], args.seed)
    print(f"\nwrote {grid}: {labels[0]}, per test pair the condition, the best {shown} of {args.best_of}, the truth")
    if args.json:
        payload = {"task": task, "data": test.name, "count": args.count, "best_of": args.best_of}
        payload |= {"temperature": temperature, "seed": args.seed}
        payload["runs"] = {
            k: {"run": str(run), **r.as_dict()} for (k, r), run in zip(results.items(), args.runs, strict=True)
        }
        write_json(args.json, payload)


def _table_grid(args: argparse.Namespace) -> list[tuple[Path, str]]:
    """Where translate-table draws its grid: ``--grid``, else next to ``--json``, else translate_grid.png."""
    if args.grid:
        return [(Path(args.grid), "--grid")]
    if args.json:
        return [(Path(args.json).with_name(f"{Path(args.json).stem}_grid.png"), "--grid")]
    return [(Path("translate_grid.png"), "--grid")]


def _common(p: argparse.ArgumentParser, output: str) -> None:
    p.add_argument("-n", type=SAMPLES, default=4, help="samples kept, best first (default 4)")
    p.add_argument(
        "--best-of", type=SAMPLES, default=10, metavar="M",
        help="samples drawn, ranked by conditional likelihood (default 10, as the paper)",
    )  # fmt: skip
    p.add_argument("--temperature", "-t", type=temperature_arg, help="sampling temperature (default: the paper's)")
    p.add_argument("--seed", type=seed_arg, default=0, help="seeds the samples and the scoring noise")
    p.add_argument("-o", "--output", type=png_output, default=output, help=f"the best sample (default {output})")
    p.add_argument(
        "--panel", type=png_output, metavar="PATH", help="also write the condition, the samples best first (and truth)"
    )
    tiling_args(p)
    p.add_argument("--json", type=json_output, help="also write every number here")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"])


def tiling_args(p: argparse.ArgumentParser) -> None:
    """``--tile`` and ``--overlap``: inputs whose output exceeds a tile on a side run in tiles
    (:mod:`msflow.analysis.tiling`)."""
    from msflow.analysis.tiling import DEFAULT_OVERLAP, DEFAULT_TILE

    p.add_argument(
        "--tile", type=int_range(16, 2**16, "a tile side in output pixels in [16, 65536]"), default=DEFAULT_TILE,
        metavar="PX", help=f"outputs larger than PX on a side run in overlapping tiles of PX (default {DEFAULT_TILE})",
    )  # fmt: skip
    p.add_argument(
        "--overlap", type=int_range(0, 2**15, "an overlap in output pixels >= 0"), default=DEFAULT_OVERLAP,
        metavar="PX", help=f"output pixels neighbouring tiles share, below half a tile (default {DEFAULT_OVERLAP})",
    )  # fmt: skip


def register(sub: Any) -> None:
    """Add this module's subcommands to ``sub`` (an argparse subparsers object)."""
    for name, (task, what, output) in COMMANDS.items():
        p = sub.add_parser(name, help=f"{what} with a CAFLOW model ({PRESETS[task]})")
        p.add_argument("run")
        p.add_argument(
            "input",
            help="an image of any size, a bundled photo's name (e.g. chelsea), or test:K for the run's K-th "
            "test pair (scored against its truth)",
        )
        if name == "inpaint":
            p.add_argument(
                "--mask", help="an image of the input's size, white where pixels are hidden (default: centre)"
            )
        _common(p, output)
        p.set_defaults(func=cmd_translate)

    p = sub.add_parser(
        "translate-table",
        help="random sample vs best of M on held-out pairs (PSNR, SSIM, RMSE) and how often the truth wins",
    )
    p.add_argument("runs", nargs="+", metavar="RUN", help="CAFLOW runs of one task (e.g. the model and its ablation)")
    p.add_argument(
        "--count", type=int_range(1, 10**6, "a number of test pairs in [1, 1000000]"), default=100,
        help="evenly spaced test pairs scored (default 100, as the paper)",
    )  # fmt: skip
    p.add_argument("--best-of", type=SAMPLES, default=10, metavar="M", help="samples per test pair (default 10)")
    p.add_argument("--temperature", "-t", type=temperature_arg, help="sampling temperature (default: the paper's)")
    p.add_argument(
        "--limit", type=int_range(0, 10**9, "a number of test pairs (0: all)"), default=0,
        help="use only the first N test pairs, for the pairs and the test bits/dim (0: all)",
    )  # fmt: skip
    p.add_argument("--seed", type=seed_arg, default=0)
    p.add_argument(
        "--grid", type=png_output,
        help="where to draw 6 test pairs' samples by likelihood (default: JSON_grid.png, else translate_grid.png)",
    )  # fmt: skip
    p.add_argument("--json", type=json_output, help="also write the numbers here")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"])
    p.set_defaults(func=cmd_translate_table, derived_outputs=lambda args: [] if args.grid else _table_grid(args))
