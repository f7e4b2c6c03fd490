"""Weight sources for the forward pass: eager (everything decoded in RAM) and streaming.

Both implement :class:`wstream.stream.pieces.WeightSource`: they describe the container's chunks
and hand chunks over as float32 arrays in the order asked for, so the forward cannot tell them
apart. :class:`EagerWeights` decodes and widens every chunk once, up front: the load-everything
baseline. :class:`StreamingLoader` keeps only a window of chunks in pooled slabs under a hard
byte budget, prefetching ahead of the consumer on worker threads.

The decode loop walks the LLM layers once per token. With a budget larger than the streaming
window, the loader keeps a *fixed* subset of those chunks resident and streams the rest on every
pass. On a cyclic walk that is optimal: any policy that evicts (LRU evicts exactly the chunk
needed soonest) re-reads at least as many bytes per pass as the budget leaves out. The subset is
chosen greedily in walk order until the resident share of the budget is full, which maximises
resident bytes up to the size of one chunk; the bytes still streamed per pass are reported.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from wstream.container.reader import Container, dequantize_into, piece_views
from wstream.format.manifest import ChunkEntry
from wstream.stream.pieces import Piece
from wstream.stream.plan import WIDEN_MODES, Plan, Widen, plan_chunk
from wstream.stream.pool import SlabPool
from wstream.stream.stream import ChunkStream, Resident, StreamChunk, StreamStats


def widen(array: np.ndarray) -> np.ndarray:
    """float32 copy of a floating-point array (exact for bf16/f16); other dtypes unchanged."""
    if array.dtype.kind == "f" or array.dtype.name == "bfloat16":
        return array.astype(np.float32)
    return array


class ContainerIndex:
    """The WeightSource description methods, from a container's manifest."""

    def __init__(self, container: Container) -> None:
        self.container = container
        m = container.manifest
        self._pieces = {
            c.name: tuple(Piece(t.name, t.rows, t.shape) for t in c.tensors) for c in m.chunks
        }
        self._by_group: dict[str, list[str]] = {}
        for c in m.chunks:
            self._by_group.setdefault(c.group, []).append(c.name)
        self.chunk_log: list[str] = []  # every chunk handed out, in order (tests read it)

    @property
    def config(self) -> Mapping[str, Any]:
        return self.container.manifest.config or {}

    @property
    def tensor_names(self) -> Sequence[str]:
        return list(self.container.manifest.tensors)

    def chunks_of(self, group: str) -> Sequence[str]:
        return self._by_group.get(group, [])

    def pieces_of(self, chunk: str) -> Sequence[Piece]:
        return self._pieces[chunk]

    def entry(self, chunk: str) -> ChunkEntry:
        m = self.container.manifest
        return m.chunks[m.chunk_index[chunk]]


class EagerWeights(ContainerIndex):
    """Every chunk decoded and widened to float32 up front: the load-everything baseline."""

    def __init__(self, container: Container, *, verify: bool = True) -> None:
        super().__init__(container)
        self._arrays: dict[str, list[np.ndarray]] = {}
        for chunk in container.manifest.chunks:
            data = container.decode(chunk, verify=verify)
            arrays = []
            for t, a in zip(chunk.tensors, piece_views(chunk, data)):
                if t.quant is not None:
                    values = np.empty(t.piece_shape, np.float32)
                    dequantize_into(t, data, values)
                    arrays.append(values)
                else:
                    arrays.append(widen(a))
            self._arrays[chunk.name] = arrays
        self.stats = StreamStats(
            bytes_read=sum(c.nbytes for c in container.manifest.chunks),
            bytes_decoded=sum(c.raw_nbytes for c in container.manifest.chunks if not c.is_raw),
        )

    def stream(self, chunks: Sequence[str], *, repeat: bool = False) -> Iterator[StreamChunk]:
        for name in chunks:
            self.chunk_log.append(name)
            entry = self.entry(name)
            names = tuple(t.name for t in entry.tensors)
            self.stats.chunks += 1
            yield StreamChunk(name, entry.group, names, self._arrays[name], None)

    def close(self) -> None:
        self._arrays.clear()


class StreamingLoader(ContainerIndex):
    """Stream a container's chunks into pooled slabs under a hard byte budget.

    >>> with StreamingLoader(open_container("m.wst"), budget=1 << 30, prefetch=2) as w:
    ...     for chunk in w.stream(w.chunks_of("llm.layer.0")):      # doctest: +SKIP
    ...         with chunk: use(chunk.arrays())

    ``budget`` bounds every byte the loader holds (slabs, idle or leased, and mapped pages of
    chunks in use); None keeps every chunk once loaded. ``widen`` says what the consumer gets:
    ``"float32"`` (or True) every float widened by the workers; ``"stored"`` (or False) the
    stored dtype, raw chunks zero-copy; ``"dequantize"`` only quantized pieces widened, the rest
    as stored, which is what the forward wants: it widens bf16 piece by piece while the piece is
    in cache, so float32 weights never travel through memory. ``verify`` checks each chunk's
    CRC-32 as it is read.
    """

    def __init__(
        self,
        container: Container,
        *,
        budget: int | None = None,
        prefetch: int = 2,
        workers: int = 2,
        widen: bool | str = True,
        verify: bool = True,
        timeout: float = 60.0,
        poison: bool = False,
        stored: Callable[[ChunkEntry], memoryview] | None = None,
    ) -> None:
        super().__init__(container)
        if prefetch < 0:
            raise ValueError(f"prefetch: {prefetch} must be >= 0")
        self.budget = budget
        self.prefetch = prefetch
        self.workers = workers
        if isinstance(widen, bool):
            widen = "float32" if widen else "stored"
        if widen not in WIDEN_MODES:
            raise ValueError(f"widen: {widen!r} is not one of {WIDEN_MODES} (or a bool)")
        self.widen: Widen = widen  # type: ignore[assignment]
        self.verify = verify
        self.pool = SlabPool(budget, timeout=timeout, poison=poison)
        self.stats = StreamStats()  # all streams, summed
        self.history: list[StreamStats] = []  # each stream's own, in the order they closed
        self.resident: Resident = {}
        self.resident_bytes = 0
        self._stored = stored  # fault-injection hook: how a worker gets a chunk's stored bytes
        self._warm: tuple[list[str], ChunkStream] | None = None
        self._plans: dict[str, Plan] = {}

    def plan(self, name: str) -> Plan:
        plan = self._plans.get(name)
        if plan is None:
            plan = self._plans[name] = plan_chunk(self.entry(name), self.widen)
        return plan

    def chunk_cost(self, name: str) -> int:
        """Bytes the budget must hold while this chunk is loaded (transients included)."""
        p = self.plan(name)
        return SlabPool.cost(*p.sizes, mapped=p.mapped)

    def min_budget(self, chunks: Sequence[str]) -> int:
        """The smallest budget that can stream ``chunks`` (one at a time, no prefetch)."""
        return max((self.chunk_cost(n) for n in chunks), default=0)

    def _keeper(self, order: Sequence[str], repeat: bool) -> Callable[[int], bool]:
        """Whether a loaded chunk holding ``held`` bytes stays resident after its release.

        A fixed subset, filled greedily in walk order: once full it never changes, so a cyclic
        walk re-reads exactly the same chunks every pass. The budget always keeps room for
        ``prefetch + 1`` of the largest chunks still streamed, so streaming never starves."""
        if self.budget is None:
            return lambda held: True  # no budget: keep everything once loaded
        if not repeat:
            return lambda held: False
        costs = [self.chunk_cost(n) for n in order if n not in self.resident]
        limit = self.budget - (self.prefetch + 1) * max(costs, default=0)

        def keep(held: int) -> bool:
            if self.resident_bytes + held > limit:
                return False
            self.resident_bytes += held
            return True

        return keep

    def stream(self, chunks: Sequence[str], *, repeat: bool = False) -> ChunkStream:
        """Chunks in the given order, ``prefetch`` ahead. ``repeat``: this walk comes back
        (the decode loop), so keep a fixed resident subset if the budget allows."""
        order = list(chunks)
        self.chunk_log.extend(order)
        if self._warm is not None:
            warm_order, warm = self._warm
            self._warm = None
            if warm_order == order[: len(warm_order)]:
                warm.extend(order[len(warm_order) :], keep=self._keeper(order, repeat))
                return warm
            warm.close()
        return self._new_stream(order, repeat)

    def _new_stream(self, order: list[str], repeat: bool, *, warm: bool = False) -> ChunkStream:
        return ChunkStream(
            self.container,
            self.pool,
            order,
            prefetch=self.prefetch,
            workers=self.workers,
            planner=self.plan,
            verify=self.verify,
            resident=self.resident,
            keep=self._keeper(order, repeat),
            stored=self._stored,
            on_close=self._closed_stream,
            eager_start=warm,  # a warm-up has nobody waiting: fill the whole window at once
        )

    def _closed_stream(self, stats: StreamStats) -> None:
        self.stats.add(stats)
        self.history.append(stats)

    def warm(self, chunks: Sequence[str]) -> None:
        """Start loading the first chunks of ``chunks`` in the background and return at once.

        The next :meth:`stream` whose order starts with ``chunks`` takes the work over, so a
        request that arrives while warming waits for nothing it would not have waited for."""
        if self._warm is not None:
            self._warm[1].close()
        order = list(chunks)
        self._warm = (order, self._new_stream(order, False, warm=True))

    def bytes_streamed_per_pass(self, chunks: Sequence[str]) -> int:
        """Stored bytes a walk over ``chunks`` reads, given the current resident set."""
        return sum(self.entry(n).nbytes for n in chunks if n not in self.resident)

    def close(self) -> None:
        if self._warm is not None:
            self._warm[1].close()
            self._warm = None
        for lease, _ in self.resident.values():
            lease.release()
        self.resident.clear()
        self.resident_bytes = 0
        self.pool.close()

    def __enter__(self) -> StreamingLoader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
