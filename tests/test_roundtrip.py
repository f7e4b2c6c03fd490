"""Round trips: whatever is written reads back byte-identical.

- write -> read: any tensors (every dtype incl. bf16 and float8, 0-d and empty shapes, odd
  sizes, Unicode names), any grouping into chunks and groups, row blocks split across chunks,
  raw or zstd per chunk;
- pack -> read and pack -> unpack: a safetensors checkpoint (written by the ``safetensors``
  package) packs losslessly and unpacks to a file that the ``safetensors`` package reads back
  byte-identical to the source.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import numpy as np
import pytest
import safetensors
import strategies as S
from hypothesis import given, settings
from hypothesis import strategies as st
from wst_testing import assert_same_tensors, same_tensor, write_checkpoint, write_container

from wstream.container.reader import Container
from wstream.errors import InputError
from wstream.format import spec
from wstream.format.chunk import piece_views
from wstream.format.spec import DType
from wstream.pack import pack
from wstream.unpack import unpack


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("roundtrip")


def _tmpdir(scratch: Path) -> tempfile.TemporaryDirectory[str]:
    return tempfile.TemporaryDirectory(dir=scratch)


# --- strategies are what they claim (so the properties below cannot pass vacuously) -----------


def test_array_strategy_reaches_every_dtype_and_the_edge_shapes() -> None:
    seen_dtypes: set[DType] = set()
    seen = {"0-d": False, "empty": False, "odd": False}

    @settings(max_examples=300, derandomize=True, database=None)
    @given(S.arrays())
    def collect(a: np.ndarray) -> None:
        seen_dtypes.add(DType.from_numpy(a.dtype))
        seen["0-d"] |= a.ndim == 0
        seen["empty"] |= a.size == 0 and a.ndim > 0
        seen["odd"] |= a.nbytes % 2 == 1

    collect()
    assert seen_dtypes == set(DType)
    assert all(seen.values()), seen


def test_name_strategy_is_valid_and_reaches_non_ascii_and_the_longest() -> None:
    seen = {"non_ascii": False, "astral": False, "longest": False}

    @settings(max_examples=300, derandomize=True, database=None)
    @given(S.names())
    def collect(name: str) -> None:
        size = len(name.encode("utf-8"))  # raises on a lone surrogate
        assert 1 <= size <= spec.MAX_NAME_BYTES
        seen["non_ascii"] |= not name.isascii()
        seen["astral"] |= any(ord(c) > 0xFFFF for c in name)
        seen["longest"] |= size == spec.MAX_NAME_BYTES

    collect()
    assert all(seen.values()), seen


# --- write -> read -------------------------------------------------------------------------------


def _check_container(path: Path, cs: S.ContainerSpec) -> None:
    with Container(path) as c:
        m = c.manifest
        # The layout is the one written: chunk names, groups, codecs, pieces, in file order.
        assert [ch.name for ch in m.chunks] == [ch.name for ch in cs.chunks]
        assert [ch.group for ch in m.chunks] == [ch.group for ch in cs.chunks]
        assert [[(s.id, s.level, s.size) for s in ch.codec] for ch in m.chunks] == [
            [(s.id, s.level, s.size) for s in ch.codec] for ch in cs.chunks
        ]
        for ch_entry, ch_spec in zip(m.chunks, cs.chunks, strict=True):
            if ch_spec.codec and ch_spec.codec[-1].frames is not None:
                frames = ch_entry.codec[-1].frames
                assert frames is not None and len(frames) == len(ch_spec.frame_cuts) + 1
                assert sum(f[0] for f in frames) == ch_entry.nbytes
                assert sum(f[1] for f in frames) == ch_entry.raw_nbytes
        assert [[(t.name, t.rows) for t in ch.tensors] for ch in m.chunks] == [
            [(p.name, p.rows) for p in ch.pieces] for ch in cs.chunks
        ]
        assert m.config == cs.config
        assert dict(m.metadata) == cs.metadata
        assert set(c.keys()) == set(cs.tensors)

        # Every whole tensor, one at a time ...
        for name, want in cs.tensors.items():
            got = c.tensor(name)
            assert same_tensor(got, want), name
        # ... all of them in one pass, each exactly once ...
        streamed = list(c.tensors())
        assert len(streamed) == len(cs.tensors)
        assert_same_tensors(dict(streamed), cs.tensors)
        # ... and each piece of each decoded chunk, as the loader sees them.
        for ch_entry, ch_spec in zip(m.chunks, cs.chunks, strict=True):
            views = piece_views(ch_entry, c.decode(ch_entry))
            for view, piece in zip(views, ch_spec.pieces, strict=True):
                want = cs.tensors[piece.name]
                want = want if piece.rows is None else want[piece.rows[0] : piece.rows[1]]
                assert same_tensor(view, want), (ch_entry.name, piece)
            assert ch_entry.offset % spec.CHUNK_ALIGNMENT == 0
        c.verify()


@given(cs=S.container_specs())
@settings(deadline=None)
def test_write_read_any_tensors_any_grouping(scratch: Path, cs: S.ContainerSpec) -> None:
    with _tmpdir(scratch) as d:
        path = Path(d) / "x.wst"
        write_container(path, cs)
        _check_container(path, cs)


@pytest.mark.parametrize("codec", ["raw", "zstd"])
@given(data=st.data())
@settings(deadline=None)
def test_write_read_every_chunk_raw_or_every_chunk_zstd(
    scratch: Path, codec: str, data: st.DataObject
) -> None:
    cs = data.draw(S.container_specs(codec=codec))
    with _tmpdir(scratch) as d:
        path = Path(d) / "x.wst"
        write_container(path, cs)
        _check_container(path, cs)
        with Container(path) as c:
            assert all(ch.is_raw == (codec == "raw") for ch in c.manifest.chunks)


def test_every_dtype_in_one_container(scratch: Path) -> None:
    rng = np.random.default_rng(1)
    tensors = {}
    for dt in DType:
        bits = rng.integers(0, 256, size=7 * dt.itemsize, dtype=np.uint8)
        if dt is DType.BOOL:
            bits &= 1
        tensors[f"t.{dt}"] = bits.view(dt.numpy).reshape(7)
    # Every NaN payload and both zeros of bf16 survive: compare bytes.
    tensors["bf16.special"] = np.array(
        [0x7FC0, 0x7F81, 0xFFFF, 0x8000, 0x0000, 0x7F80, 0x0001], np.uint16
    ).view(DType.BF16.numpy)
    pieces = tuple(S.PieceSpec(n, None) for n in tensors)
    for codec in S.CODECS[:2]:
        chunk = S.ChunkSpec("all", "g", pieces, (0,) * len(pieces), codec)
        cs = S.ContainerSpec(tensors, (chunk,))
        with _tmpdir(scratch) as d:
            write_container(Path(d) / "x.wst", cs)
            _check_container(Path(d) / "x.wst", cs)


def test_zero_chunk_container(scratch: Path) -> None:
    cs = S.ContainerSpec({}, (), {"a": 1}, {"k": "v"})
    with _tmpdir(scratch) as d:
        write_container(Path(d) / "x.wst", cs)
        _check_container(Path(d) / "x.wst", cs)
        assert (Path(d) / "x.wst").stat().st_size > spec.DATA_START


@given(
    cs=S.container_specs(
        tensors=S.tensor_dicts(name_strategy=S.names().filter(lambda n: n != "__metadata__"))
    )
)
@settings(deadline=None)
def test_unpack_any_container_reads_back_in_safetensors(scratch: Path, cs: S.ContainerSpec) -> None:
    with _tmpdir(scratch) as d:
        write_container(Path(d) / "x.wst", cs)
        assert unpack(Path(d) / "x.wst", Path(d) / "x.safetensors") == len(cs.tensors)
        _check_natural_alignment(Path(d) / "x.safetensors")
        assert_same_tensors(_read_with_safetensors(Path(d) / "x.safetensors"), cs.tensors)
        with safetensors.safe_open(Path(d) / "x.safetensors", framework="np") as f:
            assert (f.metadata() or {}) == cs.metadata


def test_unpack_refuses_the_name_safetensors_reserves(scratch: Path) -> None:
    tensors = {"__metadata__": np.arange(3, dtype=np.float32)}
    chunk = S.ChunkSpec("c", "g", (S.PieceSpec("__metadata__", None),), (0,), ())
    with _tmpdir(scratch) as d:
        write_container(Path(d) / "x.wst", S.ContainerSpec(tensors, (chunk,)))
        with Container(Path(d) / "x.wst") as c:  # a valid .wst name ...
            assert same_tensor(c.tensor("__metadata__"), tensors["__metadata__"])
        with pytest.raises(InputError, match="__metadata__"):  # ... that safetensors cannot hold
            unpack(Path(d) / "x.wst", Path(d) / "x.safetensors")
        assert sorted(os.listdir(d)) == ["x.wst"]


# --- pack -> read, pack -> unpack -> safetensors ----------------------------------------------

# safetensors reserves "__metadata__" in its header; no checkpoint can hold a tensor of that name.
_ckpt_names = S.names().filter(lambda n: n != "__metadata__")


def _check_natural_alignment(path: Path) -> None:
    """Every tensor of an unpacked file starts at a multiple of its element size, so readers
    can view it in place (the order safetensors' own writer guarantees)."""
    data = path.read_bytes()
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + n])
    header.pop("__metadata__", None)
    for name, info in header.items():
        assert (8 + n + info["data_offsets"][0]) % DType(info["dtype"]).itemsize == 0, name


def _read_with_safetensors(path: Path) -> dict[str, np.ndarray]:
    """The safetensors package's own reader; raw bytes, so every dtype (bf16, f8) is covered."""
    out = {}
    for name, t in safetensors.deserialize(path.read_bytes()):
        dt = DType(t["dtype"])
        out[name] = np.frombuffer(bytes(t["data"]), dt.numpy).reshape(t["shape"])
    return out


@given(
    tensors=S.tensor_dicts(max_size=8, name_strategy=_ckpt_names),
    codec=st.sampled_from(["raw", "zstd", "zstd+shuffle"]),
    level=st.sampled_from([None, -3, 1, 3]),
    shards=st.integers(1, 3),
    metadata=S.metadatas(),
    config=S.configs(),
)
@settings(deadline=None)
def test_pack_unpack_is_byte_identical_through_safetensors(
    scratch: Path,
    tensors: dict[str, np.ndarray],
    codec: str,
    level: int | None,
    shards: int,
    metadata: dict[str, str],
    config: dict | None,
) -> None:
    shards = min(shards, max(1, len(tensors)))  # every shard holds at least one tensor
    with _tmpdir(scratch) as name:
        d = Path(name)
        src = write_checkpoint(d / "ckpt", tensors, shards=shards, config=config, metadata=metadata)
        assert_same_tensors(_read_src(src), tensors)  # the fixture itself is right
        report = pack(
            src,
            d / "m.wst",
            codec=codec.split("+")[0],
            level=level,
            shuffle=codec.endswith("shuffle"),
        )
        assert report.tensors == len(tensors) and not report.lossy
        with Container(d / "m.wst") as c:
            assert not c.manifest.lossy
            assert all(ch.is_raw == (codec == "raw") for ch in c.manifest.chunks)
            assert_same_tensors(dict(c.tensors()), tensors)
            if config is not None or shards == 1:
                assert c.manifest.config == config
            assert dict(c.manifest.metadata) == metadata
            c.verify()
        n = unpack(d / "m.wst", d / "out.safetensors")
        assert n == len(tensors)
        assert_same_tensors(_read_with_safetensors(d / "out.safetensors"), tensors)
        with safetensors.safe_open(d / "out.safetensors", framework="np") as f:
            assert (f.metadata() or {}) == metadata


def _read_src(src: Path) -> dict[str, np.ndarray]:
    files = [src] if src.is_file() else sorted(src.glob("*.safetensors"))
    out: dict[str, np.ndarray] = {}
    for f in files:
        out.update(_read_with_safetensors(f))
    return out


@given(
    rows=st.integers(1, 300),
    cols=st.integers(1, 97),
    dtype=st.sampled_from([DType.BF16, DType.F32, DType.U8, DType.F64]),
    max_chunk=st.sampled_from(
        [spec.MIN_MAX_CHUNK, spec.MIN_MAX_CHUNK + 4096, 3 * spec.MIN_MAX_CHUNK]
    ),
    codec=st.sampled_from(["raw", "zstd", "zstd+shuffle"]),
    seed=st.integers(0, 2**32 - 1),
)
@settings(deadline=None, max_examples=S.examples(0.6))
def test_pack_splits_big_tensors_into_row_blocks_and_reassembles(
    scratch: Path, rows: int, cols: int, dtype: DType, max_chunk: int, codec: str, seed: int
) -> None:
    rng = np.random.default_rng(seed)

    # Sizes from a few KiB up to ~230 KiB: some fit one chunk, some need several row blocks.
    def make(shape: tuple[int, ...]) -> np.ndarray:
        nbytes = int(np.prod(shape)) * dtype.itemsize
        return rng.integers(0, 256, nbytes, dtype=np.uint8).view(dtype.numpy).reshape(shape)

    scale = max(1, 8 // dtype.itemsize)
    tensors = {
        "w.0.weight": make((rows * scale, cols)),
        "w.0.bias": make((rows * scale,)),
        "other": make((3,)),
    }
    with _tmpdir(scratch) as name:
        d = Path(name)
        src = write_checkpoint(d / "ckpt", tensors)
        pack(
            src,
            d / "m.wst",
            codec=codec.split("+")[0],
            max_chunk=max_chunk,
            shuffle=codec.endswith("shuffle"),
        )
        with Container(d / "m.wst") as c:
            for ch in c.manifest.chunks:
                assert ch.raw_nbytes <= max_chunk
            assert_same_tensors(dict(c.tensors()), tensors)
            assert_same_tensors({n: c.tensor(n) for n in tensors}, tensors)
        unpack(d / "m.wst", d / "out.safetensors")
        assert_same_tensors(_read_with_safetensors(d / "out.safetensors"), tensors)
