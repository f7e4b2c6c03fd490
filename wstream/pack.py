"""Pack a safetensors checkpoint into a .wst container, in execution order, in bounded memory.

Two steps. :func:`plan_chunks` (pure) lays the groups of :func:`execution_order` out as chunks
of at most ``max_chunk`` decoded bytes, splitting a too-large item into equal row blocks (all
tensors of an item split at the same rows). :func:`pack` then fills one chunk buffer at a time
with ``pread``, encodes it and appends it, so memory stays at a couple of chunks whatever the
checkpoint's size, and the output appears at its path only when complete.
"""

from __future__ import annotations

import math
import os
import threading
import time
import zlib
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from wstream import codecs, spec
from wstream.errors import InputError, SourceError
from wstream.manifest import CodecStep, Manifest, TensorEntry
from wstream.model.schedule import GroupPlan, execution_order
from wstream.sources import CheckpointReader, SourceTensor, open_checkpoint
from wstream.spec import CodecId
from wstream.writer import ContainerWriter, align_up

ProgressFn = Callable[[int], None]  # called with the number of source bytes just packed


@dataclass(frozen=True, slots=True)
class PiecePlan:
    entry: TensorEntry  # as it will appear in the manifest
    src_start: int  # first byte of the piece inside the source tensor


@dataclass(frozen=True, slots=True)
class ChunkPlan:
    name: str
    group: str
    pieces: tuple[PiecePlan, ...]
    raw_nbytes: int


@dataclass(frozen=True, slots=True)
class PackReport:
    tensors: int
    chunks: int
    bytes_in: int  # tensor bytes read from the source
    bytes_out: int  # size of the .wst file
    seconds: float
    manifest: Manifest

    @property
    def ratio(self) -> float:
        return self.bytes_in / self.bytes_out if self.bytes_out else 1.0


def _units(
    item: Sequence[SourceTensor], max_chunk: int
) -> list[list[tuple[SourceTensor, tuple[int, int] | None]]]:
    """Split one item into atomic units: the whole item, or blocks of rows taken together."""
    slack = spec.TENSOR_ALIGNMENT * len(item)
    total = sum(t.nbytes for t in item)
    if total + slack <= max_chunk:
        return [[(t, None) for t in item]]
    rows = {t.shape[0] if t.shape else None for t in item}
    if len(rows) != 1 or None in rows:
        names = ", ".join(t.name for t in item)
        raise SourceError(f"tensors {names} must share their first dimension to be split together")
    (n_rows,) = rows
    assert n_rows is not None
    row_nbytes = sum(t.nbytes // n_rows for t in item)
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


def plan_chunks(
    groups: Sequence[GroupPlan], tensors: Mapping[str, SourceTensor], max_chunk: int
) -> list[ChunkPlan]:
    """Lay out groups as chunks of at most ``max_chunk`` decoded bytes (a pure function)."""
    if not spec.MIN_MAX_CHUNK <= max_chunk <= spec.MAX_CHUNK_RAW_NBYTES:
        raise InputError(
            f"max_chunk: {max_chunk} is outside [{spec.MIN_MAX_CHUNK}, {spec.MAX_CHUNK_RAW_NBYTES}]"
        )
    out: list[ChunkPlan] = []
    for group in groups:
        chunks: list[list[PiecePlan]] = []
        current: list[PiecePlan] = []
        end = 0
        for item in group.items:
            for unit in _units([tensors[n] for n in item], max_chunk):
                size = sum(align_up(t.nbytes if r is None else _rows_nbytes(t, r), spec.TENSOR_ALIGNMENT) for t, r in unit)
                if current and end + size > max_chunk:
                    chunks.append(current)
                    current, end = [], 0
                for t, rows in unit:
                    nbytes = t.nbytes if rows is None else _rows_nbytes(t, rows)
                    start = 0 if rows is None else rows[0] * (t.nbytes // t.shape[0])
                    entry = TensorEntry(t.name, t.dtype, t.shape, end, rows)
                    current.append(PiecePlan(entry, start))
                    end = align_up(end + nbytes, spec.TENSOR_ALIGNMENT)
        if current or not chunks:
            chunks.append(current)
        for k, pieces in enumerate(chunks):
            name = group.name if len(chunks) == 1 else f"{group.name}#{k}"
            raw = max((p.entry.offset + p.entry.nbytes for p in pieces), default=0)
            out.append(ChunkPlan(name, group.name, tuple(pieces), raw))
    return out


def _rows_nbytes(t: SourceTensor, rows: tuple[int, int]) -> int:
    return (rows[1] - rows[0]) * (t.nbytes // t.shape[0])


def _fill(reader: CheckpointReader, plan: ChunkPlan, buf: np.ndarray) -> memoryview:
    """Read a chunk's pieces into ``buf``; alignment gaps are zeroed so output is reproducible."""
    view = memoryview(buf)[: plan.raw_nbytes]
    end = 0
    for p in plan.pieces:
        if p.entry.offset > end:
            buf[end : p.entry.offset] = 0
        reader.read_into(
            reader.checkpoint.tensors[p.entry.name], p.src_start, view[p.entry.offset : p.entry.offset + p.entry.nbytes]
        )
        end = p.entry.offset + p.entry.nbytes
    return view


def pack(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    *,
    codec: str = "raw",
    level: int = 3,
    max_chunk: int = spec.DEFAULT_MAX_CHUNK,
    threads: int = 1,
    progress: ProgressFn | None = None,
) -> PackReport:
    """Convert a checkpoint (file or sharded directory) into ``dst``.

    >>> pack("MiniCPM-V-2_6/", "minicpmv26.wst", codec="zstd")  # doctest: +SKIP
    """
    started = time.perf_counter()
    if codec not in ("raw", "zstd"):
        raise InputError(f"codec: {codec!r} is not one of 'raw', 'zstd'")
    if not spec.MIN_ZSTD_LEVEL <= level <= spec.MAX_ZSTD_LEVEL:
        raise InputError(f"level: {level} is outside [{spec.MIN_ZSTD_LEVEL}, {spec.MAX_ZSTD_LEVEL}]")
    if threads < 1:
        raise InputError(f"threads: {threads} must be at least 1")
    pipeline = (CodecStep(CodecId.ZSTD, level),) if codec == "zstd" else ()
    ckpt = open_checkpoint(src)
    plans = plan_chunks(execution_order(ckpt.tensors), ckpt.tensors, max_chunk)
    largest = max((p.raw_nbytes for p in plans), default=0)
    dst = Path(dst)
    if dst.resolve() in {f.resolve() for f in ckpt.files}:
        raise InputError(f"output: {dst} is one of the source files")

    # Two buffers: the reader fills one while the other is checksummed/encoded and written.
    buffers = [np.empty(largest, np.uint8), np.empty(largest, np.uint8)]
    encode_threads = threads if threads > 1 else 0
    with CheckpointReader(ckpt) as reader, ContainerWriter(dst) as writer:
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="wstream-pack-read") as pool:
            pending: Future[memoryview] | None = None
            if plans:
                pending = pool.submit(_fill, reader, plans[0], buffers[0])
            for i, plan in enumerate(plans):
                assert pending is not None
                raw = pending.result()
                if i + 1 < len(plans):
                    pending = pool.submit(_fill, reader, plans[i + 1], buffers[(i + 1) % 2])
                stored = codecs.encode(pipeline, raw, encode_threads)
                writer.add_chunk(
                    plan.name,
                    plan.group,
                    [p.entry for p in plan.pieces],
                    stored,
                    raw_nbytes=plan.raw_nbytes,
                    codec=pipeline,
                    crc32=zlib.crc32(stored),
                )
                if progress is not None:
                    progress(sum(p.entry.nbytes for p in plan.pieces))
        manifest = writer.close(config=ckpt.config, metadata=ckpt.metadata)
    return PackReport(
        tensors=len(manifest.tensors),
        chunks=len(manifest.chunks),
        bytes_in=ckpt.nbytes,
        bytes_out=dst.stat().st_size,
        seconds=time.perf_counter() - started,
        manifest=manifest,
    )
