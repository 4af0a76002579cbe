"""Experiment configs: YAML files, dotted overrides, validation messages, the stored config."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
import yaml
from tiny import TINY as TINY_BASE

from msflow.cli import _split_dashed_overrides
from msflow.errors import ConfigError, MsflowError
from msflow.runs import load_run
from msflow.train.checkpoint import load_checkpoint
from msflow.train.config import (
    Config,
    apply_overrides,
    config_from_dict,
    config_to_dict,
    load_config,
    replace,
    resolve_config_path,
)
from msflow.train.loop import train
from msflow.train.precision import resolve_precision

CONFIGS = Path(__file__).resolve().parents[1] / "configs"

TINY = TINY_BASE


# ----------------------------------------------------------------------------- YAML files


def test_load_config_by_name_reads_the_yaml() -> None:
    cfg = load_config("mnist5k-glow")
    raw = yaml.safe_load((CONFIGS / "mnist5k-glow.yaml").read_text())
    assert cfg.name == "mnist5k-glow"
    assert cfg.data.name == raw["data"]["name"] == "mnist5k"
    assert cfg.model.name == "glow-mnist"
    assert cfg.model.options == raw["model"]["options"]
    assert cfg.optim.lr == pytest.approx(1e-3) and isinstance(cfg.optim.lr, float)
    assert cfg.optim.schedule == "cosine"
    assert cfg.train.steps == raw["train"]["steps"]
    assert cfg.train.temperatures == (0.5, 0.7, 1.0)
    assert isinstance(cfg.train.temperatures, tuple)
    assert cfg.optim.betas == (0.9, 0.999) and isinstance(cfg.optim.betas, tuple)
    assert load_config("mnist5k-glow.yaml") == cfg
    assert load_config(CONFIGS / "mnist5k-glow.yaml") == cfg


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.stem)
def test_every_shipped_config_loads(path: Path) -> None:
    cfg = load_config(path)
    assert isinstance(cfg, Config)
    assert config_from_dict(config_to_dict(cfg)) == cfg


def test_name_defaults_to_the_file_stem(tmp_path: Path) -> None:
    path = tmp_path / "my-exp.yaml"
    path.write_text("train:\n  steps: 7\n")
    cfg = load_config(path)
    assert cfg.name == "my-exp" and cfg.train.steps == 7
    assert cfg.run_dir == Path("runs/my-exp")
    path.write_text("name: other\n")
    assert load_config(path).name == "other"
    path.write_text("")
    assert load_config(path) == Config(name="my-exp")


def test_missing_config_lists_the_available_ones() -> None:
    with pytest.raises(ConfigError, match="not found") as err:
        load_config("no-such-config")
    assert "mnist5k-glow" in str(err.value)
    with pytest.raises(ConfigError, match="mnist5k-glow"):
        resolve_config_path("nope.yaml")


def test_invalid_yaml_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("train: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(path)


@pytest.mark.parametrize("text", ["- a\n- b\n", "hello\n", "42\n"], ids=["list", "string", "number"])
def test_yaml_that_is_not_a_mapping_is_a_config_error(tmp_path: Path, text: str) -> None:
    path = tmp_path / "notmap.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match="mapping"):
        load_config(path)


def test_binary_file_as_config_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "binary.yaml"
    path.write_bytes(b"\xff\xfe\x00\x01 not text")
    with pytest.raises(ConfigError):
        load_config(path)


def test_yaml_scientific_notation_is_a_float(tmp_path: Path) -> None:
    """``lr: 3e-4`` (no dot) is how people write learning rates; PyYAML reads it as a string."""
    path = tmp_path / "sci.yaml"
    path.write_text("optim:\n  lr: 3e-4\n")
    assert load_config(path).optim.lr == pytest.approx(3e-4)


# ----------------------------------------------------------------------------- overrides


def test_dotted_overrides() -> None:
    cfg = apply_overrides(
        load_config("mnist5k-glow"),
        [
            "train.steps=5",
            "train.batch_size=32",
            "optim.lr=0.01",
            "optim.optimizer=adamax",
            "optim.betas=[0.5, 0.9]",
            "model.options.hidden=16",
            "model.options.new_option=true",
            "data.pad_to=32",
            "data.root=~/data",
            "train.temperatures=[1]",
            "train.out=runs/a=b",
            "name=renamed",
            "train.progress=false",
        ],
    )
    assert cfg.name == "renamed"
    assert cfg.train.steps == 5 and cfg.train.batch_size == 32
    assert cfg.optim.lr == 0.01 and cfg.optim.optimizer == "adamax"
    assert cfg.optim.betas == (0.5, 0.9)
    assert cfg.model.options["hidden"] == 16 and cfg.model.options["new_option"] is True
    assert cfg.model.options["steps"] == 8  # untouched options stay
    assert cfg.data.pad_to == 32 and cfg.data.root == "~/data"
    assert cfg.train.temperatures == (1.0,) and isinstance(cfg.train.temperatures[0], float)
    assert cfg.train.out == "runs/a=b" and cfg.run_dir == Path("runs/a=b")
    assert cfg.train.progress is False
    # the input config is not modified (frozen dataclasses)
    assert load_config("mnist5k-glow").train.steps == 3000


def test_later_overrides_win_and_null_resets() -> None:
    cfg = apply_overrides(Config(), ["train.steps=5", "train.steps=6", "train.out=x", "train.out=null"])
    assert cfg.train.steps == 6 and cfg.train.out is None


def test_dashed_overrides_are_split_into_dotted_ones() -> None:
    argv = ["train", "cfg", "--train.steps", "5", "--optim.lr=0.1", "--out", "r.d", "--device", "cpu", "x.y=1"]
    assert _split_dashed_overrides(argv) == [
        "train",
        "cfg",
        "train.steps=5",
        "optim.lr=0.1",
        "--out",
        "r.d",
        "--device",
        "cpu",
        "x.y=1",
    ]
    assert _split_dashed_overrides(["--model.options.hidden", "-3"]) == ["model.options.hidden=-3"]
    cfg = apply_overrides(Config(), _split_dashed_overrides(["--train.steps", "5", "--train.seed=3"]))
    assert (cfg.train.steps, cfg.train.seed) == (5, 3)
    assert apply_overrides(Config(), ["--train.steps=9"]).train.steps == 9


def test_scientific_notation_override_is_a_float() -> None:
    """``optim.lr=1e-3`` must set the learning rate (PyYAML alone reads ``1e-3`` as a string)."""
    assert apply_overrides(Config(), ["optim.lr=1e-3"]).optim.lr == pytest.approx(1e-3)
    assert apply_overrides(Config(), ["optim.lr=1.0e-3"]).optim.lr == pytest.approx(1e-3)


def test_override_without_equals_sign() -> None:
    with pytest.raises(ConfigError, match="section.key=value"):
        apply_overrides(Config(), ["train.steps"])


def test_unknown_key_message_lists_valid_keys() -> None:
    with pytest.raises(ConfigError, match="unknown config key") as err:
        apply_overrides(Config(), ["train.stepz=5"])
    msg = str(err.value)
    assert "train.stepz" in msg
    for key in ("train.steps", "train.batch_size", "train.checkpoint_every", "train.out"):
        assert key in msg
    with pytest.raises(ConfigError, match="valid keys: .*optim.lr"):
        apply_overrides(Config(), ["optim.learning_rate=0.1"])
    with pytest.raises(ConfigError, match="valid keys: name, data, model, optim, train"):
        config_from_dict({"trian": {"steps": 1}})


def test_unknown_section() -> None:
    with pytest.raises(ConfigError, match="unknown config section.*sections: data, model, optim, train"):
        apply_overrides(Config(), ["trainer.steps=5"])
    with pytest.raises(ConfigError, match="unknown config section"):
        apply_overrides(Config(), ["train.steps.x=5"])


@pytest.mark.parametrize(
    ("override", "pattern"),
    [
        ("train.steps=abc", "train.steps must be of type int, got 'abc'"),
        ("train.steps=5.5", "train.steps must be of type int"),
        ("train.steps=true", "train.steps must be of type int"),
        ("train.steps=[5]", "train.steps must be of type int"),
        ("optim.lr=fast", "optim.lr must be of type float"),
        ("optim.lr=true", "optim.lr must be of type float"),
        ("train.progress=1", "train.progress must be of type bool"),
        ("data.name=5", "data.name must be of type str"),
        ("train.temperatures=0.5", "train.temperatures must be a list"),
        ("train.temperatures=[a, b]", "train.temperatures must be a list of numbers"),
        ("optim.betas=0.9", "optim.betas must be a list"),
        ("model.options=5", "model.options must be a mapping"),
        ("train=5", "train must be a mapping"),
    ],
)
def test_bad_value_types(override: str, pattern: str) -> None:
    with pytest.raises(ConfigError, match=pattern.replace("[", r"\[")):
        apply_overrides(Config(), [override])


@pytest.mark.parametrize(
    ("override", "choices"),
    [
        ("optim.optimizer=sgd", "adam, adamax"),
        ("optim.schedule=linear", "constant, cosine, exponential, step"),
        ("train.device=tpu", "auto, cpu, cuda"),
        ("train.precision=fp16", "auto, float32, bf16-mixed"),
    ],
)
def test_bad_choices_list_the_valid_ones(override: str, choices: str) -> None:
    key, value = override.split("=")
    with pytest.raises(ConfigError, match=f"{key} must be one of {choices}, got '{value}'"):
        apply_overrides(Config(), [override])


@pytest.mark.parametrize(
    "override", ["train.steps=0", "train.batch_size=-1", "train.eval_batch_size=0", "optim.lr=0", "optim.lr=-0.1"]
)
def test_non_positive_values_are_refused(override: str) -> None:
    with pytest.raises(ConfigError, match="must be positive"):
        apply_overrides(Config(), [override])


@pytest.mark.parametrize(
    "override",
    [
        "optim.lr=.nan",
        "optim.lr=.inf",
        "optim.betas=[1.5, 0.999]",
        "optim.betas=[0.9, -0.1]",
        "optim.betas=[0.9]",
        "optim.weight_decay=-1",
        "optim.ema_decay=2.0",
        "optim.grad_clip=-1",
    ],
)
def test_out_of_range_values_are_config_errors(override: str) -> None:
    """The module promises that bad values raise ConfigError: these reach torch (a raw
    ValueError traceback in the CLI) or silently train nonsense (EMA decay 2 extrapolates)."""
    with pytest.raises(ConfigError, match=override.split("=")[0].replace(".", r"\.")):
        apply_overrides(Config(), [override])


def test_config_errors_are_value_errors() -> None:
    assert issubclass(ConfigError, MsflowError) and issubclass(ConfigError, ValueError)


# ----------------------------------------------------------------------------- dataclasses


def test_tuple_fields_and_dict_round_trip() -> None:
    cfg = config_from_dict({"optim": {"betas": [0.5, 0.6]}, "train": {"temperatures": [0.1, 1]}})
    assert cfg.optim.betas == (0.5, 0.6) and cfg.train.temperatures == (0.1, 1.0)
    as_dict = config_to_dict(cfg)
    assert as_dict["optim"]["betas"] == [0.5, 0.6]  # YAML/JSON-ready lists
    assert yaml.safe_load(yaml.safe_dump(as_dict)) == as_dict
    assert config_from_dict(as_dict) == cfg
    assert config_from_dict(config_to_dict(Config())) == Config()


def test_configs_are_frozen() -> None:
    cfg = Config()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.train.steps = 3  # type: ignore[misc]
    changed = replace(cfg, train=replace(cfg.train, steps=3))
    assert changed.train.steps == 3 and cfg.train.steps == 2000


# ----------------------------------------------------------------------------- stored config


def test_checkpoint_stores_the_resolved_config(tmp_path: Path) -> None:
    cfg = apply_overrides(load_config("mnist5k-glow"), [*TINY, "train.steps=2", "train.checkpoint_every=1"])
    cfg = replace(cfg, train=replace(cfg.train, out=str(tmp_path / "run")))
    train(cfg)
    _, meta = load_checkpoint(tmp_path / "run" / "checkpoint.safetensors")
    # "auto" precision is stored as what it resolved to on this machine
    assert cfg.train.precision == "auto"
    cfg = replace(cfg, train=replace(cfg.train, precision=resolve_precision("auto", torch.device("cpu"))))
    assert meta["config"] == config_to_dict(cfg)
    assert config_from_dict(meta["config"]) == cfg
    assert meta["model_spec"] == {"name": cfg.model.name, "overrides": cfg.model.options}
    assert meta["step"] == 2
    _, stored, _ = load_run(tmp_path / "run")
    assert stored == cfg
    assert config_from_dict(yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())) == cfg
