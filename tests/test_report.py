"""``msflow report``: one self-contained HTML page per run, checked as HTML, for external references
and for broken images; the browser test (marked slow) loads it in headless Chromium."""

from __future__ import annotations

import base64
import io
import json
import os
import re
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from tiny import TINY

from msflow.analysis.report import OOD_JSON, TEMPERATURE_JSON, level_terms, write_report
from msflow.cli import main
from msflow.runs import load_data, load_run

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
VOID = {"meta", "img", "br", "hr", "link", "input"}
SECTIONS = {"config", "curves", "bpd", "levels", "samples", "logdets", "ood", "temperature"}
TEMPERATURE = {
    "metric": "FCD (msflow's digits8 classifier)",
    "n": 10,
    "seed": 0,
    "reference": 0.25,
    "rows": [{"temperature": 0.5, "fcd": 3.0}, {"temperature": 1.0, "fcd": 2.0}],
}


class Page(HTMLParser):
    """Parses a page strictly enough to catch unbalanced tags; keeps ids, img srcs and every link."""

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str] = []
        self.ids: set[str] = set()
        self.imgs: list[str] = []
        self.links: list[str] = []
        self.title = ""
        self.scripts: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        self.ids |= {a["id"]} if a.get("id") else set()
        self.links += [v or "" for k, v in attrs if k in ("src", "href", "srcset", "action")]
        self.imgs += [a.get("src") or ""] if tag == "img" else []
        if tag not in VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag: str) -> None:
        assert self.stack and self.stack[-1] == tag, f"</{tag}> closes {self.stack[-1:]}"
        self.stack.pop()

    def handle_data(self, data: str) -> None:
        if self.stack and self.stack[-1] == "title":
            self.title += data
        if self.stack and self.stack[-1] == "script":
            self.scripts.append(data)


def parse(path: Path) -> Page:
    page = Page()
    page.feed(path.read_text(encoding="utf-8"))
    page.close()
    assert page.stack == [], f"unclosed tags {page.stack}"
    return page


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Glow on 8x8 digits with log-dets, an ``ood.json`` from the real command and a temperature.json."""
    tmp = tmp_path_factory.mktemp("report")
    run = tmp / "run"
    args = [*TINY, "train.steps=4", "train.logdet_every=2", "--out", str(run)]
    proc = subprocess.run(
        [sys.executable, "-m", "msflow.cli", "train", "mnist5k-glow", *args],
        cwd=tmp,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stderr
    ood = ["ood", str(run), "--ood", "noise", "constant", "-n", "40", "-o", str(tmp / "ood.png")]
    assert main([*ood, "--json", str(run / OOD_JSON)]) == 0
    (run / TEMPERATURE_JSON).write_text(json.dumps(TEMPERATURE))
    return run


@pytest.fixture(scope="module")
def report(tiny_run: Path) -> Path:
    return write_report(tiny_run, temperatures=[0.5, 1.0], n_images=64, n_samples=4)


def test_report_is_valid_html_with_every_section(report: Path) -> None:
    assert report == report.parent / "report.html" and report.stat().st_size > 0
    page = parse(report)
    assert SECTIONS <= page.ids
    text = report.read_text()
    for needle in ("final test bits/dim", "-log N(eps_i)", "AUROC(-bpd)", "T = 0.5", "train vs test", "constant"):
        assert needle in text


def test_report_has_no_external_references(report: Path) -> None:
    page = parse(report)
    assert page.links and all(link.startswith("data:") or link.startswith("#") for link in page.links), page.links
    assert not re.search(r"(https?:|file:)//", report.read_text())  # nothing in styles or scripts either


def test_report_has_no_broken_images(report: Path) -> None:
    page = parse(report)
    # curves, 2 sample grids, log-dets, OOD histograms
    assert len(page.imgs) == 5
    for src in page.imgs:
        head, payload = src.split(",", 1)
        assert head == "data:image/png;base64"
        img = Image.open(io.BytesIO(base64.b64decode(payload, validate=True)))
        img.load()
        assert img.format == "PNG" and img.width > 0 and img.height > 0


def test_level_terms_add_up_to_the_models_bits_per_dim(tiny_run: Path) -> None:
    model, cfg, _ = load_run(tiny_run)
    x = load_data(cfg, "test").images[:32]
    rows = level_terms(model, x, seed=3)
    assert [r["name"] for r in rows][1:3] == ["level 0 (2x4x4)", "level 1 (8x2x2)"]
    with torch.no_grad():
        expected = model.bits_per_dim(x, generator=torch.Generator().manual_seed(3)).mean().item()
    assert rows[-1]["constant"] == pytest.approx(expected, abs=1e-5)


def test_text_is_escaped(tiny_run: Path, tmp_path: Path) -> None:
    run = Path(shutil.copytree(tiny_run, tmp_path / "a<b>&c"))
    (run / TEMPERATURE_JSON).write_text(json.dumps({**TEMPERATURE, "metric": "<script>x</script>"}))
    out = write_report(run, temperatures=[1.0], n_images=8, n_samples=1)
    text = out.read_text()
    assert "a<b>" not in text and "a&lt;b&gt;&amp;c" in text and "<script>x" not in text
    assert len(parse(out).scripts) == 1  # only the inline image check


def test_cli_writes_the_report_and_prints_its_path(
    tiny_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "r.html"
    rc = main(
        ["report", str(tiny_run), "-o", str(out), "--temperatures", "0.7", "--ood-json", str(tiny_run / OOD_JSON)]
    )
    assert rc == 0
    assert capsys.readouterr().out.strip() == f"wrote the report to {out}"
    assert {"ood", "levels", "samples"} <= parse(out).ids


@pytest.mark.parametrize("bad", ["missing-run", "ood"])
def test_cli_user_errors_exit_2(bad: str, tiny_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "r.html"
    run = str(tmp_path / "nope") if bad == "missing-run" else str(tiny_run)
    extra = ["--ood-json", str(tmp_path / "none.json")] if bad == "ood" else []
    rc = main(["report", run, "-o", str(out), *extra])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and err.startswith("msflow report: error:"), err
    assert not out.exists()


def test_tensorboard_flag_writes_the_scalars(tiny_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = Path(shutil.copytree(tiny_run, tmp_path / "run", ignore=shutil.ignore_patterns("report.html")))
    rc = main(["report", str(run), "--temperatures", "1", "--tensorboard"])
    assert rc == 0, capsys.readouterr().err
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    logged = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    losses = [(r["step"], r["loss_bpd"]) for r in logged if r.get("loss_bpd") is not None]
    assert [(e.step, pytest.approx(e.value)) for e in events.Scalars("loss_bpd")] == losses


def test_tensorboard_flag_without_tensorboard_is_one_line(
    tiny_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # makes `import tensorboard` fail
    run = Path(shutil.copytree(tiny_run, tmp_path / "run", ignore=shutil.ignore_patterns("report.html")))
    rc = main(["report", str(run), "--temperatures", "1", "--tensorboard"])
    err = capsys.readouterr().err
    assert rc == 2 and "pip install tensorboard" in err and err.count("\n") == 1, err
    assert not (run / "report.html").exists()  # checked before anything is written


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("chromium") is None, reason="needs chromium (apt-get install chromium)")
def test_report_renders_in_headless_chromium(report: Path, tmp_path: Path) -> None:
    """A screenshot that is not blank, and the page's own check that every image decoded."""
    flags = ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--window-size=1200,3000"]
    url = report.resolve().as_uri()
    shot = tmp_path / "shot.png"
    subprocess.run([*flags, f"--screenshot={shot}", url], capture_output=True, timeout=120, check=True)
    pixels = np.asarray(Image.open(shot).convert("L"), dtype=float)
    assert pixels.shape == (3000, 1200) and pixels.std() > 5
    dom = subprocess.run([*flags, "--dump-dom", url], capture_output=True, text=True, timeout=120, check=True).stdout
    assert re.search(r"<title>images-ok 5</title>", dom), re.search(r"<title>.*?</title>", dom)
    # ...and the check does see a broken image
    broken = tmp_path / "broken.html"
    broken.write_text(report.read_text().replace("data:image/png;base64,iVBOR", "data:image/png;base64,AAAA", 1))
    dom = subprocess.run([*flags, "--dump-dom", broken.as_uri()], capture_output=True, text=True, timeout=120).stdout
    assert "<title>broken-images 1</title>" in dom
