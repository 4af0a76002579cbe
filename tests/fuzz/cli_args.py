"""Every numeric option of every ``msflow`` subcommand, found in the parser itself, so an option
added later is fuzzed without editing this file."""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from msflow.cli import build_parser

# Values no numeric option of msflow may accept: negative, not a number, infinite, beyond any
# size or seed, or not numbers at all.
BAD_NUMBERS = ["-1", "-7", "-0.5", "nan", "NaN", "inf", "-inf", "1e400", "abc", "", "0x10", "1,5", "1e3x", "--"]
HUGE = [str(10**30), str(2**64), str(2**63), "9" * 5000]


@dataclass
class NumericOption:
    command: str
    option: str
    base: list[str]  # the command, stubs for its positionals and required options
    writes: str | None  # its -o/--output option, if it has one


def _stub(action: argparse.Action) -> list[str]:
    value = str(next(iter(action.choices))) if action.choices else "RUN"
    return [value]


def _is_numeric(action: argparse.Action) -> bool:
    if action.type is None or action.nargs == 0:
        return False
    try:
        return isinstance(action.type("1"), (int, float))
    except (argparse.ArgumentTypeError, ValueError, TypeError):
        return False


def subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))  # noqa: SLF001
    return dict(sub.choices)


def numeric_options() -> list[NumericOption]:
    out = []
    for command, parser in sorted(subcommands().items()):
        base = [command]
        for action in parser._actions:  # noqa: SLF001 - argparse has no public listing
            if not action.option_strings:
                base += _stub(action) if action.nargs not in ("*", "?") else []
            elif action.required:
                base += [action.option_strings[0], *_stub(action)]
        writes = next((a.option_strings[0] for a in parser._actions if "--output" in a.option_strings), None)  # noqa: SLF001
        for action in parser._actions:  # noqa: SLF001
            if action.option_strings and _is_numeric(action):
                out.append(NumericOption(command, action.option_strings[-1], base, writes))
    return out
