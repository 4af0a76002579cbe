"""Sizes no model or dataset should be built with: every size option of every preset given values
that are not sizes or are over the limits (checked in-process, before anything is built), and
the hostile checkpoint headers and overrides of issue 25 run through ``msflow`` in a child
process whose address space is capped at 1 GiB over what importing msflow took, each with 10 s.
"""

# ruff: noqa: B023

from __future__ import annotations

import copy
import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from msflow import _budget
from msflow.models import create_model, list_models
from msflow.models._registry import preset_defaults
from msflow.train.checkpoint import CHECKPOINT, load_checkpoint

from .checkpoints import forge
from .checks import Outcome, Tally, message_problem, user_error

SECONDS, EXTRA_BYTES = 10, 2**30

_LIMITS = {**_budget.LEVELS, **_budget.BLOCKS, **_budget.WIDTHS, **_budget.MULTIPLIERS, **_budget.SIDES}


def _not_sizes(least: int) -> list[object]:
    return [least - 1, -(2**40), 2**31, 10**12, 1e20, "1e20", "abc", 2.5, float(least + 1), True, [8]]


def option_cases() -> list[tuple[str, str, object, str | None]]:
    """``(preset, option, value, what the message names)`` for every size option each preset shows;
    the last is None for values that are sizes, only over the limits (``MSFLOW_ALLOW_LARGE=1``
    lets those pass)."""
    cases: list[tuple[str, str, object, str | None]] = []
    for name in list_models():
        for key, default in preset_defaults(name).items():
            if key == "scale" and isinstance(default, str):
                continue  # glow's scale is the name of a function
            if key == "image_shape":
                for shape in ([1, 8], [1, 0, 8], [1, -8, 8], [0, 8, 8], "1x8x8", [1, 8.0, 8], [1, 8, 8, 8]):
                    cases.append((name, key, shape, key))
                cases += [(name, key, [1, 2**20, 2**20], None), (name, key, [3, 8192, 8192], None)]
            elif key in _LIMITS:
                least, limit = _LIMITS[key]
                cases += [(name, key, value, key) for value in _not_sizes(least)]
                cases.append((name, key, limit + 1, None))
            elif key in _budget.SEQUENCES:
                cases += [(name, key, value, key) for value in ([0, 8], [-1], "wide", [2.5], [2**31])]
            elif key == "blocks_per_level":
                cases += [(name, key, value, "blocks") for value in ({"1": -1}, {"1": 2.5}, [1], {"1": "x"})]
                cases.append((name, key, {"1": 10**6}, None))
    return cases


def preset_options(tally: Tally, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each bad size is one ``MsflowError`` naming the option, before any module is built; over
    the limits, ``MSFLOW_ALLOW_LARGE=1`` lets the check pass (the builder is not run then)."""
    lifted: list[str] = []
    for name, key, value, needle in option_cases():
        build = lambda: create_model(name, **{key: value})  # noqa: E731
        if needle is not None:
            tally.check(f"{name} {key}={value!r}", user_error(build, f"model {name!r}", needle))
            continue
        tally.check(f"{name} {key}={value!r}", user_error(build, f"model {name!r}", _budget.ALLOW_LARGE))
        monkeypatch.setenv(_budget.ALLOW_LARGE, "1")
        try:
            _budget.check_model_spec(name, preset_defaults(name), {key: value})
        except Exception as err:  # noqa: BLE001
            lifted.append(f"{name} {key}={value!r}: {err}")
        monkeypatch.delenv(_budget.ALLOW_LARGE)
    tally.check("MSFLOW_ALLOW_LARGE=1 lifts the limits", "; ".join(lifted[:5]) or None)
    # Sizes that are fine one by one but not together: the estimates refuse them.
    for label, options in (
        ("parameters", {"hidden": 60000, "steps": 64}),
        ("blocks", {"steps": 1000, "levels": 8}),
        ("activations", {"image_shape": [3, 16384, 16384]}),
    ):
        outcome = user_error(lambda: create_model("glow-cifar10", **options), label, _budget.ALLOW_LARGE)
        tally.check(f"estimated {label} {options}", outcome)


@dataclass
class Case:
    label: str
    argv: list[str]
    needles: list[str]
    absent: str | None = None  # a path the command must not create


def _forged_run(run: Path, tmp: Path, label: str, edit: object) -> Path:
    folder = tmp / label
    folder.mkdir()
    for f in run.iterdir():
        if f.is_file():
            (folder / f.name).write_bytes(f.read_bytes())
    tensors, meta = load_checkpoint(run / CHECKPOINT)
    meta = copy.deepcopy(meta)
    edit(meta)
    (folder / CHECKPOINT).write_bytes(forge(tensors, meta))
    return folder


def _options(key: str, value: object) -> object:
    def edit(meta: dict) -> None:  # the spec and the stored config agree, as training writes them
        meta["model_spec"]["overrides"][key] = value
        meta["config"]["model"]["options"][key] = value

    return edit


def _meta(key: str, value: object) -> object:
    return lambda meta: meta.__setitem__(key, value)


def limited_cases(run: Path, tmp: Path) -> list[Case]:
    """Issue 25's hostile headers (built from the real tiny ``run``) and overrides."""
    cases = []
    headers = [("steps", 10**9), ("image_shape", [1, 2**20, 2**20]), ("hidden", 0), ("hidden", -1)]
    headers += [("hidden", 10**12), ("hidden", 1e20), ("hidden", "1e20"), ("steps", "many")]
    for i, (key, value) in enumerate(headers):
        folder = _forged_run(run, tmp, f"header{i}", _options(key, value))
        ckpt = str(folder / CHECKPOINT)
        cases.append(Case(f"eval: header {key}={value!r}", ["eval", str(folder)], [ckpt, key]))
        argv = ["sample", str(folder), "-o", str(tmp / f"s{i}.png")]
        cases.append(Case(f"sample: header {key}={value!r}", argv, [ckpt, key], str(tmp / f"s{i}.png")))
    for i, value in enumerate(["12", [1], -5.0, None, True]):
        folder = _forged_run(run, tmp, f"seconds{i}", _meta("train_seconds", value))
        ckpt = str(folder / CHECKPOINT)
        argv = ["train", str(run / "config.yaml"), "--out", str(folder)]
        cases.append(Case(f"train: header train_seconds={value!r}", argv, [ckpt, "train_seconds"]))
        cases.append(Case(f"eval: header train_seconds={value!r}", ["eval", str(folder)], [ckpt, "train_seconds"]))
    overrides = [f"model.options.hidden={v}" for v in ("0", "-1", "1000000000000", "1e20", "1.0e20", "65537")]
    overrides += ["model.options.steps=1000000000", "model.options.image_shape=[1,1048576,1048576]"]
    overrides += ["model.options.levels=100", "data.pad_to=4096"]
    for i, item in enumerate(overrides):
        out = tmp / f"train{i}"
        needle = item.split("=")[0].removeprefix("model.options.")
        argv = ["train", str(run / "config.yaml"), item, "--out", str(out)]
        cases.append(Case(f"train {item}", argv, [needle], str(out)))
    cases.append(Case("bound --pad-to 4096", ["bound", "digits8", "--pad-to", "4096"], ["--pad-to=4096"]))
    return cases


# Runs in the child: import msflow and what a first training run imports and reads (the bundled
# digits; torch.optim.Adam imports torch._dynamo, 7 of the 10 s on a busy 2-core machine), cap the
# address space, prove the cap holds, then each case with an alarm. Overtime is a BaseException:
# msflow's main catches OSError (TimeoutError is one).
_CHILD = """
import io, json, re, resource, signal, sys, time
from contextlib import redirect_stderr, redirect_stdout
import torch
from msflow.cli import main
import msflow.train.loop
from msflow.data import get_dataset
get_dataset("digits8", "train")
torch.optim.Adam([torch.zeros(1, requires_grad=True)])

class Overtime(BaseException):
    pass

def on_alarm(*_):
    raise Overtime()

def vm_bytes():
    return int(re.search(r"VmSize:\\s+(\\d+)", open("/proc/self/status").read()).group(1)) * 1024

cases, seconds, extra = json.loads(sys.stdin.read()), int(sys.argv[1]), int(sys.argv[2])
limit = vm_bytes() + extra
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
try:
    bytearray(2 * extra)
    capped = False
except MemoryError:
    capped = True
signal.signal(signal.SIGALRM, on_alarm)
results = []
for argv in cases:
    err, out = io.StringIO(), io.StringIO()
    start = time.perf_counter()
    signal.alarm(seconds)
    try:
        with redirect_stderr(err), redirect_stdout(out):
            rc = main(argv)
    except Overtime:
        rc = "timeout"
    except BaseException as exc:
        rc = f"{type(exc).__name__}: {exc}"[:300]
    signal.alarm(0)
    results.append({"rc": rc, "err": err.getvalue(), "seconds": time.perf_counter() - start})
print(json.dumps({"capped": capped, "results": results}))
"""


def run_limited(argvs: list[list[str]], cwd: Path, env: dict[str, str]) -> tuple[bool, list[dict]]:
    """Every ``msflow`` argv in one child process under the memory cap and the alarm."""
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD, str(SECONDS), str(EXTRA_BYTES)],
        input=json.dumps(argvs),
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=60 + SECONDS * len(argvs),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    return report["capped"], report["results"]


def limited_outcome(case: Case, result: dict) -> Outcome:
    """Exit 2 in one ``msflow CMD: error:`` line naming the needles, within the time, nothing created."""
    if result["rc"] != 2:
        return f"exit {result['rc']} after {result['seconds']:.1f} s: {result['err'][-300:]!r}"
    lines = result["err"].strip().splitlines()
    if len(lines) != 1 or not lines[0].startswith(f"msflow {case.argv[0]}: error: "):
        return f"stderr is not one error line: {result['err'][-300:]!r}"
    if case.absent is not None and Path(case.absent).exists():
        return f"{case.absent} was created"
    return message_problem(lines[0], case.needles)
