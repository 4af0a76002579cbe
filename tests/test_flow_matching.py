"""Conditional flow matching (`msflow.transforms.flow_matching`, `train.objective=flow_matching`)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from tiny import TINY
from torch import Tensor, nn

from msflow import create_model
from msflow.cli import main
from msflow.core import FlowSequential
from msflow.errors import ConfigError
from msflow.nn.odefunc import ConvVectorField
from msflow.train.objective import make_objective
from msflow.transforms import CNF
from msflow.transforms.flow_matching import flow_matching_loss
from runs import read_metrics

EXACT = {"method": "dopri5", "rtol": 1e-5, "atol": 1e-5}


class Recorder(nn.Module):
    """A field that returns ``a x + b`` and remembers the times and conditions it was called with."""

    def __init__(self, a: float, b: float, cond_channels: int = 0) -> None:
        super().__init__()
        self.a, self.b, self.cond_channels = a, b, cond_channels
        self.calls: list[tuple[Tensor, Tensor | None]] = []

    def forward(self, t: Tensor, x: Tensor, cond: Tensor | None = None) -> Tensor:
        self.calls.append((t.flatten().clone(), cond))
        return self.a * x + self.b


def test_loss_is_the_squared_error_to_the_straight_path_velocity_of_each_block_segment() -> None:
    fields = [Recorder(0.3, -1.0), Recorder(-0.7, 2.0)]
    blocks = [CNF(fields[0], end_time=1.0), CNF(fields[1], end_time=3.0)]  # one ODE on [0, 4]
    x0 = torch.randn(64, 2, 3, 3, dtype=torch.float64)
    loss = flow_matching_loss(blocks, x0, noise_std=0.5, generator=torch.Generator().manual_seed(7))

    # Replay the same draws: eps, then one local time per block.
    gen = torch.Generator().manual_seed(7)
    x1 = 0.5 * torch.randn(x0.shape, generator=gen, dtype=x0.dtype)
    velocity = (x1 - x0) / 4.0
    expected = torch.zeros(64, dtype=x0.dtype)
    for start, block, field in ((0.0, blocks[0], fields[0]), (1.0, blocks[1], fields[1])):
        local = torch.rand(64, generator=gen, dtype=x0.dtype) * block.end_time
        (seen_t, _) = field.calls[0]
        assert torch.equal(seen_t, local)  # the field sees its own local time
        assert 0 <= local.min() and local.max() < block.end_time
        frac = ((start + local) / 4.0).view(-1, 1, 1, 1)
        x_t = (1 - frac) * x0 + frac * x1
        expected += (field.a * x_t + field.b - velocity).pow(2).flatten(1).mean(1)
    assert torch.allclose(loss, expected, rtol=1e-12, atol=0)


def test_conditional_blocks_need_the_condition_and_only_cnf_blocks_are_accepted() -> None:
    block = CNF(ConvVectorField(2, hidden=(4,), cond_channels=1))
    with pytest.raises(ValueError, match="cond"):
        flow_matching_loss([block], torch.randn(2, 2, 4, 4))
    cond = torch.randn(2, 1, 4, 4, requires_grad=True)
    block.field.out.conv.weight.data.normal_()
    flow_matching_loss([block], torch.randn(2, 2, 4, 4), cond).sum().backward()
    assert cond.grad is not None and cond.grad.abs().sum() > 0  # the condition reaches the field
    with pytest.raises(TypeError, match="density=cnf"):
        flow_matching_loss([nn.Identity()], torch.randn(2, 2, 4, 4))
    with pytest.raises(ValueError, match="at least one"):
        flow_matching_loss([], torch.randn(2, 2, 4, 4))


def gaussian_nll_per_dim(flow: FlowSequential, x: Tensor) -> float:
    flow.eval()
    with torch.no_grad():
        z, logdet = flow(x)
    return ((0.5 * z.pow(2) + 0.5 * math.log(2 * math.pi)).flatten(1).sum(1) - logdet).mean().item() / x[0].numel()


def test_training_by_flow_matching_gives_the_data_density_when_evaluated_by_the_ode() -> None:
    # Data N(2, 0.5^2) per pixel: its entropy, 0.5 log(2 pi e 0.25) = 0.726 nats/dim, is the best NLL.
    torch.manual_seed(0)
    blocks = [CNF(ConvVectorField(1, hidden=(32, 32)), divergence="exact", solver={"eval": EXACT}) for _ in range(2)]
    flow = FlowSequential(*blocks)
    opt = torch.optim.Adam(flow.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(0)
    test = 2 + 0.5 * torch.randn(500, 1, 2, 2, generator=torch.Generator().manual_seed(1))
    before = gaussian_nll_per_dim(flow, test)
    for _ in range(600):
        loss = flow_matching_loss(blocks, 2 + 0.5 * torch.randn(128, 1, 2, 2, generator=gen), generator=gen).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = gaussian_nll_per_dim(flow, test)
    entropy = 0.5 * math.log(2 * math.pi * math.e * 0.25)
    assert before > 3.0
    assert entropy - 0.05 < after < entropy + 0.1


def test_multires_level_losses_use_each_levels_data_condition_and_base() -> None:
    model = create_model("mrcnf-mnist", image_shape=(1, 8, 8), resolutions=2, steps=2, hidden=4, multires_noise=True)
    x = torch.randint(0, 256, (3, 1, 8, 8), dtype=torch.uint8)
    losses = model.level_flow_matching_losses(x, torch.Generator().manual_seed(3))
    assert [tuple(v.shape) for v in losses] == [(3,), (3,)]
    # The same draws by hand: dequantize, decompose, then each level's chain in order.
    gen = torch.Generator().manual_seed(3)
    v, _ = model._dequantize(x, gen)
    images, details, _ = model.decompose(v)
    detail = flow_matching_loss(
        model.level_cnf_blocks(0)[1], details[0], model._condition(images[1], 0), model.prior_stds[0], gen
    )
    top = flow_matching_loss(
        model.level_cnf_blocks(1)[1], model.top_preprocess(images[1])[0], None, model.prior_stds[1], gen
    )
    assert torch.allclose(losses[0], detail) and torch.allclose(losses[1], top)
    assert model.prior_stds[0] != 1.0  # multi-resolution noise: the base is not N(0, I)
    only_top = model.level_flow_matching_losses(x, torch.Generator().manual_seed(3), levels=[1])
    assert len(only_top) == 1


def test_objective_refuses_models_without_cnf_levels() -> None:
    glow = create_model("glow-mnist", steps=1, hidden=4)
    with pytest.raises(ConfigError, match="train.objective=likelihood"):
        make_objective(glow, "flow_matching", None)
    coupling = create_model("mrcnf-mnist", image_shape=(1, 8, 8), resolutions=2, steps=1, hidden=4, density="coupling")
    with pytest.raises(ConfigError, match="density=cnf"):
        make_objective(coupling, "flow_matching", None)
    with pytest.raises(ConfigError, match="likelihood, flow_matching"):
        make_objective(glow, "adversarial", None)


SOLVER = "{train: {method: rk4, step_size: 0.5}, eval: {method: rk4, step_size: 0.25}}"
OPTIONS = f"model.options={{image_shape: [1, 8, 8], resolutions: 2, steps: 1, hidden: 8, solver: {SOLVER}}}"


@pytest.mark.parametrize("level", [None, 0])
def test_train_with_flow_matching_logs_per_level_losses_without_solves(tmp_path: Path, level: int | None) -> None:
    extra = [] if level is None else [f"train.level={level}"]
    args = ["mnist5k-mrcnf", *TINY, OPTIONS, "train.steps=3", "train.max_seconds=0", "train.log_every=1"]
    args += ["train.objective=flow_matching", *extra, "--out", str(tmp_path / "run")]
    assert main(["train", *args]) == 0
    records = [r for r in read_metrics(tmp_path / "run") if "loss_fm" in r]
    assert len(records) == 3
    keys = {"fm_level0", "fm_level1"} if level is None else {"fm_level0"}
    for r in records:
        assert keys <= set(r) and "loss_bpd" not in r and r["nfe"] == 0  # simulation-free
        assert r["loss_fm"] == pytest.approx(sum(r[k] for k in keys), rel=1e-5)
    final = [r for r in read_metrics(tmp_path / "run") if r.get("final")]
    assert len(final) == 1 and math.isfinite(final[0]["test_bpd"])  # bits/dim still by the ODE


def test_likelihood_training_of_a_multires_model_logs_per_level_bits_per_dim(tmp_path: Path) -> None:
    args = ["mnist5k-mrcnf", *TINY, OPTIONS, "train.steps=2", "train.max_seconds=0", "train.log_every=1"]
    assert main(["train", *args, "--out", str(tmp_path / "run")]) == 0
    model = create_model("mrcnf-mnist", image_shape=(1, 8, 8), resolutions=2)
    dims, total = model.level_dims(), sum(model.level_dims())
    for r in (r for r in read_metrics(tmp_path / "run") if "loss_bpd" in r):
        weighted = sum(r[f"bpd_level{s}"] * d / total for s, d in enumerate(dims))
        assert r["loss_bpd"] == pytest.approx(weighted, abs=1e-4)
    assert (tmp_path / "run" / "levels.png").is_file()  # the per-level curves, drawn at the end
