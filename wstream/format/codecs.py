"""Chunk codecs. The contract, which every codec step follows:

- ``encode(data) -> bytes`` turns a chunk's decoded bytes into its stored bytes;
- ``decode_into(src, out)`` fills the writable buffer ``out`` (exactly ``raw_nbytes`` long) from
  the stored bytes ``src`` and MUST raise :class:`~wstream.errors.DecodedSizeMismatch` when the
  stored bytes would produce more or fewer bytes than ``len(out)``. It never allocates an output
  of its own, so a declared size bounds every decode (no decompression bombs), and it decodes
  straight into the caller's slab (no intermediate copy).

A pipeline is a tuple of :class:`~wstream.format.manifest.CodecStep`; the empty pipeline stores
the bytes as they are. Thread safety: zstd contexts are not thread-safe, so each thread gets its own
decompressor (python-zstandard's documented contract); the module functions are safe to call
from any number of threads.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Executor

import numpy as np
import zstandard

from wstream import errors as E
from wstream.format.manifest import CodecStep
from wstream.format.spec import CodecId

Buffer = bytes | bytearray | memoryview

_local = threading.local()


def _dctx() -> zstandard.ZstdDecompressor:
    dctx = getattr(_local, "dctx", None)
    if dctx is None:
        dctx = _local.dctx = zstandard.ZstdDecompressor()
    return dctx


_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


def zstd_frame_nbytes(src: Buffer) -> int:
    """The size of the zstd frame that starts ``src``, found by walking its block headers.

    No decoding: a few Python steps per 128 KiB block. Lets the decoder require the stored bytes
    to be exactly one complete frame: a truncated frame, or bytes after it (which a one-shot
    decoder elsewhere would try to decode as a second frame), are corrupt.
    """
    view = memoryview(src).cast("B")
    if bytes(view[:4]) != _ZSTD_MAGIC:
        raise E.CorruptChunk("zstd: stored bytes do not start with the zstd frame magic")
    try:
        pos = zstandard.frame_header_size(view)
        has_checksum = zstandard.get_frame_parameters(view).has_checksum
    except zstandard.ZstdError as exc:
        raise E.CorruptChunk(f"zstd frame header: {exc}") from None
    while True:
        if pos + 3 > len(view):
            raise E.CorruptChunk(
                f"zstd: frame truncated at byte {len(view)} (a block header is missing)"
            )
        header = int.from_bytes(view[pos : pos + 3], "little")
        last, kind, size = header & 1, (header >> 1) & 3, header >> 3
        if kind == 3:
            raise E.CorruptChunk(f"zstd: reserved block type at byte {pos}")
        pos += 3 + (1 if kind == 1 else size)  # an RLE block stores one byte
        if last:
            break
    return pos + (4 if has_checksum else 0)


def _check_frame(src: Buffer, want: int) -> None:
    """``src`` must be exactly one complete frame that does not declare a size other than want."""
    end = zstd_frame_nbytes(src)
    if end != len(src):
        what = "truncated" if end > len(src) else f"followed by {len(src) - end} bytes"
        raise E.CorruptChunk(f"zstd: the frame of {end} bytes is {what} ({len(src)} bytes stored)")
    try:
        declared = zstandard.frame_content_size(src)
    except zstandard.ZstdError as exc:
        raise E.CorruptChunk(f"zstd frame header: {exc}") from None
    if declared not in (-1, want):  # -1: size not recorded in the frame
        raise E.DecodedSizeMismatch(f"zstd frame declares {declared} bytes, expected {want}")


def _zstd_read(
    src: Buffer, want: int, into: Callable[[int], memoryview], done: Callable[[int, int], None]
) -> None:
    """Decode one frame of exactly ``want`` bytes: ``into(pos)`` gives the buffer to fill next,
    ``done(pos, n)`` is told what was written; more or fewer bytes than ``want`` is an error."""
    _check_frame(src, want)
    filled = 0
    try:
        reader = _dctx().stream_reader(src, read_across_frames=False, closefd=False)
        with reader:
            while filled < want:
                n = reader.readinto(into(filled))
                if n == 0:
                    break
                done(filled, n)
                filled += n
            extra = reader.read(1) if filled == want else b""
    except zstandard.ZstdError as exc:
        raise E.CorruptChunk(f"zstd: {exc}") from None
    if filled != want or extra:
        got = f"more than {want}" if extra else str(filled)
        raise E.DecodedSizeMismatch(f"zstd frame decodes to {got} bytes, expected {want}")


def zstd_decode_into(src: Buffer, out: memoryview) -> None:
    """Decode one complete zstd frame from ``src`` into exactly ``out``."""
    _zstd_read(src, len(out), lambda pos: out[pos:], lambda pos, n: None)


# --- byte grouping -------------------------------------------------------------------------------
# The stream of a chunk of N bytes grouped by `size`: plane j holds byte j of every element
# (n = N // size elements), planes back to back, then the N % size bytes that do not fill an
# element, unchanged. Exponent bytes of floats land in one plane, where zstd's entropy coder
# finds them; near-random mantissa planes stay apart and cost nothing to (de)code.


def group(data: Buffer, size: int) -> bytes:
    raw = np.frombuffer(data, np.uint8)
    n = raw.size // size
    planes = raw[: n * size].reshape(n, size).T  # [size, n]
    return planes.tobytes() + raw[n * size :].tobytes()


class _Ungrouper:
    """Scatters pieces of a grouped stream into their places in the output, as they arrive."""

    def __init__(self, out: memoryview, size: int) -> None:
        raw = np.frombuffer(out, np.uint8)
        self.size = size
        self.n = raw.size // size
        self.elements = raw[: self.n * size].reshape(self.n, size)  # [n, size], strided writes
        self.tail = raw[self.n * size :]

    def put(self, piece: np.ndarray, pos: int) -> None:
        """``piece`` is stream bytes [pos, pos + len(piece))."""
        start, end = pos, pos + piece.size
        grouped = self.n * self.size
        while pos < end:
            off = pos - start
            if pos >= grouped:  # the tail that did not fill an element
                self.tail[pos - grouped : end - grouped] = piece[off:]
                return
            plane, at = divmod(pos, self.n)
            take = min(self.n - at, end - pos)
            self.elements[at : at + take, plane] = piece[off : off + take]
            pos += take


# --- pipelines -----------------------------------------------------------------------------------

FRAME_NBYTES = 1 << 20  # the encoder's zstd frame size: small enough for two threads per chunk
_SCRATCH_NBYTES = 1 << 20  # grouped streams decode through this much per-thread scratch


def _scratch() -> np.ndarray:
    buf = getattr(_local, "scratch", None)
    if buf is None:
        buf = _local.scratch = np.empty(_SCRATCH_NBYTES, np.uint8)
    return buf


# zstd settings for grouped planes: the fast strategy with the longest minimum match and a tiny
# hash table finds almost no matches, so nearly everything goes to the Huffman literal coder:
# exponent planes of real bf16 weights measured 2.93x (level 1: 2.71x, level 19: 2.93x) and
# decode as fast as level 1.
_LITERAL_PARAMS = dict(strategy=zstandard.STRATEGY_FAST, min_match=7, window_log=17, hash_log=6)


def _compressor(level: int | None, grouped: bool) -> zstandard.ZstdCompressor:
    """This thread's compressor for these settings (contexts are not thread-safe)."""
    key = (level, grouped)
    cache = getattr(_local, "cctx", None)
    if cache is None:
        cache = _local.cctx = {}
    cctx = cache.get(key)
    if cctx is None:
        if level is None and grouped:
            params = zstandard.ZstdCompressionParameters(write_content_size=True, **_LITERAL_PARAMS)
            cctx = zstandard.ZstdCompressor(compression_params=params)
        else:
            cctx = zstandard.ZstdCompressor(
                level=1 if level is None else level, write_content_size=True
            )
        cache[key] = cctx
    return cctx


def _frame_bounds(nbytes: int, group_size: int) -> list[int]:
    """Frame starts in the stream: every FRAME_NBYTES within each plane, planes never shared."""
    n = nbytes // group_size if group_size else 0
    edges = {0, nbytes}
    for plane in range(group_size):
        edges.update(range(plane * n, (plane + 1) * n, FRAME_NBYTES))
    if not group_size:
        edges.update(range(0, nbytes, FRAME_NBYTES))
    if group_size:
        edges.add(group_size * n)
    return sorted(edges)


def _ungroup_frame(frame: memoryview, pos: int, raw: int, ungroup: _Ungrouper) -> None:
    """Decode one frame of a grouped stream through this thread's scratch into its places."""
    scratch = _scratch()
    _zstd_read(
        frame,
        raw,
        lambda at: scratch.data[: min(scratch.size, raw - at)],
        lambda at, n: ungroup.put(scratch[:n], pos + at),
    )


def _stream_bytes(raw: np.ndarray, size: int, a: int, b: int) -> memoryview:
    """Bytes [a, b) of the grouped stream of ``raw``, where [a, b) lies in one plane (or in the
    tail): gathered into this thread's scratch, so no grouped copy of the chunk is ever made."""
    n = raw.size // size
    if a >= n * size:  # the tail is stored as is
        return raw.data[a:b]
    plane, e0 = divmod(a, n)
    out = _encode_scratch(b - a)[: b - a]
    np.copyto(out, raw[: n * size].reshape(n, size)[e0 : e0 + (b - a), plane])
    return out.data


def _encode_scratch(nbytes: int) -> np.ndarray:
    buf = getattr(_local, "encode_scratch", None)
    if buf is None or buf.size < nbytes:
        buf = _local.encode_scratch = np.empty(max(nbytes, FRAME_NBYTES), np.uint8)
    return buf


# --- codecs, one class each, found through REGISTRY ---------------------------------------------
# numcodecs style: a codec knows its manifest fields, encodes a whole stream and decodes one into
# a caller's buffer. A pipeline (the manifest's list of steps) is at most [bytegroup, zstd]; the
# pipeline functions below fuse the two (grouped zstd frames decode through a per-thread scratch
# straight into their places), so no grouped copy of a chunk is ever made.


class ByteGroup:
    """Byte grouping (shuffle) by element ``size``: plane j holds byte j of every element."""

    id = CodecId.BYTEGROUP
    fields = ("size",)  # manifest fields besides "id"

    def __init__(self, step: CodecStep) -> None:
        self.size = step.size or 0

    def encode(self, data: Buffer) -> bytes:
        return group(data, self.size) if self.size else bytes(data)

    def decode_into(self, src: Buffer, out: memoryview) -> None:
        if len(src) != len(out):
            raise E.DecodedSizeMismatch(f"chunk stores {len(src)} bytes, expected {len(out)}")
        if self.size:
            _Ungrouper(out, self.size).put(np.frombuffer(src, np.uint8), 0)
        else:
            out[:] = memoryview(src).cast("B")


class Zstd:
    """zstd frames of at most FRAME_NBYTES decoded bytes each, listed in the manifest."""

    id = CodecId.ZSTD
    fields = ("level", "frames")

    def __init__(self, step: CodecStep) -> None:
        self.level = step.level
        self.frames = step.frames

    def encode(self, data: Buffer) -> bytes:
        return _compressor(self.level, False).compress(data)

    def decode_into(self, src: Buffer, out: memoryview) -> None:
        zstd_decode_into(src, out)


Codec = ByteGroup | Zstd
REGISTRY: dict[CodecId, type[Codec]] = {c.id: c for c in (ByteGroup, Zstd)}


class Pipeline:
    """A chunk's codec steps resolved through :data:`REGISTRY` once: its bytegroup and zstd
    codecs (either may be absent; none at all stores the bytes as they are)."""

    __slots__ = ("bytegroup", "zstd")

    def __init__(self, steps: Sequence[CodecStep]) -> None:
        codecs = {step.id: REGISTRY[step.id](step) for step in steps}
        bg = codecs.get(CodecId.BYTEGROUP)
        zs = codecs.get(CodecId.ZSTD)
        self.bytegroup = bg if isinstance(bg, ByteGroup) else None
        self.zstd = zs if isinstance(zs, Zstd) else None

    @property
    def group_size(self) -> int:
        return self.bytegroup.size if self.bytegroup is not None else 0


def encode(
    pipeline: Sequence[CodecStep], data: Buffer, *, executor: Executor | None = None
) -> tuple[list[Buffer], tuple[CodecStep, ...]]:
    """Stored bytes of a chunk, as consecutive parts, and the pipeline as recorded (zstd frames
    filled in). Memory: the compressed frames and a frame of scratch per thread.

    The raw pipeline returns ``data`` itself (no copy). With an ``executor``, frames are
    compressed in parallel (zstd releases the GIL)."""
    if not pipeline:
        return [data], ()
    steps = Pipeline(pipeline)
    size = steps.group_size
    if steps.zstd is None:
        return [group(data, size) if size else data], tuple(pipeline)
    level = steps.zstd.level
    raw = np.frombuffer(data, np.uint8)
    bounds = _frame_bounds(raw.size, size)
    spans = list(zip(bounds, bounds[1:])) or [(0, 0)]  # an empty chunk is one empty frame

    def compress(span: tuple[int, int]) -> bytes:
        a, b = span
        piece = _stream_bytes(raw, size, a, b) if size else raw.data[a:b]
        return _compressor(level, bool(size)).compress(piece)

    parts: list[Buffer] = (
        list(executor.map(compress, spans))
        if executor is not None
        else [compress(s) for s in spans]
    )
    frames = tuple((len(z), b - a) for z, (a, b) in zip(parts, spans))
    recorded = tuple(
        CodecStep(s.id, s.level, s.size, frames) if s.id is CodecId.ZSTD else s for s in pipeline
    )
    return parts, recorded


def decode_into(
    pipeline: Sequence[CodecStep],
    src: Buffer,
    out: memoryview,
    *,
    executor: Executor | None = None,
) -> None:
    """Fill ``out`` (exactly the chunk's raw_nbytes) from its stored bytes ``src``.

    With an ``executor``, the second half of a multi-frame chunk is decoded on it while the
    calling thread decodes the first: two threads on one large chunk."""
    src = memoryview(src).cast("B")
    if not pipeline:
        if len(src) != len(out):
            raise E.DecodedSizeMismatch(f"raw chunk has {len(src)} bytes, expected {len(out)}")
        out[:] = src
        return
    steps = Pipeline(pipeline)
    if steps.zstd is None:  # grouping alone
        assert steps.bytegroup is not None
        steps.bytegroup.decode_into(src, out)
        return
    ungroup = _Ungrouper(out, steps.group_size) if steps.group_size else None
    frames = steps.zstd.frames or ((len(src), len(out)),)
    jobs, s_pos, o_pos = [], 0, 0
    for stored, raw in frames:
        jobs.append((src[s_pos : s_pos + stored], o_pos, raw))
        s_pos, o_pos = s_pos + stored, o_pos + raw
    if s_pos != len(src) or o_pos != len(out):
        raise E.DecodedSizeMismatch(
            f"zstd frames cover {s_pos} stored / {o_pos} decoded bytes, "
            f"chunk has {len(src)} / {len(out)}"
        )

    def run(part: list[tuple[memoryview, int, int]]) -> None:
        for frame, pos, raw in part:
            if ungroup is None:
                zstd_decode_into(frame, out[pos : pos + raw])
            else:
                _ungroup_frame(frame, pos, raw, ungroup)

    if executor is not None and len(jobs) > 1:
        half = len(jobs) // 2
        other = executor.submit(run, jobs[half:])
        try:
            run(jobs[:half])
        finally:
            other.result()
    else:
        run(jobs)
