"""The uint4 scheme (SPEC.md 5.2): split-nibble packing, a scale and a zero point per group.

Round trips within the per-group bound, the reader's checks (a zero point above 15 is a named
error, never a value), the kernel against x @ dequantize(W).T, and the forward: streamed
bit-identical to eager, close to the float forward.
"""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from test_forward import (  # noqa: F401 (fixture)
    CASES,
    check_quantized_streaming,
    checkpoints,
    pack_quantized,
    rel_err,
    run_case,
)

from wstream import errors as E
from wstream.container.reader import Container
from wstream.format.manifest import pack_preamble
from wstream.format.quant import QuantPiece, apply_scales, n_groups
from wstream.format.uint4 import packed_cols, quantize_uint4, unpack_uint4
from wstream.model.blockwise import matmul_t
from wstream.model.quant_kernel import PARTIAL_MAX_ROWS
from wstream.stream.loader import StreamingLoader
from wstream.stream.plan import Widen


def _quantized(w: np.ndarray, group: int) -> QuantPiece:
    rows, cols = w.shape
    g = n_groups(cols, group)
    p = np.empty((rows, packed_cols(cols)), np.uint8)
    s = np.empty((rows, g), np.float32)
    z = np.empty((rows, g), np.uint8)
    quantize_uint4(w, group, p, s, z)
    return QuantPiece(p, s, group, z, cols)


def _dequantized(p: QuantPiece) -> np.ndarray:
    out = np.empty(p.shape, np.float32)
    unpack_uint4(p.values, p.cols, p.group, out)
    assert p.zeros is not None
    apply_scales(out, p.scales, p.group, p.zeros)
    return out


def _per_element(a: np.ndarray, group: int, cols: int) -> np.ndarray:
    return np.repeat(a, group, axis=1)[:, :cols]


@given(
    rows=st.integers(1, 12),
    cols=st.integers(1, 300),
    group=st.sampled_from([2, 4, 6, 64, 128, 256]),
    seed=st.integers(0, 2**16),
    spread=st.sampled_from([1e-3, 1.0, 1e4]),
)
def test_round_trip_within_half_a_step(
    rows: int, cols: int, group: int, seed: int, spread: float
) -> None:
    """|w - (q - z) s| <= s / 2 for every element (plus the float32 product's own rounding);
    q and z in [0, 15]; a zero weight stays exactly zero; the packed row is ceil(cols / 2)."""
    rng = np.random.default_rng(seed)
    w = (rng.standard_normal((rows, cols)) * spread).astype(np.float32)
    w[rng.random((rows, cols)) < 0.1] = 0
    if seed % 3 == 0:
        w = np.abs(w)  # all of a sign: the range still includes 0
    p = _quantized(w, group)
    assert p.values.shape == (rows, -(-cols // 2))
    assert p.zeros is not None and p.zeros.max() <= 15
    q = np.empty((rows, cols), np.float32)
    unpack_uint4(p.values, cols, group, q)
    assert q.min() >= 0 and q.max() <= 15
    deq = _dequantized(p)
    s = _per_element(p.scales, group, cols).astype(np.float64)
    ulp = np.spacing(np.abs(deq)).astype(np.float64)  # the binary32 product's rounding
    assert np.all(np.abs(deq.astype(np.float64) - w) <= s / 2 + ulp)
    assert np.all(deq[w == 0] == 0)


def test_unpack_inverts_the_split_layout() -> None:
    """Byte j of a group holds element j (low nibble) and element j + ceil(L / 2) (high); an
    odd partial group's last high nibble is 0. Spelled out for cols 10, group 4."""
    q = np.array([[1, 2, 3, 4, 5, 6, 7, 8, 9, 15]], np.float32)
    w = q - 0.0  # z = 0 and s = 1 when the group spans [0, 15] exactly: not forced, so pack
    p = np.array([[0x31, 0x42, 0x75, 0x86, 0xF9]], np.uint8)
    out = np.empty((1, 10), np.float32)
    unpack_uint4(p, 10, 4, out)
    assert np.array_equal(out, w)
    odd = np.empty((1, 5), np.float32)
    unpack_uint4(np.array([[0x41, 0x52, 0x03]], np.uint8), 5, 6, odd)
    assert np.array_equal(odd, [[1, 2, 3, 4, 5]])


def test_the_bound_check_fails_for_a_wrong_scale_or_zero_point() -> None:
    """The round-trip check is sharp: a scale or zero point that is wrong, too large or moved
    to the neighbouring group breaks the s / 2 bound."""
    rng = np.random.default_rng(0)
    w = rng.standard_normal((4, 256)).astype(np.float32)
    w[:, 128:] *= 5  # distinct groups, so a misplaced scale shows
    good = _quantized(w, 128)
    assert good.zeros is not None

    def within(p: QuantPiece) -> bool:
        s = _per_element(good.scales, 128, 256)
        return bool(np.all(np.abs(_dequantized(p) - w) <= s / 2 + 1e-6))

    assert within(good)
    s, z = good.scales, good.zeros
    for bad_s, bad_z in (
        (s * 1.05, z),  # wrong
        (s * 2, z),  # oversized
        (np.roll(s, 1, axis=1), z),  # misplaced: the other group's
        (s, np.where(z < 15, z + 1, z - 1).astype(np.uint8)),  # a wrong zero point
        (s, np.roll(z, 1, axis=1)),  # a misplaced zero point
    ):
        assert not within(good._replace(scales=bad_s, zeros=bad_z))


@given(
    t=st.sampled_from([1, 2, PARTIAL_MAX_ROWS, PARTIAL_MAX_ROWS + 1, 40]),
    rows=st.integers(1, 40),
    cols=st.integers(1, 300),
    group=st.sampled_from([2, 6, 32, 128]),
    seed=st.integers(0, 2**16),
)
def test_kernel_equals_x_times_dequantized_w(
    t: int, rows: int, cols: int, group: int, seed: int
) -> None:
    """Both paths (partial products with zero points via group sums of x; (q - z) * s then a
    matmul) equal x @ dequantize(W).T within float32 rounding."""
    rng = np.random.default_rng(seed)
    p = _quantized(rng.standard_normal((rows, cols)).astype(np.float32), group)
    x = rng.standard_normal((t, cols)).astype(np.float32)
    w = _dequantized(p)
    want = x.astype(np.float64) @ w.T.astype(np.float64)
    out = np.empty((t, rows), np.float32)
    matmul_t(x, p, out)
    # bound on the terms summed: |x| (|q| + |z|) s per element
    assert p.zeros is not None
    mag = _per_element(p.scales * 30, group, cols)
    scale = np.abs(x) @ mag.T
    assert np.all(np.abs(out - want) <= 1e-5 * scale + 1e-6)


@pytest.mark.parametrize("t", [1, 64])
def test_kernel_fails_for_a_wrong_zero_point_or_scale(t: int) -> None:
    """The kernel check above is sharp: a shifted zero point or misplaced scale breaks it."""
    rng = np.random.default_rng(1)
    p = _quantized(rng.standard_normal((16, 512)).astype(np.float32), 128)
    assert p.zeros is not None
    x = np.ones((t, 512), np.float32)
    want = x @ _dequantized(p).T
    for bad in (
        p._replace(zeros=np.where(p.zeros < 15, p.zeros + 1, 0).astype(np.uint8)),
        p._replace(scales=np.roll(p.scales * np.arange(1, 5), 1, axis=1)),
    ):
        out = np.empty((t, 16), np.float32)
        matmul_t(x, bad, out)
        assert rel_err(out, want) > 1e-3


@pytest.fixture(scope="module")
def uint4_containers(
    checkpoints: dict[str, Path],  # noqa: F811
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[tuple[str, str], Path]:
    return pack_quantized(checkpoints, tmp_path_factory.mktemp("uint4"), "uint4")


def test_reader_and_loader_dequantize_alike(uint4_containers: dict[tuple[str, str], Path]) -> None:
    """Container.tensor, the loader's FLOAT32 and DEQUANTIZE modes and the stored pieces under
    QUANTIZED (packed bytes, scales and zero points, zero-copy) give the same values."""
    with Container(uint4_containers["tiny", "raw"]) as c:
        c.verify()
        names = [ch.name for ch in c.manifest.chunks]
        quantized = [t for ch in c.manifest.chunks for t in ch.tensors if t.quant is not None]
        assert quantized and all(t.quant.scheme == "uint4" for t in quantized if t.quant)
        for widen in (Widen.FLOAT32, Widen.DEQUANTIZE, Widen.QUANTIZED):
            with StreamingLoader(c, budget=None, widen=widen) as loader:
                seen = 0
                for chunk in loader.stream(names):
                    for t, a in zip(loader.entry(chunk.name).tensors, chunk.arrays()):
                        if t.quant is None:
                            continue
                        if widen is Widen.QUANTIZED:
                            assert isinstance(a, QuantPiece) and a.values.dtype == np.uint8
                            assert a.values.shape == t.stored_shape and a.shape == t.piece_shape
                            values = _dequantized(a)
                        else:
                            assert isinstance(a, np.ndarray)
                            values = a
                        assert values.dtype == np.float32
                        r0, r1 = t.rows if t.rows is not None else (0, t.shape[0])
                        got = c.tensor(t.name)[r0:r1]  # the reader's dequantisation, rounded
                        assert np.array_equal(values.astype(got.dtype), got)
                        seen += 1
                    chunk.release()
                assert seen
                if widen is Widen.QUANTIZED:
                    assert loader.stats.bytes_widened == 0


@pytest.mark.parametrize("codec", ["raw", "zstd"])
@pytest.mark.parametrize("name", CASES)
def test_uint4_streamed_equals_eager(
    name: str, codec: str, uint4_containers: dict[tuple[str, str], Path]
) -> None:
    """uint4 handed to the forward packed: streamed (budgets, prefetch, poisoned slabs) is
    bit-identical to eager with the same pieces, and near the float forward."""
    case = CASES[name]
    path = uint4_containers[name, codec]
    check_quantized_streaming(path, case, ((0, 0), (2, None)), max_rel=1e-4, min_cosine=0.95)


def test_a_zero_point_above_15_is_a_named_error(
    uint4_containers: dict[tuple[str, str], Path], tmp_path: Path
) -> None:
    """A raw chunk whose zero-point byte reads 16 (its CRC fixed up) is ZeroPointOutOfRange on
    every path that reads it (verify, tensor, the loader), never a wrong value."""
    src = uint4_containers["tiny", "raw"]
    data = bytearray(src.read_bytes())
    with Container(src) as c:
        chunk = next(ch for ch in c.manifest.chunks if any(t.quant for t in ch.tensors))
        entry = next(t for t in chunk.tensors if t.quant is not None)
        manifest_at = c.preamble.manifest_offset
    data[chunk.offset + entry.zeros_offset] = 16
    crc = zlib.crc32(data[chunk.offset : chunk.offset + chunk.nbytes])
    manifest = bytes(data[manifest_at:]).replace(
        f'"crc32":{chunk.crc32},'.encode(), f'"crc32":{crc},'.encode(), 1
    )
    data = data[:manifest_at] + manifest
    data[:64] = pack_preamble(manifest_at, len(manifest), zlib.crc32(manifest))
    bad = tmp_path / "bad.wst"
    bad.write_bytes(bytes(data))
    with Container(bad) as c:
        with pytest.raises(E.ZeroPointOutOfRange, match="above 15"):
            c.verify()
        with pytest.raises(E.ZeroPointOutOfRange, match="zero point"):
            c.tensor(entry.name)
        for widen in (Widen.QUANTIZED, Widen.FLOAT32):
            with StreamingLoader(c, budget=None, widen=widen) as loader:
                with pytest.raises(E.WStreamError) as info:
                    for ch in loader.stream([chunk.name]):
                        ch.release()
                err: BaseException | None = info.value
                while err is not None and not isinstance(err, E.ZeroPointOutOfRange):
                    err = err.__cause__
                assert err is not None, info.value
