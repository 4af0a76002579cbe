"""One self-contained HTML page per training run: config, curves, bits/dim, per-level terms, samples.

Every image is a PNG embedded as a ``data:image/png;base64`` URI and the page loads nothing from
the network or the disk, so it opens offline and can be mailed as one file. Its only script is
inline: on load it sets the title to ``images-ok N`` when all ``N`` images decoded, else
``broken-images K`` (what the browser test reads).

Optional inputs found in the run folder under conventional names: ``ood.json`` (written by
``msflow ood --json``) and ``temperature.json`` (``msflow temperature --json``).

Example (needs a trained run, so not run as a doctest)::

    from msflow.analysis.report import write_report
    write_report("runs/mnist5k-glow")  # -> runs/mnist5k-glow/report.html
"""

from __future__ import annotations

import base64
import io
import json
import math
import tempfile
from collections.abc import Sequence
from html import escape
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import Tensor, nn

from msflow._io import atomic_write
from msflow._optional import require
from msflow.core import evaluation_context
from msflow.errors import MsflowError
from msflow.viz import figure, image_grid

REPORT, METRICS, RESULTS = "report.html", "metrics.jsonl", "results.json"
OOD_JSON, TEMPERATURE_JSON = "ood.json", "temperature.json"
LN2 = math.log(2.0)


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The records of a JSON-lines file (``[]`` if missing); lines cut short by a crash are skipped."""
    records = []
    for line in path.read_text().splitlines() if path.is_file() else []:
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def read_json(path: str | Path) -> dict[str, Any]:
    """A JSON object from ``path``; a missing or unreadable file is the user's error."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise MsflowError(f"cannot read {path} as JSON: {err}") from None


def png_uri(data: bytes) -> str:
    """``data:image/png;base64,...`` for PNG bytes."""
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def figure_png(fig: Any) -> bytes:
    """PNG bytes of a matplotlib :class:`~matplotlib.figure.Figure` made by :func:`msflow.viz.figure`."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return buf.getvalue()


def grid_png(images: Tensor, scale: int = 1) -> bytes:
    """PNG bytes of a grid of uint8 images ``(N, C, H, W)``, enlarged ``scale`` times."""
    grid = image_grid(images.cpu())
    img = Image.fromarray(grid[..., 0] if grid.shape[2] == 1 else grid)
    img = img.resize((img.width * scale, img.height * scale), Image.NEAREST) if scale > 1 else img
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def curves_figure(records: list[dict[str, Any]]) -> Any:
    """Training loss and test bits/dim against step (left) and the learning rate (right)."""
    fig = figure("plotting training curves", figsize=(10, 3.6), layout="constrained")
    ax, ax_lr = fig.subplots(1, 2)
    train = [r for r in records if r.get("loss_bpd") is not None]
    test = [r for r in records if r.get("test_bpd") is not None]
    ax.plot([r["step"] for r in train], [r["loss_bpd"] for r in train], lw=1, label="training loss (minibatch)")
    if test:
        errors = [r.get("test_bpd_stderr") or 0.0 for r in test]
        steps, values = [r["step"] for r in test], [r["test_bpd"] for r in test]
        ax.errorbar(steps, values, yerr=errors, fmt="o", color="C3", capsize=3, label="test (+- stderr)")
    ax.set(xlabel="step", ylabel="bits/dim", title="loss")
    ax.legend(fontsize=8)
    lr = [r for r in records if r.get("lr") is not None]
    ax_lr.plot([r["step"] for r in lr], [r["lr"] for r in lr], color="C2")
    ax_lr.set(xlabel="step", ylabel="learning rate", title="learning rate")
    return fig


@torch.no_grad()
def level_terms(model: nn.Module, images: Tensor, seed: int = 0) -> list[dict[str, Any]]:
    r"""Bits/dim of a multi-scale flow split into per-level terms on one seeded dequantization draw.

    With ``D`` image dimensions and ``b`` bits per sub-pixel,

    .. math::

        \mathrm{bpd} = \sum_i \frac{-\log \mathcal N(\epsilon_i)}{D \ln 2}
            + \sum_j \frac{-\log|\det J_j|}{D \ln 2} + \frac{\log q(u|x)}{D \ln 2} + b,

    where ``j`` runs over the preprocessing map and the levels. Returns rows ``{"name", "prior",
    "logdet"}`` (batch means in bits/dim; ``None`` where a term does not apply) that add up to the
    last row, the total, which equals ``model.bits_per_dim`` with the same generator.
    """
    p = next(model.parameters())
    x = images.to(p.device)
    generator = torch.Generator(device=p.device).manual_seed(seed)
    v, log_q = model.dequantizer(x, generator=generator, dtype=p.dtype)
    parts = [("preprocessing", model.preprocess), *((f"level {i}", lv) for i, lv in enumerate(model.levels))]
    logdets: dict[str, Tensor] = {}
    handles = [m.register_forward_hook(lambda _m, _a, out, k=k: logdets.__setitem__(k, out[1])) for k, m in parts]
    was_training = model.training
    try:
        model.eval()
        zs, _ = model.encode(v)
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    from msflow.distributions import standard_normal_log_prob

    scale = model.num_dims * LN2

    def bits(t: Tensor | float) -> float:
        return (torch.as_tensor(t, dtype=torch.float64) / scale).mean().item()

    rows: list[dict[str, Any]] = [{"name": "preprocessing", "prior": None, "logdet": -bits(logdets["preprocessing"])}]
    for i, z in enumerate(zs):
        shape = "x".join(str(s) for s in z.shape[1:])
        prior, logdet = -bits(standard_normal_log_prob(z)), -bits(logdets[f"level {i}"])
        rows.append({"name": f"level {i} ({shape})", "prior": prior, "logdet": logdet})
    n_bits = model.dequantizer.n_bits
    rows.append({"name": f"dequantization (+ log q(u|x), + {n_bits} bits)", "prior": None, "logdet": None})
    rows[-1]["constant"] = bits(log_q) + n_bits
    total = sum((r["prior"] or 0.0) + (r["logdet"] or 0.0) + r.get("constant", 0.0) for r in rows)
    rows.append({"name": "total", "prior": None, "logdet": None, "constant": total})
    return rows


def _table(head: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    def cell(v: Any) -> str:
        return "" if v is None else escape(f"{v:.4f}" if isinstance(v, float) else str(v))

    lines = ["<table><tr>" + "".join(f"<th>{escape(h)}</th>" for h in head) + "</tr>"]
    lines += ["<tr>" + "".join(f"<td>{cell(v)}</td>" for v in row) + "</tr>" for row in rows]
    return "\n".join(lines) + "</table>"


def _img(data: bytes, alt: str) -> str:
    return f'<img src="{png_uri(data)}" alt="{escape(alt)}">'


def _section(key: str, title: str, body: str) -> str:
    return f'<section id="{key}"><h2>{escape(title)}</h2>\n{body}\n</section>'


def _bpd_section(run: Path, records: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    results = read_json(run / RESULTS) if (run / RESULTS).is_file() else {}
    tests = [r for r in records if r.get("test_bpd") is not None]
    rows = [[r["step"], r["test_bpd"], r.get("test_bpd_stderr"), "final" if r.get("final") else ""] for r in tests]
    summary = ""
    if results.get("bpd") is not None:
        summary = escape(
            f"final test bits/dim: {results['bpd']:.4f} +- {results['bpd_stderr']:.4f} "
            f"({results.get('n')} test images), {results.get('steps', meta.get('step'))} steps"
        )
    return f"<p>{summary}</p>" + _table(["step", "test bits/dim", "stderr", ""], rows)


def _ood_section(data: dict[str, Any]) -> str:
    sets = [data["in_distribution"], *data.get("ood", [])]
    keys = ("-bpd", "S", "typicality")
    rows = [[s["name"], s["n"], s["bpd"], s["bpd_stderr"], *(s.get("auroc", {}).get(k) for k in keys)] for s in sets]
    body = _table(["set", "images", "mean bits/dim", "stderr", *(f"AUROC({k})" for k in keys)], rows)
    per_image = data.get("per_image", {})
    if per_image:
        fig = figure("plotting bits/dim histograms", figsize=(7.2, 3.6), layout="constrained")
        ax = fig.subplots()
        for name, values in per_image.items():
            ax.hist([-b for b in values["bpd"]], bins=30, density=True, histtype="step", label=name)
        ax.set(xlabel="-bits/dim", ylabel="density", yscale="log")
        ax.legend(fontsize=8)
        body += _img(figure_png(fig), "OOD histograms")
    return body


def _temperature_section(data: dict[str, Any]) -> str:
    rows = [[r["temperature"], r["fcd"]] for r in data["rows"]] + [["train vs test", data.get("reference")]]
    note = f"{data.get('metric', 'FCD')}, {data.get('n')} samples per temperature, seed {data.get('seed')}"
    return f"<p>{escape(note)}; lower is better</p>" + _table(["temperature", data.get("column", "FCD")], rows)


SCRIPT = """<script>window.addEventListener("load", function () {
  var imgs = Array.prototype.slice.call(document.images);
  var bad = imgs.filter(function (im) { return !(im.complete && im.naturalWidth > 0); }).length;
  document.title = bad ? "broken-images " + bad : "images-ok " + imgs.length;
});</script>"""
STYLE = "body{font-family:sans-serif;max-width:1100px;margin:auto}table{border-collapse:collapse}td,th{border:1px solid #bbb;padding:2px 8px}img{max-width:100%}figure{display:inline-block}"  # noqa: E501


def build_report(
    run: str | Path,
    temperatures: Sequence[float] = (0.5, 0.7, 1.0),
    ood_json: str | Path | None = None,
    temperature_json: str | Path | None = None,
    n_images: int = 256,
    n_samples: int = 16,
    seed: int = 0,
    device: str = "cpu",
) -> str:
    """The HTML page of a run folder (see the module docstring); ``n_images`` test images feed the level terms."""
    from msflow.runs import load_data, load_run
    from msflow.train.logdets import LOGDETS, plot_logdets

    run = Path(run)
    model, cfg, meta = load_run(run, device)
    ood_json = ood_json or (run / OOD_JSON if (run / OOD_JSON).is_file() else None)
    temperature_json = temperature_json or (run / TEMPERATURE_JSON if (run / TEMPERATURE_JSON).is_file() else None)
    records = read_jsonl(run / METRICS)
    parts = [_section("config", "Config", f"<pre>{escape(json.dumps(meta.get('config', {}), indent=1))}</pre>")]
    curves = _img(figure_png(curves_figure(records)), "training curves") if records else "<p>no metrics.jsonl</p>"
    parts.append(_section("curves", "Training curves", curves))
    parts.append(_section("bpd", "Bits/dim", _bpd_section(run, records, meta)))
    if model.multiscale:
        images = load_data(cfg, "test").images
        test = images[torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))[:n_images]]
        rows = [[r["name"], r["prior"], r["logdet"], r.get("constant")] for r in level_terms(model, test, seed)]
        note = (
            f"bits/dim = sum over levels of -log N(eps_i) / (D ln 2) + sum of -log|det J| / (D ln 2) + "
            f"log q(u|x) / (D ln 2) + bits; batch means over {len(test)} random test images, seed {seed}."
        )
        table = _table(["term", "-log N(eps_i) (bits/dim)", "-log-det (bits/dim)", "constant"], rows)
        parts.append(_section("levels", "Per-level terms", f"<p>{escape(note)}</p>" + table))
    grids = []
    for t in temperatures:
        with evaluation_context(model):
            images = model.sample(n_samples, temperature=t, generator=torch.Generator().manual_seed(seed))
        img = _img(grid_png(images, max(1, 96 // images.shape[-1])), f"samples T={t}")
        grids.append(f"<figure>{img}<figcaption>{escape(f'T = {t:g}, seed {seed}')}</figcaption></figure>")
    parts.append(_section("samples", "Samples", "\n".join(grids)))
    if (run / LOGDETS).is_file():
        with tempfile.TemporaryDirectory() as tmp:
            png = plot_logdets(run, Path(tmp) / "logdets.png").read_bytes()
        parts.append(_section("logdets", "Per-block log-determinants", _img(png, "per-block log-dets")))
    if ood_json:
        parts.append(_section("ood", "Out-of-distribution", _ood_section(read_json(ood_json))))
    if temperature_json:
        parts.append(_section("temperature", "Temperature sweep", _temperature_section(read_json(temperature_json))))
    head = f"<meta charset='utf-8'><title>{escape(f'msflow report: {run}')}</title><style>{STYLE}</style>"
    body = f"<h1>{escape(f'msflow run {run}')}</h1>\n" + "\n".join(parts)
    return f"<!DOCTYPE html>\n<html><head>{head}{SCRIPT}</head><body>\n{body}\n</body></html>\n"


def write_report(run: str | Path, out: str | Path | None = None, **kwargs: Any) -> Path:
    """Write :func:`build_report` to ``out`` (default ``RUN/report.html``) atomically; returns the path."""
    text = build_report(run, **kwargs)
    path = Path(out) if out is not None else Path(run) / REPORT
    atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
    return path


def check_tensorboard() -> None:
    """Raise a one-line :class:`~msflow.errors.MissingDependencyError` unless TensorBoard is installed."""
    require("tensorboard", "metrics", "--tensorboard")


def write_tensorboard(run: str | Path) -> Path:
    """Write every numeric scalar of ``RUN/metrics.jsonl`` to the event files of ``RUN/tensorboard``."""
    check_tensorboard()
    from torch.utils.tensorboard import SummaryWriter

    target = Path(run) / "tensorboard"
    with SummaryWriter(log_dir=str(target)) as writer:
        for r in read_jsonl(Path(run) / METRICS):
            for key, value in r.items():
                if key != "step" and isinstance(value, int | float) and not isinstance(value, bool):
                    writer.add_scalar(key, value, r.get("step", 0))
    return target


__all__ = ["build_report", "check_tensorboard", "level_terms", "write_report", "write_tensorboard"]
