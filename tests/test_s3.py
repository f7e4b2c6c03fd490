"""Remote byte sources against a real S3 server (SeaweedFS), with faults from a loopback proxy.

One server for the whole session (tests/s3_server.py); each test that injects faults puts a
:class:`FaultProxy` in front of it and points ``AWS_ENDPOINT_URL`` at the proxy, which is how a
user would point wstream at any endpoint. Retry bounds are shortened so a fault that never heals
costs a fraction of a second, and each such test checks the named error arrives within its bound.
"""

from __future__ import annotations

import dataclasses
import os
import threading
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fault_proxy import FaultProxy
from hypothesis import given, settings
from hypothesis import strategies as st
from s3_server import BUCKET, S3Server
from strategies import examples

from wstream import errors as E
from wstream.container.http import HttpSource
from wstream.container.remote import RemoteOptions, RetryPolicy, Target, coalesce, split
from wstream.container.s3 import S3Source, parse_s3_url

KiB, MiB = 1 << 10, 1 << 20
FAST_RETRY = RetryPolicy(attempts=4, base_delay=0.01, max_delay=0.05, deadline=5.0)
# a 256 KiB head: the faulted ranges below (from 500 KB on) need requests of their own
FAST = RemoteOptions(
    part_size=256 * KiB,
    head_bytes=256 * KiB,
    read_timeout=0.5,
    connect_timeout=1.0,
    retry=FAST_RETRY,
)


def put(s3_admin: Any, key: str, data: bytes) -> str:
    s3_admin.put_object(Bucket=BUCKET, Key=key, Body=data)
    return f"s3://{BUCKET}/{key}"


@pytest.fixture(scope="session")
def blob(s3_admin: Any) -> tuple[str, bytes]:
    data = os.urandom(3 * MiB + 12345)
    return put(s3_admin, "blob.bin", data), data


@pytest.fixture
def proxy(s3: S3Server, monkeypatch: pytest.MonkeyPatch) -> Iterator[FaultProxy]:
    with FaultProxy(s3.endpoint) as p:
        monkeypatch.setenv("AWS_ENDPOINT_URL", p.endpoint)
        yield p


def gets(proxy: FaultProxy) -> list[str]:
    """The Range headers of the GETs the proxy saw."""
    return [s.headers.get("range", "") for s in proxy.seen if s.method == "GET"]


# --- URLs and range planning -------------------------------------------------------------------


def test_parse_s3_url() -> None:
    assert parse_s3_url("s3://bucket/a/b.wst") == ("bucket", "a/b.wst")
    for bad in ["s3://bucket", "s3://bucket/", "s3://b/key", "http://bucket/key", "s3:///key"]:
        with pytest.raises(E.InvalidURL, match="url"):
            parse_s3_url(bad)


def test_coalesce_merges_neighbours_and_splits_large() -> None:
    buf = memoryview(bytearray(100))
    targets = [Target(0, buf[:10]), Target(12, buf[10:20]), Target(50, buf[20:30])]
    plan = coalesce(targets, max_gap=4, max_request=1000)
    assert [(r.start, r.end, len(r.targets)) for r in plan] == [(0, 22, 2), (50, 60, 1)]
    plan = coalesce([Target(0, memoryview(bytearray(25)))], max_gap=0, max_request=10)
    assert [(r.start, r.end) for r in plan] == [(0, 10), (10, 20), (20, 25)]
    # a large range is cut at the object's multiples of the request size, not its own
    plan = coalesce([Target(7, memoryview(bytearray(25)))], max_gap=0, max_request=10)
    assert [(r.start, r.end) for r in plan] == [(7, 10), (10, 20), (20, 30), (30, 32)]
    assert [(r.start, r.end) for r in split(7, memoryview(bytearray(9)), 10)] == [(7, 16)]


@given(
    spans=st.lists(st.tuples(st.integers(0, 5000), st.integers(0, 3000)), max_size=12),
    max_gap=st.integers(0, 2000),
    max_request=st.integers(1, 4000),
)
def test_coalesce_plans_cover_every_byte_once(
    spans: list[tuple[int, int]], max_gap: int, max_request: int
) -> None:
    targets, cursor = [], 0
    for gap, n in spans:  # non-overlapping, in any order
        targets.append(Target(cursor + gap, memoryview(bytearray(n))))
        cursor += gap + n
    plan = coalesce(targets[::-1], max_gap, max_request)
    covered = [(t.offset, t.offset + len(t.out)) for r in plan for t in r.targets]
    # each target's bytes are asked for exactly once, inside its request, requests in order
    assert sorted(covered) == covered
    want = [(t.offset, t.offset + len(t.out)) for t in targets]
    assert [i for a, b in covered for i in range(a, b)] == sorted(
        i for a, b in want for i in range(a, b)
    )
    for r in plan:
        assert r.end - r.start <= max_request
        whole = next(t for t in targets if t.offset <= r.start < t.offset + len(t.out))
        if len(whole.out) > max_request:  # a piece of a large target: within one aligned part
            assert r.start // max_request == (r.end - 1) // max_request
        assert all(r.start <= t.offset and t.offset + len(t.out) <= r.end for t in r.targets)
        assert r.start == r.targets[0].offset and r.end == r.targets[-1].offset + len(
            r.targets[-1].out
        )


def test_options_are_checked() -> None:
    with pytest.raises(E.InputError, match="concurrency: 0"):
        RemoteOptions(concurrency=0)
    with pytest.raises(E.InputError, match="attempts: 0"):
        RetryPolicy(attempts=0)


# --- reading -----------------------------------------------------------------------------------


def test_open_costs_two_parallel_gets_head_and_tail(
    proxy: FaultProxy, blob: tuple[str, bytes]
) -> None:
    url, data = blob
    head, tail_n = RemoteOptions().head_bytes, RemoteOptions().tail_bytes
    with S3Source(url) as src:
        assert (src.size, src.name) == (len(data), url)
        assert src.version.strip('"') and src.mapping() is None
        # size, version and head bytes from one ranged GET; the end from a suffix range
        assert sorted(gets(proxy)) == [f"bytes=-{tail_n}", f"bytes=0-{head - 1}"]
        pre = memoryview(bytearray(64))
        src.read_into(0, pre)  # the preamble: already here
        end = memoryview(bytearray(5000))
        src.read_into(len(data) - 5000, end)  # the manifest at the end: already here too
        across = memoryview(bytearray(tail_n + 10))
        src.read_into(len(data) - tail_n - 10, across)  # 10 bytes before the tail: one GET
        assert bytes(pre) == data[:64] and bytes(end) == data[-5000:]
        assert bytes(across) == data[-tail_n - 10 :]
        start = len(data) - tail_n - 10
        assert gets(proxy)[2:] == [f"bytes={start}-{start + 9}"]
        assert all(s.method == "GET" for s in proxy.seen)
    before = proxy.connections
    with S3Source(url, RemoteOptions(tail_bytes=0)) as src:
        assert gets(proxy)[3:] == [f"bytes=0-{head - 1}"]  # no tail asked for
        inner = memoryview(bytearray(5000))
        for offset in range(300_000, 1_200_000, 100_000):  # one after another: one connection
            src.read_into(offset, inner)
            assert bytes(inner) == data[offset : offset + 5000]
        assert proxy.connections == before + 1


def test_a_failed_or_foreign_tail_is_not_used(
    s3_admin: Any, proxy: FaultProxy, blob: tuple[str, bytes]
) -> None:
    """The tail is best effort: a failed suffix GET costs the open nothing (the end is read
    later, with If-Match); one of another version or size is never kept."""
    url, data = blob
    proxy.match = lambda seen: seen.headers.get("range", "").startswith("bytes=-")
    proxy.fail(1, status=500, code="InternalError")
    with S3Source(url, FAST) as src:
        assert src._tail == b""
        end = memoryview(bytearray(100))
        src.read_into(len(data) - 100, end)
        assert bytes(end) == data[-100:]
        assert gets(proxy)[-1] == f"bytes={len(data) - 100}-{len(data) - 1}"
        src._adopt_tail((len(data) - 10, len(data), '"another-etag"', b"x" * 10))
        src._adopt_tail((len(data) - 10, len(data) + 1, src.version, b"x" * 10))
        assert src._tail == b""
        src._adopt_tail((len(data) - 10, len(data), src.version, data[-10:]))
        assert src._tail == data[-10:]


@pytest.fixture(scope="module")
def shared_source(blob: tuple[str, bytes]) -> Iterator[S3Source]:
    with S3Source(blob[0], RemoteOptions(part_size=512 * KiB, head_bytes=256 * KiB)) as src:
        yield src


@settings(max_examples=examples(0.3))
@given(data=st.data())
def test_random_ranges_are_bit_identical_and_read_with_their_crc(
    shared_source: S3Source, blob: tuple[str, bytes], data: st.DataObject
) -> None:
    # ranges inside the head and the tail fetched at open, across them, and split into parts
    size = len(blob[1])
    offset = data.draw(st.integers(0, size))
    n = data.draw(st.integers(0, size - offset))
    want = blob[1][offset : offset + n]
    out = memoryview(bytearray(n))
    shared_source.read_into(offset, out)
    assert bytes(out) == want
    out = memoryview(bytearray(n))
    assert shared_source.read_crc_into(offset, out) == zlib.crc32(want)
    assert bytes(out) == want


def test_a_range_past_the_end_is_a_named_error(shared_source: S3Source) -> None:
    with pytest.raises(E.RangeError, match=r"outside the \d+-byte object"):
        shared_source.read_into(shared_source.size - 10, memoryview(bytearray(11)))


def test_a_large_range_is_fetched_as_parallel_sub_ranges(
    proxy: FaultProxy, blob: tuple[str, bytes]
) -> None:
    url, data = blob
    opts = RemoteOptions(part_size=256 * KiB, concurrency=4, head_bytes=0, tail_bytes=0)
    proxy.delay = 0.2  # every request waits 200 ms: one at a time would take >= 12 * 0.2 s
    with S3Source(url, opts) as src:
        proxy.seen.clear()
        out = memoryview(bytearray(3 * MiB))
        t0 = time.monotonic()
        src.read_into(1000, out)
        elapsed = time.monotonic() - t0
    assert bytes(out) == data[1000 : 1000 + 3 * MiB]
    spans = sorted(tuple(int(x) for x in r.split("=")[1].split("-")) for r in gets(proxy))
    # cut where the object's offset is a multiple of the part size: none straddles a part
    assert [a for a, _ in spans] == [1000] + [i * 256 * KiB for i in range(1, 13)]
    assert all(a // (256 * KiB) == b // (256 * KiB) for a, b in spans)
    assert spans[-1][1] == 1000 + 3 * MiB - 1
    # One at a time takes at least 13 x 0.2 s; any overlap is well below it. The margin is wide
    # because the proxy and the client share two cores with the rest of the suite (1.72 s seen).
    assert elapsed < 13 * 0.2 * 0.9, f"{elapsed:.2f} s: the sub-ranges did not overlap"


@pytest.mark.parametrize("after", [10, 100_000, 300_000])
def test_a_part_retried_mid_body_still_gives_the_right_crc(
    proxy: FaultProxy, blob: tuple[str, bytes], after: int
) -> None:
    # the body is cut after `after` bytes (headers included) of the first part: its retry
    # starts its CRC again, and the combined CRC is still that of the bytes
    url, data = blob
    with S3Source(url, dataclasses.replace(FAST, head_bytes=0, tail_bytes=0)) as src:
        proxy.match = ranged
        proxy.truncate(1, after=after)
        out = memoryview(bytearray(1_000_000))
        crc = src.read_crc_into(1000, out)
    assert [s.fault for s in proxy.seen if s.fault]
    assert bytes(out) == data[1000:1_001_000]
    assert crc == zlib.crc32(data[1000:1_001_000])


def test_small_neighbours_are_coalesced_into_one_request(
    proxy: FaultProxy, blob: tuple[str, bytes]
) -> None:
    url, data = blob
    with S3Source(url, RemoteOptions(head_bytes=0, max_gap=4096)) as src:
        proxy.seen.clear()
        spots = [(100_000 + i * 10_000, 7000) for i in range(20)]  # 3000-byte gaps
        outs = [(off, memoryview(bytearray(n))) for off, n in spots]
        src.read_ranges_into(outs)
        assert [bytes(o) for _, o in outs] == [data[off : off + n] for off, n in spots]
        assert gets(proxy) == [f"bytes=100000-{100_000 + 19 * 10_000 + 7000 - 1}"]
        far = [(0, memoryview(bytearray(10))), (2 * MiB, memoryview(bytearray(10)))]
        src.read_ranges_into(far)  # too far apart: one request each
        assert len(gets(proxy)) == 3


# --- faults ------------------------------------------------------------------------------------


def ranged(seen: Any) -> bool:
    return "if-match" in seen.headers  # the reads after the open


@pytest.mark.parametrize(
    "inject",
    [
        lambda p: p.fail(2),
        lambda p: p.fail(2, 500, "InternalError"),
        lambda p: p.refuse(2),
        lambda p: p.truncate(2, after=2000),  # headers pass, the body is cut
        lambda p: p.truncate(1, after=10),  # cut inside the status line
        lambda p: p.stall(1, after=3000),
    ],
    ids=["503-slowdown", "500", "dropped-connection", "short-body", "cut-headers", "stall"],
)
def test_transient_faults_are_retried_to_identical_bytes(
    proxy: FaultProxy, blob: tuple[str, bytes], inject: Any
) -> None:
    url, data = blob
    with S3Source(url, FAST) as src:
        proxy.match = ranged
        inject(proxy)
        out = memoryview(bytearray(200_000))
        src.read_into(500_000, out)
    assert bytes(out) == data[500_000:700_000]
    faulted = [s.fault for s in proxy.seen if s.fault]
    assert faulted and len(gets(proxy)) == 3 + len(faulted)  # open (2) + a good try + the faults


@pytest.mark.parametrize(
    ("inject", "error"),
    [
        (lambda p: p.fail(100), E.RemoteUnavailable),
        (lambda p: p.refuse(100), E.RemoteUnavailable),
        (lambda p: p.truncate(100, after=2000), E.ShortBody),
        (lambda p: p.stall(100, after=3000), E.RemoteTimeout),
    ],
    ids=["503-forever", "drops-forever", "short-forever", "stalls-forever"],
)
def test_persistent_faults_end_in_the_named_error_within_the_bound(
    proxy: FaultProxy, blob: tuple[str, bytes], inject: Any, error: type[E.RemoteError]
) -> None:
    url, _ = blob
    with S3Source(url, FAST) as src:
        proxy.match = ranged
        inject(proxy)
        t0 = time.monotonic()
        with pytest.raises(error, match=r"bytes 500000-699999: .* after 4 attempts") as info:
            src.read_into(500_000, memoryview(bytearray(200_000)))
        elapsed = time.monotonic() - t0
    assert url in str(info.value)
    # 4 tries, each at most one read timeout, plus the jittered delays between them
    assert elapsed < 4 * FAST.read_timeout + 3 * FAST_RETRY.max_delay + 1.0
    assert len([s for s in proxy.seen if s.fault]) == FAST_RETRY.attempts


def test_a_slow_capped_link_still_gives_identical_bytes(
    proxy: FaultProxy, blob: tuple[str, bytes]
) -> None:
    url, data = blob
    with S3Source(url, FAST) as src:
        proxy.bandwidth, proxy.delay = 20e6, 0.01
        out = memoryview(bytearray(MiB))
        t0 = time.monotonic()
        src.read_into(0, out)
        assert time.monotonic() - t0 >= 0.9 * MiB / 20e6
    assert bytes(out) == data[:MiB]


def test_missing_objects_and_buckets_are_named_errors_without_retries(
    proxy: FaultProxy, s3_admin: Any
) -> None:
    with pytest.raises(E.ObjectNotFound, match=r"s3://wstream-test/nope\.wst: open"):
        S3Source(f"s3://{BUCKET}/nope.wst", FAST)
    with pytest.raises(E.ObjectNotFound, match="no-such-bucket"):
        S3Source("s3://no-such-bucket/x.wst", FAST)
    assert len(proxy.seen) == 4  # head and tail GETs of each open, no retry


def test_an_object_replaced_between_reads_is_object_changed(s3_admin: Any) -> None:
    first = os.urandom(1_000_000)  # read at 400 KB: past the head and the tail of the open
    url = put(s3_admin, "replaced.bin", first)
    with S3Source(url, RemoteOptions(head_bytes=256 * KiB)) as src:
        out = memoryview(bytearray(1000))
        src.read_into(400_000, out)
        assert bytes(out) == first[400_000:401_000]
        put(s3_admin, "replaced.bin", os.urandom(1_000_000))  # same size, other bytes
        with pytest.raises(E.ObjectChanged, match=r"replaced\.bin: bytes 400000-400999"):
            src.read_into(400_000, out)
        put(s3_admin, "replaced.bin", first[:1000])  # even the old ETag would not fit the size
        with pytest.raises(E.ObjectChanged):
            src.read_into(400_000, out)
    assert bytes(out) == first[400_000:401_000]  # never a mix: the buffer kept the old bytes


def remote_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("wstream-")]


def test_close_joins_every_thread_and_closes_every_connection(
    proxy: FaultProxy, blob: tuple[str, bytes]
) -> None:
    url, _ = blob
    before = remote_threads()
    src = S3Source(url, RemoteOptions(part_size=256 * KiB, concurrency=6, head_bytes=0))
    out = memoryview(bytearray(2 * MiB))
    src.read_into(0, out)
    assert len(remote_threads()) > len(before) and proxy.active() > 1
    src.close()
    assert remote_threads() == before
    deadline = time.monotonic() + 5
    while proxy.active() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert proxy.active() == 0
    with pytest.raises(E.RemoteError, match="closed"):
        src.read_into(0, out)


def test_close_stops_a_read_stuck_on_a_stalled_server(
    proxy: FaultProxy, blob: tuple[str, bytes]
) -> None:
    url, _ = blob
    opts = RemoteOptions(
        part_size=256 * KiB, head_bytes=0, read_timeout=1.0, retry=RetryPolicy(deadline=60)
    )
    src = S3Source(url, opts)
    proxy.match = ranged
    proxy.stall(1000, after=3000)
    failure: list[BaseException] = []

    def read() -> None:
        try:
            src.read_into(0, memoryview(bytearray(2 * MiB)))
        except BaseException as exc:
            failure.append(exc)

    reader = threading.Thread(target=read)
    reader.start()
    time.sleep(0.3)
    t0 = time.monotonic()
    src.close()  # in-flight reads end at their read timeout; no retry starts after close
    reader.join(10)
    assert not reader.is_alive() and time.monotonic() - t0 < 3 * opts.read_timeout
    assert failure and isinstance(failure[0], E.RemoteError)


# --- HTTP(S) URLs ------------------------------------------------------------------------------


def test_http_source_reads_a_presigned_url(s3_admin: Any, blob: tuple[str, bytes]) -> None:
    url = s3_admin.generate_presigned_url(
        "get_object", Params={"Bucket": BUCKET, "Key": "blob.bin"}, ExpiresIn=600
    )
    data = blob[1]
    with HttpSource(url, RemoteOptions(part_size=256 * KiB)) as src:
        assert src.size == len(data) and "?" not in src.name
        spots = [(0, 10), (70_000, 100), (70_200, 50), (MiB, MiB + 5)]
        outs = [(off, memoryview(bytearray(n))) for off, n in spots]
        src.read_ranges_into(outs)
        assert [bytes(o) for _, o in outs] == [data[off : off + n] for off, n in spots]
    with pytest.raises(E.AccessDenied):
        HttpSource(url.split("?")[0], FAST)  # unsigned: the server refuses


def test_http_source_detects_a_replaced_object(s3_admin: Any) -> None:
    key_url = put(s3_admin, "http-replaced.bin", os.urandom(1_000_000))
    key = key_url.rsplit("/", 1)[1]
    url = s3_admin.generate_presigned_url(
        "get_object", Params={"Bucket": BUCKET, "Key": key}, ExpiresIn=600
    )
    with HttpSource(url, FAST) as src:
        put(s3_admin, key, os.urandom(1_000_000))
        with pytest.raises(E.ObjectChanged):  # past the bytes the open fetched
            src.read_into(400_000, memoryview(bytearray(10)))


def test_sources_keep_no_aws_state_from_the_environment_beyond_the_standard(
    s3: S3Server, blob: tuple[str, bytes], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Credentials from a profile in a config file of our own: the standard places only."""
    creds = tmp_path / "credentials"
    creds.write_text(s3.credentials_file.read_text().replace("[wstream-test]", "[other]"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(creds))
    monkeypatch.setenv("AWS_PROFILE", "other")
    monkeypatch.delenv("AWS_CONFIG_FILE")
    with S3Source(blob[0]) as src:
        assert src.size == len(blob[1])
    monkeypatch.setenv("AWS_PROFILE", "missing")
    with pytest.raises(Exception, match="missing"):
        S3Source(blob[0])


def test_reads_reuse_their_connections(proxy: FaultProxy, blob: tuple[str, bytes]) -> None:
    # each body is read to its end and its connection handed back to the pool: 20 reads one
    # after another need no new connection beyond the open's two
    url, data = blob
    with S3Source(url, FAST) as src:
        opened = proxy.connections
        out = memoryview(bytearray(100_000))
        for i in range(20):
            src.read_into(500_000 + i * 100_000, out)
            assert bytes(out) == data[500_000 + i * 100_000 : 600_000 + i * 100_000]
        assert proxy.connections - opened <= 1
