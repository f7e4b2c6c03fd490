"""Reading chunks: one chunk through the reader (CRC checked), a whole container through the
streaming loader, and prefetch against injected read latency (zarr's LatencyStore idea: on a
machine whose page cache is hot, a prefetch gain must be made measurable, not assumed)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from conftest import CODECS

from wstream import open_container
from wstream.stream.loader import StreamingLoader
from wstream.stream.plan import Widen
from wstream.stream.testing import InstrumentedLoader

MiB = 1 << 20


@pytest.mark.parametrize("codec", ["raw", "zstd"])
def test_chunk_read(
    benchmark: Any, throughput: Any, containers: dict[str, Path], codec: str
) -> None:
    """Container.decode(chunk): raw is a zero-copy view plus the CRC; zstd decodes into a new
    array."""
    with open_container(containers[codec]) as c:
        chunk = max(c.manifest.chunks, key=lambda ch: ch.raw_nbytes)
        throughput(chunk.raw_nbytes)
        benchmark(lambda: c.decode(chunk, verify=True))


@pytest.mark.parametrize("widen", [False, True], ids=["stored-dtype", "widen-f32"])
@pytest.mark.parametrize("codec", list(CODECS))
def test_stream_container(
    benchmark: Any, throughput: Any, containers: dict[str, Path], codec: str, widen: bool
) -> None:
    """Every chunk through StreamingLoader (prefetch 2, 2 workers, 32 MiB budget, CRC on); the
    consumer releases each chunk at once."""
    with open_container(containers[codec]) as c:
        names = [ch.name for ch in c.manifest.chunks]
        throughput(sum(ch.raw_nbytes for ch in c.manifest.chunks))

        def walk() -> None:
            with StreamingLoader(
                c,
                budget=32 * MiB,
                prefetch=2,
                workers=2,
                widen=Widen.FLOAT32 if widen else Widen.STORED,
            ) as loader:
                for chunk in loader.stream(names):
                    chunk.release()

        benchmark(walk)


LATENCY = 0.002  # seconds per chunk read, injected
COMPUTE = 0.002  # seconds of consumer work per chunk (a sleep: it does not compete for a core)


@pytest.mark.parametrize("prefetch", [0, 1, 2])
def test_prefetch_hides_latency(benchmark: Any, containers: dict[str, Path], prefetch: int) -> None:
    """n chunks, each read with LATENCY and used for COMPUTE: prefetch 0 costs n x (L + C),
    prefetch >= 1 about n x max(L, C). extra_info["hidden"] is the share of latency hidden."""
    with open_container(containers["raw"]) as c:
        names = [ch.name for ch in c.manifest.chunks]

        def slow(chunk: Any) -> memoryview:
            time.sleep(LATENCY)
            return c.stored(chunk)

        def walk() -> None:
            with InstrumentedLoader(
                c, budget=32 * MiB, prefetch=prefetch, widen=Widen.STORED, stored=slow
            ) as loader:
                for chunk in loader.stream(names):
                    with chunk:
                        time.sleep(COMPUTE)

        benchmark(walk)
        if benchmark.stats:
            serial = len(names) * (LATENCY + COMPUTE)
            ideal = len(names) * max(LATENCY, COMPUTE)
            benchmark.extra_info["chunks"] = len(names)
            benchmark.extra_info["hidden"] = (serial - benchmark.stats.stats.median) / (
                serial - ideal
            )
