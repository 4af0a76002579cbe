"""Outputs that would replace a file or are of the wrong kind, for every output option of every
``msflow`` command (found in the parser, so an option added later is covered), and the names
commands derive from their outputs. Each must be refused before any work, naming the file."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
from PIL import Image

from msflow.cli._common import OutputFile

from .checks import Tally, cli_error, run_cli, snapshot
from .cli_args import _stub, subcommands


def output_options() -> list[tuple[str, list[str], argparse.Action]]:
    """``(command, argv with stub positionals, output action)`` for every output option."""
    out = []
    for command, parser in sorted(subcommands().items()):
        base = [command]
        for action in parser._actions:  # noqa: SLF001 - argparse has no public listing
            if not action.option_strings:
                base += _stub(action) if action.nargs not in ("*", "?") else []
            elif action.required:
                base += [action.option_strings[0], *_stub(action)]
        for action in parser._actions:  # noqa: SLF001
            if isinstance(action.type, OutputFile):
                out.append((command, base, action))
    return out


def _cases(tmp: Path) -> list[tuple[Path, list[str], list[object]]]:
    """``(working folder, argv, what the one error line must name)``; every file under ``tmp`` must
    stay as it was. Default outputs are tried in a folder of their own, the rest in an empty one
    (so no default output is there to be refused first)."""
    clean, defaults = tmp / "clean", tmp / "defaults"
    clean.mkdir()
    defaults.mkdir()
    notes = tmp / "notes.txt"
    notes.write_text("the user's notes\n")
    cases: list[tuple[Path, list[str], list[object]]] = []
    for command, base, action in output_options():
        flag, suffix = action.option_strings[0], action.type.suffixes[0]
        mine = tmp / f"mine-{command}-{action.dest}{suffix}"
        mine.write_bytes(b"the user's own file")
        cases.append((clean, [*base, flag, str(notes)], [flag, "notes.txt", suffix]))
        other = ".jpg" if suffix == ".png" else ".png"
        cases.append((clean, [*base, flag, str(tmp / f"new{other}")], [flag, f"new{other}", suffix]))
        cases.append((clean, [*base, flag, str(mine)], [mine, "--force"]))
        if action.default is not None:  # the default file, there already
            (defaults / action.default).write_bytes(b"the user's own file")
            cases.append((defaults, base, [action.default, "--force"]))
    pngs = [(c, b, a) for c, b, a in output_options() if a.type.suffixes == (".png",)]
    for command, base, action in pngs:
        for other in (a for c, _, a in pngs if c == command and a is not action):
            path = str(tmp / "same.png")
            argv = [*base, action.option_strings[0], path, other.option_strings[0], path]
            cases.append((clean, argv, ["same file", other.option_strings[0]]))
    # Names derived from an output: segment's OUT_mean/OUT_mask, translate-table's JSON_grid, the report.
    for name in ("r_mean.png", "t_grid.png", "defaults/translate_grid.png"):
        (tmp / name).write_bytes(b"the user's own file")
    (tmp / "runlike").mkdir()
    (tmp / "runlike" / "report.html").write_text("<p>the user's report</p>")
    cases += [
        (clean, ["segment", "RUN", "img.png", "-o", str(tmp / "r.png")], [tmp / "r_mean.png", "--force"]),
        (clean, ["translate-table", "RUN", "--json", str(tmp / "t.json")], [tmp / "t_grid.png", "--force"]),
        (defaults, ["translate-table", "RUN"], ["translate_grid.png", "--force"]),
        (clean, ["report", str(tmp / "runlike")], [tmp / "runlike" / "report.html", "--force"]),
    ]
    return cases


def refused(tally: Tally, tmp: Path, run: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every case is one clear error and changes no file; with ``--force`` a result replaces the file."""
    cases = _cases(tmp)
    before = snapshot(tmp, run)
    for cwd, argv, needles in cases:
        monkeypatch.chdir(cwd)
        tally.check(f"{cwd.name}: " + " ".join(argv)[-100:], cli_error(argv, capsys, *needles))
    after = snapshot(tmp, run)
    changed = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
    tally.check("files kept", f"changed: {changed}" if changed else None)
    mine = tmp / "mine-sample-output.png"
    rc, _, err = run_cli(["sample", str(run), "-n", "4", "-o", str(mine), "--force"], capsys)
    try:
        with Image.open(mine) as image:
            image.load()
        replaced = None if rc == 0 else f"exit {rc}: {err[-200:]}"
    except OSError as e:
        replaced = f"exit {rc}, {mine} is not an image: {e}"
    tally.check("--force replaces the file with the result", replaced)
