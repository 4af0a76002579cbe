"""Super-resolution with a multi-resolution flow (paper 000, Figure 3): finer levels sampled given
a coarse image, so every generated 2x2 block averages exactly to its input pixel.

A mixin of :class:`~msflow.models.multires.MultiResolutionFlow`, kept apart from the density so
each file holds one concept.
"""

from __future__ import annotations

import torch
from torch import Tensor

from msflow.distributions import standard_normal_sample
from msflow.errors import ShapeError
from msflow.transforms.cnf import skip_logdets


class PyramidSuperResolution:
    """``superres``: refine coarse images through the flow's detail levels."""

    @torch.no_grad()
    def superres(
        self,
        coarse: Tensor,
        levels: int = 1,
        temperature: float = 1.0,
        n: int = 1,
        generator: torch.Generator | None = None,
        quantize: bool = True,
    ) -> Tensor:
        """Generate ``2^levels`` times larger images whose 2x2 blocks average to ``coarse``.

        ``coarse`` is a batch ``(B, C, h, w)`` of integer images (uint8, taken at their bins'
        centres ``(x + 1/2) / 2^b``) or continuous average images in [0, 1]. At one of the
        pyramid's coarser resolutions ``k`` it is refined by levels ``k-1 .. k-levels``; at any
        other size (a whole photo, say) by the ``levels`` finest detail levels, whose
        convolutional flows take any size. Before quantization every generated 2x2 block (and,
        over ``levels`` steps, every ``2^levels`` block) averages exactly to its input pixel, up
        to float rounding. Returns ``(B * n, C, 2^levels h, 2^levels w)``, ``n`` samples per input.
        """
        k = self._resolution_of(coarse, levels)
        v = coarse
        if not coarse.is_floating_point():
            self.dequantizer.check(coarse)
            v = (coarse.double() + 0.5) / self.dequantizer.levels
        x = (v.to(self._dtype()) * self._ranges[k]).repeat_interleave(n, dim=0)
        with skip_logdets(self):
            for s in reversed(range(k - levels, k)):
                shape = (x.shape[0], self._latent_shapes[s][0], *x.shape[-2:])
                eps = standard_normal_sample(shape, temperature, generator, x.device, x.dtype)
                x = self._decode_level(s, eps, x)
        v_fine = x / self._ranges[k - levels]
        return self.dequantizer.quantize(v_fine) if quantize else v_fine

    def _resolution_of(self, coarse: Tensor, levels: int) -> int:
        """The level index ``k`` whose coarse image ``coarse`` is taken to be."""
        if coarse.dim() != 4 or coarse.shape[1] != self.image_shape[0] or min(coarse.shape[-2:]) < 1:
            raise ShapeError(
                f"superres takes images (B, {self.image_shape[0]}, h, w) with this model's "
                f"{self.image_shape[0]} channel(s), got {tuple(coarse.shape)}"
            )
        if not 1 <= levels < self.num_resolutions:
            raise ValueError(
                f"this {self.num_resolutions}-resolution model can super-resolve 1..{self.num_resolutions - 1} "
                f"level(s) (x2 per level), not {levels}"
            )
        sizes = {tuple(s[1:]): i for i, s in enumerate(self._image_shapes) if i > 0}
        k = sizes.get(tuple(coarse.shape[-2:]), levels)
        if levels > k:
            raise ValueError(f"a {coarse.shape[-2]}x{coarse.shape[-1]} image can be super-resolved 1..{k} levels")
        return k


__all__ = ["PyramidSuperResolution"]
