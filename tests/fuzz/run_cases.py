"""Case loops for what drives a run: checkpoints (``load_run``, resuming training, ``msflow eval``,
``sample`` and ``train``), configs (YAML files and dotted overrides) and command-line arguments."""

# Every lambda in a loop here is called by a check within the same iteration: no late binding.
# ruff: noqa: B023

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image

from msflow.errors import ConfigError
from msflow.runs import load_run
from msflow.train.checkpoint import CHECKPOINT, load_checkpoint, restore_optimizer
from msflow.train.checkpoint_checks import require
from msflow.train.config import Config, apply_overrides, config_from_dict, load_config, replace
from msflow.train.loop import train

from .checkpoints import ALL, ALL_PENDING, LOAD, RESUME, Variant, forged_specs, random_variants, variants
from .checks import Tally, cli_error, error_or, run_cli, snapshot, user_error
from .cli_args import BAD_NUMBERS, HUGE, NumericOption, subcommands
from .configs import (
    bad_values,
    config_fields,
    malformed_yaml,
    nested,
    override_cases,
    unknown_key_cases,
    yaml_parses_to_nothing,
)


def _resume(run: Path, out: Path) -> None:
    cfg = load_config(run / "config.yaml")
    train(replace(cfg, train=replace(cfg.train, out=str(out))))


def checkpoints_loaded(tally: Tally, run: Path, tmp: Path, marker: Path) -> None:
    """``load_run`` refuses every variant a loader must refuse; the others give a model or an error."""
    path = tmp / CHECKPOINT
    source = run / CHECKPOINT
    every = variants(source, marker) + random_variants(source, 300) + forged_specs(source)
    for v in every:
        path.write_bytes(v.data)
        if v.scope == RESUME:  # optimizer state: not read by load_run
            tally.check(v.name, error_or(lambda: load_run(path), lambda m: None, path))
        else:
            tally.check(v.name, user_error(lambda: load_run(path), path))
    tally.check("marker", "unpickled" if marker.exists() else None)


def checkpoints_resumed(tally: Tally, run: Path, tmp: Path, marker: Path, scopes: tuple[str, ...]) -> None:
    """Training resumed from each variant stops with an error naming the checkpoint, and leaves it as it was."""
    copy = tmp / "run"
    copy.mkdir()
    for v in variants(run / CHECKPOINT, marker):
        if v.scope not in scopes:
            continue
        (copy / CHECKPOINT).write_bytes(v.data)
        before = snapshot(copy)
        tally.check(v.name, user_error(lambda: _resume(run, copy), copy / CHECKPOINT))
        tally.check(f"{v.name}: files kept", None if snapshot(copy) == before else "the run folder changed")
    tally.check("marker", "unpickled" if marker.exists() else None)


def optimizer_state_checks(tally: Tally, run: Path, tmp: Path, marker: Path) -> None:
    """What resuming needs beyond the weights is refused, naming the file, by the loading side of
    msflow.train.checkpoint (``restore_optimizer`` with its source, ``require``)."""
    cfg = load_config(run / "config.yaml")
    model, _, _ = load_run(run)
    path = tmp / CHECKPOINT
    for v in variants(run / CHECKPOINT, marker):
        if v.scope not in (RESUME, ALL_PENDING):
            continue
        path.write_bytes(v.data)
        opt = torch.optim.Adam(model.parameters(), lr=cfg.optim.lr, betas=cfg.optim.betas)

        def restore() -> None:
            tensors, meta = load_checkpoint(path)
            require(tensors, meta, ("config", "optimizer", "step", "rng/noise", "rng/torch"), str(path))
            restore_optimizer(opt, tensors, meta["optimizer"], str(path))

        tally.check(v.name, user_error(restore, path))


def _run_copy(run: Path, tmp: Path, name: str) -> Path:
    copy = tmp / name
    copy.mkdir()
    for f in run.iterdir():
        if f.is_file():
            (copy / f.name).write_bytes(f.read_bytes())
    return copy


def checkpoint_commands(tally: Tally, run: Path, tmp: Path, marker: Path, capsys: pytest.CaptureFixture) -> None:
    """``msflow eval``, ``sample -o OUT`` and ``train --out RUN`` on hostile checkpoints; nothing changes."""
    copy = _run_copy(run, tmp, "run")
    out = tmp / "mine.png"
    out.write_bytes(b"the user's own picture")
    chosen: list[Variant] = variants(run / CHECKPOINT, marker) + forged_specs(run / CHECKPOINT)
    for i, v in enumerate(chosen):
        (copy / CHECKPOINT).write_bytes(v.data)
        before = snapshot(copy, out)
        ckpt = copy / CHECKPOINT
        if v.scope in (ALL, ALL_PENDING, LOAD):
            tally.check(f"eval {v.name}", cli_error(["eval", str(copy)], capsys, ckpt))
            argv = ["sample", str(copy), "-n", "4", "-o", str(out), "--force"]  # the checkpoint is judged
            tally.check(f"sample {v.name}", cli_error(argv, capsys, ckpt))
        if v.scope == ALL and i % 2 == 0:
            argv = ["train", str(run / "config.yaml"), "--out", str(copy)]
            tally.check(f"train {v.name}", cli_error(argv, capsys, ckpt))
        tally.check(f"{v.name}: files kept", None if snapshot(copy, out) == before else "a user file changed")
    tally.check("marker", "unpickled" if marker.exists() else None)


def config_files(tally: Tally, tmp: Path, run: Path, capsys: pytest.CaptureFixture) -> None:
    """A wrong value for every field, through ``config_from_dict``, a YAML file and ``msflow train``."""
    rng = random.Random(9)
    copy = _run_copy(run, tmp, "run")
    before = snapshot(copy)
    for i, field in enumerate(config_fields()):
        for j, value in enumerate(bad_values(field)):
            tally.check(f"{field.key}={value!r}", user_error(lambda: config_from_dict(nested(field, value)), field.key))
            path = tmp / f"{i}-{j}.yaml"
            path.write_text(yaml.safe_dump(nested(field, value)))
            tally.check(f"{path.name} {field.key}", user_error(lambda: load_config(path), path, field.key))
            if rng.random() < 0.08:
                argv = ["train", str(path), "--out", str(copy)]
                tally.check(f"train {path.name} {field.key}", cli_error(argv, capsys, path, field.key))
    for k, (values, key) in enumerate(unknown_key_cases()):
        path = tmp / f"unknown{k}.yaml"
        path.write_text(yaml.safe_dump(values))
        tally.check(f"{path.name} {key}", user_error(lambda: load_config(path), path, key))
        if k % 4 == 0:
            tally.check(f"train {path.name}", cli_error(["train", str(path), "--out", str(copy)], capsys, path, key))
    tally.check("run folder kept", None if snapshot(copy) == before else "the run folder changed")


def yaml_texts(tally: Tally, tmp: Path, run: Path, capsys: pytest.CaptureFixture) -> None:
    """Malformed YAML, non-mapping documents, tags, aliases, deep nesting, random bytes."""
    copy = _run_copy(run, tmp, "run")
    before = snapshot(copy)
    for i, data in enumerate(malformed_yaml(random.Random(10), 300)):
        path = tmp / f"bad{i}.yaml"
        path.write_bytes(data)
        if i < 23:  # the fixed malformed texts: all must be refused
            tally.check(f"{path.name} {data[:30]!r}", user_error(lambda: load_config(path), path))
            tally.check(f"train {path.name}", cli_error(["train", str(path), "--out", str(copy)], capsys, path))
        elif yaml_parses_to_nothing(data):
            tally.check(f"{path.name} {data[:30]!r}", error_or(lambda: load_config(path), lambda c: None))
        else:
            accept = lambda c: None if isinstance(c, Config) else "not a config"  # noqa: E731
            tally.check(f"{path.name} {data[:30]!r}", error_or(lambda: load_config(path), accept, path))
    tally.check("run folder kept", None if snapshot(copy) == before else "the run folder changed")


def overrides(tally: Tally, tmp: Path, run: Path, capsys: pytest.CaptureFixture) -> None:
    copy = _run_copy(run, tmp, "run")
    before = snapshot(copy)
    for i, (item, needle) in enumerate(override_cases(random.Random(11), 600)):
        tally.check(item, user_error(lambda: apply_overrides(Config(), [item]), needle, kinds=(ConfigError,)))
        if i % 20 == 0:
            argv = ["train", str(run / "config.yaml"), item, "--out", str(copy)]
            tally.check(f"train {item}", cli_error(argv, capsys, needle))
    tally.check("run folder kept", None if snapshot(copy) == before else "the run folder changed")


def numeric_option(tally: Tally, tmp: Path, option: NumericOption, capsys: pytest.CaptureFixture) -> None:
    """Every value no option may take, with the command's output file already there."""
    out = tmp / "mine.png"
    out.write_bytes(b"the user's own file")
    for value in BAD_NUMBERS + HUGE:
        argv = [*option.base, option.option, value]
        if option.writes:
            argv += [option.writes, str(out), "--force"]
        tally.check(f"{option.command} {option.option} {value[:20]!r}", cli_error(argv, capsys, option.option))
    tally.check("output kept", None if out.read_bytes() == b"the user's own file" else "overwritten")


def _run_commands() -> list[str]:
    """Subcommands whose first argument is a run folder (found in the parser)."""
    return [name for name, p in sorted(subcommands().items()) if any(a.dest == "run" for a in p._actions)]  # noqa: SLF001


def path_cases(run: Path, tmp: Path) -> list[tuple[list[str], object]]:
    """``(argv, what the error must name)``: missing files, folders where files belong, files where
    folders belong, outputs that cannot be written."""
    missing, folder, text = tmp / "no" / "such", tmp / "a-folder", tmp / "a-file.txt"
    folder.mkdir()
    text.write_text("x: [\n")
    image = tmp / "img.png"
    Image.new("L", (8, 8), 7).save(image)
    unwritable = Path("/proc/msflow-fuzz/out.png")  # /proc takes no new files, even from root
    extra = {"ood": ["--ood", "noise"], "perturb": [str(image)], "superres": [str(image)], "segment": [str(image)]}
    extra["interpolate"] = [str(image), str(image)]
    extra |= {command: [str(image)] for command in ("colorize", "inpaint", "translate")}
    cases: list[tuple[list[str], object]] = []
    for command in _run_commands():
        for bad, needle in ((missing, missing), (folder, folder / CHECKPOINT), (text, text)):
            cases.append(([command, str(bad), *extra.get(command, [])], needle))
    cases += [(["train", str(p), "--out", str(tmp / "r")], p) for p in (missing, folder, text)]
    cases += [(["train", str(run / "config.yaml"), "--out", str(p)], p) for p in (text, unwritable.parent)]
    cases += [(["perturb", str(run), str(p)], p) for p in (missing, folder, text)]
    cases += [(["bound", "folder", "--root", str(p)], p) for p in (missing, folder, text)]
    cases += [(["temperature", str(run), "--inception", str(p)], p) for p in (missing, folder, text)]
    cases += [(["report", str(run), "--ood-json", str(p)], p) for p in (missing, folder, text)]
    cases += [(["translate-table", str(p)], p) for p in (missing, folder / CHECKPOINT, text)]
    cases += [(["translate-table", str(run), str(p)], p) for p in (missing, folder / CHECKPOINT, text)]
    cases += [(["inpaint", str(run), str(image), "--mask", str(p)], p) for p in (missing, folder, text)]
    outputs = {"sample": [], "perturb": [str(image)], "toy": ["moons"], "ood": ["--ood", "noise"]}
    outputs |= {"shuffle-patches": [], "temperature": [], "report": []}
    outputs |= {command: [str(image)] for command in ("colorize", "inpaint", "translate")}
    for command, args in outputs.items():
        base = [command] + ([] if command == "toy" else [str(run)]) + args
        for out, needle in ((folder, folder), (text / "x.png", text)):
            cases.append(([*base, "-o", str(out)], needle))
    for command in ("sample", "perturb"):
        cases.append(([command, str(run), *outputs[command], "-o", str(unwritable)], unwritable.parent))
    histogram = str(tmp / "histogram.png")
    cases.append(
        (["ood", str(run), "--ood", "noise", "-n", "4", "-o", histogram, "--json", str(unwritable)], unwritable.parent)
    )
    cases.append((["ood", str(run), "--ood", "noise", "--json", str(text / "x.json")], text))
    for option in ("--json", "--grid"):
        cases += [
            (["translate-table", str(run), option, str(p)], needle)
            for p, needle in ((folder, folder), (text / "x", text))
        ]
    cases.append((["colorize", str(run), str(image), "--json", str(text / "x.json")], text))
    # a run of another model, and more samples kept than drawn
    for command, preset in (
        ("colorize", "caflow-colorize"),
        ("inpaint", "caflow-inpaint"),
        ("translate", "caflow-sketch"),
    ):
        cases.append(([command, str(run), str(image)], preset))
    cases.append((["translate-table", str(run), "--count", "1"], "CAFLOW"))
    cases.append((["superres", str(run), str(image), "-n", "4", "--best-of", "3"], "--best-of"))
    cases.append((["colorize", str(run), str(image), "-n", "4", "--best-of", "3"], "--best-of"))
    cases.append((["temperature", str(run), "--cache-dir", str(text)], text))
    return cases


def paths(tally: Tally, run: Path, tmp: Path, capsys: pytest.CaptureFixture) -> None:
    """Each path case is one clear error and changes no file; outputs in new folders are written."""
    cases = path_cases(run, tmp / "cases")
    before = snapshot(run, tmp)
    for argv, needle in cases:
        tally.check(" ".join(argv)[-90:], cli_error(argv, capsys, needle))
    after = snapshot(run, tmp)
    changed = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k) and "histogram" not in k)
    tally.check("files kept", f"changed: {changed}" if changed else None)
    for command, args in (("sample", ["-n", "4"]), ("perturb", [str(tmp / "cases" / "img.png")])):
        out = tmp / "new" / command / "out.png"
        rc, _, err = run_cli([command, str(run), *args, "-o", str(out)], capsys)
        tally.check(f"{command} -o new folder", None if rc == 0 and out.is_file() else f"exit {rc}: {err[-200:]}")
