r"""Image complexity as the length of a lossless encoding (Serra et al., 2020).

.. math::

    L(x) = \frac{8 \cdot \mathrm{bytes}(\mathrm{encode}(x))}{D}, \qquad D = C H W,

in bits per dimension, the unit of bits/dim, so ``L(x) - bpd(x)`` is the log-likelihood ratio
(per dimension, base 2) of the model against the codec's implicit universal model. The length
is the whole file, headers included: a fixed cost for every image of one shape, so it shifts
``L`` but leaves rankings (and AUROC) alone.

Codecs, all lossless:

- ``png``: Pillow, ``optimize=True`` (zlib level 9 and the best filter search);
- ``webp``: Pillow, ``lossless=True, quality=100, method=6`` (slowest, smallest);
- ``jpeg2000``: Pillow with OpenJPEG, the reversible 5/3 wavelet (``irreversible=False``);
- ``jpegxl``: imagecodecs (the ``metrics`` extra: ``pip install 'msflow[metrics]'``), ``lossless=True, effort=9``.
  Serra et al. used FLIF, whose successor JPEG-XL's modular mode is.
"""

from __future__ import annotations

import io
from collections.abc import Callable

import numpy as np
import torch
from PIL import Image, features
from torch import Tensor

from msflow._optional import require
from msflow.errors import ConfigError

Encoder = Callable[[np.ndarray], bytes]
Decoder = Callable[[bytes], np.ndarray]

_PIL_OPTIONS: dict[str, tuple[str, str | None, dict]] = {
    # name: (Pillow format, Pillow feature that must be compiled in, save options)
    "png": ("PNG", None, {"optimize": True}),
    "webp": ("WEBP", "webp", {"lossless": True, "quality": 100, "method": 6}),
    "jpeg2000": ("JPEG2000", "jpg_2000", {"irreversible": False}),
}
CODECS = (*_PIL_OPTIONS, "jpegxl")


def _pil_codec(name: str) -> tuple[Encoder, Decoder]:
    fmt, feature, options = _PIL_OPTIONS[name]
    if feature is not None and not features.check(feature):
        raise ConfigError(f"codec {name!r} needs a Pillow built with {feature}; choose one of {', '.join(CODECS)}")

    def encode(array: np.ndarray) -> bytes:
        buffer = io.BytesIO()
        Image.fromarray(array).save(buffer, format=fmt, **options)
        return buffer.getvalue()

    def decode(data: bytes) -> np.ndarray:
        with Image.open(io.BytesIO(data)) as image:
            return np.asarray(image)

    return encode, decode


def _jpegxl_codec() -> tuple[Encoder, Decoder]:
    imagecodecs = require("imagecodecs", "metrics", "codec 'jpegxl'")
    if not imagecodecs.JPEGXL.available:
        raise ConfigError("this imagecodecs build has no JPEG-XL; pip install --upgrade imagecodecs")
    return (lambda a: bytes(imagecodecs.jpegxl_encode(a, lossless=True, effort=9))), imagecodecs.jpegxl_decode


def get_codec(name: str) -> tuple[Encoder, Decoder]:
    """``(encode, decode)`` of a codec: ``(H, W)`` or ``(H, W, 3)`` ``uint8`` arrays <-> bytes.

    Decoding returns what the codec stores; WebP keeps grey images as RGB with equal channels
    (:func:`decode_image` undoes that).

    Raises:
        ConfigError: unknown codec, or one that is not installed (with the install command).
    """
    if name not in CODECS:
        raise ConfigError(f"unknown codec {name!r}: choose one of {', '.join(CODECS)}")
    return _jpegxl_codec() if name == "jpegxl" else _pil_codec(name)


def _to_array(image: Tensor) -> np.ndarray:
    if image.dtype != torch.uint8 or image.dim() != 3 or image.shape[0] not in (1, 3):
        raise ConfigError(f"expected a uint8 grey or RGB image (C, H, W), got {image.dtype} {tuple(image.shape)}")
    array = image.detach().cpu().numpy().transpose(1, 2, 0)
    return np.ascontiguousarray(array[..., 0] if array.shape[2] == 1 else array)


def encode_image(image: Tensor, codec: str = "png") -> bytes:
    """The lossless encoding of one ``uint8`` image ``(C, H, W)``, ``C`` in {1, 3}.

    Example:
        >>> import torch
        >>> data = encode_image(torch.zeros(1, 28, 28, dtype=torch.uint8))
        >>> data[:4], len(data) < 100
        (b'\\x89PNG', True)
    """
    return get_codec(codec)[0](_to_array(image))


def decode_image(data: bytes, codec: str = "png", channels: int = 1) -> Tensor:
    """Decode :func:`encode_image`'s bytes back to a ``uint8`` image ``(channels, H, W)``.

    Example:
        >>> import torch
        >>> x = torch.randint(0, 256, (3, 8, 8), dtype=torch.uint8)
        >>> torch.equal(decode_image(encode_image(x, "webp"), "webp", channels=3), x)
        True
    """
    array = np.asarray(get_codec(codec)[1](data))
    if array.ndim == 2:
        array = array[..., None]
    if channels == 1 and array.shape[2] >= 3:
        array = array[..., :1]  # grey stored as RGB with equal channels
    return torch.from_numpy(array[..., :channels].transpose(2, 0, 1).copy())


def complexity(images: Tensor, codec: str = "png") -> Tensor:
    """``L(x)`` of each ``uint8`` image ``(N, C, H, W)`` in bits per dimension, ``(N,)`` float64.

    Example:
        >>> import torch
        >>> flat = torch.full((1, 1, 28, 28), 7, dtype=torch.uint8)
        >>> noise = torch.randint(0, 256, (1, 1, 28, 28), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
        >>> L = complexity(torch.cat([flat, noise]))
        >>> bool(L[0] < 1 < 8 < L[1])  # a constant image is cheap; noise costs more than its 8 bits
        True
    """
    encode = get_codec(codec)[0]
    dims = images[0].numel()
    sizes = [len(encode(_to_array(image))) for image in images]
    return torch.tensor(sizes, dtype=torch.float64) * 8 / dims
