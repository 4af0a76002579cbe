"""The ``msflow`` command: parses arguments, then calls library functions.

Every error caused by the user (bad config, missing data, foreign checkpoint, bad shape) is
printed as one line on stderr with exit code 2; nothing half-written is left behind. No output
replaces an existing file unless the command is given ``--force`` (checked before any work, see
:func:`~msflow.cli._common.check_outputs`). Each module here registers a group of subcommands.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from collections.abc import Callable, Sequence
from typing import NoReturn

from msflow._allocator import tune_cpu_allocator
from msflow.cli import analysis_cmds, model_cmds, run_cmds, task_cmds, translate_cmds
from msflow.cli._common import add_force_options, check_outputs
from msflow.errors import MsflowError


class _Parser(argparse.ArgumentParser):
    """argparse with argument errors on one line, like every other msflow error."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    """The ``msflow`` argument parser with every subcommand."""
    parser = _Parser(prog="msflow", description="Multi-scale normalizing flows on images.")
    sub = parser.add_subparsers(dest="command", required=True)
    for group in (run_cmds, analysis_cmds, model_cmds, task_cmds, translate_cmds):
        group.register(sub)
    add_force_options(sub)  # one convention for every output: an existing file is replaced only with --force
    return parser


def _split_dashed_overrides(argv: Sequence[str]) -> list[str]:
    """Accept ``--train.steps 100`` and ``--train.steps=100`` as ``train.steps=100``."""
    out: list[str] = []
    it = iter(argv)
    for arg in it:
        if arg.startswith("--") and "." in arg.split("=", 1)[0]:
            out.append(arg[2:] if "=" in arg else f"{arg[2:]}={next(it, '')}")
        else:
            out.append(arg)
    return out


def _one_line_warnings(command: str) -> Callable[..., None]:
    """A ``warnings.showwarning`` that prints ``msflow COMMAND: warning: ...`` on one line, without source."""

    def show(message: Warning | str, category: type[Warning], *_: object, **__: object) -> None:
        print(f"msflow {command}: warning: {message}", file=sys.stderr)

    return show


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``msflow`` console script; returns the exit code.

    Tunes the CPU allocator of the process first (:func:`msflow.tune_cpu_allocator`).
    """
    tune_cpu_allocator()
    parser = build_parser()
    # parse_known_args, because argparse cannot take positional overrides after an option
    # (`msflow train CFG --out D k=v`): the leftovers are the train command's overrides.
    try:
        args, extra = parser.parse_known_args(_split_dashed_overrides(sys.argv[1:] if argv is None else argv))
        if extra and (args.command != "train" or any("=" not in e or e.startswith("-") for e in extra)):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
    except SystemExit as done:  # --help (0) or an argument error (2): a code, as for every other outcome
        return done.code if isinstance(done.code, int) else 0
    if extra:
        args.overrides = [*args.overrides, *extra]
    func: Callable[[argparse.Namespace], None] = args.func
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("default")  # each warning once per command, even in a long-lived process
            warnings.showwarning = _one_line_warnings(args.command)
            check_outputs(args)  # before any work: nothing is computed only to be refused at the end
            func(args)
    except MsflowError as err:
        print(f"msflow {args.command}: error: {err}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        # Output piped into `head` and the like: stop quietly, as Unix tools do.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except OSError as err:
        # An output path that is a folder, read-only, on a full disk...: the user's to fix.
        print(f"msflow {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"msflow {args.command}: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    return 0
