"""CUDA correctness: every registered model computes on the GPU what it computes on the CPU.

These tests need a CUDA device; on a CPU-only machine (the project's CI) they are skipped, and
they are run on a GPU machine with ``python -m pytest tests/test_cuda.py``. For every preset of
``msflow.list_models()``, built tiny as in its own test module:

- bits/dim on CUDA equals bits/dim on the CPU for the same weights and the same dequantization
  noise (drawn from a CPU generator, which msflow supports on every device), TF32 off;
- a training step on CUDA, in float32 and in bf16-mixed, gives finite gradients on the device;
- the flow inverts on CUDA (``max |v - f^-1(f(v))|`` small) and samples land on the device;
- the training command runs on CUDA end to end for one model of each family.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch
from test_caflow_cli import COMMON as CAFLOW_COMMON
from test_caflow_cli import OPTIONS as CAFLOW_OPTIONS
from test_cflow import TINY as CFLOW_TINY
from test_models import SMALLER
from test_models import TINY as UNCONDITIONAL_TINY
from test_mrcnf_cli import OPTIONS as MRCNF_OPTIONS
from tiny import TINY as TINY_RUN
from torch import Tensor, nn

import msflow
from msflow.cli import main
from msflow.data import ImageDataset
from msflow.data.pairs import PairedDataset
from msflow.metrics.invertibility import reconstruction_errors
from msflow.nn import subnet_precision
from msflow.runs import load_run

# MSFLOW_TEST_DEVICE=cpu runs the same checks CPU against CPU, to try the tests themselves out.
DEVICE = os.environ.get("MSFLOW_TEST_DEVICE", "cuda")
pytestmark = pytest.mark.skipif(DEVICE == "cuda" and not torch.cuda.is_available(), reason="needs a CUDA device")

CAFLOW_TINY = {"size": 16, "levels": 2, "hidden": 8, "cond_hidden": 8, "cond_steps": 1, "target_steps": 1}


def tiny_options(name: str) -> dict:
    """The options each model's own test module builds it with (seconds-long on the CPU)."""
    if name.startswith("caflow-"):
        return {**CAFLOW_TINY, "flow_steps": 1}
    if name in CFLOW_TINY:
        return CFLOW_TINY[name]
    return {**UNCONDITIONAL_TINY, **SMALLER.get(name, {})}


def batch(model: nn.Module, n: int, seed: int) -> tuple[Tensor, Tensor | None]:
    """Random targets of the model's shape (0/1 masks for segmentation) and conditions, if any."""
    gen = torch.Generator().manual_seed(seed)
    dequantizer = getattr(model, "dequantizer", None)
    high = 2 if getattr(model, "task", None) == "segment" else getattr(dequantizer, "levels", 256)
    x = torch.randint(0, high, (n, *model.image_shape), generator=gen, dtype=torch.uint8)
    cond_shape = getattr(model, "cond_shape", None)
    cond = None if cond_shape is None else torch.randint(0, 256, (n, *cond_shape), generator=gen, dtype=torch.uint8)
    return x, cond


def on(device: str, *tensors: Tensor | None) -> list[Tensor | None]:
    return [None if t is None else t.to(device) for t in tensors]


@pytest.fixture(autouse=True)
def _exact_matmuls() -> Iterator[None]:
    # CPU and GPU are compared in true float32; TF32 would round products to 10 mantissa bits.
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


@pytest.fixture(scope="module", params=msflow.list_models())
def pair(request: pytest.FixtureRequest, randomize: Callable) -> tuple[nn.Module, nn.Module]:
    """The tiny, initialised, perturbed model of one preset on the CPU and its copy on CUDA."""
    torch.manual_seed(0)
    cpu = msflow.create_model(request.param, **tiny_options(request.param))
    x, cond = batch(cpu, 4, 100)
    with torch.no_grad():  # ActNorm's data-dependent start, on the CPU
        cpu.bits_per_dim(x, cond, torch.Generator().manual_seed(101))
    randomize(cpu, std=0.02, seed=1)
    return cpu.eval(), copy.deepcopy(cpu).to(DEVICE).eval()


def test_bits_per_dim_on_cuda_equals_the_cpu(pair: tuple[nn.Module, nn.Module]) -> None:
    cpu, gpu = pair
    x, cond = batch(cpu, 3, 0)
    with torch.no_grad():
        ref = cpu.bits_per_dim(x, cond, torch.Generator().manual_seed(7))
        got = gpu.bits_per_dim(*on(DEVICE, x, cond), torch.Generator().manual_seed(7))
    assert got.device.type == DEVICE
    # float32 on both; the devices sum in different orders (adaptive ODE solvers may also take
    # slightly different steps), so agreement is to float32 rounding, not bit for bit.
    torch.testing.assert_close(got.cpu(), ref, atol=2e-4, rtol=2e-5)


@pytest.mark.parametrize("precision", ["float32", "bf16-mixed"])
def test_a_training_step_on_cuda_has_finite_gradients(pair: tuple[nn.Module, nn.Module], precision: str) -> None:
    _, gpu = pair
    model = copy.deepcopy(gpu).train()
    x, cond = on(DEVICE, *batch(model, 4, 1))
    loss_fn = getattr(model, "training_bits_per_dim", model.bits_per_dim)
    with subnet_precision(precision):
        loss = loss_fn(x, cond, torch.Generator(device=DEVICE).manual_seed(3)).mean()
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad and p.grad is not None]
    assert torch.isfinite(loss) and grads
    assert all(g.device.type == DEVICE and g.dtype == torch.float32 and torch.isfinite(g).all() for g in grads)
    assert sum(g.abs().sum().item() for g in grads) > 0


def test_the_flow_inverts_and_samples_on_cuda(pair: tuple[nn.Module, nn.Module]) -> None:
    _, gpu = pair
    x, cond = batch(gpu, 3, 2)
    if hasattr(gpu, "encode"):  # factorized baselines are not flows
        data = ImageDataset(x) if cond is None else PairedDataset(x, cond, task=gpu.task)
        assert reconstruction_errors(gpu, data).max() < 1e-3
    if not hasattr(gpu, "sample"):
        return
    images = gpu.sample(2, 0.5, *([] if cond is None else [cond[:1].to(DEVICE)]))
    assert images.device.type == DEVICE and images.dtype == torch.uint8
    assert images.shape[1:] == gpu.image_shape


RUNS = {
    "glow-bf16": ["mnist5k-glow", *TINY_RUN, "train.steps=3", "train.precision=bf16-mixed"],
    "mrcnf": ["mnist5k-mrcnf", *TINY_RUN, MRCNF_OPTIONS, "train.steps=2"],
    "caflow": ["photos-colorize-caflow", *CAFLOW_COMMON, *CAFLOW_OPTIONS],
}


@pytest.mark.parametrize("name", RUNS)
def test_training_runs_on_cuda_and_its_checkpoint_loads(name: str, tmp_path: Path) -> None:
    args = [a for a in RUNS[name] if not a.startswith("train.device=")]
    assert main(["train", *args, f"train.device={DEVICE}", "train.max_seconds=0", "--out", str(tmp_path / name)]) == 0
    model, cfg, meta = load_run(tmp_path / name, DEVICE)
    assert cfg.train.device == DEVICE and next(model.parameters()).device.type == DEVICE
    assert meta["step"] >= 2
