"""Small neighbouring chunks of a remote container are fetched by one ranged GET.

Against the real SeaweedFS of the suite, through the counting :class:`FaultProxy`: the number of
chunk requests shows that small neighbours share one, and that a large gap, the request limit,
the budget and ``small_chunk=0`` each stop a coalesced request where they should; the bytes are
bit-identical to the local file's; a fault in the middle of a coalesced request is retried to
identical bytes or ends in the named error, leaving no thread, lease or connection behind.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fault_proxy import FaultProxy, Seen
from s3_server import S3Server
from test_remote_container import packed_on_s3, port_of, same, sockets, streamed, wstream_threads

from wstream import errors as E
from wstream import open_container
from wstream.container.reader import Container
from wstream.container.remote import RemoteOptions, RetryPolicy
from wstream.stream.loader import StreamingLoader
from wstream.synthetic import write_checkpoint

KiB = 1 << 10
FAST_RETRY = RetryPolicy(attempts=4, base_delay=0.01, max_delay=0.05, deadline=5.0)
# Requests of at most 1 MiB, chunks of at most 128 KiB coalesced: the 96 KiB chunks below. No
# tail read at open, so every chunk but those in the head bytes is fetched by the stream.
OPTS = RemoteOptions(
    part_size=1024 * KiB,
    small_chunk=128 * KiB,
    tail_bytes=0,
    read_timeout=0.5,
    connect_timeout=1.0,
    retry=FAST_RETRY,
)
KINDS: dict[str, dict[str, Any]] = {
    "raw": {},
    "zstd-grouped": {"codec": "zstd", "shuffle": True},
    "int8": {"quantize": "int8"},
}


@pytest.fixture(scope="module")
def small_chunked(
    s3_admin: Any, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, tuple[Path, str]]:
    """kind -> (local path, url): the tiny model in chunks of at most 96 KiB (~65 chunks)."""
    root = tmp_path_factory.mktemp("coalesce")
    ckpt = write_checkpoint(root / "tiny", "tiny", seed=7).directory
    return packed_on_s3(ckpt, root, s3_admin, "coalesce", KINDS, max_chunk=96 * KiB)


@pytest.fixture
def proxy(s3: S3Server, monkeypatch: pytest.MonkeyPatch) -> Iterator[FaultProxy]:
    with FaultProxy(s3.endpoint) as p:
        monkeypatch.setenv("AWS_ENDPOINT_URL", p.endpoint)
        p.match = chunk_get
        yield p


def chunk_get(seen: Seen) -> bool:
    """A chunk read (the open's two GETs carry no If-Match)."""
    return seen.method == "GET" and "if-match" in seen.headers


def coalesced_get(seen: Seen) -> bool:
    """A chunk read of more than 300 KiB: only several 96 KiB chunks together make one."""
    if not chunk_get(seen):
        return False
    first, _, last = seen.headers["range"].removeprefix("bytes=").partition("-")
    return int(last) + 1 - int(first) > 300 * KiB


def past_head(chunks: Any) -> int:
    """Chunks not wholly in the bytes the open fetched (those need a request of their own)."""
    return sum(c.offset + c.nbytes > OPTS.head_bytes for c in chunks)


def chunk_ranges(proxy: FaultProxy) -> list[tuple[int, int]]:
    """[start, end) of every chunk GET the proxy forwarded (faulted ones, and the open's read
    of the manifest, which lies past every chunk, excluded)."""
    out = []
    for s in proxy.seen:
        if chunk_get(s) and not s.fault:
            first, _, last = s.headers["range"].removeprefix("bytes=").partition("-")
            out.append((int(first), int(last) + 1))
    manifest = max(out, default=(0, 0))
    return [r for r in out if r != manifest]


def stream_names(
    url: str, names: list[str] | None, options: RemoteOptions = OPTS, **kw: Any
) -> tuple[list[tuple[str, list[Any]]], int, int]:
    """(chunks streamed, chunks coalesced, pool peak) of one stream over ``names``."""
    with Container(url, options=options) as remote:
        order = names or [c.name for c in remote.manifest.chunks]
        with StreamingLoader(remote, **{"budget": 64 << 20, "prefetch": 2, **kw}) as loader:
            got = []
            for chunk in loader.stream(order):
                with chunk:
                    got.append((chunk.name, [a.copy() for a in chunk.arrays()]))
        return got, loader.stats.coalesced, loader.pool.peak


@pytest.mark.parametrize("kind", list(KINDS))
def test_small_neighbours_share_one_request_and_stay_bit_identical(
    small_chunked: dict[str, tuple[Path, str]], proxy: FaultProxy, kind: str
) -> None:
    path, url = small_chunked[kind]
    with open_container(path) as local:
        chunks = local.manifest.chunks
        want = streamed(local)
        bounds = {c.offset for c in chunks} | {c.offset + c.nbytes for c in chunks}
        bounds.add(OPTS.head_bytes)  # the first chunk's rest, past what the open fetched
    got, coalesced, _ = stream_names(url, None)
    assert same(got, want)
    ranges = chunk_ranges(proxy)
    assert coalesced > 0
    assert len(ranges) <= len(chunks) - coalesced  # at most one request per batch
    assert len(ranges) <= len(chunks) // 4  # ~10 chunks of 96 KiB per 1 MiB request
    for start, end in ranges:  # every request is whole chunks, within the request limit
        assert start in bounds and end in bounds and end - start <= OPTS.part_size


def test_coalescing_stops_at_a_large_gap_the_request_limit_and_large_chunks(
    small_chunked: dict[str, tuple[Path, str]], proxy: FaultProxy
) -> None:
    path, url = small_chunked["raw"]
    with open_container(path) as local:
        chunks = local.manifest.chunks
        every_other = [c.name for c in chunks[::2]]  # gaps of a whole chunk: > max_gap below
        want = [(n, a) for n, a in streamed(local) if n in set(every_other)]
    gapped = dataclasses.replace(OPTS, max_gap=4 * KiB)
    got, coalesced, _ = stream_names(url, every_other, gapped)
    assert same(got, want) and coalesced == 0
    assert len(chunk_ranges(proxy)) == past_head(local.manifest.chunks[::2])
    proxy.seen.clear()
    _, coalesced, _ = stream_names(url, None, dataclasses.replace(OPTS, part_size=64 * KiB))
    assert all(end - start <= 64 * KiB for start, end in chunk_ranges(proxy))  # the limit
    _, coalesced, _ = stream_names(url, None, dataclasses.replace(OPTS, small_chunk=16 * KiB))
    assert coalesced <= sum(c.nbytes <= 16 * KiB for c in chunks)  # only small ones join
    proxy.seen.clear()
    _, coalesced, _ = stream_names(url, None, dataclasses.replace(OPTS, small_chunk=0))
    assert coalesced == 0 and len(chunk_ranges(proxy)) == past_head(chunks)  # off


def test_coalescing_stays_within_the_budget(
    small_chunked: dict[str, tuple[Path, str]], proxy: FaultProxy
) -> None:
    path, url = small_chunked["zstd-grouped"]
    with open_container(path) as local:
        want = streamed(local)
        with StreamingLoader(local) as probe:
            per_chunk = probe.min_budget([c.name for c in local.manifest.chunks])
    budget = 4 * per_chunk  # room for the chunk in use and about three more
    got, coalesced, peak = stream_names(url, None, budget=budget)
    assert same(got, want)
    assert coalesced > 0 and peak <= budget
    small_budget = len(chunk_ranges(proxy))
    proxy.seen.clear()
    stream_names(url, None)
    assert len(chunk_ranges(proxy)) < small_budget  # a large budget lets more share a request


@pytest.mark.parametrize(
    "inject",
    [
        lambda p: p.truncate(2, after=200 * KiB),  # cut inside a coalesced body
        lambda p: p.fail(2),
        lambda p: p.refuse(2),
        lambda p: p.stall(1, after=150 * KiB),
    ],
    ids=["short-body", "503-slowdown", "dropped-connection", "stall"],
)
def test_a_fault_mid_coalesced_request_gives_identical_bytes(
    small_chunked: dict[str, tuple[Path, str]], proxy: FaultProxy, inject: Any
) -> None:
    path, url = small_chunked["zstd-grouped"]
    with open_container(path) as local:
        want = streamed(local)
    threads = wstream_threads()
    proxy.match = coalesced_get
    inject(proxy)
    got, coalesced, _ = stream_names(url, None)
    assert same(got, want) and coalesced > 0
    assert any(s.fault for s in proxy.seen)
    assert wstream_threads() == threads
    assert sockets(port_of(proxy)) == 0


def test_a_coalesced_request_that_never_succeeds_is_the_named_error(
    small_chunked: dict[str, tuple[Path, str]], proxy: FaultProxy
) -> None:
    _, url = small_chunked["raw"]
    threads = wstream_threads()
    remote = Container(url, options=OPTS)
    loader = StreamingLoader(remote, budget=64 << 20, prefetch=2)
    stream = loader.stream([c.name for c in remote.manifest.chunks])
    first = next(stream)  # alone (the rest are submitted, coalesced, when it is released)
    proxy.truncate(10_000, after=100 * KiB)
    first.release()
    t0 = time.monotonic()
    with pytest.raises(E.ShortBody, match="gave up after 4 attempts"):
        for chunk in stream:
            chunk.release()
    assert time.monotonic() - t0 < FAST_RETRY.deadline + 2
    assert loader.stats.coalesced > 0
    loader.close()
    assert loader.pool.leased == 0 and loader.pool.committed == 0
    remote.close()
    assert wstream_threads() == threads
    assert sockets(port_of(proxy)) == 0
