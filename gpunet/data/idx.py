"""IDX files (MNIST, Fashion-MNIST): `gzip` or raw, validated before any reshape.

Layout (big-endian): two zero bytes, a type byte (0x08 = uint8), a byte giving the number of dimensions,
then one uint32 per dimension, then the data. Images are idx3 (N, rows, cols), labels idx1 (N,).
Every error names the file and what was expected.
"""
from __future__ import annotations

import gzip
import struct
import zlib
from pathlib import Path

import numpy as np


class IDXError(ValueError):
    """An IDX file is malformed: bad magic number, truncated, or sizes that disagree."""


def read_idx(path, ndim: int | None = None) -> np.ndarray:
    """Read a uint8 IDX file (gzip-compressed when its name ends in .gz, or when it starts with gzip's magic)."""
    path = Path(path)
    try:
        raw = path.read_bytes()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as e:  # gzip.BadGzipFile is an OSError; a damaged stream: zlib.error
        raise IDXError(f"{path}: cannot read IDX data ({type(e).__name__}: {e})") from e
    if len(raw) < 4:
        raise IDXError(f"{path}: too short for an IDX header ({len(raw)} bytes)")
    zero, dtype_code, dims = struct.unpack(">HBB", raw[:4])
    if zero != 0 or dtype_code != 0x08:
        raise IDXError(f"{path}: bad IDX magic number 0x{raw[:4].hex()}; expected 0x0000080{ndim or 'N'} "
                       f"(unsigned bytes, {ndim or 'N'} dimensions)")
    if ndim is not None and dims != ndim:
        raise IDXError(f"{path}: IDX file has {dims} dimension(s), expected {ndim} "
                       f"(magic 0x{raw[:4].hex()}, expected 0x0000080{ndim})")
    header = 4 + 4 * dims
    if len(raw) < header:
        raise IDXError(f"{path}: truncated IDX header ({len(raw)} bytes, need {header})")
    shape = struct.unpack(f">{dims}I", raw[4:header])
    expected = int(np.prod(shape, dtype=np.int64))
    got = len(raw) - header
    if got != expected:
        raise IDXError(f"{path}: IDX header says shape {shape} ({expected} bytes of data) but the file has "
                       f"{got} bytes of data{' (truncated?)' if got < expected else ''}")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def read_images(path) -> np.ndarray:
    """idx3 images -> (N, rows, cols) uint8."""
    return read_idx(path, ndim=3)


def read_labels(path, num_classes: int = 10) -> np.ndarray:
    """idx1 labels -> (N,) int64, checked to lie in [0, num_classes)."""
    y = read_idx(path, ndim=1)
    if y.size and int(y.max()) >= num_classes:
        raise IDXError(f"{Path(path)}: label {int(y.max())} out of range for {num_classes} classes")
    return y.astype(np.int64)


def write_idx(path, array) -> None:
    """Write a uint8 array as IDX (gzip when the name ends in .gz). Used to build test fixtures."""
    a = np.ascontiguousarray(array, dtype=np.uint8)
    data = struct.pack(">HBB", 0, 0x08, a.ndim) + struct.pack(f">{a.ndim}I", *a.shape) + a.tobytes()
    path = Path(path)
    path.write_bytes(gzip.compress(data, mtime=0) if path.name.endswith(".gz") else data)
