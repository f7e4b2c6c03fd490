"""The worker's job: read (and check), decode and convert one chunk into its pooled lease.

Runs on a prefetch thread. A chunk needing no conversion from a local map is handed out as views
of the map (zero copy); its pages are mapped in here when no CRC pass touched them, so the
consumer neither faults nor waits on disk.
"""

from __future__ import annotations

import mmap
import sys
import time
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass

import numpy as np

from wstream import errors as E
from wstream.container.reader import Container, dequantize_into, piece_views
from wstream.format import codecs
from wstream.format.crc import crc32
from wstream.format.manifest import ChunkEntry
from wstream.stream.plan import PAGE, Plan, page_span
from wstream.stream.pool import Lease, SlabPool

# Linux >= 5.14: fill a range's page tables, reading what is not cached, without copying.
# Python 3.11's mmap module does not name it; elsewhere the number may mean something else.
_MADV_POPULATE_READ = getattr(mmap, "MADV_POPULATE_READ", 22 if sys.platform == "linux" else None)


def _prefault(container: Container, chunk: ChunkEntry, src: memoryview) -> None:
    """Map a zero-copy chunk's pages in on the worker (reading them from disk if need be), so the
    consumer's first touches neither fault nor wait for I/O. Without this, an unverified raw
    chunk cost its consumer ~13% more time in the matmuls that first read it (decoder prefill,
    2-core BLAS). A verified chunk needs nothing: the CRC has touched every page."""
    if _MADV_POPULATE_READ is not None:
        start, length = page_span(chunk)
        try:
            container.mmap().madvise(_MADV_POPULATE_READ, start, length)
            return
        except (OSError, ValueError):  # an older kernel: EINVAL
            pass
    pages = np.frombuffer(src, np.uint8)[::PAGE]
    if pages.size:
        pages.max()  # one read per page


@dataclass
class Loaded:
    """A chunk in hand (the result of a worker), with what it cost to get it."""

    plan: Plan
    lease: Lease
    arrays: list[np.ndarray]
    read_seconds: float = 0.0
    decode_seconds: float = 0.0


def load_chunk(
    container: Container,
    plan: Plan,
    lease: Lease,
    pool: SlabPool,
    *,
    verify: bool,
    stored: Callable[[ChunkEntry], memoryview] | None = None,
    helper: Executor | None = None,
) -> Loaded:
    """The worker's job: read (and check), decode and convert one chunk into its lease.

    ``helper`` (a thread that never waits on anything) decodes half of a multi-frame chunk."""
    chunk = plan.chunk
    t0 = time.perf_counter()
    src = (stored or container.stored)(chunk)
    if verify:
        crc = crc32(src)
        if crc != chunk.crc32:
            raise E.ChunkChecksumMismatch(
                f"chunk {chunk.name!r}: crc32 stored {chunk.crc32:#010x}, computed {crc:#010x}"
            )
    elif plan.zero_copy:
        _prefault(container, chunk, src)
    t1 = time.perf_counter()
    if plan.zero_copy:
        data = np.frombuffer(src, np.uint8)
        return Loaded(plan, lease, piece_views(chunk, data), t1 - t0, 0.0)
    if chunk.is_raw:
        decoded = np.frombuffer(src, np.uint8)
    else:
        decoded = lease.array(1) if plan.temp_nbytes else lease.array(0)
        try:
            codecs.decode_into(chunk.codec, src, decoded.data, executor=helper)
        except E.FormatError as exc:
            raise type(exc)(f"chunk {chunk.name!r}: {exc}") from None
    stored_arrays = piece_views(chunk, decoded)
    if plan.converts:
        out = lease.array(0)
        arrays = []
        for t, a, off, dtype in zip(
            chunk.tensors, stored_arrays, plan.out_offsets, plan.out_dtypes
        ):
            dst = out[off : off + a.size * dtype.itemsize].view(dtype).reshape(a.shape)
            if t.quant is None:
                np.copyto(dst, a, casting="unsafe")  # exact: every bf16/f16 value is a float32
            elif dtype == np.float32:
                dequantize_into(t, decoded, dst)
            else:  # dequantize, then round to the declared dtype (stream without widening)
                values = np.empty(a.shape, np.float32)
                dequantize_into(t, decoded, values)
                np.copyto(dst, values, casting="unsafe")
            arrays.append(dst)
        if plan.temp_nbytes:
            pool.return_early(lease, slab=1)
    else:
        arrays = stored_arrays
    del stored_arrays, decoded, src
    # The stored bytes are consumed: drop their pages now rather than at release.
    container.drop_pages(chunk)
    pool.return_early(lease, mapped=lease.mapped)
    return Loaded(plan, lease, arrays, t1 - t0, time.perf_counter() - t1)
