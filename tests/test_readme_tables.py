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
