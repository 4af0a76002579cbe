r"""The multi-resolution container of MRCNF (paper 000, eq. 5, 9-13 and 16; DESIGN.md section 3).

An image is dequantized once, ``v = (x + u) / 2^b``, and decomposed exactly by a 2x2 pyramid map
``M^{-1}`` (:mod:`msflow.transforms.reshape`): ``v = x_1 -> (y_1, x_2) -> ... -> (y_1, ...,
y_{S-1}, x_S)``. Level ``s < S`` is a conditional flow for ``p(y_s | x_{s+1})``; the top level is
an unconditional flow for ``x_S`` after the preprocessing (logit), which is applied there only,
as in the reference: the details ``y_s`` are differences of pixels and have no [0, 1) range to
map. Every log-det is part of ``log p(v)`` (eq. 11):

.. math::

    \log p(v) = \sum_{s<S} \Big(\log|\det M^{-1}|_s + \log p(y_s \mid x_{s+1})\Big)
        + \log|\det \partial h / \partial x_S| + \log p_{\text{top}}(h), \qquad h = g(x_S)

so bits/dim is :func:`msflow.metrics.bits_per_dim` of ``log p(v)`` over all ``D`` dimensions, as
for every model. Each level's term depends on its own parameters only: levels can be trained
alone (``level_log_probs(x, levels=[s])``) and in parallel.

Levels are indexed fine to coarse from 0: ``levels[s]`` is the paper's ``g_{s+1}``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from msflow.core import FlowSequential, InvertibleModule, Shape, check_image
from msflow.distributions import standard_normal_log_prob, standard_normal_sample
from msflow.errors import ShapeError
from msflow.metrics.bpd import bits_per_dim
from msflow.models.base import ImageFlow, StepLoss
from msflow.models.multires_superres import PyramidSuperResolution
from msflow.models.multires_training import CNFLevelTraining
from msflow.transforms import PYRAMIDS, Affine, PyramidMap, UniformDequantize
from msflow.transforms.cnf import cnf_blocks, skip_logdets

LevelFactory = Callable[[int, int, Shape], InvertibleModule]
"""``factory(channels, cond_channels, shape) -> flow`` of one level; ``shape`` is its ``(C, H, W)``."""


def check_halvable(image_shape: Shape, resolutions: int) -> None:
    """Raise a :class:`ShapeError` that says how to fix a size the pyramid cannot halve."""
    if len(image_shape) != 3 or not all(isinstance(d, int) and d > 0 for d in image_shape):
        raise ShapeError(f"image_shape must be three positive integers (C, H, W), got {list(image_shape)}")
    if resolutions < 1:
        raise ShapeError(f"a multi-resolution flow needs at least 1 resolution, got {resolutions}")
    _, h, w = image_shape
    side = 2 ** (resolutions - 1)
    if h % side or w % side:
        fits = 1
        while h % 2**fits == 0 and w % 2**fits == 0:
            fits += 1
        pad_h, pad_w = -(-h // side) * side, -(-w // side) * side
        raise ShapeError(
            f"{h}x{w} cannot be halved {resolutions - 1} times for {resolutions} resolutions; use at most "
            f"{fits} resolution(s) or pad to {pad_h}x{pad_w} (e.g. get_dataset(..., pad_to={max(pad_h, pad_w)}))"
        )


class MultiResolutionFlow(CNFLevelTraining, PyramidSuperResolution, ImageFlow):
    r"""MRCNF: one conditional flow per resolution over an exact image pyramid.

    Args:
        image_shape: ``(C, H, W)`` of the data; ``H`` and ``W`` must divide by ``2^{S-1}``.
        levels: ``S`` shape-preserving flows, fine to coarse. ``levels[s]`` for ``s < S - 1``
            maps the details ``y`` ``(3C, H / 2^{s+1}, W / 2^{s+1})`` given the coarser image
            (``C`` channels, same size); ``levels[-1]`` maps the preprocessed top image.
        pyramid: ``"unimodular"`` (eq. 7), ``"haar"`` (eq. 6) or ``"orthogonal"``, or a map.
        preprocess: invertible map applied to the top image once it is rescaled to the [0, 1)
            range of an average image (e.g. :class:`~msflow.transforms.Logit`).
        n_bits: bits per sub-pixel of the integer data.
        multires_noise: base distribution of each level with the standard deviation that one
            i.i.d. ``N(0, I)`` noise image at the finest resolution has after the same pyramid
            (section 3.3): ``gain_c^s gain_d`` for details, ``gain_c^{S-1}`` at the top (with eq. 7,
            ``sqrt(c 4^{-s})`` and ``2^{-(S-1)}``; divided at the top by the rescaling to an
            average image). Latents stay ``N(0, I)``; the scale is part of the log-det.

    Example:
        >>> import torch
        >>> from msflow import create_model
        >>> model = create_model("mrcnf-mnist", steps=1, hidden=8, resolutions=2)
        >>> [tuple(s) for s in model.latent_shapes()]
        [(3, 14, 14), (1, 14, 14)]
        >>> x = torch.randint(0, 256, (2, 1, 28, 28), dtype=torch.uint8)
        >>> model.bits_per_dim(x).shape, len(model.level_log_probs(x))
        (torch.Size([2]), 2)
    """

    independent_levels: ClassVar[bool] = True
    flow_matching: ClassVar[bool] = True
    pyramid_superres: ClassVar[bool] = True

    def __init__(
        self,
        image_shape: Shape,
        levels: Sequence[InvertibleModule],
        pyramid: str | PyramidMap = "unimodular",
        preprocess: InvertibleModule | None = None,
        n_bits: int = 8,
        multires_noise: bool = False,
    ) -> None:
        super().__init__()
        if isinstance(pyramid, str):
            if pyramid not in PYRAMIDS:
                raise ValueError(f"unknown pyramid {pyramid!r}; choose one of {sorted(PYRAMIDS)}")
            pyramid = PYRAMIDS[pyramid]()
        self.image_shape = tuple(image_shape)
        check_halvable(self.image_shape, len(levels))
        self.levels = nn.ModuleList(levels)
        self.pyramid = pyramid
        self.dequantizer = UniformDequantize(n_bits)
        self.num_dims = math.prod(self.image_shape)
        self.multires_noise = multires_noise
        c, h, w = self.image_shape
        s_top = len(levels) - 1
        self._image_shapes = [(c, h >> s, w >> s) for s in range(s_top + 1)]
        self._latent_shapes = [(3 * c, h >> (s + 1), w >> (s + 1)) for s in range(s_top)] + [self._image_shapes[-1]]
        # Coarse images are ``coarse_factor^s`` times the average image (1 for eq. 6 and 7).
        self._ranges = [pyramid.coarse_factor**s for s in range(s_top + 1)]
        top_scale = 1.0 / self._ranges[-1]
        blocks = [Affine(top_scale, 0.0)] if top_scale != 1.0 else []
        if preprocess is not None:
            blocks.append(preprocess)
        self.top_preprocess = FlowSequential(*blocks)
        gain_c, gain_d = pyramid.noise_gains
        # The top level sees x_S rescaled by top_scale, and so does its share of the noise.
        stds = [gain_c**s * gain_d for s in range(s_top)] + [gain_c**s_top * top_scale]
        self.prior_stds = stds if multires_noise else [1.0] * len(levels)
        self._check_levels()
        for s, level in enumerate(self.levels):
            what = "top" if s == s_top else "details"
            for i, block in enumerate(cnf_blocks(level)):
                block.name = f"MultiResolutionFlow level {s} ({what} {self._latent_shapes[s][1]}x"
                block.name += f"{self._latent_shapes[s][2]}) CNF block {i}"
                # Distinct evaluation probes per block, counted from the top, so a coarser model
                # attached to a finer level (progressive training) keeps its own probes.
                block.probe_seed = 1000 * (s_top - s) + i

    def _check_levels(self) -> None:
        for s, (level, shape) in enumerate(zip(self.levels, self._latent_shapes, strict=True)):
            try:
                out = level.output_shape(shape)
            except ShapeError as err:
                raise ShapeError(f"level {s}: {err}") from None
            if tuple(out) != tuple(shape):
                raise ShapeError(f"level {s} must keep its input shape {shape}, but maps it to {tuple(out)}")

    @property
    def num_resolutions(self) -> int:
        """``S``, the number of resolutions (levels)."""
        return len(self.levels)

    def latent_shapes(self, image_shape: Shape | None = None) -> list[Shape]:
        """Shapes ``(C, H, W)`` of the latents, fine to coarse: ``S - 1`` detail latents, then the top."""
        if image_shape is not None and tuple(image_shape) != self.image_shape:
            raise ShapeError(f"this model is built for {self.image_shape}, not {tuple(image_shape)}")
        return list(self._latent_shapes)

    def _dtype(self) -> torch.dtype:
        for t in (*self.parameters(), *self.buffers()):
            if t.is_floating_point():
                return t.dtype
        return torch.get_default_dtype()

    @staticmethod
    def _no_cond(cond: Any) -> None:
        if cond is not None:
            raise ValueError(
                "MultiResolutionFlow is unconditional (its levels condition on coarser images); pass cond=None"
            )

    def _condition(self, coarse: Tensor, s: int) -> Tensor:
        # The coarser image as an average image centred on 0, the same range at every level.
        return coarse / self._ranges[s + 1] - 0.5

    # ------------------------------------------------------------ pyramid

    def decompose(self, v: Tensor) -> tuple[list[Tensor], list[Tensor], list[Tensor]]:
        """``v -> (images x_1..x_S, details y_1..y_{S-1}, log|det M^{-1}| per step)``, fine to coarse."""
        images, details, logdets = [v], [], []
        c = self.image_shape[0]
        for _ in range(self.num_resolutions - 1):
            out, logdet = self.pyramid(images[-1])
            images.append(out[:, :c])
            details.append(out[:, c:])
            logdets.append(logdet)
        return images, details, logdets

    def _encode_level(self, s: int, images: list[Tensor], details: list[Tensor], pyr: list[Tensor]) -> tuple:
        if s < self.num_resolutions - 1:
            z, logdet = self.levels[s](details[s], self._condition(images[s + 1], s))
            logdet = logdet + pyr[s]
        else:
            h, logdet = self.top_preprocess(images[-1])
            z, ld = self.levels[s](h)
            logdet = logdet + ld
        std = self.prior_stds[s]
        return z / std, logdet - math.prod(z.shape[1:]) * math.log(std)

    def _decode_level(self, s: int, eps: Tensor, coarse: Tensor | None) -> Tensor:
        z = eps * self.prior_stds[s]
        if coarse is None:
            h, _ = self.levels[s].inverse(z)
            return self.top_preprocess.inverse(h)[0]
        y, _ = self.levels[s].inverse(z, self._condition(coarse, s))
        return self.pyramid.inverse(torch.cat([coarse, y], dim=1))[0]

    # ------------------------------------------------------------ density

    def encode(self, v: Tensor, cond: Any = None) -> tuple[list[Tensor], Tensor]:
        """Continuous images ``v`` in [0, 1) -> (latents fine to coarse, log|det d eps / d v|)."""
        self._no_cond(cond)
        check_image(v, self.image_shape, type(self).__name__)
        self._clear_regularizers()
        parts = self.decompose(v)
        zs, logdet = [], v.new_zeros(v.shape[0])
        for s in range(self.num_resolutions):
            z, ld = self._encode_level(s, *parts)
            zs.append(z)
            logdet = logdet + ld
        return zs, logdet

    def decode(self, zs: Sequence[Tensor], cond: Any = None) -> Tensor:
        """Latents fine to coarse -> continuous images ``v`` (eq. 16: top first, then finer)."""
        self._no_cond(cond)
        return self._decode_pyramid(zs)[-1]

    def _decode_pyramid(self, zs: Sequence[Tensor]) -> list[Tensor]:
        """Latents fine to coarse -> the average images of every resolution, coarse to fine."""
        if len(zs) != self.num_resolutions:
            raise ValueError(f"expected {self.num_resolutions} latents (fine to coarse), got {len(zs)}")
        top = self.num_resolutions - 1
        with skip_logdets(self):
            images = [self._decode_level(top, zs[-1], None)]
            for s in reversed(range(top)):
                images.append(self._decode_level(s, zs[s], images[-1]))
        return [x / self._ranges[top - i] for i, x in enumerate(images)]

    @torch.no_grad()
    def sample_resolutions(
        self, n: int, temperature: float = 1.0, generator: torch.Generator | None = None
    ) -> list[Tensor]:
        """``n`` samples seen at every resolution, coarse to fine, as uint8 images (paper 000, Fig. 6-7).

        Generation runs coarse to fine (eq. 16), so the image at resolution ``s`` is the one the
        finer levels were conditioned on: before quantization it is exactly the 2x2 average of
        the next finer image. The last entry equals :meth:`sample` with the same generator state.
        """
        zs = self.sample_latents(n, temperature, generator)
        return [self.dequantizer.quantize(v) for v in self._decode_pyramid(zs)]

    def level_log_probs_continuous(self, v: Tensor, levels: Sequence[int] | None = None) -> list[Tensor]:
        """The terms of eq. 11 for continuous ``v``, in nats: ``(B,)`` each, fine to coarse.

        Term ``s < S - 1`` is ``log|det M^{-1}|_s + log p(y_s | x_{s+1})``; the last is the top's
        ``log p(x_S)`` with its preprocessing log-det. ``levels`` selects some of them (only
        those flows run).
        """
        check_image(v, self.image_shape, type(self).__name__)
        which = range(self.num_resolutions) if levels is None else levels
        for s in which:
            if not 0 <= s < self.num_resolutions:
                raise ValueError(f"level {s} does not exist; this model has levels 0..{self.num_resolutions - 1}")
        self._clear_regularizers()
        parts = self.decompose(v)
        terms = []
        for s in which:
            z, logdet = self._encode_level(s, *parts)
            terms.append(logdet + standard_normal_log_prob(z))
        return terms

    def log_prob_continuous(self, v: Tensor, cond: Any = None) -> Tensor:
        """``log p(v)`` in nats for continuous ``v`` in [0, 1)^D, every log-det included (eq. 11)."""
        self._no_cond(cond)
        return sum(self.level_log_probs_continuous(v))

    def _dequantize(self, x: Tensor, generator: torch.Generator | None) -> tuple[Tensor, Tensor]:
        return self.dequantizer(x, generator=generator, dtype=self._dtype())

    def level_log_probs(
        self, x: Tensor, cond: Any = None, generator: torch.Generator | None = None, levels: Sequence[int] | None = None
    ) -> list[Tensor]:
        """Per-level terms of ``log p(v)`` (nats) for integer images, one dequantization draw."""
        self._no_cond(cond)
        v, _ = self._dequantize(x, generator)
        return self.level_log_probs_continuous(v, levels)

    def level_dims(self) -> list[int]:
        """Dimensions modelled by each level, fine to coarse (they add up to ``D``)."""
        return [math.prod(s) for s in self._latent_shapes]

    def level_bits_per_dim(
        self, x: Tensor, cond: Any = None, generator: torch.Generator | None = None, levels: Sequence[int] | None = None
    ) -> list[Tensor]:
        """Bits/dim of each level over its own dimensions; their ``dims / D`` weighted sum is :meth:`bits_per_dim`."""
        which = list(range(self.num_resolutions)) if levels is None else list(levels)
        terms = self.level_log_probs(x, cond, generator, which)
        dims = self.level_dims()
        return [bits_per_dim(t, dims[s], self.dequantizer.n_bits) for s, t in zip(which, terms, strict=True)]

    def bits_per_dim_by_level(self, x: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, list[Tensor]]:
        """``(bits_per_dim (B,), [each level's bits/dim over its own dims])`` from one pass and one draw.

        The first equals :meth:`bits_per_dim` with the same ``generator`` state; training logs
        the second as per-level curves (paper 000, Figure 5b) at no extra cost.
        """
        v, log_q = self._dequantize(x, generator)
        terms = self.level_log_probs_continuous(v)
        n_bits, dims = self.dequantizer.n_bits, self.level_dims()
        total = bits_per_dim(sum(terms), self.num_dims, n_bits, log_q)
        return total, [bits_per_dim(t, d, n_bits) for t, d in zip(terms, dims, strict=True)]

    def training_loss(
        self, x: Tensor, generator: torch.Generator | None = None, cond: Any = None, level: int | None = None
    ) -> StepLoss:
        """Mean bits/dim (of level ``level`` alone over its own dimensions, or of the whole model with
        each level's logged as ``bpd_level<s>``) plus the RNODE regulariser."""
        self._no_cond(cond)
        if level is not None:
            self.check_level(level)
            return self._with_regularizer(self.level_bits_per_dim(x, generator=generator, levels=[level])[0].mean(), {})
        total, per_level = self.bits_per_dim_by_level(x, generator)
        logged = {f"bpd_level{s}": b.detach().mean() for s, b in enumerate(per_level)}
        return self._with_regularizer(total.mean(), logged)

    def bits_per_dim(self, x: Tensor, cond: Any = None, generator: torch.Generator | None = None) -> Tensor:
        """``(B,)`` bits/dim of integer images ``x`` (uint8) with one dequantization draw."""
        self._no_cond(cond)
        v, log_q = self._dequantize(x, generator)
        return bits_per_dim(self.log_prob_continuous(v), self.num_dims, self.dequantizer.n_bits, log_q)

    # ------------------------------------------------------------ sampling

    def sample_latents(
        self, n: int, temperature: float = 1.0, generator: torch.Generator | None = None
    ) -> list[Tensor]:
        """Draw ``temperature * N(0, I)`` latents for ``n`` images, fine to coarse."""
        device = next((t.device for t in (*self.parameters(), *self.buffers())), torch.device("cpu"))
        return [
            standard_normal_sample((n, *s), temperature, generator, device, self._dtype()) for s in self._latent_shapes
        ]


def build_multires(
    image_shape: Shape,
    resolutions: int,
    density: LevelFactory,
    pyramid: str = "unimodular",
    preprocess: InvertibleModule | None = None,
    n_bits: int = 8,
    multires_noise: bool = False,
) -> MultiResolutionFlow:
    """Assemble a :class:`MultiResolutionFlow` with one ``density`` flow per resolution.

    Args:
        image_shape: ``(C, H, W)`` of the data.
        resolutions: ``S``; 1 gives a single-resolution flow (the CNF/RNODE baseline).
        density: factory of each level's flow (see :data:`LevelFactory`).
        pyramid: as in :class:`MultiResolutionFlow`.
        preprocess: as in :class:`MultiResolutionFlow`.
        n_bits: as in :class:`MultiResolutionFlow`.
        multires_noise: as in :class:`MultiResolutionFlow`.
    """
    check_halvable(tuple(image_shape), resolutions)
    c, h, w = image_shape
    levels = [density(3 * c, c, (3 * c, h >> (s + 1), w >> (s + 1))) for s in range(resolutions - 1)]
    top = resolutions - 1
    levels.append(density(c, 0, (c, h >> top, w >> top)))
    return MultiResolutionFlow(tuple(image_shape), levels, pyramid, preprocess, n_bits, multires_noise)
