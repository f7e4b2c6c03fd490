"""Chunk codecs. The contract, which every codec step follows:

- ``encode(data) -> bytes`` turns a chunk's decoded bytes into its stored bytes;
- ``decode_into(src, out)`` fills the writable buffer ``out`` (exactly ``raw_nbytes`` long) from
  the stored bytes ``src`` and MUST raise :class:`~wstream.errors.DecodedSizeMismatch` when the
  stored bytes would produce more or fewer bytes than ``len(out)``. It never allocates an output
  of its own, so a declared size bounds every decode (no decompression bombs), and it decodes
  straight into the caller's slab (no intermediate copy).

A pipeline is a tuple of :class:`~wstream.manifest.CodecStep`; the empty pipeline stores the bytes
as they are. Thread safety: zstd contexts are not thread-safe, so each thread gets its own
decompressor (python-zstandard's documented contract); the module functions are safe to call
from any number of threads.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

import zstandard

from wstream import errors as E
from wstream.manifest import CodecStep
from wstream.spec import CodecId

Buffer = bytes | bytearray | memoryview

_local = threading.local()


def _dctx() -> zstandard.ZstdDecompressor:
    dctx = getattr(_local, "dctx", None)
    if dctx is None:
        dctx = _local.dctx = zstandard.ZstdDecompressor()
    return dctx


def zstd_encode(data: Buffer, level: int, threads: int = 0) -> bytes:
    """One zstd frame with the content size in its header."""
    cctx = zstandard.ZstdCompressor(level=level, threads=threads, write_content_size=True)
    return cctx.compress(data)


def zstd_decode_into(src: Buffer, out: memoryview) -> None:
    """Decode one complete zstd frame from ``src`` into exactly ``out``."""
    want = len(out)
    try:
        declared = zstandard.frame_content_size(src)
    except zstandard.ZstdError as exc:
        raise E.CorruptChunk(f"zstd frame header: {exc}") from None
    if declared not in (-1, want):  # -1: size not recorded in the frame
        raise E.DecodedSizeMismatch(f"zstd frame declares {declared} bytes, expected {want}")
    filled = 0
    try:
        reader = _dctx().stream_reader(src, read_across_frames=False, closefd=False)
        with reader:
            while filled < want:
                n = reader.readinto(out[filled:])
                if n == 0:
                    break
                filled += n
            extra = reader.read(1) if filled == want else b""
    except zstandard.ZstdError as exc:
        raise E.CorruptChunk(f"zstd: {exc}") from None
    if filled != want or extra:
        got = f"more than {want}" if extra else str(filled)
        raise E.DecodedSizeMismatch(f"zstd frame decodes to {got} bytes, expected {want}")


def encode(pipeline: Sequence[CodecStep], data: Buffer, threads: int = 0) -> bytes | Buffer:
    """Stored bytes of a chunk. The raw pipeline returns ``data`` itself (no copy)."""
    for step in pipeline:
        if step.id is CodecId.ZSTD:
            data = zstd_encode(data, step.level if step.level is not None else 3, threads)
        else:  # pragma: no cover - CodecId is closed; a new member must be handled here
            raise E.UnknownCodec(f"codec {step.id!r} has no encoder")
    return data


def decode_into(pipeline: Sequence[CodecStep], src: Buffer, out: memoryview) -> None:
    """Fill ``out`` (exactly the chunk's raw_nbytes) from its stored bytes ``src``."""
    if not pipeline:
        if len(src) != len(out):
            raise E.DecodedSizeMismatch(f"raw chunk has {len(src)} bytes, expected {len(out)}")
        out[:] = src
        return
    (step,) = pipeline  # v1 pipelines have at most one step (checked by the manifest parser)
    if step.id is CodecId.ZSTD:
        zstd_decode_into(src, out)
    else:  # pragma: no cover
        raise E.UnknownCodec(f"codec {step.id!r} has no decoder")
