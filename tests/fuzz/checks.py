"""What every hostile case must end in, as functions that return a failure description or None.

Cases are run in loops of hundreds, so a check does not assert: it describes what went wrong
and the test collects every description, reporting them all at once.
"""

from __future__ import annotations

import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

from msflow.cli import main
from msflow.errors import MsflowError

Outcome = str | None


def user_error(fn: Callable[[], Any], *needles: object, kinds: tuple[type, ...] = (MsflowError,)) -> Outcome:
    """``fn()`` must raise one of ``kinds`` with a one-line message holding every needle."""
    try:
        fn()
    except kinds as err:
        return message_problem(str(err), needles)
    except Exception as err:  # noqa: BLE001 - a crash is what this looks for
        return f"crash: {type(err).__name__}: {str(err)[:200]}"
    return "no error raised"


def error_or(fn: Callable[[], Any], accept: Callable[[Any], Outcome], *needles: object) -> Outcome:
    """``fn()`` either raises a clear :class:`MsflowError` or returns a result that ``accept`` passes."""
    try:
        result = fn()
    except MsflowError as err:
        return message_problem(str(err), needles)
    except Exception as err:  # noqa: BLE001
        return f"crash: {type(err).__name__}: {str(err)[:200]}"
    return accept(result)


def message_problem(message: str, needles: Sequence[object]) -> Outcome:
    if "\n" in message:
        return f"message of several lines: {message!r}"
    missing = [str(n) for n in needles if str(n) not in message]
    return f"message {message!r} does not name {missing}" if missing else None


def run_cli(argv: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str, str]:
    """``msflow.cli.main`` in-process; an escaping exception counts as exit 1 with its traceback."""
    try:
        rc = main(argv)
    except SystemExit as exit_:
        rc = exit_.code
    except Exception:  # noqa: BLE001
        rc = 1
        traceback.print_exc()
    out, err = capsys.readouterr()
    return rc, out, err


def cli_error(argv: list[str], capsys: pytest.CaptureFixture, *needles: object) -> Outcome:
    """Exit code 2, no traceback, one ``msflow CMD: error: ...`` line naming every needle
    (argument errors too: msflow's parser prints no usage block)."""
    rc, _, err = run_cli(argv, capsys)
    command = argv[0]
    if "Traceback" in err or rc != 2:
        return f"exit {rc} for {argv}: {err.strip()[-300:]!r}"
    lines = err.strip().splitlines()
    if len(lines) != 1 or not lines[0].startswith(f"msflow {command}: error: "):
        return f"stderr is not one `msflow {command}: error:` line for {argv}: {err!r}"
    return message_problem(lines[0], needles)


def snapshot(*paths: Path) -> dict[str, bytes]:
    """The bytes of every file at or under ``paths``: what the user had before a command."""
    files: dict[str, bytes] = {}
    for path in paths:
        for p in [path] if path.is_file() else sorted(path.rglob("*")):
            if p.is_file():
                files[str(p)] = p.read_bytes()
    return files


# category -> [cases, failures], over every test that ran; printed at the end of the fuzz module.
SUMMARY: dict[str, list[int]] = {}


class Tally:
    """The cases one test ran in ``category`` and the failures among them."""

    def __init__(self, category: str) -> None:
        self.category = category
        self.cases = 0
        self.failures: list[str] = []

    def check(self, label: str, outcome: Outcome) -> None:
        self.cases += 1
        if outcome is not None:
            self.failures.append(f"{label}: {outcome}")

    def done(self) -> None:
        """Add this test's counts to :data:`SUMMARY`, then fail with every failure seen, or if no case ran
        (a generator that yields nothing would otherwise pass without testing anything)."""
        assert self.cases > 0, f"no {self.category} case ran: the cases' generator yielded nothing"
        total = SUMMARY.setdefault(self.category, [0, 0])
        total[0] += self.cases
        total[1] += len(self.failures)
        shown = "\n".join(self.failures[:15])
        assert not self.failures, f"{len(self.failures)} of {self.cases} {self.category} cases failed:\n{shown}"
