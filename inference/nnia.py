"""The "NNIA" array container of nnInteractive's remote protocol (version 1), read and written with blosc2.

Layout (docs/server.md, from the protocol reference): magic b"NNIA", version uint8 = 1, codec id uint8
(1 = ZSTD, 2 = LZ4), ndim uint8, the length of the numpy dtype name uint8, the dtype name (ASCII), the shape
as ndim int64 little-endian, the number of chunks uint32 LE, then per chunk its raw length uint64 LE, its
compressed length uint64 LE and one blosc2 chunk (`blosc2.compress2`) of at most 1 GiB of raw C-ordered
little-endian data. Arrays keep the axis order they were sent in; this module never reorders axes.

Only the server (`inference.serve`) imports this module: the challenge container does not need blosc2.
"""
from __future__ import annotations

import struct

import blosc2
import numpy as np

MAGIC = b"NNIA"
VERSION = 1
CODEC_IDS = {1: blosc2.Codec.ZSTD, 2: blosc2.Codec.LZ4}
CHUNK_BYTES = 1 << 30  # raw bytes per blosc2 chunk (compress2 handles < 2 GiB)
ALLOWED_KINDS = "biuf"  # bool, signed, unsigned, float


class NNIAError(ValueError):
    """A body that is not a valid NNIA array (the message says what is wrong)."""


def pack_array(array: np.ndarray, codec_id: int = 1, clevel: int = 3, shuffle: bool = False,
               nthreads: int = 1) -> bytes:
    """Serialise an array (any axis order, kept) as NNIA bytes: C order, little-endian, blosc2 chunks."""
    if codec_id not in CODEC_IDS:
        raise ValueError(f"unknown NNIA codec id {codec_id}")
    a = np.asarray(array)
    if a.dtype.kind not in ALLOWED_KINDS:
        raise ValueError(f"dtype {a.dtype} cannot be sent (numeric or bool only)")
    if a.dtype.byteorder == ">":
        a = a.astype(a.dtype.newbyteorder("<"))
    a = np.ascontiguousarray(a)
    name = a.dtype.name.encode("ascii")
    parts = [MAGIC, struct.pack("<BBBB", VERSION, codec_id, a.ndim, len(name)), name,
             struct.pack(f"<{a.ndim}q", *a.shape)]
    raw = memoryview(a.reshape(-1).view(np.uint8)) if a.size else memoryview(b"")
    step = CHUNK_BYTES - CHUNK_BYTES % a.itemsize
    chunks = []
    filters = [blosc2.Filter.SHUFFLE if shuffle else blosc2.Filter.NOFILTER]
    for start in range(0, len(raw), step):
        piece = raw[start:start + step]
        c = blosc2.compress2(piece, codec=CODEC_IDS[codec_id], clevel=clevel, filters=filters,
                             typesize=a.itemsize, nthreads=nthreads)
        chunks.append(struct.pack("<QQ", len(piece), len(c)) + c)
    parts.append(struct.pack("<I", len(chunks)))
    parts.extend(chunks)
    return b"".join(parts)


def _take(buf: memoryview, pos: int, n: int, what: str) -> tuple[memoryview, int]:
    if pos + n > len(buf):
        raise NNIAError(f"NNIA body truncated while reading {what} ({len(buf)} bytes)")
    return buf[pos:pos + n], pos + n


def read_header(data: bytes | memoryview) -> tuple[np.dtype, tuple[int, ...], int]:
    """Validate the NNIA header; returns (dtype, shape, offset of the chunk count)."""
    buf = memoryview(data)
    if len(buf) < 8:
        raise NNIAError(f"NNIA body too short ({len(buf)} bytes)")
    if bytes(buf[:4]) != MAGIC:
        raise NNIAError("body is not an NNIA array (bad magic)")
    version, codec_id, ndim, name_len = struct.unpack("<BBBB", buf[4:8])
    if version != VERSION:
        raise NNIAError(f"unsupported NNIA version {version} (expected {VERSION})")
    if codec_id not in CODEC_IDS:
        raise NNIAError(f"unknown NNIA codec id {codec_id} (1 = ZSTD, 2 = LZ4)")
    name, pos = _take(buf, 8, name_len, "the dtype name")
    try:
        dtype = np.dtype(bytes(name).decode("ascii"))
    except (TypeError, ValueError, UnicodeDecodeError):
        raise NNIAError(f"unknown dtype name {bytes(name)!r}") from None
    if dtype.kind not in ALLOWED_KINDS:
        raise NNIAError(f"dtype {dtype} is not numeric")
    shape_bytes, pos = _take(buf, pos, 8 * ndim, "the shape")
    shape = struct.unpack(f"<{ndim}q", shape_bytes)
    if any(s < 0 for s in shape):
        raise NNIAError(f"negative dimension in shape {shape}")
    return dtype.newbyteorder("<"), tuple(int(s) for s in shape), pos


def unpack_array(data: bytes | memoryview, max_bytes: int | None = None) -> np.ndarray:
    """Read NNIA bytes into an array (the sender's axis order); refuses arrays over `max_bytes` before
    decompressing anything, and any inconsistency between the header, the chunk sizes and the blosc2 chunks."""
    dtype, shape, pos = read_header(data)
    buf = memoryview(data)
    total = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if max_bytes is not None and total > max_bytes:
        raise NNIAError(f"array of shape {shape} {dtype} ({total / 2**20:.0f} MiB) exceeds the limit of "
                        f"{max_bytes / 2**20:.0f} MiB")
    count_bytes, pos = _take(buf, pos, 4, "the chunk count")
    (nchunks,) = struct.unpack("<I", count_bytes)
    out = np.empty(total, np.uint8)
    filled = 0
    for i in range(nchunks):
        sizes, pos = _take(buf, pos, 16, f"chunk {i}'s sizes")
        ulen, clen = struct.unpack("<QQ", sizes)
        chunk, pos = _take(buf, pos, clen, f"chunk {i}")
        if ulen % dtype.itemsize or filled + ulen > total:
            raise NNIAError(f"chunk {i}: {ulen} raw bytes do not fit shape {shape} {dtype}")
        try:
            nbytes = blosc2.get_cbuffer_sizes(chunk)[0]
        except Exception:
            raise NNIAError(f"chunk {i} is not a blosc2 chunk") from None
        if nbytes != ulen:
            raise NNIAError(f"chunk {i}: blosc2 holds {nbytes} bytes, the header says {ulen}")
        try:
            raw = blosc2.decompress2(chunk)
        except Exception as err:
            raise NNIAError(f"chunk {i} does not decompress: {err}") from None
        if len(raw) != ulen:
            raise NNIAError(f"chunk {i} decompressed to {len(raw)} bytes, expected {ulen}")
        out[filled:filled + ulen] = np.frombuffer(raw, np.uint8)
        filled += ulen
    if filled != total:
        raise NNIAError(f"chunks hold {filled} bytes, shape {shape} {dtype} needs {total}")
    if pos != len(buf):
        raise NNIAError(f"{len(buf) - pos} unexpected bytes after the last chunk")
    return out.view(dtype).reshape(shape)
