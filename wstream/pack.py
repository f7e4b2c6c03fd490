"""Pack a safetensors checkpoint into a .wst container, in execution order, in bounded memory.

Two steps. :func:`layout_chunks` (pure) lays the groups of :func:`execution_order` out as chunks
of at most ``max_chunk`` decoded bytes, splitting a too-large item into equal row blocks (all
tensors of an item split at the same rows). :func:`pack` then fills one chunk buffer at a time
with ``pread`` (converting or quantizing in small row slabs when asked), encodes it and appends
it, so memory stays at a couple of chunks whatever the checkpoint's size, and the output
appears at its path only when complete.

About 460 lines: the layout (pure) and the filling loop share the plan types defined here, and
the loop carries the guarantees a pack gives (outputs checked against inputs, the source
snapshot before and after, atomic output, uploads aborted on failure), which read best in one
place.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from wstream.container.checkpoint import CheckpointReader, SourceTensor, open_checkpoint
from wstream.container.model_files import find_model_files, read_model_files
from wstream.container.paths import check_output
from wstream.container.snapshot import check_unchanged
from wstream.container.writer import ContainerWriter
from wstream.errors import InputError, SourceError
from wstream.format import codecs, spec
from wstream.format.crc import crc32
from wstream.format.manifest import CodecStep, Manifest, Quant, TensorEntry
from wstream.format.quant import (
    DEFAULT_GROUP,
    FLOATS,
    is_exact,
    n_groups,
    quantizable,
    quantize_int8,
)
from wstream.format.spec import CodecId, DType, QuantScheme, align_up
from wstream.format.uint4 import packed_cols, quantize_uint4
from wstream.model.folds import FOLDS, detect, parse_folds, plan_folds
from wstream.model.schedule import ScheduledGroup, execution_order
from wstream.pack_folds import FoldedSource

ProgressFn = Callable[[int], None]  # called with the number of source bytes just packed
_SLAB_NBYTES = (
    4 << 20
)  # converted or quantized tensors are processed this many source bytes at a time
_A = spec.TENSOR_ALIGNMENT


@dataclass(frozen=True, slots=True)
class Storage:
    """How one tensor is stored: its declared dtype, and a scheme and group if quantized."""

    dtype: DType
    group: int | None = None
    scheme: QuantScheme = QuantScheme.INT8

    def row_nbytes(self, t: SourceTensor) -> int:
        """Stored bytes of one row (first-axis slice), scales (and zero points) included."""
        values, scales, zeros = self.regions(t, 1)
        return values + scales + zeros

    def regions(self, t: SourceTensor, rows: int) -> tuple[int, int, int]:
        """(values bytes, scales bytes, zero-point bytes) of ``rows`` rows."""
        cols = math.prod(t.shape[1:])
        if self.group is None:
            return (rows * cols if t.shape else 1) * self.dtype.itemsize, 0, 0
        groups = rows * n_groups(cols, self.group)
        if self.scheme is QuantScheme.UINT4:
            return rows * packed_cols(cols), groups * 4, groups
        return rows * cols, groups * 4, 0


def storage_plan(
    tensors: Mapping[str, SourceTensor],
    *,
    dtype: DType | None = None,
    quantize: QuantScheme | None = None,
    group: int = DEFAULT_GROUP,
) -> dict[str, Storage]:
    """Per tensor: floating-point tensors take ``dtype`` (None: keep), and with ``quantize``
    the linear-layer matrices are stored in that scheme (see
    :func:`wstream.format.quant.quantizable`)."""
    out = {}
    for name, t in tensors.items():
        target = dtype if dtype is not None and t.dtype in FLOATS else t.dtype
        if quantize is not None and quantizable(name, t.dtype, t.shape):
            out[name] = Storage(target, group, quantize)
        else:
            out[name] = Storage(target)
    return out


@dataclass(frozen=True, slots=True)
class PieceLayout:
    entry: TensorEntry  # as it will appear in the manifest
    src_rows: tuple[int, int]  # rows of the source tensor (0, 1) for a 0-d tensor


@dataclass(frozen=True, slots=True)
class ChunkLayout:
    name: str
    group: str
    pieces: tuple[PieceLayout, ...]
    raw_nbytes: int


@dataclass(frozen=True, slots=True)
class PackReport:
    tensors: int
    chunks: int
    bytes_in: int  # tensor bytes read from the source
    bytes_out: int  # size of the .wst file
    seconds: float
    lossy: bool
    manifest: Manifest  # its ``files``: the embedded model files (tokenizer.json, ...)

    @property
    def ratio(self) -> float:
        return self.bytes_in / self.bytes_out if self.bytes_out else 1.0


def _rows(t: SourceTensor) -> int:
    return t.shape[0] if t.shape else 1


def _units(
    item: Sequence[SourceTensor], storage: Mapping[str, Storage], max_chunk: int
) -> list[list[tuple[SourceTensor, tuple[int, int] | None]]]:
    """Split one item into atomic units: the whole item, or blocks of rows taken together."""
    slack = 2 * _A * len(item)
    total = sum(sum(storage[t.name].regions(t, _rows(t))) for t in item)
    if total + slack <= max_chunk:
        return [[(t, None) for t in item]]
    rows = {t.shape[0] if t.shape else None for t in item}
    if len(rows) != 1 or None in rows:
        names = ", ".join(t.name for t in item)
        raise SourceError(f"tensors {names} must share their first dimension to be split together")
    n_rows = item[0].shape[0]
    row_nbytes = sum(storage[t.name].row_nbytes(t) for t in item)
    if row_nbytes + slack > max_chunk:
        raise InputError(
            f"max_chunk: {max_chunk} bytes cannot hold one row ({row_nbytes} bytes) of "
            f"{item[0].name!r}; raise --max-chunk"
        )
    n_blocks = math.ceil(n_rows * row_nbytes / (max_chunk - slack))
    per_block = math.ceil(n_rows / n_blocks)
    while per_block * row_nbytes + slack > max_chunk:  # ceil() may overshoot by a row
        n_blocks += 1
        per_block = math.ceil(n_rows / n_blocks)
    return [
        [(t, (r, min(r + per_block, n_rows))) for t in item] for r in range(0, n_rows, per_block)
    ]


def layout_chunks(
    groups: Sequence[ScheduledGroup],
    tensors: Mapping[str, SourceTensor],
    max_chunk: int,
    storage: Mapping[str, Storage] | None = None,
) -> list[ChunkLayout]:
    """Lay out groups as chunks of at most ``max_chunk`` decoded bytes (a pure function).

    The first item of each stage gets a chunk of its own (the vision patch embedding, 1.3 MB at
    2.6 size, before the 11 MB of learned positions): a stage starts computing as soon as its
    first small chunk is in, not after a full one."""
    if not spec.MIN_MAX_CHUNK <= max_chunk <= spec.MAX_CHUNK_RAW_NBYTES:
        raise InputError(
            f"max_chunk: {max_chunk} is outside [{spec.MIN_MAX_CHUNK}, {spec.MAX_CHUNK_RAW_NBYTES}]"
        )
    if storage is None:
        storage = {n: Storage(t.dtype) for n, t in tensors.items()}
    out: list[ChunkLayout] = []
    stages_seen: set[str] = set()
    for group in groups:
        chunks: list[list[PieceLayout]] = []
        current: list[PieceLayout] = []
        end = 0
        stage_head = group.stage not in stages_seen
        stages_seen.add(group.stage)
        for index, item in enumerate(group.items):
            if stage_head and index == 1 and current:
                chunks.append(current)  # close the stage's first chunk after its first item
                current, end = [], 0
            for unit in _units([tensors[n] for n in item], storage, max_chunk):
                size = 0
                for t, rows in unit:
                    values, scales, zeros = storage[t.name].regions(t, _span(t, rows))
                    size += align_up(values, _A) + align_up(scales, _A) + align_up(zeros, _A)
                if current and end + size > max_chunk:
                    chunks.append(current)
                    current, end = [], 0
                for t, rows in unit:
                    st = storage[t.name]
                    values, scales, zeros = st.regions(t, _span(t, rows))
                    quant = None
                    if st.group is not None:
                        quant = Quant(st.scheme, st.group, align_up(end + values, _A))
                    entry = TensorEntry(t.name, st.dtype, t.shape, end, rows, quant)
                    current.append(PieceLayout(entry, rows or (0, _rows(t))))
                    end = align_up(align_up(end + values, _A) + scales, _A)
                    if zeros:  # uint4: the zero points follow the scales (SPEC.md 5.2)
                        end = align_up(end + zeros, _A)
        if current or not chunks:
            chunks.append(current)
        for k, pieces in enumerate(chunks):
            name = group.name if len(chunks) == 1 else f"{group.name}#{k}"
            raw = max((_end(p.entry) for p in pieces), default=0)
            out.append(ChunkLayout(name, group.name, tuple(pieces), raw))
    return out


def _span(t: SourceTensor, rows: tuple[int, int] | None) -> int:
    return _rows(t) if rows is None else rows[1] - rows[0]


def _end(e: TensorEntry) -> int:
    end = e.offset + e.nbytes
    if e.quant is None:
        return end
    if e.zeros_nbytes:
        return max(end, e.zeros_offset + e.zeros_nbytes)
    return max(end, e.quant.scales + e.scales_nbytes)


class _Filler:
    """Reads a chunk's pieces from the source into a buffer, converting where asked."""

    def __init__(self, reader: CheckpointReader, source: FoldedSource | None = None) -> None:
        self.reader = reader
        self.source = FoldedSource(reader.checkpoint) if source is None else source
        self.tensors = self.source.tensors
        self.lossy = False
        self.scratch = np.empty(0, np.uint8)

    def _read(self, name: str, start: int, out: memoryview) -> None:
        self.source.read(self.reader, name, start, out)

    def __call__(
        self, plan: ChunkLayout, buf: np.ndarray, *, crc: bool = False
    ) -> tuple[memoryview, int | None]:
        """The chunk's decoded bytes in ``buf``, and with ``crc`` their CRC-32: summed here, on
        the reading thread, so it overlaps with the writing of the previous chunk."""
        raw = buf[: plan.raw_nbytes]
        regions = sorted(
            [(p.entry.offset, p.entry.nbytes) for p in plan.pieces]
            + [(p.entry.quant.scales, p.entry.scales_nbytes) for p in plan.pieces if p.entry.quant]
            + [(p.entry.zeros_offset, p.entry.zeros_nbytes) for p in plan.pieces if p.entry.quant]
        )
        end = 0
        for start, n in regions:  # zero the alignment gaps: packing is reproducible
            raw[end:start] = 0
            end = start + n
        for p in plan.pieces:
            src = self.tensors[p.entry.name]
            if p.entry.quant is None and p.entry.dtype is src.dtype:
                row = src.nbytes // _rows(src) if src.nbytes else 0
                a, b = p.src_rows
                self._read(src.name, a, raw.data[p.entry.offset : p.entry.offset + (b - a) * row])
            else:
                self._convert(src, p, raw)
        return raw.data, crc32(raw.data) if crc else None

    def _convert(self, src: SourceTensor, p: PieceLayout, raw: np.ndarray) -> None:
        e = p.entry
        cols = math.prod(src.shape[1:])
        row_src = cols * src.dtype.itemsize
        step = max(1, _SLAB_NBYTES // max(row_src, 1))
        a, b = p.src_rows
        out_itemsize = e.stored_itemsize
        for r in range(a, b, step):
            n = min(step, b - a - (r - a))
            if self.scratch.size < n * row_src:
                self.scratch = np.empty(n * row_src, np.uint8)
            chunk = self.scratch[: n * row_src]
            self._read(src.name, r, chunk.data)
            values = chunk.view(src.dtype.numpy).reshape((n, *src.shape[1:]) if src.shape else ())
            at = e.offset + (r - a) * cols * out_itemsize
            if e.quant is not None and e.quant.scheme is QuantScheme.UINT4:
                self._uint4(e, values.reshape(n, cols), r - a, raw)
            elif e.quant is not None:
                q = raw[at : at + n * cols].view(np.int8).reshape(n, cols)
                groups = n_groups(cols, e.quant.group)
                s_at = e.quant.scales + (r - a) * groups * 4
                s = raw[s_at : s_at + n * groups * 4].view(np.float32).reshape(n, groups)
                quantize_int8(values.reshape(n, cols), e.quant.group, q, s)
                self.lossy = True
            else:
                dst = raw[at : at + values.size * out_itemsize].view(e.dtype.numpy)
                converted = values.astype(e.dtype.numpy)  # round to nearest even
                dst[...] = converted.reshape(-1)
                if not self.lossy and not is_exact(values, converted):
                    self.lossy = True

    def _uint4(self, e: TensorEntry, values: np.ndarray, r: int, raw: np.ndarray) -> None:
        """Rows [r, r + n) of uint4 piece ``e`` (rows counted inside the piece)."""
        assert e.quant is not None
        n, cols = values.shape
        width, groups = packed_cols(cols), n_groups(cols, e.quant.group)
        at = e.offset + r * width
        p = raw[at : at + n * width].reshape(n, width)
        s_at = e.quant.scales + r * groups * 4
        s = raw[s_at : s_at + n * groups * 4].view(np.float32).reshape(n, groups)
        z_at = e.zeros_offset + r * groups
        z = raw[z_at : z_at + n * groups].reshape(n, groups)
        quantize_uint4(values, e.quant.group, p, s, z)
        self.lossy = True


def _group_size(plan: ChunkLayout) -> int:
    """The element size that dominates a chunk's bytes: what byte grouping should use."""
    by_size: dict[int, int] = {}
    for p in plan.pieces:
        by_size[p.entry.stored_itemsize] = by_size.get(p.entry.stored_itemsize, 0) + p.entry.nbytes
    size = max(by_size, key=lambda k: by_size[k], default=1)
    return size if size in spec.BYTEGROUP_SIZES else 0


def pack(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    *,
    codec: str = "raw",
    level: int | None = None,
    shuffle: bool = False,
    quantize: str | None = None,
    group: int = DEFAULT_GROUP,
    dtype: str = "keep",
    max_chunk: int = spec.DEFAULT_MAX_CHUNK,
    threads: int = 1,
    progress: ProgressFn | None = None,
    files: bool = True,
    fold: str | None = None,
) -> PackReport:
    """Convert a checkpoint (file or sharded directory) into ``dst``: a path, or
    ``s3://bucket/key`` (a multipart upload while packing; the object appears only when the
    pack completes, and an interrupted pack aborts the upload).

    ``codec`` raw or zstd; ``level`` None picks the measured best (see codecs); ``shuffle``
    groups bytes before zstd; ``quantize`` "int8" or "uint4" stores linear layers quantized
    with a scale (uint4: and a zero point) per ``group`` values of a row; ``dtype``
    "keep", "bfloat16", "float16" or "float32" converts floating-point tensors. ``files``
    embeds the checkpoint's tokenizer, chat template, preprocessor and generation settings found
    beside the weights (see :mod:`wstream.container.model_files`), after the chunks. ``fold``
    (a comma-separated list of :data:`wstream.model.folds.FOLDS`, or ``all``: those that fit the
    checkpoint) stores derived tensors in place of the ones they replace, before any conversion
    or quantization, and records the folds in the manifest.

    >>> pack("MiniCPM-V-2_6/", "minicpmv26.wst", codec="zstd", shuffle=True)  # doctest: +SKIP
    """
    started = time.perf_counter()
    if codec not in ("raw", "zstd"):
        raise InputError(f"codec: {codec!r} is not one of 'raw', 'zstd'")
    if level is not None and not spec.MIN_ZSTD_LEVEL <= level <= spec.MAX_ZSTD_LEVEL:
        raise InputError(
            f"level: {level} is outside [{spec.MIN_ZSTD_LEVEL}, {spec.MAX_ZSTD_LEVEL}]"
        )
    if shuffle and codec != "zstd":
        raise InputError("shuffle: byte grouping only helps a compressor; use it with codec 'zstd'")
    if quantize not in (None, "int8", "uint4"):
        raise InputError(f"quantize: {quantize!r} is not one of 'int8', 'uint4'")
    if not 1 <= group <= spec.MAX_QUANT_GROUP or (quantize == "uint4" and group % 2):
        raise InputError(
            f"group: {group} is outside [1, {spec.MAX_QUANT_GROUP}]"
            + (" or odd (uint4 packs two values a byte)" if quantize == "uint4" else "")
        )
    dtypes = {"keep": None, "bfloat16": DType.BF16, "float16": DType.F16, "float32": DType.F32}
    if dtype not in dtypes:
        raise InputError(f"dtype: {dtype!r} is not one of {', '.join(dtypes)}")
    if threads < 1:
        raise InputError(f"threads: {threads} must be at least 1")
    fold_names = parse_folds(fold) if fold is not None else ()
    ckpt = open_checkpoint(src)
    shapes = {n: t.shape for n, t in ckpt.tensors.items()}
    fold_plan = plan_folds(fold_names, shapes, strict=fold != "all")
    folded = FoldedSource(ckpt, fold_plan)
    tensors = folded.tensors
    # A checkpoint written by ``unpack --folded`` already holds fused tensors: still recorded.
    held = set(fold_plan.folds) | set(detect(list(ckpt.tensors)))
    folds = tuple(f for f in FOLDS if f in held)
    # Read and checked before any tensor is packed: a bad tokenizer.json fails in a second, not
    # after the whole checkpoint has been converted.
    model_paths = find_model_files(src) if files else ()
    model_files = read_model_files(model_paths)
    scheme = QuantScheme(quantize) if quantize is not None else None
    storage = storage_plan(tensors, dtype=dtypes[dtype], quantize=scheme, group=group)
    plans = layout_chunks(execution_order(tensors), tensors, max_chunk, storage)
    if len(plans) > spec.MAX_CHUNKS:  # refused now, not after writing them all
        raise InputError(
            f"max_chunk: {max_chunk} bytes gives {len(plans)} chunks, more than the format's "
            f"{spec.MAX_CHUNKS}; raise --max-chunk"
        )
    largest = max((p.raw_nbytes for p in plans), default=0)
    remote = isinstance(dst, str) and dst.startswith("s3://")  # uploaded while packing
    if not remote:
        dst = check_output(dst, [*ckpt.files, *ckpt.others, *model_paths])

    # Raw chunks are bound by I/O: a second buffer lets the reader fill one while the other is
    # written. Compressing is ~10x slower than reading, so for zstd the second buffer would buy
    # little and cost a chunk of memory (the compressed frames already take up to another one).
    n_buffers = 2 if codec == "raw" else 1
    buffers = [np.empty(largest, np.uint8) for _ in range(n_buffers)]
    with CheckpointReader(ckpt) as reader, ContainerWriter(dst) as writer:
        fill = _Filler(reader, folded)
        with (
            ThreadPoolExecutor(max_workers=1, thread_name_prefix="wstream-pack-read") as io,
            ThreadPoolExecutor(max_workers=threads, thread_name_prefix="wstream-pack-zstd") as cpu,
        ):
            pending: Future[tuple[memoryview, int | None]] | None = None
            if plans:
                pending = io.submit(fill, plans[0], buffers[0], crc=codec == "raw")
            for i, plan in enumerate(plans):
                assert pending is not None
                raw, raw_crc = pending.result()
                if i + 1 < len(plans) and n_buffers == 2:
                    pending = io.submit(fill, plans[i + 1], buffers[(i + 1) % 2], crc=True)
                pipeline: tuple[CodecStep, ...] = ()
                if codec == "zstd":
                    size = _group_size(plan) if shuffle else 0
                    pipeline = ((CodecStep(CodecId.BYTEGROUP, size=size),) if size else ()) + (
                        CodecStep(CodecId.ZSTD, level=level),
                    )
                stored, recorded = codecs.encode(
                    pipeline, raw, executor=cpu if threads > 1 else None
                )
                writer.add_chunk(
                    plan.name,
                    plan.group,
                    [p.entry for p in plan.pieces],
                    stored,
                    raw_nbytes=plan.raw_nbytes,
                    codec=recorded,
                    crc32=raw_crc if not recorded else None,  # stored == raw: already summed
                )
                if i + 1 < len(plans) and n_buffers == 1:
                    pending = io.submit(fill, plans[i + 1], buffers[0], crc=codec == "raw")
                if progress is not None:
                    progress(sum(_src_nbytes(tensors, p) for p in plan.pieces))
        for model_file in model_files:
            writer.add_file(model_file.name, model_file.data, zstd=codec == "zstd")
        check_unchanged(ckpt.stamps)  # a shard rewritten while read: publish nothing
        manifest = writer.close(
            config=ckpt.config, metadata=ckpt.metadata, lossy=fill.lossy, folds=folds
        )
    return PackReport(
        tensors=len(manifest.tensors),
        chunks=len(manifest.chunks),
        bytes_in=ckpt.nbytes,
        bytes_out=writer.nbytes,
        seconds=time.perf_counter() - started,
        lossy=manifest.lossy,
        manifest=manifest,
    )


def _src_nbytes(tensors: Mapping[str, SourceTensor], p: PieceLayout) -> int:
    t = tensors[p.entry.name]
    return t.nbytes * (p.src_rows[1] - p.src_rows[0]) // _rows(t) if t.nbytes else 0
