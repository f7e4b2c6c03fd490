"""Decode one chunk into a caller's slab, per codec (warm page cache, one thread, no CRC)."""

from __future__ import annotations

import zlib
from pathlib import Path
from typing import Any

import pytest
from conftest import CODECS, slab

from wstream import open_container


@pytest.mark.parametrize("codec", list(CODECS))
def test_decode_into_slab(
    benchmark: Any, throughput: Any, containers: dict[str, Path], codec: str
) -> None:
    with open_container(containers[codec]) as c:
        chunk = max(c.manifest.chunks, key=lambda ch: ch.raw_nbytes)
        out = slab(chunk.raw_nbytes)
        view = memoryview(out)
        throughput(chunk.raw_nbytes)
        benchmark(c.decode_into, chunk, view, verify=False)
        del view


def test_crc32_of_a_chunk(benchmark: Any, throughput: Any, containers: dict[str, Path]) -> None:
    """What verify=True adds per stored byte (zlib.crc32 over the mapped chunk)."""
    with open_container(containers["raw"]) as c:
        chunk = max(c.manifest.chunks, key=lambda ch: ch.nbytes)
        src = c.stored(chunk)
        throughput(chunk.nbytes)
        assert benchmark(zlib.crc32, src) == chunk.crc32
        src.release()
