"""FID's Inception-v3 feature extractor, without torchvision, loading user-supplied weights.

FID (Heusel et al., 2017) is the Frechet distance between Gaussians fitted to the 2048-d
``pool3`` features of the 2015-12-05 TensorFlow Inception-v3 graph. :class:`FIDInception` is that
network written for msflow: the torchvision ``inception_v3`` layout (its parameter and buffer
names, so a torchvision-style state dict loads key for key) with the differences of the FID port
in ``pytorch-fid``:

- batch norm with ``eps=0.001`` after every bias-free convolution;
- the average pools in ``Mixed_5b``-``Mixed_7b`` do not count the zero padding
  (``count_include_pad=False``), and the pool branch of ``Mixed_7c`` is a 3x3 *max* pool, as in
  the TensorFlow graph;
- input resized to 299x299 (bilinear, ``align_corners=False``) and scaled from [0, 1] to [-1, 1];
- output: the global average pool of ``Mixed_7c``, ``(N, 2048)``. No auxiliary classifier and
  no ``fc`` layer are built; those keys of a weights file (``AuxLogits.*``, ``fc.*``) are ignored.

msflow does not ship or download weights. :func:`load_fid_inception` reads a state dict the user
supplies: a ``.safetensors`` file, or a ``.pt``/``.pth`` file read with
``torch.load(..., weights_only=True)``, which refuses pickles that would run code. The intended
file is pytorch-fid's ``pt_inception-2015-12-05`` state dict (converted from the TensorFlow
graph); with it, :func:`inception_features` should give the features FID is defined on.
torchvision's ImageNet ``inception_v3`` weights also load (same names), but they are a different
network trained with a different input normalisation, so their distances are *not* FID.

Unverified here: the official weights cannot be downloaded in the environment msflow was built
in, so the numbers have never been checked against reference FIDs (e.g. pytorch-fid's or the
TensorFlow implementation's on the same images). The tests check shapes, names, loading and
determinism with random weights only.

Example:
    >>> net = FIDInception().eval()
    >>> net(torch.zeros(1, 3, 299, 299)).shape
    torch.Size([1, 2048])
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from msflow.errors import MsflowError

FID_INPUT_SIZE = 299
FID_FEATURES = 2048
# Keys of a weights file that the feature network does not use.
_IGNORED_PREFIXES = ("AuxLogits.", "fc.")


class BasicConv2d(nn.Module):
    """Bias-free convolution, batch norm (eps 0.001), ReLU; parameters ``conv.*`` and ``bn.*``."""

    def __init__(self, cin: int, cout: int, kernel_size: int | tuple[int, int], **kwargs: object) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel_size, bias=False, **kwargs)  # type: ignore[arg-type]
        self.bn = nn.BatchNorm2d(cout, eps=0.001)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.bn(self.conv(x)))


def _avg_pool(x: Tensor) -> Tensor:
    # FID port: padding is not counted in the average.
    return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)


class InceptionA(nn.Module):
    """35x35 block (``Mixed_5b``-``Mixed_5d``): 1x1, 5x5, double 3x3 and pool branches."""

    def __init__(self, cin: int, pool_features: int) -> None:
        super().__init__()
        self.branch1x1 = BasicConv2d(cin, 64, 1)
        self.branch5x5_1 = BasicConv2d(cin, 48, 1)
        self.branch5x5_2 = BasicConv2d(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(cin, 64, 1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, padding=1)
        self.branch_pool = BasicConv2d(cin, pool_features, 1)

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat(
            [
                self.branch1x1(x),
                self.branch5x5_2(self.branch5x5_1(x)),
                self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
                self.branch_pool(_avg_pool(x)),
            ],
            1,
        )


class InceptionB(nn.Module):
    """Grid reduction 35 -> 17 (``Mixed_6a``)."""

    def __init__(self, cin: int) -> None:
        super().__init__()
        self.branch3x3 = BasicConv2d(cin, 384, 3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(cin, 64, 1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        dbl = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([self.branch3x3(x), dbl, F.max_pool2d(x, kernel_size=3, stride=2)], 1)


class InceptionC(nn.Module):
    """17x17 block with factorised 7x7 convolutions (``Mixed_6b``-``Mixed_6e``)."""

    def __init__(self, cin: int, channels_7x7: int) -> None:
        super().__init__()
        c7 = channels_7x7
        self.branch1x1 = BasicConv2d(cin, 192, 1)
        self.branch7x7_1 = BasicConv2d(cin, c7, 1)
        self.branch7x7_2 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7_3 = BasicConv2d(c7, 192, (7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = BasicConv2d(cin, c7, 1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = BasicConv2d(c7, 192, (1, 7), padding=(0, 3))
        self.branch_pool = BasicConv2d(cin, 192, 1)

    def forward(self, x: Tensor) -> Tensor:
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        d = x
        for layer in (
            self.branch7x7dbl_1,
            self.branch7x7dbl_2,
            self.branch7x7dbl_3,
            self.branch7x7dbl_4,
            self.branch7x7dbl_5,
        ):
            d = layer(d)
        return torch.cat([self.branch1x1(x), b7, d, self.branch_pool(_avg_pool(x))], 1)


class InceptionD(nn.Module):
    """Grid reduction 17 -> 8 (``Mixed_7a``)."""

    def __init__(self, cin: int) -> None:
        super().__init__()
        self.branch3x3_1 = BasicConv2d(cin, 192, 1)
        self.branch3x3_2 = BasicConv2d(192, 320, 3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(cin, 192, 1)
        self.branch7x7x3_2 = BasicConv2d(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(192, 192, 3, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        b3 = self.branch3x3_2(self.branch3x3_1(x))
        b7 = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x))))
        return torch.cat([b3, b7, F.max_pool2d(x, kernel_size=3, stride=2)], 1)


class InceptionE(nn.Module):
    """8x8 block with split 1x3/3x1 branches (``Mixed_7b``, ``Mixed_7c``).

    ``max_pool=True`` is the FID port's ``Mixed_7c``: its pool branch takes a 3x3 max pool.
    """

    def __init__(self, cin: int, max_pool: bool = False) -> None:
        super().__init__()
        self.max_pool = max_pool
        self.branch1x1 = BasicConv2d(cin, 320, 1)
        self.branch3x3_1 = BasicConv2d(cin, 384, 1)
        self.branch3x3_2a = BasicConv2d(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(384, 384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = BasicConv2d(cin, 448, 1)
        self.branch3x3dbl_2 = BasicConv2d(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv2d(384, 384, (3, 1), padding=(1, 0))
        self.branch_pool = BasicConv2d(cin, 192, 1)

    def forward(self, x: Tensor) -> Tensor:
        b3 = self.branch3x3_1(x)
        b3 = torch.cat([self.branch3x3_2a(b3), self.branch3x3_2b(b3)], 1)
        d = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        d = torch.cat([self.branch3x3dbl_3a(d), self.branch3x3dbl_3b(d)], 1)
        pooled = F.max_pool2d(x, kernel_size=3, stride=1, padding=1) if self.max_pool else _avg_pool(x)
        return torch.cat([self.branch1x1(x), b3, d, self.branch_pool(pooled)], 1)


class FIDInception(nn.Module):
    """Inception-v3 up to the 2048-d pool features, FID variant, torchvision parameter names.

    ``forward`` takes float images ``(N, 3, 299, 299)`` already scaled to [-1, 1] and returns
    ``(N, 2048)``; :func:`inception_features` does the resizing and scaling from uint8.
    """

    def __init__(self) -> None:
        super().__init__()
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, 3)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, 3, padding=1)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, 1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, 3)
        self.Mixed_5b = InceptionA(192, pool_features=32)
        self.Mixed_5c = InceptionA(256, pool_features=64)
        self.Mixed_5d = InceptionA(288, pool_features=64)
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b = InceptionC(768, channels_7x7=128)
        self.Mixed_6c = InceptionC(768, channels_7x7=160)
        self.Mixed_6d = InceptionC(768, channels_7x7=160)
        self.Mixed_6e = InceptionC(768, channels_7x7=192)
        self.Mixed_7a = InceptionD(768)
        self.Mixed_7b = InceptionE(1280)
        self.Mixed_7c = InceptionE(2048, max_pool=True)

    def forward(self, x: Tensor) -> Tensor:
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        for name in ("5b", "5c", "5d", "6a", "6b", "6c", "6d", "6e", "7a", "7b", "7c"):
            x = getattr(self, f"Mixed_{name}")(x)
        return x.mean(dim=(2, 3))

    def features(self, images: Tensor, batch_size: int = 50) -> Tensor:
        """:func:`inception_features` of uint8 images ``(N, C, H, W)``: ``(N, 2048)``."""
        return inception_features(self, images, batch_size)


def _read_state_dict(path: Path) -> dict[str, Tensor]:
    if not path.is_file():
        raise MsflowError(
            f"Inception weights file {str(path)!r} not found; give a state dict of FID's InceptionV3 (pytorch-fid's "
            "pt_inception-2015-12-05 or torchvision's inception_v3 naming), or drop --inception to get msflow's FCD"
        )
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except Exception as exc:  # noqa: BLE001 - any failure means an unreadable file
            raise MsflowError(f"Inception weights {str(path)!r}: not a readable safetensors file ({exc})") from exc
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - weights_only refusals and corrupt files alike
        raise MsflowError(
            f"Inception weights {str(path)!r}: not a weights-only PyTorch state dict, refused without running any "
            f"code in it ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"
        ) from exc
    if isinstance(state, Mapping) and "state_dict" in state and isinstance(state["state_dict"], Mapping):
        state = state["state_dict"]
    if not isinstance(state, Mapping) or not all(isinstance(v, Tensor) for v in state.values()):
        raise MsflowError(f"Inception weights {str(path)!r}: expected a dict of tensors, got {type(state).__name__}")
    return dict(state)


def _listing(keys: list[str], limit: int = 8) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys)} in all)" if len(keys) > limit else "")


def load_fid_inception(path: str | os.PathLike[str], device: str | torch.device = "cpu") -> FIDInception:
    """:class:`FIDInception` in eval mode with the weights in ``path`` (``.safetensors``, ``.pt`` or ``.pth``).

    Every parameter and batch-norm statistic of the feature layers must be present with its
    shape (``num_batches_tracked`` may be absent); ``AuxLogits.*`` and ``fc.*`` are ignored.

    Raises:
        MsflowError: naming the file when it is missing or unreadable, would run code when
            unpickled, or has missing, unexpected or wrongly shaped keys.
    """
    path = Path(path)
    state = {k: v for k, v in _read_state_dict(path).items() if not k.startswith(_IGNORED_PREFIXES)}
    net = FIDInception()
    expected = net.state_dict()
    optional = {k for k in expected if k.endswith("num_batches_tracked")}
    missing = sorted(k for k in expected if k not in state and k not in optional)
    unexpected = sorted(k for k in state if k not in expected)
    wrong = sorted(
        f"{k} {tuple(state[k].shape)} (expected {tuple(v.shape)})"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    )
    problems = []
    if missing:
        problems.append(f"missing keys: {_listing(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {_listing(unexpected)}")
    if wrong:
        problems.append(f"shape mismatches: {_listing(wrong)}")
    if problems:
        raise MsflowError(
            f"Inception weights {str(path)!r} do not fit FID's Inception-v3 (torchvision inception_v3 names): "
            + "; ".join(problems)
        )
    for k, v in state.items():
        if not v.is_floating_point() and not k.endswith("num_batches_tracked"):
            raise MsflowError(f"Inception weights {str(path)!r}: {k} has dtype {v.dtype}, expected floating point")
    net.load_state_dict({k: v.to(expected[k].dtype) for k, v in state.items()}, strict=False)
    return net.eval().to(device)


def inception_features(net: nn.Module, images: Tensor, batch_size: int = 50) -> Tensor:
    """2048-d FID features ``(N, 2048)`` (float32, CPU) of uint8 images ``(N, C, H, W)``, ``C`` 1 or 3.

    Greyscale images are repeated to three channels; each batch is scaled to [0, 1], resized to
    299x299 (bilinear, ``align_corners=False``), mapped to [-1, 1] and run through ``net`` in
    inference mode.

    Raises:
        MsflowError: images that are not uint8 ``(N, 1 or 3, H, W)``.
    """
    if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] not in (1, 3):
        raise MsflowError(
            f"Inception features need uint8 images (N, 1 or 3, H, W), got {images.dtype} {tuple(images.shape)}"
        )
    device = next(net.parameters()).device
    out = []
    with torch.inference_mode():
        for start in range(0, len(images), batch_size):
            x = images[start : start + batch_size].to(device, torch.float32) / 255.0
            if x.shape[1] == 1:
                x = x.repeat(1, 3, 1, 1)
            x = F.interpolate(x, size=(FID_INPUT_SIZE, FID_INPUT_SIZE), mode="bilinear", align_corners=False)
            out.append(net(2 * x - 1).float().cpu())
    return torch.cat(out) if out else torch.empty(0, FID_FEATURES)


__all__ = ["FID_FEATURES", "FIDInception", "inception_features", "load_fid_inception"]
