"""The local chunk cache: hits, misses, stale keys, corrupted files, eviction, and several
processes sharing one directory."""

from __future__ import annotations

import multiprocessing
import os
import zlib
from pathlib import Path
from typing import Any

import pytest
from s3_server import BUCKET

from wstream import errors as E
from wstream.container.cache import ChunkCache, ChunkKey
from wstream.container.s3 import S3Source


def chunk(
    i: int, n: int = 10_000, url: str = "s3://b/m.wst", version: str = '"v1"'
) -> tuple[ChunkKey, bytes]:
    data = bytes([i % 251]) * (n - 8) + i.to_bytes(8, "little")
    return ChunkKey(url, version, i, 4096 * i, n, zlib.crc32(data)), data


def test_miss_then_hit(tmp_path: Path) -> None:
    cache = ChunkCache(tmp_path, max_bytes=1 << 20)
    key, data = chunk(1)
    out = memoryview(bytearray(len(data)))
    assert not cache.get_into(key, out)
    cache.put(key, data)
    assert cache.get_into(key, out) and out == data
    assert cache.stats == (1, 1, 0, 0)
    with pytest.raises(E.ChunkChecksumMismatch, match="key says 10000 bytes"):
        cache.put(key, data[:-1] + b"?")


def test_a_corrupted_or_truncated_file_is_detected_and_fetched_again(tmp_path: Path) -> None:
    cache = ChunkCache(tmp_path, max_bytes=1 << 20)
    key, data = chunk(2)
    out = memoryview(bytearray(len(data)))
    for damage in (
        lambda b: b[:100] + bytes([b[100] ^ 1]) + b[101:],
        lambda b: b[:-1],
        lambda b: b + b"x",
    ):
        cache.put(key, data)
        cache.path(key).write_bytes(damage(data))
        assert not cache.get_into(key, out)
        assert not cache.path(key).exists()  # removed, so the refetched copy replaces it
        cache.put(key, data)
        assert cache.get_into(key, out) and out == data
    assert cache.stats.corrupt == 3


def test_a_new_version_or_other_crc_is_another_key(tmp_path: Path) -> None:
    cache = ChunkCache(tmp_path, max_bytes=1 << 20)
    key, data = chunk(3)
    cache.put(key, data)
    out = memoryview(bytearray(len(data)))
    for other in (
        key._replace(version='"v2"'),
        key._replace(url="s3://b/n.wst"),
        key._replace(offset=0),
    ):
        assert cache.path(other) != cache.path(key) and not cache.get_into(other, out)


def test_eviction_keeps_the_most_recently_used(tmp_path: Path) -> None:
    cache = ChunkCache(tmp_path, max_bytes=35_000)  # three 10 kB chunks fit
    chunks = [chunk(i) for i in range(5)]
    out = memoryview(bytearray(10_000))
    for i, (key, data) in enumerate(chunks):
        cache.put(key, data)
        os.utime(cache.path(key), ns=(i * 10**9, i * 10**9))  # distinct, ordered mtimes
        if i == 2:
            assert cache.get_into(chunks[0][0], out)  # chunk 0 used again: now the newest
    kept = {i for i, (key, _) in enumerate(chunks) if cache.path(key).exists()}
    assert kept == {2, 3, 4} or kept == {0, 3, 4}
    assert sum(p.stat().st_size for p in tmp_path.glob("*.chunk")) <= 35_000


def test_stale_chunks_of_a_replaced_object_are_never_served(s3_admin: Any, tmp_path: Path) -> None:
    cache = ChunkCache(tmp_path, max_bytes=1 << 20)
    url = f"s3://{BUCKET}/cache/model.bin"
    first, second = os.urandom(100_000), os.urandom(100_000)
    s3_admin.put_object(Bucket=BUCKET, Key="cache/model.bin", Body=first)
    out = memoryview(bytearray(8192))

    def key_for(src: S3Source, data: bytes) -> ChunkKey:
        return ChunkKey(src.name, src.version, 0, 4096, 8192, zlib.crc32(data[4096 : 4096 + 8192]))

    with S3Source(url) as src:
        key1 = key_for(src, first)
        src.read_into(4096, out)
        cache.put(key1, out)
    s3_admin.put_object(Bucket=BUCKET, Key="cache/model.bin", Body=second)
    with S3Source(url) as src:
        key2 = key_for(src, second)
        assert key2.version != key1.version
        assert not cache.get_into(key2, out)  # a miss: fetched from the new object
        src.read_into(4096, out)
        cache.put(key2, out)
        assert cache.get_into(key2, out) and out == second[4096 : 4096 + 8192]


def _hammer(root: str, seed: int) -> tuple[int, int]:
    """One process: read-or-fill 12 keys many times through a cache that holds only 6."""
    cache = ChunkCache(root, max_bytes=6 * 20_000 + 100)
    bad = 0
    for step in range(150):
        i = (step * (seed + 3)) % 12
        key, data = chunk(i, 20_000)
        out = memoryview(bytearray(len(data)))
        if cache.get_into(key, out):
            bad += out != data
        else:
            cache.put(key, data)
    return bad, cache.stats.hits


def test_two_processes_share_one_cache(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(2) as pool:
        results = pool.starmap(_hammer, [(str(tmp_path), 0), (str(tmp_path), 1)])
    assert [bad for bad, _ in results] == [0, 0]
    assert all(hits > 0 for _, hits in results)
    assert sum(p.stat().st_size for p in tmp_path.glob("*.chunk")) <= 6 * 20_000 + 100
    assert not list(tmp_path.glob(".*.tmp"))  # no temporary file left behind
