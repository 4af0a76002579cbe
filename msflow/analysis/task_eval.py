r"""Image-to-image flows on whole held-out photos, scored against the trivial answer.

For each held-out photo (the bundled test photographs, or any ``name -> truth`` images) the
condition is made by the task's recipe from the whole photo: its antialiased bicubic ``1/s`` for
super-resolution, its luma for colorization. Every method then answers on the whole photo
(tile by tile where it is large, :mod:`msflow.analysis.tiling`) and is scored against the truth:

- the trivial answer: Pillow's bicubic upsampling, or the grey input;
- optionally a factorized baseline's mode;
- each flow at every temperature ``T`` (``T = 0`` maps the prior's mean), and its best of ``N``
  samples at ``T_best``, ranked by conditional bits/dim under one shared dequantization noise.

Scores, means over photos: PSNR and SSIM (RGB, uint8, no border crop); LR-PSNR, the PSNR of the
output's own bicubic reduction against the input (consistency: 50+ dB for a model that keeps
its input); the detail ratio (Laplacian energy of the luma over the truth's: bicubic is below
1); the saturated fraction (pixels whose every channel is clipped at 0 or 255: black, white or a
pure colour, what an exploding inverse leaves; the truth's is printed beside it); the colour
error, the mean distance in ITU-R 601 chroma

.. math:: \Delta_{\text{chroma}} = \operatorname{mean}_p \sqrt{(Cb_p - Cb^*_p)^2 + (Cr_p - Cr^*_p)^2}

(0-255 units; the grey input's is the truth's mean chroma magnitude); and each flow's
conditional bits/dim of the truth.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from msflow.analysis.cond_superres import crop_for
from msflow.analysis.superres import bicubic
from msflow.analysis.tiling import tiled_upscale
from msflow.core import evaluation_context
from msflow.data.pairs import downscale_bicubic
from msflow.data.translation import to_grey
from msflow.errors import ConfigError
from msflow.metrics.fidelity import detail_ratio, psnr, ssim
from msflow.viz import save_grid

TASKS = ("superres", "colorize")
"""Tasks scored on whole photos (inpainting and sketches are scored on crops: ``msflow translate-table``)."""


@dataclass
class Row:
    """One method's means over the photos (``nan`` where a score does not apply)."""

    method: str
    bpd: float = math.nan
    psnr: float = math.nan
    ssim: float = math.nan
    lr_psnr: float = math.nan
    detail: float = math.nan
    saturated: float = math.nan
    colour_error: float = math.nan
    per_photo: dict[str, dict[str, float]] = field(default_factory=dict)


def chroma_error(x: Tensor, truth: Tensor) -> float:
    """Mean ITU-R 601 chroma distance (0-255 units) between uint8 RGB images ``(3, H, W)``.

    Example:
        >>> import torch
        >>> red = torch.tensor([255, 0, 0], dtype=torch.uint8).view(3, 1, 1).expand(3, 4, 4)
        >>> grey = torch.full((3, 4, 4), 76, dtype=torch.uint8)  # red's luma, without its colour
        >>> chroma_error(red, red), round(chroma_error(grey, red), 1)
        (0.0, 134.6)
    """

    def cbcr(image: Tensor) -> Tensor:
        r, g, b = image.double().unbind(0)
        return torch.stack([-0.168736 * r - 0.331264 * g + 0.5 * b, 0.5 * r - 0.418688 * g - 0.081312 * b])

    return float((cbcr(x) - cbcr(truth)).pow(2).sum(0).sqrt().mean())


def _scores(out: Tensor, truth: Tensor, cond: Tensor, scale: int, task: str) -> dict[str, float]:
    scores = {
        "psnr": psnr(out, truth),
        "ssim": ssim(out, truth),
        "detail": detail_ratio(out, truth),
        "saturated": float(((out == 0) | (out == 255)).all(0).double().mean()),
    }
    if task == "superres":
        scores["lr_psnr"] = psnr(downscale_bicubic(out[None].contiguous(), scale)[0], cond)
    else:
        scores["colour_error"] = chroma_error(out, truth)
    return scores


def held_out_photos(scale: int) -> dict[str, Tensor]:
    """The bundled test photographs as uint8 ``(3, H, W)``, cropped to sides divisible by ``scale``."""
    from msflow.data.pairs import photo_pairs

    return {name: hr[0] for name, (hr, _) in photo_pairs("test", scale).items()}


def _condition(truth: Tensor, task: str, scale: int) -> Tensor:
    return downscale_bicubic(truth[None].contiguous(), scale)[0] if task == "superres" else to_grey(truth[None])[0]


def _trivial(cond: Tensor, task: str, scale: int) -> Tensor:
    return bicubic(cond, scale) if task == "superres" else cond.expand(3, -1, -1).contiguous()


@torch.no_grad()
def _truth_bpd(model: nn.Module, truth: Tensor, cond: Tensor, seed: int) -> float:
    device = next(model.parameters()).device
    with evaluation_context(model):
        gen = torch.Generator().manual_seed(seed)
        return model.bits_per_dim(truth[None].to(device), cond[None].to(device), gen).item()


@torch.no_grad()
def _best_of(model: nn.Module, cond: Tensor, m: int, t: float, gen: torch.Generator, seed: int) -> Tensor:
    """The lowest-bits/dim of ``m`` samples, every candidate scored with the same noise image."""
    samples, _ = tiled_upscale(model, cond, m, t, gen, progress=False)
    scores = [_truth_bpd(model, s, cond, seed) for s in samples]
    return samples[min(range(m), key=scores.__getitem__)]


def task_and_scale(models: Sequence[nn.Module]) -> tuple[str, int]:
    """The one ``(task, scale)`` of conditional ``models``.

    Raises:
        ConfigError: no models, an unconditional one, models of different tasks or scales, or
            a task other than :data:`TASKS`.
    """
    try:
        kinds = {(m.task, m.scale) for m in models}
    except AttributeError:  # an unconditional model declares no task
        raise ConfigError("task-table scores conditional models (cflow-sr*, caflow-*, factorized-sr*)") from None
    if len(kinds) != 1:
        raise ConfigError(f"give models of one task and scale; got {sorted(kinds) or 'none'}")
    ((task, scale),) = kinds
    if task not in TASKS:
        other = "seg-table" if task == "segment" else "translate-table"
        raise ConfigError(f"whole-photo evaluation covers {', '.join(TASKS)}; for {task} use msflow {other}")
    return task, scale


def evaluate_task(
    flows: dict[str, nn.Module],
    photos: dict[str, Tensor],
    baseline: nn.Module | None = None,
    temperatures: Sequence[float] = (0.0, 0.5, 0.8),
    best_of: int = 10,
    best_temperature: float = 0.8,
    seed: int = 0,
    grid: str | Path | None = None,
    progress: bool = True,
) -> list[Row]:
    """Score ``flows`` (label -> model, all of one task and scale) on whole ``photos`` (name -> uint8 truth).

    Returns one :class:`Row` per method: the trivial answer, the baseline's mode, each flow at
    each temperature and its best of ``best_of`` (0: none), and the truth itself (detail 1, its
    own saturated fraction). ``grid`` saves a central crop of every photo under every method.

    Raises:
        ConfigError: no flows, flows of different tasks or scales, or a task other than :data:`TASKS`.
    """
    models = list(flows.values()) + ([baseline] if baseline is not None else [])
    task, scale = task_and_scale(models)
    labels = ["bicubic" if task == "superres" else "grey input"] + (["factorized (mode)"] if baseline else [])
    for name in flows:
        labels += [f"{name}, T = {t:g}" for t in temperatures] + ([f"{name}, best of {best_of}"] if best_of else [])
    rows = {label: Row(label) for label in [*labels, "truth"]}
    panels: list[Tensor] = []
    bar = tqdm(total=len(photos) * (len(labels) + len(flows)), desc="evaluate", disable=not progress)
    for photo, whole in photos.items():
        truth = whole
        for model in models:
            truth = crop_for(model, truth)
        cond = _condition(truth, task, scale)
        outputs = {labels[0]: _trivial(cond, task, scale)}
        if baseline is not None:
            outputs["factorized (mode)"] = tiled_upscale(baseline, cond, 1, 0.0, progress=False)[0][0]
            rows["factorized (mode)"].per_photo[photo] = {"bpd": _truth_bpd(baseline, truth, cond, seed)}
        for name, model in flows.items():
            rows_bpd = _truth_bpd(model, truth, cond, seed)
            bar.update()
            for t in temperatures:
                gen = torch.Generator().manual_seed(seed)
                outputs[f"{name}, T = {t:g}"] = tiled_upscale(model, cond, 1, t, gen, progress=False)[0][0]
                rows[f"{name}, T = {t:g}"].per_photo.setdefault(photo, {})["bpd"] = rows_bpd
                bar.update()
            if best_of:
                gen = torch.Generator().manual_seed(seed)
                outputs[f"{name}, best of {best_of}"] = _best_of(model, cond, best_of, best_temperature, gen, seed)
                rows[f"{name}, best of {best_of}"].per_photo.setdefault(photo, {})["bpd"] = rows_bpd
                bar.update()
        for label, out in outputs.items():
            rows[label].per_photo.setdefault(photo, {}).update(_scores(out, truth, cond, scale, task))
        # The truth row is the reference: only what it has of its own (its saturated fraction).
        rows["truth"].per_photo[photo] = {
            "detail": 1.0,
            "saturated": _scores(truth, truth, cond, scale, task)["saturated"],
        }
        outputs["truth"] = truth
        bar.update(1 + (baseline is not None))
        if grid is not None:
            panels += _centre_crops([outputs[label] for label in [*labels, "truth"]])
    bar.close()
    for row in rows.values():
        for key in ("bpd", "psnr", "ssim", "lr_psnr", "detail", "saturated", "colour_error"):
            values = [scores[key] for scores in row.per_photo.values() if key in scores]
            if values:
                setattr(row, key, sum(values) / len(values))
    if grid is not None:
        save_grid(torch.stack(panels), grid, nrow=len(labels) + 1, scale=2)
    return list(rows.values())


def _centre_crops(images: list[Tensor], side: int = 96) -> list[Tensor]:
    h, w = images[-1].shape[-2:]
    top, left = max(0, (h - side) // 2), max(0, (w - side) // 2)
    return [image[:, top : top + side, left : left + side] for image in images]


def format_rows(rows: Sequence[Row], title: str) -> str:
    """The rows as a markdown table (``-`` where a score does not apply)."""
    columns = [("bits/dim", "bpd", 4), ("PSNR (dB)", "psnr", 2), ("SSIM", "ssim", 4), ("LR-PSNR (dB)", "lr_psnr", 2)]
    columns += [("detail (truth = 1)", "detail", 3), ("saturated", "saturated", 4), ("colour error", "colour_error", 2)]
    shown = [c for c in columns if any(not math.isnan(getattr(r, c[1])) for r in rows)]
    lines = [title, "", "| method | " + " | ".join(c[0] for c in shown) + " |", "|---" * (len(shown) + 1) + "|"]
    for r in rows:
        cells = ["-" if math.isnan(v := getattr(r, key)) else f"{v:.{digits}f}" for _, key, digits in shown]
        lines.append(f"| {r.method} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def rows_json(rows: Sequence[Row]) -> list[dict]:
    """The rows as JSON-ready dicts (``nan`` as ``None``)."""

    def clean(value: object) -> object:
        if isinstance(value, float) and math.isnan(value):
            return None
        return {k: clean(v) for k, v in value.items()} if isinstance(value, dict) else value

    return [clean(asdict(r)) for r in rows]
