"""Convolutional LSTM (Shi et al. 2015), the recurrent network of the mAR prior (paper 001, Fig. 6).

A ConvLSTM is an LSTM whose gates are convolutions, so its state is a feature map and every
pixel has its own memory. Time here runs over *channels* of a latent: step ``j`` sees channel
``j - 1``. Two ways to run the same network:

- :meth:`ConvLSTM.forward` (teacher forcing, the density direction): the whole input sequence
  is known, so each layer's input convolution runs once over all steps (time folded into the
  batch) and only the recurrent convolution loops over time, layer by layer.
- :meth:`ConvLSTM.step` (sampling): one time step through every layer, because the next input
  is produced from this step's output.

Both use the same cells and give the same outputs up to float rounding.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

LSTMState = list[tuple[Tensor, Tensor]]
"""``[(h, c), ...]``, one hidden and cell map ``(B, hidden, H, W)`` per layer."""


class ConvLSTMCell(nn.Module):
    r"""One ConvLSTM layer.

    .. math::

        (i, f, o, g) = W_x * x_t + W_h * h_{t-1} + b, \quad
        c_t = \sigma(f) \odot c_{t-1} + \sigma(i) \odot \tanh(g), \quad
        h_t = \sigma(o) \odot \tanh(c_t)

    with ``*`` a ``k x k`` convolution (dilation ``d``, "same" padding).

    Args:
        in_channels: channels of the input ``x_t``.
        hidden: channels of ``h`` and ``c``.
        kernel_size: odd kernel size of both convolutions.
        dilation: dilation of both convolutions (a wider field of view for the same cost).
    """

    def __init__(self, in_channels: int, hidden: int, kernel_size: int = 3, dilation: int = 1) -> None:
        super().__init__()
        if kernel_size % 2 != 1:
            raise ValueError(f"kernel_size must be odd (same padding), got {kernel_size}")
        pad = dilation * (kernel_size // 2)
        self.hidden = hidden
        self.input_conv = nn.Conv2d(in_channels, 4 * hidden, kernel_size, padding=pad, dilation=dilation)
        self.hidden_conv = nn.Conv2d(hidden, 4 * hidden, kernel_size, padding=pad, dilation=dilation, bias=False)
        with torch.no_grad():
            # Forget-gate bias 1 (Jozefowicz et al. 2015): the cell remembers by default.
            self.input_conv.bias.zero_()
            self.input_conv.bias[hidden : 2 * hidden] = 1.0

    def cell(self, input_gates: Tensor, state: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        """One step from precomputed ``W_x * x_t + b``; returns the new ``(h, c)``."""
        h, c = state
        i, f, o, g = (input_gates + self.hidden_conv(h)).chunk(4, dim=1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        return torch.sigmoid(o) * torch.tanh(c), c


class ConvLSTM(nn.Module):
    """A stack of :class:`ConvLSTMCell` s; layer ``l + 1`` reads layer ``l``'s hidden map.

    Args:
        in_channels: channels of each input ``x_t``.
        hidden: channels of every layer's state.
        num_layers: stacked layers (3 in mAR-SCF).
        kernel_size: kernel of every convolution.
        dilation: dilation of every convolution.

    Example:
        >>> import torch
        >>> lstm = ConvLSTM(2, hidden=4, num_layers=3)
        >>> seq = torch.randn(5, 1, 2, 3, 3)  # (T, B, C, H, W)
        >>> out = lstm(seq)
        >>> out.shape
        torch.Size([5, 1, 4, 3, 3])
        >>> state = lstm.initial_state(seq[0])
        >>> steps = []
        >>> for x_t in seq:
        ...     h, state = lstm.step(x_t, state)
        ...     steps.append(h)
        >>> bool(torch.allclose(torch.stack(steps), out, atol=1e-6))
        True
    """

    def __init__(
        self, in_channels: int, hidden: int = 32, num_layers: int = 3, kernel_size: int = 3, dilation: int = 1
    ) -> None:
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"a ConvLSTM needs at least one layer, got {num_layers}")
        self.hidden = hidden
        sizes = [in_channels] + [hidden] * (num_layers - 1)
        self.cells = nn.ModuleList(ConvLSTMCell(n, hidden, kernel_size, dilation) for n in sizes)

    def initial_state(self, like: Tensor) -> LSTMState:
        """Zero ``(h, c)`` for every layer, for inputs shaped like ``like`` ``(B, C, H, W)``."""
        b, _, h, w = like.shape
        zeros = like.new_zeros(b, self.hidden, h, w)
        return [(zeros, zeros) for _ in self.cells]

    def step(self, x: Tensor, state: LSTMState) -> tuple[Tensor, LSTMState]:
        """One time step through all layers: ``x (B, C, H, W) -> (top hidden map, new state)``."""
        new_state = []
        for cell, layer_state in zip(self.cells, state, strict=True):
            h, c = cell.cell(cell.input_conv(x), layer_state)
            new_state.append((h, c))
            x = h
        return x, new_state

    def forward(self, seq: Tensor) -> Tensor:
        """Teacher-forced run over a known sequence ``(T, B, C, H, W)`` -> top hidden maps ``(T, B, hidden, H, W)``.

        Layer by layer: the input convolution of a layer sees every step at once; only the
        recurrent convolution loops over ``T``. The state starts at zero.
        """
        t, b = seq.shape[:2]
        x = seq
        for cell in self.cells:
            gates = cell.input_conv(x.flatten(0, 1)).unflatten(0, (t, b))
            zeros = x.new_zeros(b, self.hidden, *x.shape[3:])
            state, outputs = (zeros, zeros), []
            for j in range(t):
                state = cell.cell(gates[j], state)
                outputs.append(state[0])
            x = torch.stack(outputs)
        return x


__all__ = ["ConvLSTM", "ConvLSTMCell", "LSTMState"]
