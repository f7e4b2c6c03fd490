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

import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from wstream.container.cache import ChunkCache
from wstream.container.reader import Container
from wstream.container.remote import RemoteOptions
from wstream.container.source import ByteSource
from wstream.errors import InputError
from wstream.format import chunk as wchunk
from wstream.format.manifest import ChunkEntry
from wstream.stream.pieces import Piece, WeightSource
from wstream.stream.plan import DEFAULT_WIDEN, LoadPlan, Widen, plan_load
from wstream.stream.pool import SlabPool
from wstream.stream.stream import ChunkStream, Resident, StreamChunk, StreamStats
from wstream.stream.worker import StoredReader

MAX_PREFETCH = 1024  # chunks ahead; far more than any window that fits in memory
MAX_WORKERS = 256
MAX_BUDGET = 1 << 60  # bytes (1 EiB): any real memory, and no overflow downstream


def check_loader_args(*, budget: int | None, prefetch: int, workers: int) -> None:
    """Every loader argument in its range, or an :class:`InputError` naming it."""
    for name, value, lo, hi in (
        ("prefetch", prefetch, 0, MAX_PREFETCH),
        ("workers", workers, 1, MAX_WORKERS),
        ("budget", 0 if budget is None else budget, 0, MAX_BUDGET),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
            raise InputError(f"{name}: {value!r} is outside [{lo}, {hi}]")


def default_stream_budget(container: Container, names: Sequence[str], widen: Widen, k: int) -> int:
    """The budget of a one-pass stream given none: ``k + 2`` times the largest chunk's cost,
    room for the prefetch window plus the chunk in use, whatever the container's size (no
    budget would keep every chunk loaded until the loop ends)."""
    mapped = container.mapping() is not None
    chunks = (container.chunk(n) for n in names)
    largest = max((plan_load(c, widen, mapped_source=mapped).cost for c in chunks), default=0)
    return (k + 2) * largest


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
    """Every chunk decoded and widened to float32 up front: the load-everything baseline.

    ``keep_quantized`` keeps quantized pieces as their int8 values and scales (copied), as a
    streaming loader with ``Widen.QUANTIZED`` hands them out."""

    def __init__(
        self, container: Container, *, verify: bool = True, keep_quantized: bool = False
    ) -> None:
        super().__init__(container)
        self._arrays: dict[str, list[wchunk.Stored]] = {}
        for chunk in container.manifest.chunks:
            data = container.decode(chunk, verify=verify)
            arrays: list[wchunk.Stored] = []
            for t, a in zip(chunk.tensors, wchunk.piece_views(chunk, data)):
                if t.quant is not None and keep_quantized:
                    # as Widen.QUANTIZED hands it out, so the forward's results are the same
                    arrays.append(wchunk.quant_piece_of(t, data).copy())
                elif t.quant is not None:
                    values = np.empty(t.piece_shape, np.float32)
                    wchunk.convert_piece(t, data, a, values)
                    arrays.append(values)
                else:
                    arrays.append(wchunk.float32_copy(a))
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
    chunks in use); None keeps every chunk once loaded. ``widen`` (a :class:`Widen`) says what
    the consumer gets: ``STORED`` (the default) the stored dtype, raw chunks of a local file
    zero-copy; ``FLOAT32`` every float widened by the workers; ``DEQUANTIZE`` only quantized
    pieces widened, the rest as stored, which is what the forward wants: it widens bf16 piece by
    piece while the piece is in cache, so float32 weights never travel through memory.
    ``verify`` checks each chunk's CRC-32 as it is read.
    """

    def __init__(
        self,
        container: Container,
        *,
        budget: int | None = None,
        prefetch: int = 2,
        workers: int = 2,
        widen: Widen | str = DEFAULT_WIDEN,
        verify: bool = True,
        timeout: float = 60.0,
    ) -> None:
        super().__init__(container)
        check_loader_args(budget=budget, prefetch=prefetch, workers=workers)
        self.budget = budget
        self.prefetch = prefetch
        self.workers = workers
        self.widen = Widen.parse(widen)
        self.verify = verify
        self.pool = self._make_pool(budget, timeout)
        self.stats = StreamStats()  # all streams, summed
        self.history: list[StreamStats] = []  # each stream's own, in the order they closed
        self.resident: Resident = {}
        self.resident_bytes = 0
        self._warm: tuple[list[str], ChunkStream] | None = None
        self._plans: dict[str, LoadPlan] = {}
        self._mapped_source = container.mapping() is not None

    # --- the testing seam: wstream.stream.testing.InstrumentedLoader overrides these ----------

    def _make_pool(self, budget: int | None, timeout: float) -> SlabPool:
        return SlabPool(budget, timeout=timeout)

    def _stored_reader(self) -> StoredReader | None:
        """How workers get a chunk's stored bytes; None: from the container (the only way
        outside tests)."""
        return None

    # --- plans ------------------------------------------------------------------------------

    def plan(self, name: str) -> LoadPlan:
        plan = self._plans.get(name)
        if plan is None:
            plan = plan_load(self.entry(name), self.widen, mapped_source=self._mapped_source)
            self._plans[name] = plan
        return plan

    def chunk_cost(self, name: str) -> int:
        """Bytes the budget must hold while this chunk is loaded (transients included)."""
        return self.plan(name).cost

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
            stored=self._stored_reader(),
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


class StreamingContainer(Container):
    """A :class:`~wstream.container.reader.Container` that also streams its chunks: what
    ``wstream.open_container`` returns. (The container layer knows nothing of streaming; this
    layer adds it, so the reader never imports the loader.)"""

    def stream(
        self,
        order: Sequence[str] | None = None,
        *,
        prefetch: int = 2,
        budget: int | None = None,
        workers: int = 2,
        verify: bool = True,
        widen: Widen | str = DEFAULT_WIDEN,
    ) -> Iterator[StreamChunk]:
        """Chunks in ``order`` (default: file order), ``prefetch`` decoded ahead on worker
        threads, under ``budget`` bytes (None: :func:`default_stream_budget`, ``prefetch + 2``
        of the largest chunk). Each chunk is a context manager; leave it (or call
        ``release()``) when done with its arrays.

        >>> for chunk in c.stream(prefetch=2, budget=64 << 20):   # doctest: +SKIP
        ...     with chunk:
        ...         use(chunk.tensors)
        """
        names = [ch.name for ch in self.manifest.chunks] if order is None else list(order)
        check_loader_args(budget=budget, prefetch=prefetch, workers=workers)
        if budget is None:
            budget = default_stream_budget(self, names, Widen.parse(widen), prefetch)
        loader = StreamingLoader(
            self, budget=budget, prefetch=prefetch, workers=workers, widen=widen, verify=verify
        )
        try:
            yield from loader.stream(names)
        finally:
            loader.close()


def open_container(
    source: str | os.PathLike[str] | ByteSource,
    *,
    mapped: bool = False,
    cache: ChunkCache | None = None,
    options: RemoteOptions | None = None,
) -> StreamingContainer:
    """Open and validate a container (reads the preamble and manifest only): a path, a URL
    (``s3://bucket/key``, ``https://...``) or any :class:`~wstream.container.source.ByteSource`.
    ``mapped``: read a local file through a shared map, zero-copy (see
    :class:`~wstream.container.source.LocalFile` for what that risks). ``cache`` keeps verified
    chunks of a remote container on local disk; ``options`` tunes remote reads (concurrency,
    request sizes, timeouts, retries)."""
    return StreamingContainer(source, mapped=mapped, cache=cache, options=options)


def forward_weights(
    container: Container, *, budget: int | None = None, prefetch: int = 2, eager: bool = False
) -> WeightSource:
    """The weight source the forward pass runs on (``wstream run``, ``Model.open``).

    Streamed: ``prefetch`` chunks ahead under ``budget`` bytes (None: no limit, every chunk stays
    once loaded), each piece handed out as stored, bf16 and int8 alike, since the forward widens
    them in cache-sized pieces itself. ``eager``: the load-everything baseline, every chunk
    decoded up front (int8 pieces kept as stored, so both give bit-identical logits)."""
    if eager:
        return EagerWeights(container, keep_quantized=True)
    # bf16 views need ml_dtypes, imported lazily elsewhere (``info`` never pays for it): import it
    # here so its cost (15-20 ms, seconds on a loaded machine) counts as opening the model, not
    # as the first layer's time, as it does for the eager path.
    import ml_dtypes  # noqa: F401

    return StreamingLoader(container, budget=budget, prefetch=prefetch, widen=Widen.QUANTIZED)
