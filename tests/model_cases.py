"""Every registered preset, and every option that changes a family's map, built tiny.

``tests/test_model_conformance.py`` holds them all to one suite (DESIGN.md section 8). Two kinds
of case:

- :func:`build_preset`: each registered preset with its own architecture and image shape, its
  widths narrowed to 4 and one step per level (:data:`NARROW`); used for the checks that are
  cheap at any size (inverse, samples, bf16).
- :data:`JACOBIAN_CASES`: each family with every option that changes its map, at a few dozen
  dimensions, so the autograd Jacobian of the whole model is cheap.

Which checks apply is read from what a model declares (``invertible``, ``conditional``, ``task``,
``n_bits``) and what the registry records (``cnf``), never from a preset's name. What narrows a
preset is looked up by the module of the builder it registered: each family names its widths
its own way, and an option is given only to a builder that takes it.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

import msflow
from msflow.models import _registry, model_capabilities

F64 = torch.float64

RK4 = {"method": "rk4", "step_size": 0.125}
FAST_CNF = {"end_time": 0.5, "adjoint": False, "solver": {"train": RK4, "eval": RK4}}
"""A CNF's fixed-step solve: deterministic, identical forwards and backwards, no adjoint."""

NARROW: dict[str, dict[str, Any]] = {
    "glow": {"steps": 1, "hidden": 4},
    "balanced": {"steps": 1, "hidden": 4, "bins": 4},
    "marscf": {"steps": 1, "hidden": 4, "mixtures": 2, "lstm_hidden": 4, "lstm_layers": 1},
    "mrcnf": {"steps": 1, "hidden": 4, **FAST_CNF},
    "cflow": {
        "steps": 1,
        "hidden": 4,
        "features": 4,
        "blocks": 1,
        "growth": 4,
        "vgg": (4, 4, 4),
        "size": 16,
        "dequantizer_steps": 1,
    },
    "factorized": {"features": 4, "blocks": 1, "growth": 4, "vgg": (4, 4, 4), "size": 16},
    "tarflow": {"steps": 2, "layers": 1, "hidden": 8, "heads": 2},
    "caflow": {
        "hidden": 4,
        "cond_hidden": 4,
        "cond_steps": 1,
        "target_steps": 1,
        "flow_steps": 1,
        "transitions": 1,
        "dequant_steps": 1,
    },
}
"""Tiny widths and depths by the module (family) whose builder a preset registered."""

SMALLER: dict[str, dict[str, Any]] = {
    "balanced-celeba1024": {"image_shape": (3, 256, 256)},  # its 8 levels need sides of 256
    "mrcnf-imagenet128": {"image_shape": (3, 32, 32)},  # 4 resolutions still fit
}
"""Presets too large to run at their own size keep their architecture on smaller images."""


def family(name: str) -> str:
    """The module (``glow``, ``caflow``, ...) of the builder that preset ``name`` registered."""
    builder = _registry._MODELS[name]
    return getattr(builder, "func", builder).__module__.rsplit(".", 1)[-1]


def _takes(name: str, option: str) -> bool:
    parameters = inspect.signature(_registry._MODELS[name]).parameters
    return option in parameters or any(p.kind is p.VAR_KEYWORD for p in parameters.values())


def narrow_options(name: str) -> dict[str, Any]:
    """The options that shrink preset ``name`` to a tiny model of the same architecture."""
    narrow = {k: v for k, v in NARROW[family(name)].items() if _takes(name, k)}
    if model_capabilities(name).cnf:  # a Hutchinson trace: exact would cost one pass per dimension
        narrow["divergence"] = "hutchinson"
    return {**narrow, **SMALLER.get(name, {})}


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def batch(model: nn.Module, n: int, seed: int) -> tuple[Tensor, Tensor | None]:
    """Integer targets of the model's shape and ``n_bits`` (0/1 masks when 1 bit), and uint8
    conditions of its ``cond_shape`` for a conditional model (``None`` otherwise)."""
    gen = seeded(seed)
    x = torch.randint(0, 2**model.n_bits, (n, *model.image_shape), generator=gen, dtype=torch.uint8)
    if not model.conditional:
        return x, None
    return x, torch.randint(0, 256, (n, *model.cond_shape), generator=gen, dtype=torch.uint8)


def continuous(model: nn.Module, x: Tensor, cond: Tensor | None, seed: int) -> Tensor:
    """One dequantization draw of ``x``: what ``encode`` reads (the conditional ones' noise may read ``cond``)."""
    dtype = next(model.parameters()).dtype
    if model.conditional:
        return model.dequantize(x, cond, seeded(seed)).to(dtype)
    return model.dequantizer(x, generator=seeded(seed), dtype=dtype)[0]


def initialise(model: nn.Module, randomize: Callable, std: float, dtype: torch.dtype) -> nn.Module:
    """``model`` in ``dtype`` after ActNorm's data-dependent start, every parameter perturbed (the
    coupling nets and priors start as identities, which would make every check vacuous)."""
    model = model.to(dtype)
    with torch.no_grad():
        model.bits_per_dim(*batch(model, 4, 100), generator=seeded(101))
    randomize(model, std=std, seed=1)
    return model.eval()


def build_preset(name: str, randomize: Callable, dtype: torch.dtype = F64) -> nn.Module:
    """Registered preset ``name``, narrowed (:func:`narrow_options`), initialised and perturbed."""
    torch.manual_seed(0)
    return initialise(msflow.create_model(name, **narrow_options(name)), randomize, 0.02, dtype)


EXACT = {"divergence": "exact"}
GREY8 = {"image_shape": (1, 8, 8)}
RGB4 = {"image_shape": (3, 4, 4), "levels": 2}
CAFLOW4 = {"size": 4, "levels": 2}

JACOBIAN_CASES: dict[str, tuple[str, dict[str, Any]]] = {
    # Glow and RealNVP (their option grid is in tests/test_models.py)
    "glow": ("glow-mnist", GREY8),
    "realnvp-logit": ("realnvp-cifar10", RGB4),
    # Liao & He: ResNet or ConvNet couplings, 1/2 or 3/4 splits, centre or logit, 8 or 5 bits
    "balanced-resnet-half": ("balanced-mnist", GREY8),
    "balanced-convnet-three-quarters": ("balanced-large", RGB4),
    "balanced-logit-5bit": ("balanced-celeba1024", {**RGB4, "preprocess": "logit", "n_bits": 5}),
    # mAR-SCF: both couplings with both priors
    "marscf-mixlogcdf-mar": ("marscf-mnist", GREY8),
    "marscf-mixlogcdf-gaussian": ("marscf-mnist", {**GREY8, "prior": "gaussian"}),
    "marscf-affine-mar": ("marscf-mnist", {**GREY8, "coupling": "affine"}),
    "marscf-affine-gaussian": ("marscf-cifar10", {**RGB4, "coupling": "affine", "prior": "gaussian"}),
    # MRCNF: CNF or coupling levels, each pyramid, logit or centre, multi-resolution noise, normaliser
    "mrcnf-cnf": ("mrcnf-mnist", {"image_shape": (1, 4, 4), "resolutions": 2, **EXACT}),
    "mrcnf-cnf-normalized-details": (
        "mrcnf-mnist",
        {"image_shape": (1, 4, 4), "resolutions": 2, "normalize_details": True, **EXACT},
    ),
    "mrcnf-rnode": ("mrcnf-mnist5k", {"image_shape": (1, 4, 4), "resolutions": 1, **EXACT}),
    "mrcnf-coupling-unimodular": ("mrcnf-mnist", {**GREY8, "density": "coupling"}),
    "mrcnf-coupling-haar-center": (
        "mrcnf-mnist",
        {**GREY8, "density": "coupling", "pyramid": "haar", "preprocess": "center"},
    ),
    "mrcnf-coupling-orthogonal-noise": (
        "mrcnf-cifar10",
        {
            "image_shape": (3, 4, 4),
            "resolutions": 2,
            "density": "coupling",
            "pyramid": "orthogonal",
            "multires_noise": True,
        },
    ),
    # TarFlow: patch tokens in both orders, scaled or logit input; as MRCNF's level density
    "tarflow": ("tarflow-digits8", {"image_shape": (1, 4, 4)}),
    "tarflow-logit-rgb": ("tarflow-cifar10", {"image_shape": (3, 4, 4), "preprocess": "logit", "steps": 3}),
    "mrcnf-tarflow": ("mrcnf-mnist", {"image_shape": (1, 4, 4), "resolutions": 2, "density": "tarflow"}),
    # Winkler et al.: residual super-resolution (bounded scales) or not (sigmoid), x2 and x4; segmentation
    "cflow-sr2": ("cflow-sr2", {"size": 8}),
    "cflow-sr4": ("cflow-sr4", {"size": 8}),
    "cflow-sr2-plain-sigmoid": ("cflow-sr2-paper", {"size": 8, "residual": False}),
    "cflow-seg-binary-additive": ("cflow-seg", {"size": 8}),
    "cflow-seg-uniform-affine": ("cflow-seg", {"size": 8, "dequantization": "uniform", "coupling": "affine"}),
    # CAFLOW: each task, autoregressive or dual-glow, shared weights, residual or not, both scales
    "caflow-colorize": ("caflow-colorize", CAFLOW4),
    "caflow-inpaint": ("caflow-inpaint", CAFLOW4),
    "caflow-sketch": ("caflow-sketch", CAFLOW4),
    "caflow-superres": ("caflow-sr4", {"size": 8, "levels": 2, "scale": 2}),
    "caflow-shared": ("caflow-colorize", {"size": 8, "levels": 3, "share_weights": True}),
    "caflow-dual-glow": ("caflow-inpaint", {**CAFLOW4, "factorization": "dual-glow"}),
    "caflow-variational-bounded": (
        "caflow-colorize",
        {**CAFLOW4, "dequantization": "variational", "coupling_scale": "bounded", "residual": False},
    ),
}
"""Case id -> (preset, options over its narrowed ones): every option that changes a family's map."""


def build_case(case: str, randomize: Callable) -> nn.Module:
    """The float64 model of Jacobian case ``case``, initialised and perturbed (std 0.1)."""
    name, options = JACOBIAN_CASES[case]
    torch.manual_seed(0)
    model = msflow.create_model(name, **{**narrow_options(name), **options})
    return initialise(model, randomize, 0.1, F64)


RUN = [
    "train.batch_size=4",
    "train.eval_images=8",
    "train.eval_every=0",
    "train.max_seconds=0",
    "train.num_samples=1",
    "train.temperatures=[0.7]",
    "train.progress=false",
    "train.device=cpu",
    "train.precision=float32",
    "optim.warmup_steps=1",
]
"""Overrides that make any shipped config's run seconds long (the model is narrowed apart)."""


def narrow_overrides(name: str) -> list[str]:
    """:func:`narrow_options` of preset ``name`` as dotted overrides, its image size left to the data."""
    options = {k: v for k, v in narrow_options(name).items() if k not in ("size", "image_shape")}
    return [f"model.options.{k}={json.dumps(v)}" for k, v in options.items()]  # JSON is YAML
