"""Hostile and malformed input, fuzzed from fixed seeds (thousands of cases, reproducible).

Every case must end in one of two ways. Input that turns out valid (a corruption that missed, a
16-bit or palette image) must give the correct result. Anything else must give one clear error
that names the file or argument and what was expected: a :class:`MsflowError` from the
library, and from ``msflow`` exit code 2 with one ``msflow CMD: error:`` line on stderr
(argument errors included), no traceback, and every file the user had left as it was.
Pickles carry code that would create a marker file: loading never unpickles.

The bulk of the cases call the library in-process; a representative subset goes through
``msflow.cli.main`` in-process. The case loops live in ``tests/fuzz/``; the number of cases per
category is printed at the end of this module.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from fuzz import budgets, file_cases, outputs, run_cases
from fuzz.checkpoints import ALL, ALL_PENDING, RESUME
from fuzz.checks import SUMMARY, Tally
from fuzz.cli_args import NumericOption, numeric_options
from tiny import TINY

from msflow.train.config import Config, apply_overrides
from msflow.train.loop import train


@pytest.fixture(scope="module", autouse=True)
def _summary(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    plugins = request.config.pluginmanager
    reporter, capture = plugins.get_plugin("terminalreporter"), plugins.get_plugin("capturemanager")
    parts = [f"{c} {n} ({f} failed)" for c, (n, f) in sorted(SUMMARY.items())]
    if reporter is not None and capture is not None and SUMMARY:
        with capture.global_and_fixture_disabled():  # teardown output is captured otherwise
            reporter.write_line(f"\nfuzz cases: {sum(n for n, _ in SUMMARY.values())} in all; " + ", ".join(parts))


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny trained run (Glow on 1x8x8 digits, 2 steps); its config.yaml resumes it."""
    out = tmp_path_factory.mktemp("fuzz") / "run"
    train(apply_overrides(Config(name="fuzz"), [*TINY, "train.steps=2", f"train.out={out}"]))
    return out


@pytest.fixture
def marker(tmp_path: Path) -> Iterator[Path]:
    """Created only if a hostile pickle is unpickled."""
    path = tmp_path / "UNPICKLED"
    yield path
    assert not path.exists(), "a hostile pickle was unpickled"


def test_a_tally_fails_when_no_case_ran_and_names_every_failure() -> None:
    with pytest.raises(AssertionError, match="no self-test case ran"):
        Tally("self-test").done()
    tally = Tally("self-test")
    tally.check("good", None)
    tally.check("bad", "crash: KeyError")
    with pytest.raises(AssertionError, match="1 of 2 self-test cases failed:\nbad: crash: KeyError"):
        tally.done()
    SUMMARY.pop("self-test")  # not a fuzz category: keep it out of the printed summary


# ----------------------------------------------------------------------------- 1. images


def test_images_in_every_mode_and_their_corruptions(tmp_path: Path) -> None:
    tally = Tally("images")
    file_cases.images_in_every_mode(tally, tmp_path)
    tally.done()


def test_non_images_and_decompression_bombs(tmp_path: Path) -> None:
    tally = Tally("images")
    file_cases.non_images_and_bombs(tally, tmp_path)
    tally.done()


def test_image_folders_with_a_hostile_file(tmp_path: Path) -> None:
    tally = Tally("images")
    file_cases.folders_with_a_hostile_file(tally, tmp_path)
    tally.done()


def test_perturb_command_refuses_hostile_images(run: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    tally = Tally("images")
    file_cases.perturb_command(tally, tmp_path, run, capsys)
    tally.done()


# ----------------------------------------------------------------------------- 2-4. IDX, CIFAR-10, npz


def test_idx_files(tmp_path: Path) -> None:
    tally = Tally("idx")
    file_cases.idx_files(tally, tmp_path)
    tally.done()


def test_mnist_folders_and_command(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    tally = Tally("idx")
    file_cases.mnist_folders(tally, tmp_path, capsys)
    tally.done()


def test_cifar_batches(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    tally = Tally("cifar")
    file_cases.cifar_batches(tally, tmp_path, capsys)
    tally.done()


def test_imagenet_npz_never_unpickles(tmp_path: Path, marker: Path, capsys: pytest.CaptureFixture) -> None:
    tally = Tally("npz")
    file_cases.imagenet_npz(tally, tmp_path, marker, capsys)
    tally.done()


# ----------------------------------------------------------------------------- 5. checkpoints


def test_load_run_refuses_hostile_checkpoints(run: Path, tmp_path: Path, marker: Path) -> None:
    tally = Tally("checkpoints")
    run_cases.checkpoints_loaded(tally, run, tmp_path, marker)
    tally.done()


def test_resuming_from_hostile_checkpoints(run: Path, tmp_path: Path, marker: Path) -> None:
    tally = Tally("checkpoints")
    run_cases.checkpoints_resumed(tally, run, tmp_path, marker, (ALL,))
    tally.done()


def test_optimizer_state_and_missing_entries_are_refused(run: Path, tmp_path: Path, marker: Path) -> None:
    tally = Tally("checkpoints")
    run_cases.optimizer_state_checks(tally, run, tmp_path, marker)
    tally.done()


def test_resuming_from_bad_optimizer_state(run: Path, tmp_path: Path, marker: Path) -> None:
    tally = Tally("checkpoints")
    run_cases.checkpoints_resumed(tally, run, tmp_path, marker, (RESUME, ALL_PENDING))
    tally.done()


def test_commands_on_hostile_checkpoints(
    run: Path, tmp_path: Path, marker: Path, capsys: pytest.CaptureFixture
) -> None:
    tally = Tally("checkpoints")
    run_cases.checkpoint_commands(tally, run, tmp_path, marker, capsys)
    tally.done()


# ----------------------------------------------------------------------------- 6. configs


def test_wrong_value_for_every_config_field(run: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    tally = Tally("configs")
    run_cases.config_files(tally, tmp_path, run, capsys)
    tally.done()


def test_malformed_yaml(run: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    tally = Tally("configs")
    run_cases.yaml_texts(tally, tmp_path, run, capsys)
    tally.done()


def test_bad_overrides(run: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    tally = Tally("configs")
    run_cases.overrides(tally, tmp_path, run, capsys)
    tally.done()


# ----------------------------------------------------------------------------- 7. command-line arguments


def test_missing_files_folders_and_unwritable_outputs(run: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "cases").mkdir()
    tally = Tally("cli arguments")
    run_cases.paths(tally, run, tmp_path, capsys)
    tally.done()


@pytest.mark.parametrize("option", [pytest.param(o, id=f"{o.command} {o.option}") for o in numeric_options()])
def test_numeric_options_out_of_range(option: NumericOption, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    tally = Tally("cli arguments")
    run_cases.numeric_option(tally, tmp_path, option, capsys)
    tally.done()


# ----------------------------------------------------------------------------- 8. outputs


def test_outputs_never_replace_a_file_without_force(
    run: Path, tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    tally = Tally("outputs")
    outputs.refused(tally, tmp_path, run, capsys, monkeypatch)
    tally.done()


# ----------------------------------------------------------------------------- 9. sizes


def test_size_options_of_every_preset_are_checked_before_building(monkeypatch: pytest.MonkeyPatch) -> None:
    tally = Tally("sizes")
    budgets.preset_options(tally, monkeypatch)
    tally.done()


def test_oversized_headers_and_overrides_end_in_one_line_within_10s_and_1gb(run: Path, tmp_path: Path) -> None:
    """Issue 25's cases through ``msflow`` in a child capped at 1 GiB of address space over what
    importing msflow took, 10 s each; a real command under the same cap still works."""
    cases = budgets.limited_cases(run, tmp_path)
    control = tmp_path / "control.png"
    argv = [c.argv for c in cases] + [["sample", str(run), "-n", "4", "-o", str(control)]]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop(budgets._budget.ALLOW_LARGE, None)
    capped, results = budgets.run_limited(argv, tmp_path, env)
    tally = Tally("sizes")
    tally.check("the memory cap holds (2 GiB refused)", None if capped else "a 2 GiB allocation succeeded")
    for case, result in zip(cases, results, strict=False):
        tally.check(case.label, budgets.limited_outcome(case, result))
    last = results[-1]
    ok = last["rc"] == 0 and control.is_file()
    tally.check("a real command under the cap", None if ok else f"exit {last['rc']}: {last['err'][-300:]}")
    tally.done()
