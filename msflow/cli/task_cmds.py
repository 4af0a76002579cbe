"""``msflow segment | task-table | sr-table | seg-table``: conditional image-to-image tasks (papers 002, 003)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch

from msflow.cli._common import (
    float_range,
    int_range,
    json_output,
    pair_index,
    png_output,
    seed_arg,
    temperature_arg,
    write_json,
)
from msflow.errors import ConfigError, ShapeError

THRESHOLD = float_range(0, 1, "a threshold in [0, 1]")


def _load(run: str, device: str | None, task: str) -> tuple[Any, Any]:
    from msflow.runs import load_run, resolve_device

    model, cfg, _ = load_run(run, resolve_device(device or "auto"))
    if model.task != task:
        presets = {"superres": "cflow-sr*, factorized-sr*", "segment": "cflow-seg, factorized-seg"}[task]
        raise ConfigError(f"{run} holds a {type(model).__name__}; this command needs a {task} model ({presets})")
    model.eval()
    return model, cfg


def _segment_input(spec: str, cfg: Any, channels: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``test:K`` (the run's K-th test pair: image and true mask) or an image path (no mask)."""
    from msflow.analysis import load_image
    from msflow.data.folder import image_header

    if spec.startswith("test:"):
        from msflow.runs import load_data

        test = load_data(cfg, "test")
        k = pair_index(spec, len(test))
        return test.conds[k], test.images[k]
    (w, h), _ = image_header(Path(spec))
    return load_image(Path(spec), (channels, h, w)), None


def _segment_files(args: argparse.Namespace) -> list[tuple[Path, str]]:
    """The full-resolution files written beside ``-o OUT.png``: ``OUT_mean.png`` and ``OUT_mask.png``."""
    stem = Path(args.output).with_suffix("")
    return [(Path(f"{stem}_{name}.png"), "-o") for name in ("mean", "mask")]


def cmd_segment(args: argparse.Namespace) -> None:
    from msflow.analysis.segment import segment
    from msflow.metrics.segmentation import max_f_score, precision_recall_curve
    from msflow.viz import save_grid, save_image

    model, cfg = _load(args.run, args.device, "segment")
    image, truth = _segment_input(args.image, cfg, model.cond_shape[0])
    # The deepest features are 1/target_multiple of the image; instance norm needs two pixels there.
    least = 2 * model.target_multiple
    if min(image.shape[-2:]) < least:
        h, w = image.shape[-2:]
        raise ShapeError(f"{args.image} is {w}x{h}: this model segments images of at least {least}x{least}; enlarge it")
    out = segment(model, image, args.n, args.threshold, torch.Generator().manual_seed(args.seed))
    mean = (out.mean * 255).round().to(torch.uint8)
    panels = [image, mean.expand(3, -1, -1), (out.mask * 255).expand(3, -1, -1)]
    if truth is not None:
        panels.append((truth * 255).expand(3, -1, -1))
    path = save_grid(torch.stack(panels), args.output, nrow=len(panels), scale=max(1, 128 // image.shape[-1]))
    (mean_path, _), (mask_path, _) = _segment_files(args)
    for target, picture in ((mean_path, mean), (mask_path, out.mask * 255)):
        save_image(picture.to(torch.uint8), target)  # full resolution, for use elsewhere
    print(f"wrote {mean_path} (mean of the samples, 0..255) and {mask_path} (it thresholded, 0/255)")
    shown = "image, mean of samples, mean >= " + f"{args.threshold:g}" + (", true mask" if truth is not None else "")
    print(f"{args.image}: {args.n} sampled masks; wrote {path}: {shown}")
    fraction, sampled = out.mask.float().mean().item(), out.samples.float().mean().item()
    print(f"foreground: {fraction:.2%} of the thresholded mean's pixels, {sampled:.2%} of sampled pixels")
    if truth is not None:
        best = max_f_score(precision_recall_curve(out.mean[None], truth[None]))
        print(f"max F-score of the mean against the true mask: {best.f:.4f} (threshold {best.threshold:.3f})")


def cmd_task_table(args: argparse.Namespace) -> None:
    from msflow.analysis.task_eval import evaluate_task, format_rows, held_out_photos, rows_json, task_and_scale
    from msflow.runs import load_run, resolve_device

    device = resolve_device(args.device or "auto")
    flows = {Path(run).name: load_run(run, device)[0].eval() for run in args.runs}
    baseline = load_run(args.baseline, device)[0].eval() if args.baseline else None
    task, scale = task_and_scale([*flows.values(), *([baseline] if baseline is not None else [])])
    photos = held_out_photos(scale)
    if args.photos:
        unknown = sorted(set(args.photos) - set(photos))
        if unknown:
            raise ConfigError(f"not held-out photos: {', '.join(unknown)}; choose from {', '.join(photos)}")
        photos = {k: photos[k] for k in args.photos}
    rows = evaluate_task(
        flows, photos, baseline, args.temperatures, args.best_of, args.best_temperature, args.seed, args.output
    )
    what = f"x{scale} super-resolution" if task == "superres" else task
    title = f"{what} of the {len(photos)} held-out photos ({', '.join(photos)}), whole, means per photo"
    print(format_rows(rows, title))
    print(f"\nwrote {args.output}: a central crop of each photo under each method (a row per photo)")
    if args.json:
        write_json(args.json, {"task": task, "scale": scale, "photos": list(photos), "rows": rows_json(rows)})


def cmd_sr_table(args: argparse.Namespace) -> None:
    args.runs, args.baseline = [args.flow_run], args.baseline_run
    cmd_task_table(args)


def cmd_seg_table(args: argparse.Namespace) -> None:
    from msflow.analysis.pr_plot import plot_precision_recall
    from msflow.analysis.segment import evaluate_segmentation, format_segmentation_table, names_for
    from msflow.runs import load_data

    loaded = [_load(run, args.device, "segment") for run in args.runs]
    test = load_data(loaded[0][1], "test")
    fov = getattr(test, "fov", None)
    if args.limit:
        test.images, test.conds = test.images[: args.limit], test.conds[: args.limit]
        fov = fov[: args.limit] if fov is not None else None
    names = names_for(args.runs, [m for m, _ in loaded])
    results = {}
    for name, (model, _) in zip(names, loaded, strict=True):
        print(f"evaluating {name}: bits/dim, then {args.n} samples per test image")
        results[name] = evaluate_segmentation(model, test.images, test.conds, args.n, args.seed, fov)
    print(f"\n{len(test)} test images of {test.name}\n")
    print(format_segmentation_table(results, args.n))
    path = plot_precision_recall(
        {k: r.curve for k, r in results.items()}, {k: r.points for k, r in results.items()}, args.output
    )
    print(f"\nwrote {path}: precision-recall curves (dots: maximal F) and per-sample points (Figure 5)")
    if args.json:
        payload = {
            k: {"bpd": r.bpd, "bpd_stderr": r.bpd_stderr, "max_f": r.max_f, "threshold": r.threshold}
            for k, r in results.items()
        }
        write_json(args.json, payload)


def _table_options(p: argparse.ArgumentParser, grid: str) -> None:
    p.add_argument("--temperatures", type=temperature_arg, nargs="+", default=[0.0, 0.5, 0.8])
    p.add_argument(
        "--best-of", type=int_range(0, 100, "a number of samples in [0, 100]"), default=10, help="0: no best-of row"
    )
    p.add_argument("--best-temperature", type=temperature_arg, default=0.8, help="temperature of the best-of samples")
    p.add_argument("--photos", nargs="+", metavar="NAME", help="a subset of the held-out photos")
    p.add_argument("-o", "--output", type=png_output, default=grid, help="grid: central crops, a row per photo")
    p.add_argument("--seed", type=seed_arg, default=0)
    p.add_argument("--json", type=json_output, help="also write the rows here")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"])


def register(sub: Any) -> None:
    """Add this module's subcommands to ``sub`` (an argparse subparsers object)."""
    p = sub.add_parser("segment", help="segment an image with a conditional model: mean of sampled masks, thresholded")
    p.add_argument("run")
    p.add_argument("image", help="an image file, or test:K for the run's K-th test image (scored against its mask)")
    p.add_argument("-n", type=int_range(1, 10_000, "a number of samples in [1, 10000]"), default=100)
    p.add_argument("--threshold", type=THRESHOLD, default=0.5, help="threshold of the mean of samples")
    p.add_argument("--seed", type=seed_arg, default=0)
    p.add_argument("-o", "--output", type=png_output, default="segment.png")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"])
    p.set_defaults(func=cmd_segment, derived_outputs=_segment_files)

    p = sub.add_parser(
        "task-table", help="super-resolution or colorization runs on the whole held-out photos vs the trivial answer"
    )
    p.add_argument("runs", nargs="+", metavar="RUN", help="flows of one task and scale (cflow-sr*, caflow-*)")
    p.add_argument("--baseline", metavar="RUN", help="a factorized baseline of the same scale")
    _table_options(p, "task_table.png")
    p.set_defaults(func=cmd_task_table)

    p = sub.add_parser("sr-table", help="Table 2: bicubic, factorized baseline and flow (task-table of one flow)")
    p.add_argument("flow_run", metavar="FLOW_RUN")
    p.add_argument("baseline_run", metavar="BASELINE_RUN", nargs="?")
    _table_options(p, "superres_temperatures.png")
    p.set_defaults(func=cmd_sr_table)

    p = sub.add_parser(
        "seg-table", help="Table 3 and Figure 5: bits/dim, max F-score and PR curves of segmentation runs"
    )
    p.add_argument("runs", nargs="+", metavar="RUN")
    p.add_argument("-n", type=int_range(1, 10_000, "a number of samples in [1, 10000]"), default=100)
    p.add_argument("--limit", type=int_range(0, 10**9, "a number of test images (0: all)"), default=0)
    p.add_argument("--seed", type=seed_arg, default=0)
    p.add_argument("-o", "--output", type=png_output, default="precision_recall.png")
    p.add_argument("--json", type=json_output, help="also write the numbers here")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"])
    p.set_defaults(func=cmd_seg_table)
