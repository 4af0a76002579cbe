"""The multi-scale autoregressive (mAR) split prior of mAR-SCF (paper 001, supplement B, Fig. 6)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from msflow.core import InvertibleModule, require_cond, sum_except_batch
from msflow.nn.convlstm import ConvLSTM, LSTMState
from msflow.nn.subnets import ZeroConv2d, run_subnet


@dataclass
class MARState:
    """Where the channel recursion stands: the context map, the LSTM state, the next channel's index."""

    context: Tensor | None
    lstm: LSTMState
    index: int


class MARSplitPrior(InvertibleModule):
    r"""Channel-autoregressive Gaussian prior on the factored-out half, as an invertible standardisation.

    The first ``keep`` channels ``r`` pass through; the other ``F`` channels ``l = (l^1 .. l^F)``
    (each ``1 x H x W``) are standardised channel by channel:

    .. math::

        p(l \mid r) = \prod_{j=1}^{F} \mathcal N\big(l^j;\ \mu^j, \sigma^j\big), \qquad
        (\mu^j, \log\sigma^j) = \mathrm{head}\big(\mathrm{ConvLSTM}_j([l^{j-1}, e(r, c)])\big),

    .. math::

        \epsilon^j = (l^j - \mu^j)\, e^{-\log\sigma^j}, \qquad
        \log|\det \partial\epsilon/\partial l| = -\textstyle\sum_{j} \log\sigma^j

    with ``l^0 = 0`` and ``e`` the context embedding conv5x5 -> ReLU -> conv5x5 of the kept half
    (and the level's condition features ``c`` when ``cond_channels > 0``). The Jacobian is
    block-triangular over channels, so the log-det is exact, and ``log p(l | r) =
    log N(eps; 0, I) + logdet``: the base stays N(0, I) and temperature scales ``eps``.
    With ``keep = 0`` and no condition it is the top level's prior (channels autoregressive
    without ``r``).

    The density direction is teacher-forced: every ``l^{j-1}`` is known, so it is one
    ConvLSTM pass over the channels, parallel over batch and pixels (:meth:`ConvLSTM.forward`).
    The sampling direction (MARPS) is sequential: channel ``j`` is drawn from ``mu^j, sigma^j``
    and fed back to predict ``j + 1``, ``F`` calls of :meth:`step`.

    A learned per-channel offset of ``mu`` and ``log sigma`` (as in :class:`GaussianSplitPrior`)
    is added to the head's output, and the head is zero-initialised, so the prior starts as N(0, I).

    Args:
        num_channels: channels of the input.
        keep: channels passed through and used as context (0 at the top level).
        cond_channels: channels of the level's condition features (0: ``cond`` is ignored).
        hidden: channels of the ConvLSTM state (32 in the reference).
        num_layers: ConvLSTM layers (3 in the paper).
        kernel_size: ConvLSTM kernel (the reference: 5 at the first level).
        dilation: ConvLSTM dilation (the reference: 2 at the first level).
        embed_hidden: width of the context embedding (32).
        embed_channels: context channels concatenated to every step's input (4).

    Example:
        >>> import torch
        >>> prior = MARSplitPrior(4, keep=2, hidden=8)
        >>> x = torch.randn(2, 4, 3, 3)
        >>> z, ld = prior(x)
        >>> bool(torch.equal(z, x)), ld.abs().max().item()  # zero-initialised head: N(0, I) at the start
        (True, 0.0)
        >>> prior.num_sequential_steps
        2
    """

    def __init__(
        self,
        num_channels: int,
        keep: int,
        cond_channels: int = 0,
        hidden: int = 32,
        num_layers: int = 3,
        kernel_size: int = 3,
        dilation: int = 1,
        embed_hidden: int = 32,
        embed_channels: int = 4,
    ) -> None:
        super().__init__()
        if not 0 <= keep < num_channels:
            raise ValueError(f"keep must be in [0, {num_channels}), got {keep}")
        self.keep = keep
        self.cond_channels = cond_channels
        self.factored = num_channels - keep
        self.loc = nn.Parameter(torch.zeros(self.factored))
        self.log_sigma = nn.Parameter(torch.zeros(self.factored))
        context = keep + cond_channels
        self.embed = None
        if context:
            self.embed = nn.Sequential(
                nn.Conv2d(context, embed_hidden, 5, padding=2),
                nn.ReLU(),
                nn.Conv2d(embed_hidden, embed_channels, 5, padding=2),
            )
        self.lstm = ConvLSTM(1 + (embed_channels if context else 0), hidden, num_layers, kernel_size, dilation)
        self.head = ZeroConv2d(hidden, 2, 3)

    @property
    def num_sequential_steps(self) -> int:
        """Sequential ConvLSTM steps to sample this prior: one per factored channel (Lemma A.1)."""
        return self.factored

    def _context(self, h: Tensor, cond: Any) -> Tensor | None:
        if self.embed is None:
            return None
        inp = h
        if self.cond_channels:
            inp = torch.cat([h, require_cond(self, cond).to(h.dtype)], dim=1)
        # Computed once per call and shared by all steps, so it may follow the subnet precision.
        return run_subnet(self.embed, inp)

    def _offsets(self, dtype: torch.dtype, index: slice | int) -> tuple[Tensor, Tensor]:
        loc, log_sigma = self.loc.to(dtype)[index], self.log_sigma.to(dtype)[index]
        return loc.view(1, -1, 1, 1), log_sigma.view(1, -1, 1, 1)

    def teacher_forced_params(self, h: Tensor, z: Tensor, cond: Any = None) -> tuple[Tensor, Tensor]:
        """``mu, log sigma`` of every factored channel ``(B, F, H, W)`` given the kept half ``h`` and the true ``z``."""
        b, f = z.shape[:2]
        previous = torch.cat([torch.zeros_like(z[:, :1]), z[:, :-1]], dim=1)
        seq = previous.transpose(0, 1).unsqueeze(2)  # (F, B, 1, H, W): step j sees channel j - 1
        ctx = self._context(h, cond)
        if ctx is not None:
            seq = torch.cat([seq, ctx.unsqueeze(0).expand(f, *ctx.shape)], dim=2)
        out = self.lstm(seq)
        params = self.head(out.flatten(0, 1)).unflatten(0, (f, b))  # (F, B, 2, H, W)
        loc, log_sigma = self._offsets(z.dtype, slice(None))
        return params[:, :, 0].transpose(0, 1) + loc, params[:, :, 1].transpose(0, 1) + log_sigma

    def start(self, h: Tensor, cond: Any = None) -> MARState:
        """Begin the channel recursion for kept half ``h`` ``(B, keep, H, W)`` (``keep`` may be 0)."""
        first = h.new_zeros(h.shape[0], 1, *h.shape[2:])
        ctx = self._context(h, cond)
        like = first if ctx is None else torch.cat([first, ctx], dim=1)
        return MARState(ctx, self.lstm.initial_state(like), 0)

    def step(self, previous: Tensor, state: MARState) -> tuple[Tensor, Tensor, MARState]:
        """``(mu^j, log sigma^j, next state)`` of channel ``j = state.index`` from channel ``previous = l^{j-1}``.

        ``previous`` is ``(B, 1, H, W)``, zeros for the first channel.
        """
        if state.index >= self.factored:
            raise ValueError(f"all {self.factored} channels were already predicted")
        inp = previous if state.context is None else torch.cat([previous, state.context], dim=1)
        out, lstm_state = self.lstm.step(inp, state.lstm)
        params = self.head(out)
        loc, log_sigma = self._offsets(previous.dtype, slice(state.index, state.index + 1))
        return params[:, :1] + loc, params[:, 1:] + log_sigma, MARState(state.context, lstm_state, state.index + 1)

    def forward(self, x: Tensor, cond: Any = None) -> tuple[Tensor, Tensor]:
        h, z = x[:, : self.keep], x[:, self.keep :]
        mu, log_sigma = self.teacher_forced_params(h, z, cond)
        eps = (z - mu) * (-log_sigma).exp()
        return torch.cat([h, eps], dim=1), -sum_except_batch(log_sigma)

    def inverse(self, z: Tensor, cond: Any = None) -> tuple[Tensor, Tensor]:
        h, eps = z[:, : self.keep], z[:, self.keep :]
        state = self.start(h, cond)
        channel = torch.zeros_like(eps[:, :1])
        channels, logdet = [h], torch.zeros_like(eps[:, 0, 0, 0])
        for j in range(self.factored):
            mu, log_sigma, state = self.step(channel, state)
            channel = eps[:, j : j + 1] * log_sigma.exp() + mu
            channels.append(channel)
            logdet = logdet + sum_except_batch(log_sigma)
        return torch.cat(channels, dim=1), logdet


__all__ = ["MARSplitPrior", "MARState"]
