r"""TarFlow (Zhai et al. 2024): Transformer autoregressive flows over image patches.

The model is ``steps`` :class:`~msflow.transforms.tarflow.TarFlowBlock` s, alternating the token
order, on the preprocessed image ``h = g(v)`` (``"scale"``: ``h = 2v - 1``, the reference's
[-1, 1] range; or ``"logit"``), with a standard Gaussian prior on the one latent ``z`` (the
image's shape):

.. math::

    \log p(v) = \log \mathcal N(z; 0, I) + \sum_k \log|\det J_k| + \log|\det \partial h / \partial v|

**Noise augmentation.** With ``noise_std`` ``sigma > 0`` training sees ``h + sigma eps``, ``eps ~
N(0, I)`` (the paper's 0.05 in [-1, 1] units for 64x64 images), and minimises the bits/dim of
that *noisy* data (:meth:`TarFlow.training_bits_per_dim`, logged as ``loss_bpd``; it is not a
bound on the discrete likelihood). :meth:`TarFlow.bits_per_dim`, which ``msflow eval`` reports,
is always the ordinary uniform-dequantization bits/dim of the trained density, a true upper bound
on its discrete bits/dim whatever ``sigma`` was; ``noise_std=0`` trains that quantity directly.

**Sampling** (:meth:`TarFlow.sample`): ``z ~ N(0, T^2 I)``, the blocks inverted sequentially or by
Jacobi iteration (``sampler``), then, for a model trained with noise, one denoising score step
(Tweedie):

.. math::

    \hat h = h + \sigma^2 \nabla_h \log p(h)

**Classes.** With ``num_classes > 0`` every block is class-conditional (``cond`` = labels
``(B,)``); training drops labels to the null class ``-1`` with probability ``label_drop``, and
sampling with ``guidance`` ``w`` uses ``(1 + w) theta(y) - w theta(null)`` for every shift and
log-scale. Without labels (``cond=None``) the model is ``p(x | null)``: the unconditional
density that classifier-free guidance trains alongside.

Example:
    >>> import torch
    >>> from msflow import create_model
    >>> model = create_model("tarflow-digits8", steps=2, hidden=16)
    >>> x = torch.randint(0, 256, (2, 1, 8, 8), dtype=torch.uint8)
    >>> model.bits_per_dim(x).shape, model.latent_shapes()
    (torch.Size([2]), [(1, 8, 8)])
    >>> model.sample(2, method="jacobi").shape
    torch.Size([2, 1, 8, 8])
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import partial
from typing import Any

import torch
from torch import Tensor, nn

from msflow.core import InvertibleModule, Shape, check_image
from msflow.distributions import standard_normal_log_prob, standard_normal_sample
from msflow.errors import ConfigError, ShapeError
from msflow.metrics.bpd import bits_per_dim
from msflow.models._registry import register_model
from msflow.models.base import ImageFlow
from msflow.transforms import Affine, Logit, UniformDequantize
from msflow.transforms.tarflow import INVERSE_METHODS, TarFlowBlock

PREPROCESSORS = {"scale": lambda alpha: Affine(2.0, -1.0), "logit": Logit}
"""Maps from [0, 1) to the flow's input: the reference's ``2v - 1``, or a logit with margin ``alpha``."""


class TarFlow(ImageFlow):
    """A stack of TarFlow blocks with a Gaussian prior; see the module docstring.

    Args:
        image_shape: ``(C, H, W)``.
        blocks: the flow's blocks, density direction first to last.
        preprocess: ``"scale"`` or ``"logit"`` (with ``alpha``).
        alpha: logit margin.
        noise_std: Gaussian input noise of training, in the flow's input units (needs ``"scale"``).
        num_classes: classes of the blocks' class condition (0: unconditional).
        label_drop: probability of training a label as the null class.
        sampler: ``"sequential"`` or ``"jacobi"``, the default of :meth:`sample`.
        jacobi_tol: the Jacobi stopping tolerance (largest change of a sweep, flow-input units).
        denoise: apply the score step when sampling a model trained with noise.
        guidance: default classifier-free guidance weight of :meth:`sample`.
    """

    def __init__(
        self,
        image_shape: Shape,
        blocks: Sequence[TarFlowBlock],
        preprocess: str = "scale",
        alpha: float = 1e-6,
        noise_std: float = 0.0,
        num_classes: int = 0,
        label_drop: float = 0.1,
        sampler: str = "sequential",
        jacobi_tol: float = 1e-5,
        denoise: bool = True,
        guidance: float = 0.0,
    ) -> None:
        super().__init__()
        if preprocess not in PREPROCESSORS:
            raise ValueError(f"unknown preprocessing {preprocess!r}; choose one of {sorted(PREPROCESSORS)}")
        if noise_std < 0 or (noise_std > 0 and preprocess != "scale"):
            raise ValueError(f"noise_std must be >= 0 and needs preprocess='scale' (got {noise_std}, {preprocess!r})")
        if sampler not in INVERSE_METHODS:
            raise ValueError(f"unknown sampler {sampler!r}; choose one of {list(INVERSE_METHODS)}")
        if not 0 <= label_drop <= 1:
            raise ValueError(f"label_drop is a probability, got {label_drop}")
        self.image_shape, self.num_dims = tuple(image_shape), math.prod(image_shape)
        self.blocks = nn.ModuleList(blocks)
        self.preprocess: InvertibleModule = PREPROCESSORS[preprocess](alpha)
        self.dequantizer = UniformDequantize(8)
        self.noise_std, self.num_classes, self.label_drop = noise_std, num_classes, label_drop
        self.sampler, self.jacobi_tol, self.denoise, self.guidance = sampler, jacobi_tol, denoise, guidance
        for i, block in enumerate(self.blocks):
            if block.shape != self.image_shape:
                raise ShapeError(f"block {i} is built for {block.shape}, the model for {self.image_shape}")

    def _dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    def _labels(self, cond: Any, n: int, device: torch.device) -> Tensor | None:
        """The blocks' condition: ``None`` for an unconditional model, else labels (null when ``cond`` is None)."""
        if not self.num_classes:
            if cond is not None:
                raise ValueError("this TarFlow is unconditional; pass cond=None (or build it with num_classes)")
            return None
        if cond is None:
            return torch.full((n,), -1, dtype=torch.long, device=device)
        labels = torch.as_tensor(cond, device=device).long().reshape(-1)
        if labels.shape[0] == 1 and n > 1:
            labels = labels.expand(n)
        if labels.shape[0] != n:
            raise ShapeError(f"give one label or one per image: {n} images, {labels.shape[0]} labels")
        return labels

    # ------------------------------------------------------------ density

    def flow(self, h: Tensor, labels: Tensor | None) -> tuple[Tensor, Tensor]:
        """Flow-input ``h`` -> ``(z, log|det dz/dh|)`` through every block."""
        logdet = h.new_zeros(h.shape[0])
        for block in self.blocks:
            h, ld = block(h, labels)
            logdet = logdet + ld
        return h, logdet

    def log_prob_flow(self, h: Tensor, labels: Tensor | None) -> Tensor:
        """``log p(h)`` in nats for flow inputs ``h`` (the density the noisy data are scored by)."""
        z, logdet = self.flow(h, labels)
        return standard_normal_log_prob(z) + logdet

    def encode(self, v: Tensor, cond: Any = None) -> tuple[list[Tensor], Tensor]:
        """Continuous images ``v`` in [0, 1) -> ``([z], log|det dz/dv|)``."""
        check_image(v, self.image_shape, type(self).__name__)
        h, logdet = self.preprocess(v)
        z, ld = self.flow(h, self._labels(cond, v.shape[0], v.device))
        return [z], logdet + ld

    def log_prob_continuous(self, v: Tensor, cond: Any = None) -> Tensor:
        """``log p(v)`` in nats for continuous ``v`` in [0, 1)^D, every log-det included."""
        (z,), logdet = self.encode(v, cond)
        return standard_normal_log_prob(z) + logdet

    def bits_per_dim(self, x: Tensor, cond: Any = None, generator: torch.Generator | None = None) -> Tensor:
        """``(B,)`` uniform-dequantization bits/dim (no Gaussian noise, whatever training used)."""
        check_image(x, self.image_shape, type(self).__name__)
        v, log_q = self.dequantizer(x, generator=generator, dtype=self._dtype())
        return bits_per_dim(self.log_prob_continuous(v, cond), self.num_dims, 8, log_q)

    def noisy_bits_per_dim(self, x: Tensor, cond: Any = None, generator: torch.Generator | None = None) -> Tensor:
        """``(B,)`` bits/dim of the noise-augmented data ``g(v) + sigma eps`` that training fits,
        on the scale of :meth:`bits_per_dim` (equal to it for ``noise_std=0``); a density of
        noisy images, not a bound on the discrete likelihood."""
        check_image(x, self.image_shape, type(self).__name__)
        v, log_q = self.dequantizer(x, generator=generator, dtype=self._dtype())
        h, logdet = self.preprocess(v)
        if self.noise_std > 0:
            where = generator.device if generator is not None else h.device
            eps = torch.randn(h.shape, generator=generator, device=where, dtype=h.dtype).to(h.device)
            h = h + self.noise_std * eps
        log_p = self.log_prob_flow(h, self._labels(cond, x.shape[0], x.device)) + logdet
        return bits_per_dim(log_p, self.num_dims, 8, log_q)

    def training_bits_per_dim(self, x: Tensor, cond: Any = None, generator: torch.Generator | None = None) -> Tensor:
        """What training minimises: :meth:`noisy_bits_per_dim`, with labels dropped to the null
        class with probability ``label_drop`` (classifier-free guidance)."""
        if self.num_classes and cond is not None and self.label_drop > 0:
            labels = self._labels(cond, x.shape[0], x.device)
            where = generator.device if generator is not None else x.device
            drop = torch.rand(labels.shape, generator=generator, device=where).to(x.device) < self.label_drop
            cond = torch.where(drop, torch.full_like(labels, -1), labels)
        return self.noisy_bits_per_dim(x, cond, generator)

    # ------------------------------------------------------------ sampling

    def latent_shapes(self, image_shape: Shape | None = None) -> list[Shape]:
        """One latent of the image's shape."""
        if image_shape is not None and tuple(image_shape) != self.image_shape:
            raise ShapeError(f"this model is built for {self.image_shape}, not {tuple(image_shape)}")
        return [self.image_shape]

    def sample_latents(
        self, n: int, temperature: float = 1.0, generator: torch.Generator | None = None
    ) -> list[Tensor]:
        """``[temperature * N(0, I)]`` for ``n`` images."""
        p = next(self.parameters())
        return [standard_normal_sample((n, *self.image_shape), temperature, generator, p.device, p.dtype)]

    def invert(
        self,
        z: Tensor,
        labels: Tensor | None,
        method: str = "sequential",
        tol: float | None = None,
        guidance: float = 0.0,
        stats: dict[str, int] | None = None,
    ) -> Tensor:
        """Latent ``z`` -> flow input ``h`` by ``method``, guided by ``guidance`` (labels needed)."""
        if guidance and labels is None:
            raise ConfigError("classifier-free guidance needs a class-conditional TarFlow (num_classes > 0)")
        uncond = None if labels is None else torch.full_like(labels, -1)
        tol = self.jacobi_tol if tol is None else tol
        for block in reversed(self.blocks):
            z, _ = block.inverse(z, labels, method=method, tol=tol, guidance=guidance, uncond=uncond, stats=stats)
        return z

    def decode(self, zs: Sequence[Tensor], cond: Any = None, method: str = "sequential") -> Tensor:
        """``[z]`` -> continuous images ``v`` (exact sequential inversion unless ``method="jacobi"``)."""
        (z,) = zs
        h = self.invert(z, self._labels(cond, z.shape[0], z.device), method)
        return self.preprocess.inverse(h)[0]

    def score_step(self, h: Tensor, labels: Tensor | None) -> Tensor:
        """One denoising step ``h + sigma^2 grad_h log p(h)`` (the score of the noisy-data density)."""
        with torch.inference_mode(False), torch.enable_grad():
            h = h.detach().clone().requires_grad_(True)
            labels = None if labels is None else labels.clone()
            (grad,) = torch.autograd.grad(self.log_prob_flow(h, labels).sum(), h)
        return (h + self.noise_std**2 * grad).detach()

    @torch.no_grad()
    def sample(
        self,
        n: int,
        temperature: float = 1.0,
        cond: Any = None,
        generator: torch.Generator | None = None,
        method: str | None = None,
        denoise: bool | None = None,
        guidance: float | None = None,
        stats: dict[str, int] | None = None,
    ) -> Tensor:
        """``n`` uint8 images at ``temperature``; ``cond`` labels (or ``None``: the null class).

        ``method`` (``"sequential"``/``"jacobi"``), ``denoise`` and ``guidance`` default to the
        model's ``sampler``, ``denoise`` and ``guidance`` options; the score step runs only for a
        model trained with ``noise_std > 0``.
        """
        (z,) = self.sample_latents(n, temperature, generator)
        labels = self._labels(cond, n, z.device)
        weight = self.guidance if guidance is None else guidance
        h = self.invert(z, labels, method or self.sampler, guidance=weight, stats=stats)
        if (self.denoise if denoise is None else denoise) and self.noise_std > 0:
            h = self.score_step(h, labels)
        return self.dequantizer.quantize(self.preprocess.inverse(h)[0])


def tarflow(
    image_shape: Shape,
    patch: int = 2,
    steps: int = 4,
    layers: int = 2,
    hidden: int = 128,
    heads: int | None = None,
    preprocess: str = "scale",
    alpha: float = 1e-6,
    noise_std: float = 0.0,
    num_classes: int = 0,
    label_drop: float = 0.1,
    sampler: str = "sequential",
    jacobi_tol: float = 1e-5,
    denoise: bool = True,
    guidance: float = 0.0,
) -> TarFlow:
    """A TarFlow of ``steps`` blocks (``layers`` Transformer layers of width ``hidden`` each) on
    ``patch x patch`` patches; the other options as in :class:`TarFlow`."""
    shape = tuple(image_shape)
    if steps < 1:
        raise ValueError(f"a TarFlow needs at least one block, got steps={steps}")
    blocks = [
        TarFlowBlock(shape, patch, hidden, layers, heads, num_classes=num_classes, reverse=i % 2 == 1)
        for i in range(steps)
    ]
    return TarFlow(
        shape, blocks, preprocess, alpha, noise_std, num_classes, label_drop, sampler, jacobi_tol, denoise, guidance
    )


# name: (image shape, patch, blocks, layers per block, width, the paper's noise_std for the data)
_PRESETS: dict[str, tuple[Shape, int, int, int, int, float]] = {
    "digits8": ((1, 8, 8), 2, 2, 1, 32, 0.05),
    "mnist": ((1, 28, 28), 4, 4, 2, 128, 0.05),
    "cifar10": ((3, 32, 32), 2, 8, 8, 768, 0.05),
    "imagenet32": ((3, 32, 32), 2, 8, 8, 768, 0.05),
    "patches32": ((3, 32, 32), 2, 4, 4, 256, 0.05),
    "imagenet64": ((3, 64, 64), 4, 8, 8, 1024, 0.05),
}
"""Preset sizes: CIFAR-10/ImageNet from the reference's commands (``p 2, 768 x 8 x 8``; 64x64 with
``p 4, 1024``); MNIST and the 8x8 digits sized for CPU minutes. The paper's noise level is listed
for the help text; presets default to ``noise_std=0`` (the ordinary likelihood) and configs set it."""


def _register_presets() -> None:
    for data, (shape, patch, steps, layers, hidden, sigma) in _PRESETS.items():
        size = "x".join(map(str, shape))
        register_model(
            f"tarflow-{data}",
            f"TarFlow for {data} ({size}): {steps} blocks x {layers} layers, width {hidden}, {patch}x{patch} patches "
            f"(noise_std=0; the paper trains with {sigma}; num_classes for class conditioning)",
        )(partial(tarflow, image_shape=shape, patch=patch, steps=steps, layers=layers, hidden=hidden))


_register_presets()
