"""The streaming loader against the simple path: eager reads of the same container."""

from __future__ import annotations

import threading
import zlib
from collections.abc import Iterator
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest
from safetensors.numpy import save_file

from wstream.container.reader import Container
from wstream.errors import BudgetTooSmall, ChunkChecksumMismatch, LoaderError
from wstream.format.chunk import piece_views
from wstream.format.manifest import ChunkEntry
from wstream.pack import pack
from wstream.stream.loader import EagerWeights, StreamingContainer, StreamingLoader
from wstream.stream.plan import Widen
from wstream.stream.pool import SlabPool
from wstream.stream.testing import InstrumentedLoader

MAX_CHUNK = 96 * 1024


def _checkpoint(path: Path, seed: int = 0) -> Path:
    """A generic checkpoint of mixed dtypes and sizes: several groups, some tensors row-split."""
    rng = np.random.default_rng(seed)
    tensors: dict[str, np.ndarray] = {
        "embed.weight": rng.standard_normal((300, 64)).astype(np.float32)
    }
    for i in range(5):
        rows = int(rng.integers(1, 400))
        tensors[f"layers.{i}.w"] = rng.standard_normal((rows, 96)).astype(ml_dtypes.bfloat16)
        tensors[f"layers.{i}.h"] = rng.standard_normal((rows, 33)).astype(np.float16)
        tensors[f"layers.{i}.b"] = rng.standard_normal(rows).astype(np.float32)
        tensors[f"layers.{i}.n"] = rng.integers(-9, 9, size=(7,), dtype=np.int64)
    tensors["head.weight"] = rng.standard_normal((500, 80)).astype(ml_dtypes.bfloat16)
    save_file(tensors, str(path))
    return path


@pytest.fixture(scope="module", params=["raw", "zstd"])
def container(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Container]:
    d = tmp_path_factory.mktemp(f"loader-{request.param}")
    src = _checkpoint(d / "model.safetensors")
    pack(src, d / "model.wst", codec=request.param, max_chunk=MAX_CHUNK)
    with StreamingContainer(d / "model.wst") as c:
        yield c


def _names(c: Container) -> list[str]:
    return [ch.name for ch in c.manifest.chunks]


def _expected(c: Container, widen: bool) -> dict[str, list[bytes]]:
    out = {}
    for chunk in c.manifest.chunks:
        arrays = piece_views(chunk, c.decode(chunk))
        if widen:
            arrays = [
                a.astype(np.float32) if a.dtype.kind == "f" or a.dtype.name == "bfloat16" else a
                for a in arrays
            ]
        out[chunk.name] = [a.dtype.str.encode() + a.tobytes() for a in arrays]
    return out


def _alive_workers() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("wstream-prefetch")]


@pytest.mark.parametrize("widen", [False, True])
@pytest.mark.parametrize("k", [0, 1, 2, 4])
def test_stream_equals_eager_for_every_k_and_budget(
    container: Container, k: int, widen: bool
) -> None:
    expected = _expected(container, widen)
    names = _names(container)
    mode = Widen.FLOAT32 if widen else Widen.STORED
    probe = StreamingLoader(container, widen=mode)
    smallest = probe.min_budget(names)
    probe.close()
    for budget in (smallest, 2 * smallest, 5 * smallest, None):
        with StreamingLoader(container, budget=budget, prefetch=k, widen=mode) as loader:
            stream = loader.stream(names)
            seen = []
            for chunk in stream:
                with chunk:
                    got = [a.dtype.str.encode() + a.tobytes() for a in chunk.arrays()]
                    assert got == expected[chunk.name], (chunk.name, k, budget)
                    seen.append(chunk.name)
            assert seen == names  # strictly in order
            assert stream.stats.max_ahead <= k
            if budget is not None:
                assert loader.pool.peak <= budget
        assert loader.pool.committed == 0
    assert not _alive_workers()


def test_never_more_than_k_ahead_instrumented(container: Container) -> None:
    """Count reads started by workers against chunks consumed."""
    names = _names(container)
    for k in (0, 1, 2):
        started: list[str] = []
        lock = threading.Lock()

        def stored(
            chunk: ChunkEntry, started: list[str] = started, lock: threading.Lock = lock
        ) -> memoryview:
            with lock:
                started.append(chunk.name)
            return container.stored(chunk)

        with InstrumentedLoader(
            container, prefetch=k, stored=stored, widen=Widen.FLOAT32
        ) as loader:
            consumed = 0
            for chunk in loader.stream(names):
                with chunk:
                    consumed += 1
                    with lock:
                        # At most the chunk in hand plus k ahead have been started.
                        assert len(started) <= consumed + k
            assert started == names


def test_container_stream_api_yields_named_views(container: Container) -> None:
    for chunk in container.stream(prefetch=1, budget=None):
        with chunk:
            entry = container.chunk(chunk.name)
            assert set(chunk.tensors) == {t.name for t in entry.tensors}


def test_budget_below_largest_chunk_is_a_clear_error(container: Container) -> None:
    names = _names(container)
    with StreamingLoader(container, widen=Widen.FLOAT32) as probe:
        smallest = probe.min_budget(names)
    with StreamingLoader(container, budget=smallest - 1, widen=Widen.FLOAT32) as loader:
        with pytest.raises(BudgetTooSmall, match="budget"):
            for chunk in loader.stream(names):
                chunk.release()
    assert not _alive_workers()


def test_consumer_hoarding_chunks_gets_a_clear_error_not_a_hang(container: Container) -> None:
    names = _names(container)
    with StreamingLoader(container, widen=Widen.FLOAT32) as probe:
        smallest = probe.min_budget(names)
    with StreamingLoader(container, budget=smallest, widen=Widen.FLOAT32) as loader:
        with pytest.raises(BudgetTooSmall, match="still holds"):
            list(loader.stream(names))  # never releases anything
    assert not _alive_workers()


@pytest.mark.parametrize("fault", ["oserror", "corrupt"])
def test_worker_fault_reaches_consumer_and_everything_is_returned(
    container: Container, fault: str
) -> None:
    names = _names(container)
    victim = names[len(names) // 2]

    def stored(chunk: ChunkEntry) -> memoryview:
        view = container.stored(chunk)
        if chunk.name != victim:
            return view
        if fault == "oserror":
            raise OSError(5, "Input/output error")
        bad = bytearray(view)
        bad[len(bad) // 2] ^= 0x40
        return memoryview(bytes(bad))

    loader = InstrumentedLoader(
        container, budget=None, prefetch=2, stored=stored, verify=True, widen=Widen.FLOAT32
    )
    error = ChunkChecksumMismatch if fault == "corrupt" else LoaderError
    seen = []
    with pytest.raises(error, match=victim.replace("#", ".")):
        for chunk in loader.stream(names):
            with chunk:
                seen.append(chunk.name)
    assert seen == names[: names.index(victim)]
    assert not _alive_workers()
    loader.close()
    assert loader.pool.leased == 0 and loader.pool.committed == 0


def test_corrupt_bytes_are_not_returned_when_verify_is_off_only_if_codec_rejects(
    container: Container,
) -> None:
    """With CRCs on (the default), a flipped byte never reaches the consumer as data."""
    names = _names(container)

    def stored(chunk: ChunkEntry) -> memoryview:
        data = bytearray(container.stored(chunk))
        if data:
            data[0] ^= 1
        return memoryview(bytes(data))

    with InstrumentedLoader(container, stored=stored, widen=Widen.FLOAT32) as loader:
        with pytest.raises(ChunkChecksumMismatch):
            for chunk in loader.stream(names):
                chunk.release()


@pytest.mark.parametrize("how", ["break", "raise"])
def test_leaving_early_returns_every_slab_and_stops_threads(container: Container, how: str) -> None:
    names = _names(container)
    with StreamingLoader(container, budget=None, prefetch=3, widen=Widen.FLOAT32) as loader:
        stream = loader.stream(names)
        try:
            for i, chunk in enumerate(stream):
                with chunk:
                    if i == 2:
                        if how == "raise":
                            raise KeyError("consumer failed")
                        break
        except KeyError:
            pass
        stream.close()
        assert not _alive_workers()
        # budget=None keeps loaded chunks resident; nothing else may remain leased.
        assert loader.pool.leased == len(loader.resident)
    assert loader.pool.committed == 0


def test_two_streams_over_one_container_at_once(container: Container) -> None:
    expected = _expected(container, True)
    names = _names(container)
    failures: list[BaseException] = []

    def run(order: list[str]) -> None:
        try:
            with StreamingLoader(
                container, budget=4 * MAX_CHUNK * 3, prefetch=2, widen=Widen.FLOAT32
            ) as loader:
                for _ in range(3):
                    for chunk in loader.stream(order):
                        with chunk:
                            got = [a.dtype.str.encode() + a.tobytes() for a in chunk.arrays()]
                            assert got == expected[chunk.name]
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=run, args=(o,)) for o in (names, names[::-1])]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not failures, failures


def test_cyclic_walk_keeps_a_fixed_resident_subset(container: Container) -> None:
    names = _names(container)
    with StreamingLoader(container, widen=Widen.FLOAT32) as probe:
        cost = {n: probe.chunk_cost(n) for n in names}
        # What a chunk holds once loaded (its transients, such as stored bytes read from a
        # source without a map, are returned by then): half of that stays resident.
        held = {n: SlabPool.cost(probe.plan(n).out_nbytes) + probe.plan(n).mapped for n in names}
    budget = (1 + 1) * max(cost.values()) + sum(held.values()) // 2
    with StreamingLoader(container, budget=budget, prefetch=1, widen=Widen.FLOAT32) as loader:
        reads = []
        resident_sets = []
        for _ in range(4):
            stream = loader.stream(names, repeat=True)
            for chunk in stream:
                chunk.release()
            reads.append(stream.stats.bytes_read)
            resident_sets.append(set(loader.resident))
            assert loader.pool.peak <= budget
        per_pass = loader.bytes_streamed_per_pass(names)
    assert resident_sets[1] == resident_sets[2] == resident_sets[3]
    assert 0 < per_pass < sum(container.chunk(n).nbytes for n in names)
    assert reads[2] == reads[3] == per_pass
    assert reads[0] == sum(container.chunk(n).nbytes for n in names)


def test_warm_prefetches_in_background_and_is_adopted(container: Container) -> None:
    names = _names(container)
    started: list[str] = []

    def stored(chunk: ChunkEntry) -> memoryview:
        started.append(chunk.name)
        return container.stored(chunk)

    expected = _expected(container, True)
    with InstrumentedLoader(container, prefetch=2, stored=stored, widen=Widen.FLOAT32) as loader:
        loader.warm(names[:3])  # returns without waiting
        for chunk in loader.stream(names):
            with chunk:
                assert [a.dtype.str.encode() + a.tobytes() for a in chunk.arrays()] == expected[
                    chunk.name
                ]
    assert started == names  # each chunk read exactly once: the warm work was taken over


def test_eager_weights_match_stream(container: Container) -> None:
    names = _names(container)
    eager = EagerWeights(container)
    with StreamingLoader(container, budget=None, widen=Widen.FLOAT32) as loader:
        for a, b in zip(eager.stream(names), loader.stream(names)):
            assert [x.tobytes() for x in a.arrays()] == [y.tobytes() for y in b.arrays()]
            b.release()


def test_crc_can_be_switched_off(container: Container) -> None:
    names = _names(container)
    with StreamingLoader(container, verify=False, widen=Widen.FLOAT32) as loader:
        n = sum(1 for chunk in loader.stream(names) if chunk.release() is None)
    assert n == len(names)
    assert all(
        zlib.crc32(container.stored(container.chunk(x))) == container.chunk(x).crc32 for x in names
    )


@pytest.mark.parametrize("populate", ["madvise", "touch"])
def test_unverified_zero_copy_chunks_are_mapped_in_by_the_worker(
    container: Container, populate: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Without a CRC nothing on the worker touches a zero-copy chunk: it maps the pages in
    # (MADV_POPULATE_READ, or a read per page where the kernel lacks it). The bytes are the same.
    import wstream.stream.worker as prefetch

    if populate == "touch":
        monkeypatch.setattr(prefetch, "_MADV_POPULATE_READ", None)
    seen: list[str] = []
    real = prefetch._prefault

    def spy(c: Container, chunk: ChunkEntry, src: memoryview) -> None:
        seen.append(chunk.name)
        real(c, chunk, src)

    monkeypatch.setattr(prefetch, "_prefault", spy)
    container = Container(container.path, mapped=True)  # zero-copy needs the opt-in map
    names = _names(container)
    want = _expected(container, widen=False)
    with container, StreamingLoader(container, verify=False, widen="stored") as loader:
        for chunk in loader.stream(names):
            with chunk:
                got = [a.dtype.str.encode() + a.tobytes() for a in chunk.arrays()]
            assert got == want[chunk.name]
    raw = [n for n in names if container.chunk(n).is_raw]
    assert seen == raw  # every raw (zero-copy) chunk, and only those


@pytest.mark.parametrize("where", ["first", "piece-boundary", "second-piece", "last"])
def test_a_flipped_byte_anywhere_in_a_large_chunk_is_caught_when_read(
    tmp_path: Path, where: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The default read path checks a chunk's CRC piece by piece as it reads it
    (Container.read_checked_into): a flipped byte in any piece, or on a piece's edge, is caught."""
    from wstream.container import reader

    monkeypatch.setattr(reader, "CHECK_PIECE", 4096)  # several pieces per chunk
    w = np.arange(64 * 1000, dtype=np.float32).reshape(64, 1000)  # one 256 KB chunk
    save_file({"layers.0.w": w}, str(tmp_path / "m.safetensors"))
    pack(tmp_path / "m.safetensors", tmp_path / "m.wst")
    with Container(tmp_path / "m.wst") as c:
        chunk = c.manifest.chunks[0]
        offset = {"first": 0, "piece-boundary": 4095, "second-piece": 4096 + 17}.get(
            where, chunk.nbytes - 1
        )
        with StreamingLoader(c) as loader:  # intact: streams
            assert np.array_equal(next(iter(loader.stream([chunk.name]))).arrays()[0], w)
    with open(tmp_path / "m.wst", "r+b") as f:
        f.seek(chunk.offset + offset)
        byte = f.read(1)[0]
        f.seek(chunk.offset + offset)
        f.write(bytes([byte ^ 0x10]))
    with Container(tmp_path / "m.wst") as c, StreamingLoader(c) as loader:
        with pytest.raises(ChunkChecksumMismatch, match=chunk.name):
            for got in loader.stream([chunk.name]):
                got.release()
