"""The affine injector of SRFlow (Lugmayr et al. 2020), used by CAFLOW's conditional flow steps."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from msflow.core import InvertibleModule, require_cond, sum_except_batch
from msflow.nn.subnets import SubnetFactory, conv_subnet, run_subnet
from msflow.transforms.coupling import LOG_SCALES


class AffineInjector(InvertibleModule):
    r"""Channel-and-pixel-wise affine map whose scale and shift depend on the condition only.

    .. math::

        (t, r) = \mathrm{NN}(c),\quad z = x\, e^{s(r)} + t,\quad
        \log|\det \partial z / \partial x| = \textstyle\sum s(r)

    Unlike a coupling, every channel of ``x`` is transformed, so the condition reaches all of
    it in one block; the map is invertible for any network because ``NN`` never sees ``x``.
    ``s`` is bounded (``"atan"``: ``|s| < 2``, CAFLOW's soft clamp; ``"wide"``: ``|s| < 6``, for
    normalising data whose scale varies from pixel to pixel; or ``"sigmoid"``/``"tanh"``/``"bounded"``
    as in :class:`~msflow.transforms.AffineCoupling`), and a zero-initialised last layer makes
    the block start as the identity.

    Args:
        num_channels: channels of ``x``.
        cond_channels: channels of the condition ``c``, at ``x``'s height and width.
        subnet: factory ``(in, out) -> nn.Module`` (default: Glow's network, 32 hidden).
        scale: a name in :data:`~msflow.transforms.coupling.LOG_SCALES` (``"atan"``, ``"wide"``, ...).

    Example:
        >>> import torch
        >>> layer = AffineInjector(4, cond_channels=2)
        >>> x, c = torch.randn(2, 4, 3, 3), torch.randn(2, 2, 3, 3)
        >>> z, ld = layer(x, c)
        >>> bool(torch.equal(z, x)), ld.tolist()  # identity at initialisation
        (True, [0.0, 0.0])
    """

    def __init__(
        self, num_channels: int, cond_channels: int, subnet: SubnetFactory | None = None, scale: str = "atan"
    ) -> None:
        super().__init__()
        if cond_channels < 1:
            raise ValueError(f"an affine injector needs a condition (cond_channels >= 1), got {cond_channels}")
        if scale not in LOG_SCALES:
            raise ValueError(f"unknown injector scale {scale!r}; choose one of {sorted(LOG_SCALES)}")
        self.num_channels = num_channels
        self.cond_channels = cond_channels
        self.net = (subnet or conv_subnet(32))(cond_channels, 2 * num_channels)
        self.log_scale_fn = LOG_SCALES[scale]

    def _shift_log_scale(self, cond: Any, like: Tensor) -> tuple[Tensor, Tensor]:
        c = require_cond(self, cond).to(like.dtype)
        if c.shape[1] != self.cond_channels or c.shape[-2:] != like.shape[-2:]:
            raise ValueError(
                f"AffineInjector expects conditions (B, {self.cond_channels}, {like.shape[-2]}, {like.shape[-1]}), "
                f"got {tuple(c.shape)}"
            )
        h = run_subnet(self.net, c)
        return h[:, 0::2], self.log_scale_fn(h[:, 1::2])

    def forward(self, x: Tensor, cond: Any = None) -> tuple[Tensor, Tensor]:
        shift, log_s = self._shift_log_scale(cond, x)
        return x * log_s.exp() + shift, sum_except_batch(log_s)

    def inverse(self, z: Tensor, cond: Any = None) -> tuple[Tensor, Tensor]:
        shift, log_s = self._shift_log_scale(cond, z)
        return (z - shift) * (-log_s).exp(), -sum_except_batch(log_s)
