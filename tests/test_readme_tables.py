"""Every README table rendered from JSON matches its JSON (scripts/render_tables.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "render_tables.py"


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, cwd=ROOT, timeout=120)


def test_readme_tables_match_their_json() -> None:
    result = run("--check")
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_changed_figure_is_caught_and_rerendered(tmp_path: Path) -> None:
    rows = [{"method": "bicubic", "psnr": 30.0, "ssim": 0.9, "lr_psnr": 50.0, "detail": 0.1, "saturated": 0.0}]
    results = tmp_path / "r.json"
    results.write_text(json.dumps({"task": "superres", "scale": 2, "photos": ["chelsea"], "rows": rows}))
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n<!-- table: {results} -->\n| typed | by hand |\n<!-- /table -->\nend\n")
    assert run("--check", "--readme", str(readme)).returncode == 1
    assert run("--readme", str(readme)).returncode == 0
    text = readme.read_text()
    assert "| bicubic | 30.00 | 0.9000 | 50.00 | 0.100 | 0.0000 |" in text and text.endswith("end\n")
    assert run("--check", "--readme", str(readme)).returncode == 0


def _section(text: str, heading: str) -> str:
    start = text.index(heading)
    end = text.find("\n### ", start + len(heading))
    return text[start : end if end > 0 else len(text)]


def test_no_hand_typed_figure_in_the_peer_benchmark_section() -> None:
    """Outside its rendered blocks, "Against the peers" quotes no measured figure (x.yy)."""
    import re

    section = _section((ROOT / "README.md").read_text(), "### Against the peers")
    section = section[: section.index("**Continuous flows**")]  # the Glow peers (the CNF part is older)
    assert "<!-- table: docs/results/peers-cpu.json -->" in section
    typed = re.sub(r"<!-- table: .*? -->.*?<!-- /table -->", "", section, flags=re.S)
    assert not re.findall(r"\d+\.\d\d", typed), re.findall(r".{30}\d+\.\d\d.{10}", typed)


def test_a_benchmark_report_renders_in_its_view(tmp_path: Path) -> None:
    runs = [
        {"spec": "msflow[float32]", "seed": s, "steps": 10, "skipped_steps": 0, "cpu_seconds": 2.0,
         "wall_seconds": 3.0, "test_bpd": 2.0 + s / 10, "test_bpd_stderr": 0.01}
        for s in (0, 1)
    ]  # fmt: skip
    summary = {
        "msflow[float32]": {"precision": "float32", "params": 10, "steps_mean": 10, "images_per_s_mean": 5.0,
                            "cpu_seconds_mean": 2.0, "wall_seconds_mean": 3.0, "test_bpd_mean": 2.05,
                            "test_bpd_std": 0.0707, "test_bpd_min": 2.0, "test_bpd_max": 2.1}
    }  # fmt: skip
    env = {"cpu": "test CPU", "cpu_bf16_units": [], "threads": 1, "torch": "2", "loadavg_before": [1.0, 0, 0],
           "loadavg_after": [2.0, 0, 0]}  # fmt: skip
    config = {"max_test": 10, "steps": 1, "hidden": 8, "batch": 4, "lr": 1e-3, "budget": 60, "clock": "cpu",
              "slice": 6, "threads": 1}  # fmt: skip
    report = {"config": config, "seeds": [0, 1], "environment": env, "summary": summary, "results": runs}
    results = tmp_path / "budget.json"
    results.write_text(json.dumps(report))
    readme = tmp_path / "README.md"
    readme.write_text(f"<!-- table: {results} -->\n<!-- /table -->\n")
    assert run("--readme", str(readme)).returncode == 0
    text = readme.read_text()
    assert "**reduced**" in text and "| **2.0500** | 0.0707 | 2.0000-2.1000 |" in text
    readme.write_text(f"<!-- table: {results} memory -->\n<!-- /table -->\n")
    failed = run("--readme", str(readme))
    assert failed.returncode != 0 and "no view 'memory'" in failed.stderr


def test_issue_23_reports_record_the_machine_and_its_load() -> None:
    """Every benchmark JSON behind the peer tables names the CPU, its bf16/AMX flags, torch, threads and load."""
    names = (
        "peers-cpu",
        "peers-cpu-lowload",
        "kernel-bounds-cpu",
        "equal-budget-cpu",
        "compile-cpu",
        "compile-cpu-lowload",
    )
    for name in names:
        env = json.loads((ROOT / "docs" / "results" / f"{name}.json").read_text())["environment"]
        assert env["cpu"] and env["torch"] and env["threads"] >= 1, name
        assert {"avx512_bf16", "amx_bf16"} <= set(env["cpu_features"]), name
        assert len(env["loadavg_before"]) == len(env["loadavg_after"]) == 3, name
