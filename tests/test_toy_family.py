"""Adding a family takes one class and its registration (issue 22): a RealNVP with checkerboard
masks, defined and registered here and nowhere else, is trained by ``msflow.train.loop.train``
and read back by ``msflow eval``, ``sample`` and ``report`` with no other edit."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from tiny import TINY
from torch import Tensor, nn

from msflow.cli import main
from msflow.distributions import standard_normal_log_prob, standard_normal_sample
from msflow.metrics import bits_per_dim
from msflow.models import ImageFlow, _registry, list_models, model_capabilities, register_model
from msflow.train.config import apply_overrides, load_config, replace
from msflow.train.loop import train
from msflow.transforms import UniformDequantize


class CheckerboardRealNVP(ImageFlow):
    """Affine couplings on alternating checkerboards, one latent ``(C, H, W)``."""

    def __init__(self, image_shape: tuple[int, int, int] = (1, 8, 8), steps: int = 2, hidden: int = 8) -> None:
        super().__init__()
        self.image_shape, self.num_dims = tuple(image_shape), math.prod(image_shape)
        self.dequantizer = UniformDequantize(8)
        c, h, w = image_shape
        board = ((torch.arange(h)[:, None] + torch.arange(w)) % 2).float().expand(c, h, w)
        self.register_buffer("masks", torch.stack([board if i % 2 else 1 - board for i in range(2 * steps)]))
        self.nets = nn.ModuleList(
            nn.Sequential(nn.Conv2d(c, hidden, 3, padding=1), nn.ReLU(), nn.Conv2d(hidden, 2 * c, 3, padding=1))
            for _ in range(2 * steps)
        )

    def _scale_shift(self, i: int, h: Tensor) -> tuple[Tensor, Tensor]:
        s, t = self.nets[i](h * self.masks[i]).chunk(2, dim=1)
        return torch.tanh(s) * (1 - self.masks[i]), t * (1 - self.masks[i])

    def encode(self, v: Tensor, cond: None = None) -> tuple[list[Tensor], Tensor]:
        h, logdet = v - 0.5, v.new_zeros(v.shape[0])
        for i in range(len(self.nets)):
            s, t = self._scale_shift(i, h)
            h, logdet = h * s.exp() + t, logdet + s.flatten(1).sum(1)
        return [h], logdet

    def decode(self, zs: list[Tensor], cond: None = None) -> Tensor:
        h = zs[0]
        for i in reversed(range(len(self.nets))):
            s, t = self._scale_shift(i, h)
            h = (h - t) * (-s).exp()
        return h + 0.5

    def bits_per_dim(self, x: Tensor, cond: None = None, generator: torch.Generator | None = None) -> Tensor:
        v, log_q = self.dequantizer(x, generator=generator, dtype=self.masks.dtype)
        (z,), logdet = self.encode(v)
        return bits_per_dim(logdet + standard_normal_log_prob(z), self.num_dims, 8, log_q)

    def sample_latents(self, n: int, temperature: float = 1.0, generator: torch.Generator | None = None) -> list:
        return [standard_normal_sample((n, *self.image_shape), temperature, generator, self.masks.device)]


@pytest.fixture(autouse=True)
def toy_registered() -> Iterator[None]:
    """The toy family is registered for this file's tests only: other tests (the fuzz suite's size
    checks over every preset, say) see msflow's own presets."""
    register_model("toy-realnvp", "a checkerboard RealNVP defined in a test")(CheckerboardRealNVP)
    yield
    for table in (_registry._MODELS, _registry._HELP, _registry._CAPABILITIES):
        table.pop("toy-realnvp", None)


def test_a_new_family_trains_evaluates_samples_and_reports(tmp_path: Path, capsys) -> None:
    assert "toy-realnvp" in list_models(conditional=False) and not model_capabilities("toy-realnvp").cnf
    cfg = apply_overrides(load_config("mnist5k-glow"), [*TINY, "train.steps=2"])
    model = replace(cfg.model, name="toy-realnvp", options={"image_shape": [1, 8, 8], "hidden": 8})
    result = train(replace(cfg, model=model, train=replace(cfg.train, out=str(tmp_path))))
    run = Path(result["run_dir"])
    assert result["steps"] == 2 and math.isfinite(result["bpd"]) and result["samples"]
    assert main(["eval", str(run), "--device", "cpu"]) == 0
    assert "invertibility: max |x - f^-1(f(x))|" in capsys.readouterr().out
    assert main(["sample", str(run), "-n", "4", "-o", str(tmp_path / "toy.png"), "--device", "cpu"]) == 0
    assert (tmp_path / "toy.png").is_file()
    assert main(["report", str(run), "--temperatures", "0.7", "--device", "cpu"]) == 0
    assert (run / "report.html").is_file()


def test_the_conformance_checks_hold_for_the_new_family(randomize, jacobian_logabsdet) -> None:  # noqa: ANN001
    """The model suite's two map checks (tests/test_model_conformance.py), on the toy in float64:
    decode inverts encode, and the log-det is the slogdet of the autograd Jacobian."""
    model = randomize(CheckerboardRealNVP().double(), std=0.3)
    v = torch.rand(2, 1, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        zs, logdet = model.encode(v)
        torch.testing.assert_close(model.decode(zs), v, atol=1e-12, rtol=0)
    assert logdet.abs().min() > 1e-2  # not a vacuous volume-preserving map
    for i in range(2):
        sign, reference = jacobian_logabsdet(lambda vi: model.encode(vi[None])[0][0].flatten(), v[i])
        assert sign != 0
        torch.testing.assert_close(logdet[i], reference, atol=1e-10, rtol=0)
