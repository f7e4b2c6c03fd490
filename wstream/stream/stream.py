"""Keep the next k chunks of an order ready on worker threads, under the pool's byte budget.

:class:`ChunkStream` is driven by its consumer: each ``next()`` (and each release of a chunk)
submits work until k chunks are in flight ahead of the one the consumer is about to get, as far
as the budget allows. Workers verify the stored bytes' CRC, decode straight into pooled slabs
(zstd releases the GIL, so two workers really run in parallel) and, for the forward pass, widen
bf16/f16 to float32. Raw chunks that need no widening are served zero-copy from the container's
map; ``MADV_WILLNEED`` is issued for a chunk when it is scheduled and ``MADV_DONTNEED`` when it is
released, so mapped pages do not pile up in RSS. From a remote source, small chunks that follow
one another in the file are fetched by one request (:meth:`ChunkStream._neighbours`), each into
its own lease's slab, and still checked and decoded one by one on the workers.

A worker's error reaches the consumer at that chunk, as a :class:`~wstream.errors.WStreamError`
naming it. Closing the stream (leaving the loop early, an exception in the consumer, or the end)
cancels queued work, waits for running work, returns every lease and stops every thread.
"""

from __future__ import annotations

import mmap
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

from wstream import errors as E
from wstream.container.reader import Container
from wstream.format.chunk import Stored
from wstream.stream.plan import LoadPlan
from wstream.stream.pool import Lease, SlabPool
from wstream.stream.worker import CoalescedRead, Loaded, StoredReader, load_chunk, stored_view


@dataclass
class StreamStats:
    """What one stream (or, summed, a loader) did."""

    chunks: int = 0  # chunks handed to the consumer
    resident_hits: int = 0  # of which served from the resident set (no I/O, no decode)
    bytes_read: int = 0  # stored bytes read from the container
    bytes_decoded: int = 0  # bytes produced by codecs (compressed chunks)
    bytes_widened: int = 0  # float32 bytes produced by widening
    stall_seconds: float = 0.0  # consumer time spent waiting for a chunk
    read_seconds: float = 0.0  # worker time reading + checksumming
    decode_seconds: float = 0.0  # worker time decoding + widening
    max_ahead: int = 0  # most chunks in flight ahead (k, plus small neighbours coalesced)
    coalesced: int = 0  # chunks fetched in the same request as the chunk before them

    def add(self, other: StreamStats) -> None:
        for f in self.__dataclass_fields__:
            if f == "max_ahead":
                self.max_ahead = max(self.max_ahead, other.max_ahead)
            else:
                setattr(self, f, getattr(self, f) + getattr(other, f))


class StreamChunk:
    """A chunk handed to the consumer: its arrays, valid until release()."""

    __slots__ = ("_arrays", "_names", "_on_release", "group", "name", "released")

    def __init__(
        self,
        name: str,
        group: str,
        names: tuple[str, ...],
        arrays: list[Stored],
        on_release: Callable[[], None] | None,
    ) -> None:
        self.name = name
        self.group = group
        self._names = names
        self._arrays = arrays
        self._on_release = on_release
        self.released = False

    def arrays(self) -> Sequence[Stored]:
        """One array per piece, in manifest order."""
        return self._arrays

    @property
    def tensors(self) -> dict[str, Stored]:
        """Piece arrays by tensor name (a row block is keyed by its tensor's name)."""
        return dict(zip(self._names, self._arrays))

    def release(self) -> None:
        """Hand the chunk back; its arrays must not be used afterwards."""
        if not self.released:
            self.released = True
            self._arrays = []
            if self._on_release is not None:
                self._on_release()

    def __enter__(self) -> StreamChunk:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


Resident = dict[str, tuple[Lease, list[Stored]]]


class ChunkStream(Iterator[StreamChunk]):
    """Chunks of ``order``, in that order, with up to ``prefetch`` in flight ahead."""

    def __init__(
        self,
        container: Container,
        pool: SlabPool,
        order: Sequence[str],
        *,
        prefetch: int,
        workers: int,
        planner: Callable[[str], LoadPlan],
        verify: bool,
        resident: Resident,
        keep: Callable[[int], bool],
        stored: StoredReader | None = None,
        on_close: Callable[[StreamStats], None] | None = None,
        eager_start: bool = False,
    ) -> None:
        self._closed = True  # until fully constructed, so __del__ and close() are no-ops
        self.container = container
        self.pool = pool
        self.order = list(order)
        self._planner = planner  # name -> LoadPlan, cached by the loader: planned when submitted
        self.prefetch = prefetch
        self.verify = verify
        self.stats = StreamStats()
        self._resident = resident
        self._keep = keep  # told a loaded chunk's bytes, decides whether it joins the resident set
        self._stored = stored
        self._coalescing = container.coalescing()
        self._executor: ThreadPoolExecutor | None = ThreadPoolExecutor(
            max_workers=max(1, workers), thread_name_prefix="wstream-prefetch"
        )
        # Decodes the second half of a multi-frame chunk while a worker does the first, so one
        # large chunk (the first one, or any with prefetch 0) also gets two threads.
        self._helper: ThreadPoolExecutor | None = (
            ThreadPoolExecutor(
                max_workers=workers - 1, thread_name_prefix="wstream-prefetch-frames"
            )
            if workers > 1
            else None
        )
        self._futures: dict[int, Future[Loaded]] = {}
        self._leases: dict[int, Lease] = {}
        self._next_submit = 0
        self._next_yield = 0
        self._held: dict[int, StreamChunk] = {}
        self._on_close = on_close
        self._eager_start = eager_start
        self._closed = False
        try:
            self._check_budget(self.order)
        except BaseException:
            self.close()
            raise
        self._submit_ahead(block=False)

    def extend(self, order: Sequence[str], *, keep: Callable[[int], bool]) -> None:
        """Append chunks to the order (a warm-up stream adopted by a real request)."""
        try:
            self._check_budget(order)
        except BaseException:
            self.close()
            raise
        self.order.extend(order)
        self._keep = keep
        self._submit_ahead(block=False)

    # --- scheduling ---------------------------------------------------------------------------

    def _check_budget(self, order: Sequence[str]) -> None:
        """Fail before any work starts if one chunk cannot fit the budget at all."""
        if self.pool.capacity is None:
            return
        for plan in map(self._planner, order):
            if plan.cost > self.pool.capacity:
                raise E.BudgetTooSmall(
                    f"budget: chunk {plan.chunk.name!r} needs {plan.cost} bytes "
                    f"but the budget is {self.pool.capacity} bytes"
                )

    def _submit_ahead(self, *, block: bool) -> None:
        """Submit work up to ``prefetch`` chunks past the next one to yield, budget permitting.

        Only the chunk the consumer needs now may wait for room (``block``); chunks further
        ahead are submitted when they fit, so a large chunk in flight means fewer ahead.
        Any failure here closes the stream, so no thread or lease outlives it."""
        try:
            self._submit_more(block)
        except BaseException:
            self.close()
            raise

    def _submit_more(self, block: bool) -> None:
        # Until the first chunk is handed out it has the machine to itself (both threads, no
        # competing page faults): time to the first compute matters more than the depth.
        ahead = self.prefetch if self._next_yield or self._eager_start else 0
        while (
            not self._closed
            and self._next_submit < len(self.order)
            and self._next_submit <= self._next_yield + ahead
        ):
            i = self._next_submit
            plan = self._planner(self.order[i])
            if plan.chunk.name in self._resident:
                self._next_submit += 1
                continue
            needed_now = block and i == self._next_yield
            lease = self.pool.acquire(*plan.sizes, mapped=plan.mapped, block=False)
            if lease is None and needed_now and self._held:
                # Only the consumer could free the room, and it is waiting on us.
                raise E.BudgetTooSmall(
                    f"budget: chunk {plan.chunk.name!r} needs "
                    f"{plan.cost} bytes, but the budget is "
                    f"taken by chunks the consumer still holds "
                    f"({', '.join(repr(h.name) for h in self._held.values())}); release each "
                    "chunk before asking for the next, or raise the budget"
                )
            if lease is None and needed_now:
                lease = self.pool.acquire(*plan.sizes, mapped=plan.mapped)
            if lease is None:
                return
            if plan.mapped:
                self.container.advise(plan.chunk, mmap.MADV_WILLNEED)
            members = [(i, plan, lease)]
            if ahead:  # the first chunk alone: its request carries nothing it does not need
                members += self._neighbours(i, plan)
            batch = None
            if len(members) > 1:
                batch = CoalescedRead(
                    self.container, [(p.chunk, stored_view(p, le)) for _, p, le in members]
                )
            assert self._executor is not None
            for j, p, le in members:
                self._leases[j] = le
                self._futures[j] = self._executor.submit(
                    load_chunk,
                    self.container,
                    p,
                    le,
                    self.pool,
                    verify=self.verify,
                    stored=self._stored if batch is None else batch,
                    # Split one chunk's frames over two threads only when it is the only work
                    # in flight (the first chunk, or prefetch 0); otherwise workers already
                    # fill the cores and a third thread only adds switching.
                    helper=self._helper if j == self._next_yield else None,
                )
            self._next_submit = members[-1][0] + 1
            self.stats.coalesced += len(members) - 1

    def _neighbours(self, i: int, plan: LoadPlan) -> list[tuple[int, LoadPlan, Lease]]:
        """Small chunks after ``i`` in the order that lie right after it in the source, to be
        fetched by the same request (remote sources only): while each is small, the gap before
        it small, the whole span within the request limit, and its lease fits the budget now.
        They may reach past the prefetch window: they cost one request, not one each."""
        rule = self._coalescing
        first = plan.chunk
        if rule is None or self._stored is not None or first.nbytes > rule.small_chunk:
            return []
        out: list[tuple[int, LoadPlan, Lease]] = []
        end = first.offset + first.nbytes
        try:
            for j in range(i + 1, len(self.order)):
                p = self._planner(self.order[j])
                c = p.chunk
                if (
                    c.name in self._resident
                    or c.nbytes > rule.small_chunk
                    or not 0 <= c.offset - end <= rule.max_gap
                    or c.offset + c.nbytes - first.offset > rule.max_span
                ):
                    break
                lease = self.pool.acquire(*p.sizes, mapped=p.mapped, block=False)
                if lease is None:
                    break
                out.append((j, p, lease))
                end = c.offset + c.nbytes
        except BaseException:
            for _, _, lease in out:
                lease.release()
            raise
        return out

    def __next__(self) -> StreamChunk:
        if self._closed or self._next_yield >= len(self.order):
            self.close()
            raise StopIteration
        i = self._next_yield
        plan = self._planner(self.order[i])
        chunk = plan.chunk
        hit = self._resident.get(chunk.name)
        if hit is not None:
            self._next_yield += 1
            self.stats.chunks += 1
            self.stats.resident_hits += 1
            self._submit_ahead(block=False)
            return self._hand_out(i, hit[1], None)
        t0 = time.perf_counter()
        try:
            self._submit_ahead(block=True)
            loaded = self._futures.pop(i).result()
        except E.WStreamError:
            self.close()
            raise
        except OSError as exc:
            self.close()
            raise E.LoaderError(f"chunk {chunk.name!r}: read failed: {exc}") from exc
        except BaseException:
            self.close()
            raise
        self.stats.stall_seconds += time.perf_counter() - t0
        self.stats.chunks += 1
        self.stats.bytes_read += chunk.nbytes
        self.stats.bytes_decoded += 0 if chunk.is_raw else chunk.raw_nbytes
        self.stats.bytes_widened += plan.out_nbytes if plan.converts else 0
        self.stats.read_seconds += loaded.read_seconds
        self.stats.decode_seconds += loaded.decode_seconds
        self._next_yield += 1
        lease = self._leases.pop(i)
        # Decided now, on what the chunk really holds: a reused slab may be larger than asked.
        held = sum(s.nbytes for s in lease.slabs if s is not None) + lease.mapped
        if self._keep(held):
            self._resident[chunk.name] = (lease, loaded.arrays)
            out = self._hand_out(i, loaded.arrays, None)
        else:
            out = self._hand_out(i, loaded.arrays, lease)
        self.stats.max_ahead = max(self.stats.max_ahead, self._next_submit - self._next_yield)
        return out

    def _hand_out(self, i: int, arrays: list[Stored], lease: Lease | None) -> StreamChunk:
        plan = self._planner(self.order[i])

        def release() -> None:
            self._held.pop(i, None)
            if lease is not None:
                if plan.zero_copy:
                    self.container.drop_pages(plan.chunk)
                lease.release()
            self._submit_ahead(block=False)

        names = tuple(t.name for t in plan.chunk.tensors)
        out = StreamChunk(plan.chunk.name, plan.chunk.group, names, arrays, release)
        self._held[i] = out
        return out

    # --- lifetime -----------------------------------------------------------------------------

    def close(self) -> None:
        """Cancel queued work, wait for running work, return every lease, stop every thread."""
        if self._closed:
            return
        self._closed = True
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._executor = None
        if self._helper is not None:
            self._helper.shutdown(wait=True, cancel_futures=True)
            self._helper = None
        for i, lease in self._leases.items():
            plan = self._planner(self.order[i])
            if i in self._futures and plan.zero_copy:
                self.container.drop_pages(plan.chunk)
            lease.release()
        self._leases.clear()
        self._futures.clear()
        for held in list(self._held.values()):
            held.release()
        if self._on_close is not None:
            self._on_close(self.stats)

    def __del__(self) -> None:
        if not getattr(self, "_closed", True):
            self.close()
