"""Hostile checkpoint files, derived from a real one: pickles with code in them, random and
truncated bytes, forged safetensors headers, wrong tensors, wrong metadata.

Each variant says who must refuse it: every loader (``ALL``), or only resuming training
(``RESUME``: optimizer state and counters, which ``load_run`` does not read).
"""

from __future__ import annotations

import copy
import io
import json
import pickle
import random
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save

from msflow.train.checkpoint import FORMAT, load_checkpoint

from .formats import Unpickled

ALL, RESUME, LOAD = "all", "resume", "load"
# Refused by every loader, but resuming training refuses it cleanly only once loop.py's _resume
# checks the entries it reads (see checkpoint_checks.require).
ALL_PENDING = "all-pending"


@dataclass
class Variant:
    name: str
    data: bytes
    scope: str  # who must refuse it: ALL, ALL_PENDING, RESUME (training only) or LOAD (load_run only)


def forge(tensors: dict[str, torch.Tensor], meta: Any = None, raw_meta: str | None = None) -> bytes:
    """A safetensors file with msflow's header around ``tensors`` and ``meta``."""
    header = {"format": FORMAT, "meta": raw_meta if raw_meta is not None else json.dumps(meta)}
    return save({k: v.contiguous() for k, v in tensors.items()}, metadata=header)


def _first(tensors: dict[str, torch.Tensor], prefix: str, floating: bool = True) -> str:
    return next(k for k, v in tensors.items() if k.startswith(prefix) and v.is_floating_point() == floating)


def _not_safetensors(good: bytes, marker: Path, rng: random.Random) -> list[Variant]:
    payload = {"model/w": torch.ones(2), "evil": Unpickled(marker)}
    torch_file = io.BytesIO()
    torch.save(payload, torch_file)
    return [
        Variant("torch.save-with-reduce", torch_file.getvalue(), ALL),
        Variant("pickle-with-reduce", pickle.dumps(payload), ALL),
        Variant("pickle-protocol-0", pickle.dumps(payload, protocol=0), ALL),
        Variant("random-bytes", rng.randbytes(2000), ALL),
        Variant("empty", b"", ALL),
        Variant("seven-bytes", good[:7], ALL),
        Variant("truncated-half", good[: len(good) // 2], ALL),
        Variant("truncated-header", good[: 8 + rng.randrange(100)], ALL),
        Variant("huge-header-length", struct.pack("<Q", 2**63) + good[8:], ALL),
        Variant("header-length-past-end", struct.pack("<Q", len(good)) + good[8:], ALL),
        Variant("header-length-zero", struct.pack("<Q", 0) + good[8:], ALL),
        Variant(
            "header-not-json",
            good[:8] + b"#" * (struct.unpack("<Q", good[:8])[0]) + good[8 + struct.unpack("<Q", good[:8])[0] :],
            ALL,
        ),
    ]


def _bad_meta(tensors: dict[str, torch.Tensor], meta: dict) -> list[Variant]:
    out = [
        Variant("meta-not-json", forge(tensors, raw_meta="{not json"), ALL),
        Variant("meta-json-list", forge(tensors, [1, 2]), ALL),
        Variant("meta-json-string", forge(tensors, "meta"), ALL),
        Variant("meta-deep-nesting", forge(tensors, raw_meta="[" * 100_000 + "]" * 100_000), ALL),
    ]
    wrong = {
        "config": [[1], "glow", None, {"model": [1]}, {"optim": "adam"}, {"train": {"steps": "many"}}, {"bogus": 1}],
        "model_spec": ["glow", None, {}, {"name": 3, "overrides": {}}, {"name": "glow-mnist", "overrides": [1]}],
        "step": ["7", -1, 1.5, None, True, [3]],
        "optimizer": [None, [], {"param_groups": 1, "scalars": {}}, {"param_groups": [], "scalars": []}],
        "lr_scale": ["x", -1.0, 0],
        "bad_in_a_row": [-1, "0"],
        "results": [[1], "ok"],
    }
    for key, values in wrong.items():
        for value in values:
            changed = copy.deepcopy(meta)
            changed[key] = value
            out.append(Variant(f"meta-{key}={value!r}", forge(tensors, changed), ALL))
    return out


def _bad_tensors(tensors: dict[str, torch.Tensor], meta: dict) -> list[Variant]:
    out = []
    for prefix in ("model/", "ema/"):
        name = _first(tensors, prefix)
        for label, value in [
            ("int64", tensors[name].to(torch.int64)),
            ("int32", tensors[name].to(torch.int32)),
            ("float16", tensors[name].half()),
            ("bfloat16", tensors[name].bfloat16()),
            ("float64", tensors[name].double()),
            ("bool", tensors[name] > 0),
            ("scalar", torch.tensor(1.0)),
            ("reshaped", tensors[name].reshape(-1)),
            ("bigger", torch.zeros(tensors[name].numel() + 1)),
            ("nan", torch.full_like(tensors[name], float("nan"))),
            ("inf", torch.full_like(tensors[name], float("inf"))),
        ]:
            out.append(Variant(f"{name}:{label}", forge({**tensors, name: value}, meta), ALL))
        out.append(Variant(f"{name}:missing", forge({k: v for k, v in tensors.items() if k != name}, meta), ALL))
        out.append(Variant(f"{prefix}extra", forge({**tensors, f"{prefix}extra.weight": torch.ones(2)}, meta), ALL))
        both = {k: v for k, v in tensors.items() if not k.endswith(name[len(prefix) :])}
        out.append(Variant(f"{name}:missing-in-both", forge(both, meta), ALL))
    out.append(Variant("unknown-prefix", forge({**tensors, "junk": torch.ones(1)}, meta), ALL))
    for rng_name in ("rng/noise", "rng/torch"):
        for label, value in [
            ("zeros", torch.zeros(5056, dtype=torch.uint8)),
            ("short", tensors[rng_name][:100]),
            ("float", tensors[rng_name].float()),
        ]:
            out.append(Variant(f"{rng_name}:{label}", forge({**tensors, rng_name: value}, meta), ALL))
    return out


def _bad_training_state(tensors: dict[str, torch.Tensor], meta: dict) -> list[Variant]:
    """Damage only resuming notices: optimizer state, counters, random states."""
    moment = _first(tensors, "optim/")
    out = [
        Variant(f"{moment}:{label}", forge({**tensors, moment: value}, meta), RESUME)
        for label, value in [
            ("int64", tensors[moment].to(torch.int64)),
            ("float16", tensors[moment].half()),
            ("reshaped", tensors[moment].reshape(-1, 1)),
            ("nan", torch.full_like(tensors[moment], float("nan"))),
        ]
    ]
    out.append(Variant(f"{moment}:missing", forge({k: v for k, v in tensors.items() if k != moment}, meta), RESUME))
    out.append(Variant("optim/999/exp_avg:extra", forge({**tensors, "optim/999/exp_avg": torch.ones(1)}, meta), RESUME))
    out.append(Variant("optim/x/exp_avg:bad-name", forge({**tensors, "optim/x/exp_avg": torch.ones(1)}, meta), RESUME))
    group = meta["optimizer"]["param_groups"][0]
    for key, value in [
        ("eps", "x"),
        ("lr", None),
        ("betas", [0.9]),
        ("params", [0]),
        ("params", "all"),
        ("amsgrad", 3),
    ]:
        changed = copy.deepcopy(meta)
        changed["optimizer"]["param_groups"][0] = {**group, key: value}
        out.append(Variant(f"param_groups.{key}={value!r}", forge(tensors, changed), RESUME))
    changed = copy.deepcopy(meta)
    changed["optimizer"]["param_groups"].append(group)
    out.append(Variant("param_groups:extra-group", forge(tensors, changed), RESUME))
    changed = copy.deepcopy(meta)
    changed["optimizer"]["scalars"] = {"0/step": "x"}
    out.append(Variant("scalars:0/step='x'", forge(tensors, changed), RESUME))
    for key in ("config", "optimizer", "step"):
        changed = {k: v for k, v in meta.items() if k != key}
        out.append(Variant(f"meta-{key}:missing", forge(tensors, changed), ALL_PENDING if key == "config" else RESUME))
    for name in ("rng/noise", "rng/torch"):
        out.append(Variant(f"{name}:missing", forge({k: v for k, v in tensors.items() if k != name}, meta), RESUME))
    return out


def variants(source: Path, marker: Path, seed: int = 0) -> list[Variant]:
    """Every hostile variant of the msflow checkpoint at ``source``."""
    rng = random.Random(seed)
    tensors, meta = load_checkpoint(source)
    good = source.read_bytes()
    return [
        *_not_safetensors(good, marker, rng),
        *_bad_meta(tensors, meta),
        *_bad_tensors(tensors, meta),
        *_bad_training_state(tensors, meta),
    ]


# Metadata values of the wrong type, and which of them a key would still accept.
_POOL = ["x", -1, 1.5, None, True, [1], {"a": 1}, 2**70, float("nan"), "", []]
_VALID = {
    "config": lambda v: False,  # any other mapping is an unknown or a different config
    "model_spec": lambda v: False,
    "step": lambda v: isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 2**63,
    "optimizer": lambda v: False,
    "lr_scale": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and 0 < v < float("inf"),
    "bad_in_a_row": lambda v: isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 2**63,
    "rollbacks": lambda v: isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 2**63,
    "train_seconds": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v < float("inf"),
    "seed": lambda v: isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 2**32,
    "results": lambda v: v is None or isinstance(v, dict),
}
_DTYPES = [torch.int8, torch.int32, torch.int64, torch.uint8, torch.float16, torch.bfloat16, torch.float64, torch.bool]


def random_variants(source: Path, count: int, seed: int = 0) -> list[Variant]:
    """``count`` seeded random corruptions: a weight of another dtype or shape, or a metadata
    entry of the wrong type; every loader must refuse each."""
    rng = random.Random(seed)
    tensors, meta = load_checkpoint(source)
    weights = sorted(k for k, v in tensors.items() if k.startswith(("model/", "ema/")) and v.is_floating_point())
    out = []
    while len(out) < count:
        if rng.random() < 0.5:
            name = rng.choice(weights)
            old = tensors[name]
            if rng.random() < 0.5:
                new, label = old.to(rng.choice(_DTYPES)), "dtype"
            else:
                new, label = (
                    torch.zeros(rng.choice([(), (old.numel() + 1,), (*old.shape, 1), (1,) + tuple(old.shape)])),
                    "shape",
                )
            if (new.dtype, new.shape) == (old.dtype, old.shape):
                continue
            out.append(
                Variant(f"{name}:{label}={new.dtype}{tuple(new.shape)}", forge({**tensors, name: new}, meta), ALL)
            )
        else:
            key, value = rng.choice(sorted(_VALID)), rng.choice(_POOL)
            if _VALID[key](value):
                continue
            changed = {**meta, key: value}
            out.append(Variant(f"meta-{key}={value!r}", forge(tensors, changed), ALL))
    return out


# Model options a stored spec may be forged with; none can allocate more than a few MB or loop
# long: sizes are checked from the spec before anything is built (msflow._budget).
BAD_OPTIONS = {
    "hidden": ["abc", -1, 0, 2**40, 1e9, 1e20, "1e20", 10**12, None, [8], {"a": 1}, float("nan"), 9],
    "steps": ["abc", -1, 0, None, [1], 2.5, 2, 10**9],
    "image_shape": [[1, 8], [1, -8, 8], "1x8x8", [1, 8, 8, 8], [3, 8, 8], [1, 7, 7], None, [1, 2**20, 2**20]],
    "bogus": [1],
}


def forged_specs(source: Path) -> list[Variant]:
    """The real weights with model options that are wrong, in both the spec and the stored config
    (so they agree) or in the spec alone: ``load_run`` must refuse each."""
    tensors, meta = load_checkpoint(source)
    out = []
    for key, values in BAD_OPTIONS.items():
        for value in values:
            changed = copy.deepcopy(meta)
            changed["model_spec"]["overrides"][key] = value
            out.append(Variant(f"model_spec.overrides.{key}={value!r}", forge(tensors, changed), LOAD))
            changed["config"]["model"]["options"][key] = value
            out.append(Variant(f"model.options.{key}={value!r} in both", forge(tensors, changed), LOAD))
    return out
