"""One chunk's bytes: check them, decode them, find each piece in them and convert it.

The single copy of each rule every reader of a chunk follows (the container's reader, the
streaming worker, the eager baseline and unpack): the stored bytes' CRC-32, a codec error re-raised
naming the chunk, where a piece's values (and an INT8 piece's scales) lie in the decoded bytes,
and how a piece becomes the array its consumer asked for.
"""

from __future__ import annotations

from concurrent.futures import Executor

import numpy as np

from wstream import errors as E
from wstream.format import codecs
from wstream.format.crc import crc32
from wstream.format.manifest import ChunkEntry, TensorEntry
from wstream.format.quant import QuantPiece, apply_scales, dequantize_int8
from wstream.format.spec import QuantScheme
from wstream.format.uint4 import check_zeros, unpack_uint4

Buffer = bytes | bytearray | memoryview
Stored = np.ndarray | QuantPiece  # a piece as stored: its values, or quantized values + scales


def check_crc(chunk: ChunkEntry, stored: Buffer) -> None:
    """Raise :class:`~wstream.errors.ChunkChecksumMismatch` unless ``stored`` matches the CRC."""
    check_crc_value(chunk, crc32(stored))


def check_crc_value(chunk: ChunkEntry, crc: int) -> None:
    """:func:`check_crc` for a CRC already computed (e.g. piece by piece as the bytes came in)."""
    if crc != chunk.crc32:
        raise E.ChunkChecksumMismatch(
            f"chunk {chunk.name!r}: crc32 stored {chunk.crc32:#010x}, computed {crc:#010x}"
        )


def decode_into(
    chunk: ChunkEntry, stored: Buffer, out: memoryview, *, executor: Executor | None = None
) -> None:
    """Decode a chunk's ``stored`` bytes into ``out`` (exactly raw_nbytes long); a codec's
    :class:`~wstream.errors.FormatError` is re-raised, same class, naming the chunk."""
    try:
        codecs.decode_into(chunk.codec, stored, out, executor=executor)
    except E.FormatError as exc:
        raise type(exc)(f"chunk {chunk.name!r}: {exc}") from None


def widens(dtype: np.dtype) -> bool:
    """A floating-point dtype other than float32 (bf16, f16, f64): widened before use."""
    return dtype != np.float32 and (dtype.kind == "f" or dtype.name == "bfloat16")


def float32_copy(array: np.ndarray) -> np.ndarray:
    """A float32 copy of a floating-point array (exact for bf16/f16); other dtypes unchanged."""
    if array.dtype.kind == "f" or array.dtype.name == "bfloat16":
        out = np.empty(array.shape, np.float32)
        cast_into(out, array)
        return out
    return array


def cast_into(dst: np.ndarray, src: np.ndarray) -> None:
    """``dst`` = ``src`` cast to ``dst``'s dtype (numpy's unsafe cast), by the fastest exact path.

    Both widenings to float32 are done with integer ops, which numpy runs vectorized, and give
    numpy's and ml_dtypes' bits for every one of the 65536 inputs (NaN payloads, infinities,
    subnormals, signed zeros: tests/test_ops.py). 128K values in cache, one thread:

    - bf16: a float32 whose top half is the bf16's bits, one shift: 0.34 ns a value against 1.69
      for ml_dtypes' cast.
    - float16: sign, exponent and mantissa shifted into float32's places in one sign-extending
      shift, then the exponent rebiased (and subnormals normalised) by one exact multiply by
      2**112: 2.4 ns a value against 3.8 for numpy's cast (no F16C in numpy's cast loop)."""
    if dst.dtype == np.float32 and dst.shape == src.shape:
        if src.dtype.name == "bfloat16":
            np.left_shift(src.view(np.uint16), 16, out=dst.view(np.uint32), dtype=np.uint32)
            return
        if src.dtype == np.float16:
            _float16_into(dst, src)
            return
    np.copyto(dst, src, casting="unsafe")


_TWO_112 = np.float32(2.0**112)


def _float16_into(dst: np.ndarray, src: np.ndarray) -> None:
    """float16 -> float32 bit for bit: see :func:`cast_into`."""
    bits = dst.view(np.int32)
    # int16 -> int32 sign-extends: bit 31 is the sign; bits 28-30 copies of it, cleared here;
    # then exponent at 23-27 and mantissa at 13-22, as in float32 but biased by 15, not 127.
    np.left_shift(src.view(np.int16), 13, out=bits, dtype=np.int32)
    np.bitwise_and(bits, np.int32(-0x70000001), out=bits)  # 0x8FFFFFFF
    with np.errstate(over="ignore"):
        np.multiply(dst, _TWO_112, out=dst)  # 2**(127 - 15): exact, subnormals included
    magnitude = src.view(np.uint16) & np.uint16(0x7FFF)
    if magnitude.size and magnitude.max() >= 0x7C00:  # an inf or NaN: exponent all ones
        bits[magnitude >= 0x7C00] |= np.int32(0x7F800000)


def _stored_dtype(entry: TensorEntry) -> np.dtype:
    if entry.quant is None:
        return entry.dtype.numpy
    return np.dtype(np.uint8 if entry.quant.scheme is QuantScheme.UINT4 else np.int8)


def piece_views_of(entry: TensorEntry, raw: np.ndarray) -> np.ndarray:
    """A view of one piece's stored values in decoded chunk ``raw`` (int8 when quantized as
    INT8; the packed bytes [rows, ceil(cols / 2)] of a uint4 piece)."""
    at, n = entry.offset, entry.nbytes
    return raw[at : at + n].view(_stored_dtype(entry)).reshape(entry.stored_shape)


def piece_views(chunk: ChunkEntry, buf: np.ndarray | memoryview) -> list[np.ndarray]:
    """numpy views of each tensor piece's stored values in a decoded chunk, in manifest order
    (the int8 values of a quantized piece: see :func:`dequantize_into`)."""
    raw = np.frombuffer(buf, dtype=np.uint8) if not isinstance(buf, np.ndarray) else buf
    return [piece_views_of(t, raw) for t in chunk.tensors]


def quant_piece_of(entry: TensorEntry, raw: np.ndarray) -> QuantPiece:
    """Views of a quantized piece's values, float32 scales and (uint4) zero points in decoded
    chunk ``raw``; a uint4 zero point above 15 is
    :class:`~wstream.errors.ZeroPointOutOfRange` (rule G3), never a wrong value."""
    assert entry.quant is not None
    at = entry.quant.scales
    scales = raw[at : at + entry.scales_nbytes].view(np.float32).reshape(entry.scales_shape)
    values = piece_views_of(entry, raw)
    if entry.quant.scheme is not QuantScheme.UINT4:
        return QuantPiece(values, scales, entry.quant.group)
    z = entry.zeros_offset
    zeros = raw[z : z + entry.zeros_nbytes].reshape(entry.scales_shape)
    check_zeros(zeros, f"tensor {entry.name!r} rows {entry.rows or 'all'}")
    return QuantPiece(values, scales, entry.quant.group, zeros, entry.piece_shape[1])


def check_pieces(chunk: ChunkEntry, buf: np.ndarray | memoryview) -> None:
    """Rule G3 on a decoded chunk: every uint4 piece's zero points are in [0, 15]."""
    raw = np.frombuffer(buf, dtype=np.uint8) if not isinstance(buf, np.ndarray) else buf
    for t in chunk.tensors:
        if t.quant is not None and t.quant.scheme is QuantScheme.UINT4:
            try:
                quant_piece_of(t, raw)
            except E.ZeroPointOutOfRange as exc:
                raise E.ZeroPointOutOfRange(f"chunk {chunk.name!r}: {exc}") from None


def stored_pieces(chunk: ChunkEntry, buf: np.ndarray | memoryview) -> list[Stored]:
    """Each piece of a decoded chunk as stored, in manifest order: a view of its values, or for a
    quantized piece its values, scales and zero points (what ``Widen.QUANTIZED`` hands out)."""
    raw = np.frombuffer(buf, dtype=np.uint8) if not isinstance(buf, np.ndarray) else buf
    return [
        quant_piece_of(t, raw) if t.quant is not None else piece_views_of(t, raw)
        for t in chunk.tensors
    ]


def dequantize_into(entry: TensorEntry, raw: np.ndarray, out: np.ndarray) -> None:
    """The float32 values [piece_shape] of a quantized piece of decoded chunk ``raw``."""
    p = quant_piece_of(entry, raw)
    if p.zeros is None:
        dequantize_int8(p.values, p.scales, p.group, out)
    else:
        dequantize_uint4(p, out)


def dequantize_uint4(p: QuantPiece, out: np.ndarray) -> None:
    """``out`` f32 [rows, cols] = (q - z) x s of a uint4 piece, in cache-sized row blocks."""
    assert p.zeros is not None
    step = max(1, (1 << 16) // max(p.cols, 1))  # 256 KiB of float32 per pass
    for r in range(0, p.values.shape[0], step):
        o = out[r : r + step]
        unpack_uint4(p.values[r : r + step], p.cols, p.group, o)
        apply_scales(o, p.scales[r : r + step], p.group, p.zeros[r : r + step])


def convert_piece(entry: TensorEntry, raw: np.ndarray, stored: np.ndarray, dst: np.ndarray) -> None:
    """``dst`` (the piece's shape, float32 or the declared dtype) = piece ``entry`` of decoded
    chunk ``raw``, whose stored values are ``stored`` (from :func:`piece_views`).

    A stored float is cast (exact when widening: every bf16/f16 value is a float32); a quantized
    piece is dequantized to float32, then rounded to ``dst``'s dtype (RNE) if that is not it."""
    if entry.quant is None:
        cast_into(dst, stored)
    elif dst.dtype == np.float32:
        dequantize_into(entry, raw, dst)
    else:
        values = np.empty(entry.piece_shape, np.float32)
        dequantize_into(entry, raw, values)
        np.copyto(dst, values, casting="unsafe")
