"""IDX, CIFAR-10 binary and downsampled-ImageNet .npz files for fuzzing, each with what must
happen when msflow reads it: the exact array for a valid file, an error for a broken one."""

from __future__ import annotations

import gzip
import io
import random
import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from msflow.data.cifar import RECORD_BYTES
from msflow.data.idx import IMAGES_MAGIC, LABELS_MAGIC

# A verdict is "ok" (the file is valid: `expected` must come back), "error" (a clear error must
# come back), or "either" (a random corruption that may or may not have broken the file).
OK, ERROR, EITHER = "ok", "error", "either"


@dataclass
class Case:
    kind: str
    data: bytes
    verdict: str
    expected: np.ndarray | None = None


def _idx_bytes(magic: int, dims: list[int], body: bytes) -> bytes:
    return struct.pack(">I", magic) + struct.pack(f">{len(dims)}I", *dims) + body


def idx_case(rng: random.Random, magic: int) -> Case:
    """One IDX file (the caller decides raw or .gz from ``Case.kind``) for a reader expecting ``magic``."""
    ndim = magic & 0xFF
    dims = [rng.randint(1, 4)] + [rng.randint(1, 6) for _ in range(ndim - 1)]
    array = np.frombuffer(rng.randbytes(int(np.prod(dims))), dtype=np.uint8).reshape(dims)
    good = _idx_bytes(magic, dims, array.tobytes())
    kind = rng.choice(["valid", "magic", "dtype", "ndim", "longer", "shorter", "header", "empty", "huge", "gz"])
    if kind == "valid":
        return Case(kind, good, OK, array)
    if kind == "magic":
        return Case(kind, struct.pack(">I", rng.choice([0x08080803, 0xFFFFFFFF, 0x00010803])) + good[4:], ERROR)
    if kind == "dtype":  # signed byte, short, int, float, double instead of unsigned byte
        code = rng.choice([0x09, 0x0B, 0x0C, 0x0D, 0x0E])
        return Case(kind, struct.pack(">I", (code << 8) | ndim) + good[4:], ERROR)
    if kind == "ndim":
        other = IMAGES_MAGIC if magic == LABELS_MAGIC else LABELS_MAGIC
        return Case(
            kind, struct.pack(">I", rng.choice([other, (magic & ~0xFF) | rng.choice([0, 2, 4, 255])])) + good[4:], ERROR
        )
    if kind == "longer":
        return Case(kind, good + rng.randbytes(rng.randint(1, 50)), ERROR)
    if kind == "shorter":
        return Case(kind, good[: len(good) - rng.randint(1, int(array.size))], ERROR)
    if kind == "header":
        return Case(kind, good[: rng.randrange(4 + 4 * ndim)], ERROR)
    if kind == "empty":
        return Case(kind, b"", ERROR)
    if kind == "huge":  # a header declaring up to 2**96 values over a few bytes of data
        huge = [rng.choice([2**32 - 1, 2**31, 60000])] * ndim
        return Case(kind, _idx_bytes(magic, huge, array.tobytes()), ERROR)
    stream = bytearray(gzip.compress(good, mtime=0))
    if rng.random() < 0.5:
        return Case("gz-truncated", bytes(stream[: rng.randrange(len(stream))]), ERROR)
    for _ in range(rng.randint(1, 4)):
        stream[rng.randrange(len(stream))] = rng.randrange(256)
    return Case("gz-flipped", bytes(stream), EITHER, array)


def cifar_case(rng: random.Random) -> Case:
    """One CIFAR-10 binary batch: valid, of a wrong length, empty, or with a label above 9."""
    n = rng.randint(1, 3)
    records = np.frombuffer(rng.randbytes(n * RECORD_BYTES), dtype=np.uint8).reshape(n, RECORD_BYTES).copy()
    records[:, 0] %= 10
    kind = rng.choice(["valid", "cut", "extra", "empty", "label", "one-byte"])
    if kind == "valid":
        return Case(kind, records.tobytes(), OK, records)
    if kind == "cut":
        return Case(kind, records.tobytes()[: -rng.randint(1, RECORD_BYTES - 1)], ERROR)
    if kind == "extra":
        return Case(kind, records.tobytes() + rng.randbytes(rng.randint(1, RECORD_BYTES - 1)), ERROR)
    if kind == "empty":
        return Case(kind, b"", ERROR)
    if kind == "one-byte":
        return Case(kind, bytes([rng.randrange(256)]), ERROR)
    records[rng.randrange(n), 0] = rng.randint(10, 255)
    return Case(kind, records.tobytes(), ERROR)


class Unpickled:
    """Unpickling this object creates a marker file: proof that something was unpickled."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (Path.write_text, (self.marker, "unpickled!"))


def _npy_header(shape: tuple[int, ...], dtype: str) -> bytes:
    buffer = io.BytesIO()
    header = {"descr": np.dtype(dtype).str, "fortran_order": False, "shape": shape}
    np.lib.format.write_array_header_1_0(buffer, header)
    return buffer.getvalue()


def npz_case(rng: random.Random, marker: Path, size: int = 32) -> Case:
    """One ``val_data.npz``: valid, pickled objects, wrong keys/dtypes/shapes/labels, lying headers,
    truncated, not a zip."""
    n, width = rng.randint(1, 3), 3 * size * size
    data = np.frombuffer(rng.randbytes(n * width), dtype=np.uint8).reshape(n, width)
    labels = np.array([rng.randint(1, 1000) for _ in range(n)], dtype=rng.choice([np.int64, np.int32, np.uint16]))
    arrays: dict[str, np.ndarray] = {"data": data, "labels": labels}
    kind = rng.choice(["valid", "pickle", "keys", "dtype", "shape", "labels", "lies", "truncated", "not-zip", "empty"])
    if kind == "pickle":
        arrays[rng.choice(["data", "labels"])] = np.array([Unpickled(marker), 1], dtype=object)
    elif kind == "keys":
        arrays = {rng.choice(["x", "images", "arr_0"]): data, **rng.choice([{}, {"labels": labels}])}
    elif kind == "dtype":
        key = rng.choice(["data", "labels"])
        arrays[key] = arrays[key].astype(
            rng.choice([np.float32, np.float64, np.int64] if key == "data" else [np.float32, np.bool_, "U4"])
        )
    elif kind == "shape":
        arrays["data"] = np.zeros(
            rng.choice([(n,), (n, 3, size, size), (n, width * 4 + 1), (n, 100), (n, width, 1)]), np.uint8
        )
    elif kind == "labels":
        arrays["labels"] = np.array([rng.choice([0, 1001, -5, 2**40])] * n, np.int64)
    elif kind == "empty":
        arrays = {"data": data[:0], "labels": labels[:0]}
    buffer = io.BytesIO()
    if kind == "lies":  # headers that declare more (or fewer) rows than the members hold
        with zipfile.ZipFile(buffer, "w") as zf:
            rows = rng.choice([10**12, 2**62, n + 1] + ([n - 1] if n > 1 else []))
            zf.writestr("data.npy", _npy_header((rows, width), "u1") + data.tobytes()[: width * n])
            zf.writestr("labels.npy", _npy_header((rows,), "<i8") + labels.astype(np.int64).tobytes())
    else:
        (np.savez if rng.random() < 0.5 else np.savez_compressed)(buffer, **arrays)
    blob = buffer.getvalue()
    if kind == "truncated":
        blob = blob[: rng.randrange(len(blob))]
    elif kind == "not-zip":
        blob = rng.randbytes(rng.randrange(300))
    expected = data.reshape(n, 3, size, size) if kind == "valid" else None
    return Case(kind, blob, OK if kind == "valid" else ERROR, expected)
