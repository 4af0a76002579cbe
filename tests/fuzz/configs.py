"""Config cases for fuzzing: a wrong value for every field of the config dataclasses, unknown
keys at every level, malformed YAML, and malformed or bad dotted overrides."""

from __future__ import annotations

import random
from dataclasses import dataclass, fields

import yaml

from msflow.train.config import Config, DataConfig, ModelConfig, OptimConfig, TrainConfig

SECTIONS = {"data": DataConfig, "model": ModelConfig, "optim": OptimConfig, "train": TrainConfig}
NAN, INF = float("nan"), float("inf")


@dataclass
class Field:
    section: str  # "" for the top-level name
    name: str
    base: str  # int, float, str, bool, dict, tuple
    optional: bool

    @property
    def key(self) -> str:
        return f"{self.section}.{self.name}" if self.section else self.name


def config_fields() -> list[Field]:
    """Every field of every config dataclass, with its base type from the annotation."""
    out = [Field("", "name", "str", False)]
    for section, cls in SECTIONS.items():
        for f in fields(cls):
            typ = str(f.type)
            base = next(b for b in ("tuple", "dict", "bool", "int", "float", "str") if typ.startswith(b))
            out.append(Field(section, f.name, base, "None" in typ))
    return out


_WRONG_TYPE = {
    "int": ["abc", "12", [1], {"a": 1}, 1.5, True, "1e3"],
    "float": ["abc", [1.0], {"a": 1}, True, "1.0.0"],
    "str": [1, 1.5, [1], {"a": 1}, True],
    "bool": ["abc", 1, 0, [True], {"a": 1}, "yes"],
    "dict": ["abc", [1], 1, True, 1.5],
    "tuple": ["abc", 1, {"a": 1}, [True], [None], ["abc"], [[1]]],
}
# Right type, impossible value: every numeric field of msflow's configs refuses these.
_OUT_OF_RANGE = {
    "int": [-1, -(2**40), 2**70, 10**400],
    "float": [-1, -1.5, NAN, INF, -INF, 10**400],
    "tuple": [[NAN, 0.5], [-1, 0.5], [INF], [10**400, 0.5], [0.5, -0.5, NAN]],
}


def bad_values(field: Field) -> list[object]:
    """Values ``field`` must refuse; None counts only where the field is not optional."""
    values = list(_WRONG_TYPE[field.base]) + list(_OUT_OF_RANGE.get(field.base, []))
    if not field.optional:
        values.append(None)
    if field.key == "train.num_samples":
        values.append(10**6)  # a grid no memory holds
    return values


def nested(field: Field, value: object) -> dict:
    return {field.section: {field.name: value}} if field.section else {field.name: value}


def unknown_key_cases() -> list[tuple[dict, str]]:
    """``(config mapping, the unknown key the message must name)`` at every level."""
    cases: list[tuple[dict, str]] = [
        ({"bogus": 1}, "bogus"),
        ({"Train": {}}, "Train"),
        ({"optimizer": {}}, "optimizer"),
    ]
    for section, cls in SECTIONS.items():
        first = fields(cls)[0].name
        for name in ("bogus", first.upper(), first + "s", "", "__class__"):
            cases.append(({section: {name: 1}}, f"{section}.{name}"))
        cases.append(({section: {1: 2}}, f"{section}.1"))
        cases.append(({section: {None: 2}}, f"{section}.None"))
    return cases


_MALFORMED = [
    "a: [",
    "{",
    "train: {steps: 1",
    "- - -",
    ": :",
    "train:\n\tsteps: 1",
    "name: 'unterminated",
    "%YAML 9.9\n---\na: 1",
    "a: !!python/object:os.system x",
    "a: !!python/object/apply:os.system ['touch x']",
    "train: &x [*x]",
    "model: {options: &o {deep: *o}}",
    "[" * 2000 + "]" * 2000,
    "train: {steps: 1}\ntrain: {steps: 2}\n---\nsecond: document",
    "[1, 2]",
    "42",
    "'just text'",
    "true",
    "- train",
    "train: {date: 2020-01-01}",
    "model: {options: {when: 2020-01-01}}",
    "model: {options: {blob: !!binary AAAA}}",
    "model: {options: {x: .nan}}",
]


def malformed_yaml(rng: random.Random, count: int) -> list[bytes]:
    """The fixed malformed texts, then random ones: YAML punctuation soup and random bytes."""
    out = [text.encode() for text in _MALFORMED]
    alphabet = "{}[]:-,&*!|>'\"%@`#?\n\t train steps 0.5 name"
    while len(out) < count:
        if rng.random() < 0.2:
            out.append(rng.randbytes(rng.randint(1, 64)))
        else:
            out.append("".join(rng.choice(alphabet) for _ in range(rng.randint(1, 40))).encode())
    return out


def yaml_parses_to_nothing(data: bytes) -> bool:
    """Whether ``data`` is valid YAML for an empty config (the defaults are then correct)."""
    try:
        return not yaml.safe_load(data.decode("utf-8"))
    except (UnicodeDecodeError, yaml.YAMLError, RecursionError):
        return False


def override_cases(rng: random.Random, count: int) -> list[tuple[str, str]]:
    """``(override, what the message must name)``: unknown keys, bad values, bad syntax."""
    cases = [
        ("train.steps", "train.steps"),
        ("=1", "=1"),
        ("train.=1", "train.=1"),
        (".steps=1", ".steps=1"),
        ("train..steps=1", "train..steps=1"),
        ("train.steps.x=1", "train.steps.x"),
        ("bogus.steps=1", "bogus.steps"),
        ("bogus=1", "bogus"),
        ("train=1", "train"),
        ("model.options=[1]", "model.options"),
        ("train.steps=[", "train.steps"),
        ("train.steps={", "train.steps"),
        ("train.steps=!!python/object:os.system x", "train.steps"),
    ]
    fields_ = [f for f in config_fields() if f.section]
    while len(cases) < count:
        f = rng.choice(fields_)
        if rng.random() < 0.3:
            name = rng.choice(["bogus", f.name + "x", f.name.upper(), "steps_"])
            cases.append((f"{f.section}.{name}=1", f"{f.section}.{name}"))
            continue
        value = rng.choice(bad_values(f))
        text = yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()
        cases.append((f"{f.section}.{f.name}={text}", f.key))
    return cases


def default_config() -> Config:
    return Config()
