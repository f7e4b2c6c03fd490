"""Byte sources: the local file's contract, and a container read through a source with no map.

A source without a map (what an object store is) must give the same tensors and the same
streamed chunks as the local file, for every codec and widen mode, within the budget.
"""

from __future__ import annotations

import mmap
import os
from collections.abc import Iterator
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest
from safetensors.numpy import save_file

from wstream import errors as E
from wstream.container.reader import Container
from wstream.container.source import ByteSource, LocalFile
from wstream.format.quant import QuantPiece
from wstream.pack import pack
from wstream.stream.loader import StreamingContainer, StreamingLoader
from wstream.stream.plan import Widen


class Unmapped:
    """A local file seen as a remote object: ranges only, no map (counts the reads)."""

    def __init__(self, path: Path) -> None:
        self._inner = LocalFile(path)
        self.reads = 0

    @property
    def name(self) -> str:
        return "unmapped:" + self._inner.name

    @property
    def size(self) -> int:
        return self._inner.size

    @property
    def version(self) -> str:
        return self._inner.version

    def read_into(self, offset: int, out: memoryview) -> None:
        self.reads += 1
        self._inner.read_into(offset, out)

    def mapping(self) -> mmap.mmap | None:
        return None

    def close(self) -> None:
        self._inner.close()


def test_local_file_contract(tmp_path: Path) -> None:
    path = tmp_path / "f.bin"
    data = bytes(range(256)) * 40
    path.write_bytes(data)
    src = LocalFile(path)
    assert isinstance(src, ByteSource)
    st = os.stat(path)
    assert src.name == str(path) and src.size == len(data)
    assert src.version == f"{st.st_dev}:{st.st_ino}:{st.st_size}:{st.st_mtime_ns}"
    out = bytearray(100)
    src.read_into(5000, memoryview(out))
    assert bytes(out) == data[5000:5100]
    src.read_into(len(data), memoryview(bytearray(0)))  # an empty range at the end is fine
    assert src.mapping() is None  # no map unless asked for: reads are pread (SIGBUS-safe)
    mapped_src = LocalFile(path, mapped=True)
    mapped = mapped_src.mapping()
    assert mapped is not None and mapped[:10] == data[:10]
    mapped_src.close()
    for offset, n in ((len(data) - 10, 11), (-1, 4), (len(data) + 1, 0)):
        with pytest.raises(E.ReadPastEnd, match=str(path)):
            src.read_into(offset, memoryview(bytearray(n)))
    os.truncate(path, 1000)  # shrunk under an open source: a named error, never partial data
    with pytest.raises(E.ShortRead, match="truncated"):
        src.read_into(900, memoryview(bytearray(200)))
    src.close()
    src.close()  # idempotent


def test_empty_local_file_has_no_map(tmp_path: Path) -> None:
    (tmp_path / "e").write_bytes(b"")
    src = LocalFile(tmp_path / "e")
    assert src.size == 0 and src.mapping() is None
    src.close()


@pytest.fixture(scope="module", params=["raw", "zstd", "int8"])
def container_path(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    d = tmp_path_factory.mktemp(f"source-{request.param}")
    rng = np.random.default_rng(7)
    tensors = {
        "embed.weight": rng.standard_normal((300, 64)).astype(np.float32),
        "layers.0.w": rng.standard_normal((200, 256)).astype(ml_dtypes.bfloat16),
        "layers.0.n": rng.integers(-9, 9, size=(7,), dtype=np.int64),
        "layers.1.w": rng.standard_normal((150, 256)).astype(np.float16),
        "head.weight": rng.standard_normal((500, 80)).astype(ml_dtypes.bfloat16),
    }
    save_file(tensors, str(d / "m.safetensors"))
    codec = "raw" if request.param == "raw" else "zstd"
    quantize = "int8" if request.param == "int8" else None
    pack(d / "m.safetensors", d / "m.wst", codec=codec, max_chunk=64 * 1024, quantize=quantize)
    return d / "m.wst"


def _stored_bytes(a: np.ndarray | QuantPiece) -> bytes:
    if isinstance(a, QuantPiece):  # Widen.QUANTIZED: int8 values and their scales
        return b"q" + a.values.tobytes() + a.scales.tobytes()
    return a.dtype.str.encode() + a.tobytes()


def _streamed(c: Container, widen: Widen, budget: int | None) -> Iterator[tuple[str, bytes]]:
    names = [ch.name for ch in c.manifest.chunks]
    with StreamingLoader(c, budget=budget, prefetch=2, widen=widen) as loader:
        for chunk in loader.stream(names):
            with chunk:
                yield (
                    chunk.name,
                    b"".join(_stored_bytes(a) for a in chunk.arrays()),
                )
        if budget is not None:
            assert loader.pool.peak <= budget
    assert loader.pool.committed == 0


def test_a_source_without_a_map_reads_the_same(container_path: Path) -> None:
    with Container(container_path) as local, Container(Unmapped(container_path)) as remote:
        assert remote.mapping() is None
        assert remote.name.startswith("unmapped:")
        for name, want in local.tensors():
            assert np.array_equal(remote.tensor(name), want, equal_nan=True), name
        remote.verify()
        names = [ch.name for ch in local.manifest.chunks]
        for widen in Widen:
            probe = StreamingLoader(remote, widen=widen)
            smallest = probe.min_budget(names)
            probe.close()
            want = list(_streamed(local, widen, None))
            for budget in (smallest, None):
                assert list(_streamed(remote, widen, budget)) == want, (widen, budget)


def test_streaming_container_over_a_source(container_path: Path) -> None:
    source = Unmapped(container_path)
    with StreamingContainer(source) as c:
        got = {}
        for chunk in c.stream(prefetch=1, budget=None):
            with chunk:
                got.update({k: np.array(v) for k, v in chunk.tensors.items()})
        assert source.reads > 2  # the header, then chunk by chunk
    with Container(container_path) as local:
        for ch in local.manifest.chunks:
            for t in ch.tensors:
                assert t.name in got
