"""Image files for fuzzing: valid ones in every pixel mode with the pixels msflow must read from
them, corruptions of those, and headers that declare decompression bombs."""

from __future__ import annotations

import io
import random
import struct
import zlib
from dataclasses import dataclass

import numpy as np
from PIL import Image


@dataclass
class Sample:
    """An encoded image and the uint8 ``(H, W, C)`` pixels msflow must read from it (C = 1 or 3)."""

    name: str
    data: bytes
    pixels: np.ndarray


def encode(image: Image.Image, fmt: str, **params: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **params)
    return buffer.getvalue()


def decode_rgb(data: bytes) -> np.ndarray:
    """Pillow's own RGB decode of an encoded colour image (the reference for lossy formats)."""
    with Image.open(io.BytesIO(data)) as im:
        return np.array(im.convert("RGBA").convert("RGB") if im.mode in ("P", "PA") else im.convert("RGB"))


def samples(rng: np.random.Generator, height: int, width: int) -> list[Sample]:
    """One valid file per pixel mode and format msflow documents, with its expected pixels."""
    grey = rng.integers(0, 256, (height, width), dtype=np.uint8)
    rgb = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    alpha = rng.integers(0, 256, (height, width), dtype=np.uint8)
    wide = rng.integers(0, 65536, (height, width), dtype=np.uint16)
    out = [
        Sample("L.png", encode(Image.fromarray(grey), "PNG"), grey[:, :, None]),
        Sample("RGB.png", encode(Image.fromarray(rgb), "PNG"), rgb),
        Sample("RGBA.png", encode(Image.fromarray(np.dstack([rgb, alpha])), "PNG"), rgb),
        Sample("LA.png", encode(Image.fromarray(np.dstack([grey, alpha])), "PNG"), grey[:, :, None]),
        # 16-bit greyscale is scaled to 8 bits, round(v / 257), not truncated to the high byte
        Sample("I16.png", encode(Image.fromarray(wide), "PNG"), np.rint(wide / 257).astype(np.uint8)[:, :, None]),
        Sample("1bit.png", encode(Image.fromarray(grey > 127), "PNG"), np.where(grey > 127, 255, 0)[:, :, None]),
        Sample("L.bmp", encode(Image.fromarray(grey), "BMP"), grey[:, :, None]),
        Sample("RGB.webp", encode(Image.fromarray(rgb), "WEBP", lossless=True), rgb),
    ]
    palette = rng.integers(0, 256, 768, dtype=np.uint8)
    indices = rng.integers(0, 256, (height, width), dtype=np.uint8)
    colours = palette.reshape(256, 3)[indices]
    for transparency in (None, int(indices[0, 0]), bytes(rng.integers(0, 256, 256, dtype=np.uint8))):
        p = Image.fromarray(indices, "P")
        p.putpalette(palette.tobytes())
        params = {} if transparency is None else {"transparency": transparency}
        kind = "none" if transparency is None else type(transparency).__name__
        out.append(Sample(f"P-{kind}.png", encode(p, "PNG", **params), colours))
    for mode in ("L", "RGB", "CMYK"):
        image = Image.fromarray(grey if mode == "L" else rgb).convert(mode)
        data = encode(image, "JPEG", quality=90)
        pixels = decode_rgb(data) if mode != "L" else np.array(Image.open(io.BytesIO(data)))[:, :, None]
        out.append(Sample(f"{mode}.jpg", data, pixels))
    return out


def truncate(data: bytes, rng: random.Random) -> bytes:
    return data[: rng.randrange(len(data))]


def flip_bytes(data: bytes, rng: random.Random) -> bytes:
    out = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        out[rng.randrange(len(out))] = rng.randrange(256)
    return bytes(out)


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png_declaring(width: int, height: int) -> bytes:
    """A PNG whose header declares ``width x height`` 8-bit grey pixels, with one row of data."""
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    rows = zlib.compress(b"\0" * (min(width, 4096) + 1))
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", rows) + _chunk(b"IEND", b"")


def bmp_declaring(width: int, height: int) -> bytes:
    """A 24-bit BMP header declaring ``width x height`` pixels and holding none."""
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 24, 0, 0, 2835, 2835, 0, 0)
    return b"BM" + struct.pack("<IHHI", 54, 0, 0, 54) + info


def bomb_sizes(rng: random.Random, limit: int) -> list[tuple[int, int]]:
    """Sizes just above ``limit`` pixels (Pillow only warns there), above twice it, and absurd."""
    sizes = []
    for factor in (1.05, 1.5, 2.5, 100.0):
        side = int((limit * factor) ** 0.5) + rng.randrange(1, 64)
        sizes.append((side, side))
    sizes.append((2**31 - 1, 2))
    sizes.append((limit + rng.randrange(1, 1000), 1))
    return sizes
