"""The forward's building blocks on their own: ops against textbook formulas, the fast layer
against its serial reference (bit for bit), blockwise helpers blocked against whole, and the
GroupCursor / walk order rules (OrderError) on an in-memory weight source."""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import ml_dtypes
import numpy as np
import pytest

from wstream.format.chunk import cast_into
from wstream.model import blockwise, fast, ops
from wstream.model.weights import GroupCursor, OrderError, walk
from wstream.stream.pieces import Piece

RNG = np.random.default_rng(11)
BIG = (600, 512)  # 307k elements: above fast.PARALLEL_MIN, so the threaded paths really split


def _f32(*shape: int) -> np.ndarray:
    return RNG.standard_normal(shape).astype(np.float32)


def _bits(a: np.ndarray) -> bytes:
    return np.ascontiguousarray(a).tobytes()


# --- ops against their formulas -----------------------------------------------------------------


def test_norms_softmax_gelu_silu_match_their_formulas() -> None:
    x = _f32(7, 33)
    x64 = x.astype(np.float64)
    c = x64 - x64.mean(axis=1, keepdims=True)
    ln = c / np.sqrt((c * c).mean(axis=1, keepdims=True) + 1e-6)
    assert np.allclose(ops.normalize(x, 1e-6), ln, atol=1e-5)
    rms = x64 / np.sqrt((x64 * x64).mean(axis=1, keepdims=True) + 1e-6)
    assert np.allclose(ops.rms_normalize(x, 1e-6), rms, atol=1e-5)
    e = np.exp(x64 - x64.max(axis=1, keepdims=True))
    assert np.allclose(ops.softmax(x), e / e.sum(axis=1, keepdims=True), atol=1e-6)
    gelu = 0.5 * x64 * (1 + np.tanh(math.sqrt(2 / math.pi) * (x64 + 0.044715 * x64**3)))
    assert np.allclose(ops.gelu_tanh(x.copy()), gelu, atol=1e-5)
    assert np.allclose(ops.silu(x), x64 / (1 + np.exp(-x64)), atol=1e-6)
    big = np.array([[-200.0, 0.0, 200.0]], np.float32)  # exp(-x) overflows; tanh does not
    assert np.all(np.isfinite(ops.silu(big)))


def test_in_place_ops_say_so_and_the_others_copy() -> None:
    x = _f32(4, 9)
    before = x.copy()
    ops.normalize(x, 1e-6), ops.rms_normalize(x, 1e-6), ops.softmax(x)
    assert _bits(x) == _bits(before)
    out = ops.gelu_tanh(x)
    assert out is x and _bits(x) != _bits(before)
    s = _f32(3, 5)
    assert ops.softmax(s, inplace=True) is s


def _naive_attention(q: np.ndarray, k: np.ndarray, v: np.ndarray, causal: bool) -> np.ndarray:
    h, tq, hd = q.shape
    rep = h // k.shape[0]
    k, v = np.repeat(k, rep, axis=0), np.repeat(v, rep, axis=0)  # HF repeat_kv
    scores = q.astype(np.float64) @ k.transpose(0, 2, 1) / math.sqrt(hd)  # [H, Tq, Tk]
    if causal:
        tk = k.shape[1]
        scores[:, np.arange(tk)[None, :] > (np.arange(tq) + tk - tq)[:, None]] = -np.inf
    p = np.exp(scores - scores.max(axis=-1, keepdims=True))
    return (p / p.sum(axis=-1, keepdims=True)) @ v


@pytest.mark.parametrize("causal", [False, True])
def test_attention_with_grouped_heads_matches_the_naive_one(causal: bool) -> None:
    q, k, v = _f32(6, 5, 8), _f32(2, 9, 8), _f32(2, 9, 8)
    got = ops.attention(q, k, v, causal=causal)
    assert got.shape == (6, 5, 8)
    assert np.allclose(got, _naive_attention(q, k, v, causal), atol=1e-5)


def test_rope_is_a_rotation_of_pairs_i_and_i_plus_half() -> None:
    x = _f32(2, 5, 8)
    cos, sin = ops.rope_tables(np.arange(5) + 3, 8, 10000.0)
    got = ops.apply_rope(x, cos, sin)
    z = (x[..., :4] + 1j * x[..., 4:]).astype(np.complex128)
    angles = (np.arange(5) + 3)[:, None] * 10000.0 ** (-np.arange(0, 8, 2) / 8)
    r = z * np.exp(1j * angles)
    assert np.allclose(got, np.concatenate([r.real, r.imag], axis=-1), atol=1e-5)
    assert np.allclose(np.linalg.norm(got, axis=-1), np.linalg.norm(x, axis=-1), atol=1e-5)


# --- the fast layer against its serial reference -------------------------------------------------


def _both(fn: Any, *args: Any) -> tuple[bytes, bytes]:
    with fast.serial():
        ref = fn(*[a.copy() if isinstance(a, np.ndarray) else a for a in args])
    got = fn(*[a.copy() if isinstance(a, np.ndarray) else a for a in args])
    return _bits(got), _bits(ref)


@pytest.mark.parametrize(
    "fn",
    [
        lambda x: ops.normalize(x, 1e-6),
        lambda x: ops.rms_normalize(x, 1e-6),
        ops.gelu_tanh,
        ops.softmax,
    ],
    ids=["normalize", "rms_normalize", "gelu_tanh", "softmax"],
)
def test_threaded_rowwise_equals_serial_bit_for_bit(fn: Any) -> None:
    got, ref = _both(fn, _f32(*BIG))
    assert got == ref


def test_threaded_attention_equals_serial_bit_for_bit() -> None:
    q, k, v = _f32(4, 256, 16), _f32(2, 512, 16), _f32(2, 512, 16)  # 2 x 256 x 512 scores/head
    for causal in (False, True):
        got, ref = _both(lambda a, b, c, m=causal: ops.attention(a, b, c, causal=m), q, k, v)
        assert got == ref


def test_threaded_widening_equals_a_plain_cast() -> None:
    src = _f32(*BIG).astype(ml_dtypes.bfloat16)
    dst = np.empty(BIG, np.float32)
    fast.widen_into(dst, src)
    assert _bits(dst) == _bits(src.astype(np.float32))


def test_bf16_and_f16_casts_by_integer_ops_equal_the_library_casts_for_every_bit_pattern() -> None:
    """cast_into widens bf16 and float16 with integer ops: the same bits as ml_dtypes' and numpy's
    casts for all 65536 values (NaN payloads, infinities, subnormals, signed zeros), on strided
    views too."""
    every = np.arange(1 << 16, dtype=np.uint16).view(ml_dtypes.bfloat16)
    dst = np.empty(every.shape, np.float32)
    cast_into(dst, every)
    assert np.array_equal(dst.view(np.uint32), every.astype(np.float32).view(np.uint32))
    grid = every.reshape(256, 256)[::3, 1::2]  # neither array contiguous
    out = np.full((grid.shape[0], 300), 7.0, np.float32)[:, 10 : 10 + grid.shape[1]]
    cast_into(out, grid)
    assert np.array_equal(out.view(np.uint32), grid.astype(np.float32).view(np.uint32))
    f16 = np.arange(1 << 16, dtype=np.uint16).view(np.float16)  # float16 by shift and multiply
    dst16 = np.empty(f16.shape, np.float32)
    cast_into(dst16, f16)
    assert np.array_equal(dst16.view(np.uint32), f16.astype(np.float32).view(np.uint32))
    finite = f16.reshape(256, 256)[:120, 1::2]  # no inf or NaN (exponent < 31), strided
    out16 = np.empty((120, 300), np.float32)[:, 3 : 3 + finite.shape[1]]
    cast_into(out16, finite)
    assert np.array_equal(out16.view(np.uint32), finite.astype(np.float32).view(np.uint32))


def test_rowwise_threads_only_when_it_pays() -> None:
    seen: list[int] = []
    fast.rowwise(lambda r: seen.append(r.shape[0]), np.zeros((8, 8), np.float32))
    assert seen == [8]  # small: one call over every row
    seen.clear()
    fast.rowwise(lambda r: seen.append(r.shape[0]), np.zeros(BIG, np.float32))
    assert sum(seen) == BIG[0] and (len(seen) > 1 or (fast.os.cpu_count() or 1) == 1)
    seen.clear()
    with fast.serial():
        fast.rowwise(lambda r: seen.append(r.shape[0]), np.zeros(BIG, np.float32))
    assert seen == [BIG[0]]


# --- an in-memory weight source -------------------------------------------------------------------


class _Chunk:
    def __init__(self, source: _Source, name: str) -> None:
        self.name, self.source = name, source
        self.group = source.groups[name]
        self.released = False

    def arrays(self) -> Sequence[np.ndarray]:
        assert not self.released
        return self.source.arrays[self.name]

    def release(self) -> None:
        self.released = True


class _Source:
    """Chunks of whole tensors or row blocks, as lists of (name, rows, array)."""

    def __init__(self, layout: dict[str, tuple[str, list[tuple[str, Any, np.ndarray]]]]) -> None:
        self.groups = {c: g for c, (g, _) in layout.items()}
        self.arrays = {c: [a for _, _, a in ps] for c, (_, ps) in layout.items()}
        shapes: dict[str, list[int]] = {}
        for _, ps in layout.values():
            for name, rows, a in ps:
                n = rows[1] if rows else a.shape[0]
                shape = shapes.setdefault(name, [0, *a.shape[1:]])
                shape[0] = max(shape[0], n)
        self.pieces = {
            c: [Piece(n, rows, tuple(shapes[n])) for n, rows, _ in ps]
            for c, (_, ps) in layout.items()
        }
        self.handed: list[_Chunk] = []

    @property
    def config(self) -> Mapping[str, Any]:
        return {}

    @property
    def tensor_names(self) -> Sequence[str]:
        return sorted({p.name for ps in self.pieces.values() for p in ps})

    def chunks_of(self, group: str) -> Sequence[str]:
        return [c for c, g in self.groups.items() if g == group]

    def pieces_of(self, chunk: str) -> Sequence[Piece]:
        return self.pieces[chunk]

    def stream(self, chunks: Sequence[str], *, repeat: bool = False) -> Iterator[_Chunk]:
        for name in chunks:
            chunk = _Chunk(self, name)
            self.handed.append(chunk)
            yield chunk


def _split(name: str, w: np.ndarray, cuts: list[int], group: str = "g") -> dict[str, Any]:
    """``w`` in row blocks [cuts[i], cuts[i+1]), one chunk each."""
    return {
        f"{name}#{i}": (group, [(name, (a, b), w[a:b])])
        for i, (a, b) in enumerate(zip(cuts, cuts[1:]))
    }


def _cursor(layout: dict[str, Any], group: str = "g") -> tuple[_Source, GroupCursor]:
    source = _Source(layout)
    names = list(source.chunks_of(group))
    return source, GroupCursor(source, group, "", iter(source.stream(names)))


# --- blockwise: blocked == whole ------------------------------------------------------------------


def test_linear_blocked_equals_whole() -> None:
    x, w, b = _f32(5, 24), _f32(30, 24), _f32(30)
    whole = blockwise.linear(
        x, _cursor({"c": ("g", [("w", None, w), ("b", None, b)])})[1], "w", "b"
    )
    layout = {
        f"c{i}": ("g", [("w", (r0, r1), w[r0:r1]), ("b", (r0, r1), b[r0:r1])])
        for i, (r0, r1) in enumerate([(0, 7), (7, 20), (20, 30)])
    }
    blocked = blockwise.linear(x, _cursor(layout)[1], "w", "b")
    assert np.allclose(blocked, x.astype(np.float64) @ w.T + b, atol=1e-5)
    assert np.allclose(blocked, whole, rtol=1e-6, atol=1e-6)


def test_norms_blocked_equal_whole_bit_for_bit() -> None:
    x, w, bias = _f32(6, 40), _f32(40), _f32(40)
    whole = blockwise.layer_norm(
        x, _cursor({"c": ("g", [("n.weight", None, w), ("n.bias", None, bias)])})[1], "n.", 1e-6
    )
    layout = {
        f"c{i}": ("g", [("n.weight", (a, b), w[a:b]), ("n.bias", (a, b), bias[a:b])])
        for i, (a, b) in enumerate([(0, 13), (13, 40)])
    }
    assert _bits(blockwise.layer_norm(x, _cursor(layout)[1], "n.", 1e-6)) == _bits(whole)
    whole = blockwise.rms_norm(x, _cursor({"c": ("g", [("w", None, w)])})[1], "w", 1e-6)
    assert _bits(blockwise.rms_norm(x, _cursor(_split("w", w, [0, 1, 40]))[1], "w", 1e-6)) == (
        _bits(whole)
    )


def test_gather_and_matmul_in_rows_blocked_equal_whole() -> None:
    table = _f32(50, 6)
    ids = np.array([49, 0, 17, 17, 33])
    whole, found = blockwise.gather_rows(
        ids, _cursor({"c": ("g", [("t", None, table)])})[1], "t", 6
    )
    blocked, found2 = blockwise.gather_rows(
        ids, _cursor(_split("t", table, [0, 10, 34, 50]))[1], "t", 6
    )
    assert found.all() and found2.all() and _bits(blocked) == _bits(whole) == _bits(table[ids])
    x = _f32(3, 50)
    got = blockwise.matmul_in_rows(x, _cursor(_split("t", table, [0, 10, 34, 50]))[1], "t")
    assert np.allclose(got, x.astype(np.float64) @ table, atol=1e-5)


def test_bf16_blocks_are_widened_in_cache_sized_pieces() -> None:
    w = _f32(40, 8).astype(ml_dtypes.bfloat16)
    x = _f32(2, 8)
    got = blockwise.linear(x, _cursor({"c": ("g", [("w", None, w)])})[1], "w")
    assert got.dtype == np.float32
    assert np.allclose(got, x @ w.astype(np.float32).T, rtol=1e-6, atol=1e-6)


# --- GroupCursor and walk: the order rules --------------------------------------------------------


def test_cursor_reads_forward_and_refuses_to_go_back() -> None:
    a, b = _f32(3), _f32(4)
    source, cur = _cursor({"c0": ("g", [("a", None, a)]), "c1": ("g", [("b", None, b)])})
    assert _bits(cur.tensor("b")) == _bits(b)  # skips ahead: c0 released on the way
    assert source.handed[0].released
    with pytest.raises(OrderError, match="not ahead of the cursor"):
        cur.tensor("a")
    cur.close()
    assert all(c.released for c in source.handed)


def test_cursor_order_errors() -> None:
    w = _f32(10, 2)
    _, cur = _cursor(_split("w", w, [0, 4, 10]))
    with pytest.raises(OrderError, match="row blocks; read it with blocks"):
        cur.tensor("w")
    _, cur = _cursor({"c": ("other", [("w", None, w)])}, group="other")
    cur = GroupCursor(cur._source, "g", "", iter(cur._source.stream(["c"])))
    with pytest.raises(OrderError, match="received chunk 'c' of 'other'"):
        cur.tensor("w")
    layout = {"c0": ("g", [("u", (0, 4), w[:4]), ("v", (0, 5), w[:5])])}
    with pytest.raises(OrderError, match="must be split together"):
        list(_cursor(layout)[1].blocks("u", "v"))
    gap = {"c0": ("g", [("w", (0, 4), w[:4])]), "c1": ("g", [("w", (6, 10), w[6:])])}
    with pytest.raises(OrderError, match="starts at row 6, expected 4"):
        list(_cursor(gap)[1].blocks("w"))
    rows = [(a, b) for a, b, _ in _cursor(gap)[1].blocks("w", partial=True)]
    assert rows == [(0, 4), (6, 10)]  # a partial walk may leave gaps


def test_walk_streams_groups_in_one_go_and_releases_every_chunk() -> None:
    layout = {
        "a0": ("ga", [("x", None, _f32(2)), ("y", None, _f32(2))]),
        "a1": ("ga", [("z", None, _f32(2))]),
        "b0": ("gb", [("x", None, _f32(3))]),
    }
    source = _Source(layout)
    got = []
    for cur in walk(source, [("ga", "", None), ("gb", "", None)]):
        got.append((cur.group, cur.tensor("x").size))  # leaves y and z unread in ga
    assert got == [("ga", 2), ("gb", 3)]
    assert [c.name for c in source.handed] == ["a0", "a1", "b0"]  # ga drained before gb
    assert all(c.released for c in source.handed)
    source = _Source(layout)
    with pytest.raises(OrderError):
        for cur in walk(source, [("ga", "", None)]):
            cur.tensor("z")
            cur.tensor("x")  # behind the cursor
    assert all(c.released for c in source.handed)  # released on error too
