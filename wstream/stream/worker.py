"""The worker's job: read (and check), decode and convert one chunk into its pooled lease.

Runs on a prefetch thread. A chunk needing no conversion from a mapped source is handed out as
views of the map (zero copy); its pages are mapped in here when no CRC pass touched them, so the
consumer neither faults nor waits on disk. From a source without a map the stored bytes are
read into a slab of the lease first.
"""

from __future__ import annotations

import math
import mmap
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass

import numpy as np

from wstream.container.reader import Container
from wstream.format import chunk as wchunk
from wstream.format.manifest import ChunkEntry
from wstream.stream.plan import PAGE, LoadPlan, page_span
from wstream.stream.pool import Lease, SlabPool

# Linux >= 5.14: fill a range's page tables, reading what is not cached, without copying.
# Python 3.11's mmap module does not name it; elsewhere the number may mean something else.
_MADV_POPULATE_READ = getattr(mmap, "MADV_POPULATE_READ", 22 if sys.platform == "linux" else None)

StoredReader = Callable[[ChunkEntry], memoryview]  # a chunk's stored bytes (the testing seam)


def _prefault(container: Container, chunk: ChunkEntry, src: memoryview) -> None:
    """Map a zero-copy chunk's pages in on the worker (reading them from disk if need be), so the
    consumer's first touches neither fault nor wait for I/O. Without this, an unverified raw
    chunk cost its consumer ~13% more time in the matmuls that first read it (decoder prefill,
    2-core BLAS). A verified chunk needs nothing: the CRC has touched every page."""
    mapped = container.mapping()
    if _MADV_POPULATE_READ is not None and mapped is not None:
        start, length = page_span(chunk)
        try:
            mapped.madvise(_MADV_POPULATE_READ, start, length)
            return
        except (OSError, ValueError):  # an older kernel: EINVAL
            pass
    pages = np.frombuffer(src, np.uint8)[::PAGE]
    if pages.size:
        pages.max()  # one read per page


@dataclass
class Loaded:
    """A chunk in hand (the result of a worker), with what it cost to get it."""

    plan: LoadPlan
    lease: Lease
    arrays: list[wchunk.Stored]
    read_seconds: float = 0.0
    decode_seconds: float = 0.0


def stored_view(plan: LoadPlan, lease: Lease) -> memoryview:
    """Where a source without a map puts the chunk's stored bytes: slab 2 for compressed chunks;
    for raw ones, the slab they are handed out (or converted) from, so they are read once."""
    if plan.read_nbytes:
        slab = lease.array(2)
    else:
        slab = lease.array(1) if plan.temp_nbytes else lease.array(0)
    return slab.data[: plan.chunk.nbytes]


def _read_stored(container: Container, plan: LoadPlan, lease: Lease, verify: bool) -> memoryview:
    """The chunk's stored bytes, checked if ``verify``: a view of the map, or read into the
    lease's slab for them (checked as they are read)."""
    if plan.mapped_source:
        src = container.stored(plan.chunk)
        if verify:
            wchunk.check_crc(plan.chunk, src)
        return src
    view = stored_view(plan, lease)
    if verify:
        container.read_checked_into(plan.chunk, view)
    else:
        container.read_stored_into(plan.chunk, view)
    return view


class CoalescedRead:
    """The stored bytes of neighbouring chunks, fetched by one request into their own slabs.

    Each chunk's worker calls it (as the ``stored`` reader of :func:`load_chunk`): the first
    call makes the one read for all of them, the others wait for it, then each worker checks
    and decodes its own chunk, so decoding stays parallel. A failed read is every member's
    error. Each view is handed out once (so no reference outlives its lease)."""

    def __init__(self, container: Container, parts: Sequence[tuple[ChunkEntry, memoryview]]):
        self._container = container
        self._parts = list(parts)
        self._views = {chunk.name: view for chunk, view in self._parts}
        self._lock = threading.Lock()
        self._done = False
        self._error: BaseException | None = None

    def __len__(self) -> int:
        return len(self._parts)

    def __call__(self, chunk: ChunkEntry) -> memoryview:
        with self._lock:
            if not self._done:
                try:
                    self._container.read_stored_many_into(self._parts)
                except BaseException as exc:
                    self._error = exc
                finally:
                    self._done = True
                    self._parts = []
            if self._error is not None:
                raise self._error
            return self._views.pop(chunk.name)


def load_chunk(
    container: Container,
    plan: LoadPlan,
    lease: Lease,
    pool: SlabPool,
    *,
    verify: bool,
    stored: StoredReader | None = None,
    helper: Executor | None = None,
) -> Loaded:
    """Read (and check), decode and convert one chunk into its lease.

    ``stored`` replaces how the stored bytes are got (fault injection in tests); ``helper`` (a
    thread that never waits on anything) decodes half of a multi-frame chunk."""
    chunk = plan.chunk
    t0 = time.perf_counter()
    if stored is None:
        src = _read_stored(container, plan, lease, verify)
    else:
        src = stored(chunk)
        if verify:
            wchunk.check_crc(chunk, src)
    if not verify and plan.zero_copy:
        _prefault(container, chunk, src)
    t1 = time.perf_counter()
    if plan.zero_copy:
        return Loaded(plan, lease, wchunk.stored_pieces(chunk, src), t1 - t0, 0.0)
    if chunk.is_raw:
        decoded = np.frombuffer(src, np.uint8)
    else:
        decoded = lease.array(1) if plan.temp_nbytes else lease.array(0)
        wchunk.decode_into(chunk, src, decoded.data, executor=helper)
        if plan.read_nbytes:
            src.release()
            pool.return_early(lease, slab=2)
    stored_arrays = wchunk.piece_views(chunk, decoded)
    if plan.converts:
        out = lease.array(0)
        arrays: list[wchunk.Stored] = []
        for t, a, off, dtype in zip(
            chunk.tensors, stored_arrays, plan.out_offsets, plan.out_dtypes
        ):
            shape = t.piece_shape  # a uint4 piece's values are packed: not a.shape
            dst = out[off : off + math.prod(shape) * dtype.itemsize].view(dtype).reshape(shape)
            wchunk.convert_piece(t, decoded, a, dst)
            arrays.append(dst)
        if plan.temp_nbytes:
            pool.return_early(lease, slab=1)
    else:
        arrays = wchunk.stored_pieces(chunk, decoded)
    del stored_arrays, decoded, src
    # The stored bytes are consumed: drop their pages now rather than at release.
    container.drop_pages(chunk)
    pool.return_early(lease, mapped=lease.mapped)
    return Loaded(plan, lease, arrays, t1 - t0, time.perf_counter() - t1)
