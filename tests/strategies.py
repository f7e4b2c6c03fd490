"""Hypothesis strategies for wstream: dtypes, shapes, tensors, names, chunk groupings, mutations.

Tensors are drawn as unsigned-integer bit patterns of the element size and viewed as the target
dtype, so every bit pattern occurs (NaN payloads, -0.0, infinities, subnormals), and bf16 and
the float8 types, which ``hypothesis.extra.numpy`` cannot draw directly, are covered the same way.
Compare drawn tensors by dtype, shape and bytes, never by value.
"""

from __future__ import annotations

import itertools
from collections import defaultdict, deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from wstream.format import spec
from wstream.format.manifest import CodecStep
from wstream.format.spec import CodecId, DType

ALL_DTYPES: tuple[DType, ...] = tuple(DType)


def examples(factor: float) -> int:
    """``factor`` times the active profile's max_examples (ci 25, dev 60, deep 1000), so tests
    that need more (cheap fuzzing) or fewer (packing real files) examples still scale with it."""
    return max(5, round(settings.default.max_examples * factor))


_UINT = {1: "<u1", 2: "<u2", 4: "<u4", 8: "<u8"}

# Valid names: any Unicode scalar value (no lone surrogates, which UTF-8 cannot encode),
# 1..MAX_NAME_BYTES bytes of UTF-8.
_CHARS = st.characters(exclude_categories=("Cs",))
LONGEST_NAMES = (
    "x" * spec.MAX_NAME_BYTES,
    "é" * (spec.MAX_NAME_BYTES // 2),  # 2-byte UTF-8
    "€" * (spec.MAX_NAME_BYTES // 3) + "x" * (spec.MAX_NAME_BYTES % 3),  # 3-byte UTF-8
    "😀" * (spec.MAX_NAME_BYTES // 4),  # 4-byte UTF-8 (astral plane)
)


def _fits(name: str) -> bool:
    return 1 <= len(name.encode("utf-8")) <= spec.MAX_NAME_BYTES


def dtypes() -> st.SearchStrategy[DType]:
    return st.sampled_from(ALL_DTYPES)


def shapes(max_dims: int = 4, max_side: int = 7) -> st.SearchStrategy[tuple[int, ...]]:
    """0-d, empty (a zero side) and odd-sized shapes."""
    return hnp.array_shapes(min_dims=0, max_dims=max_dims, min_side=0, max_side=max_side)


@st.composite
def arrays(
    draw: st.DrawFn,
    dtype: DType | None = None,
    shape: tuple[int, ...] | None = None,
) -> np.ndarray:
    """A C-contiguous array of any DType, every bit pattern possible (bool: 0 or 1)."""
    dt = draw(dtypes()) if dtype is None else dtype
    sh = draw(shapes()) if shape is None else shape
    if dt is DType.BOOL:
        return draw(hnp.arrays(np.bool_, sh))
    bits = draw(hnp.arrays(np.dtype(_UINT[dt.itemsize]), sh))
    return bits.view(dt.numpy)


def names(max_chars: int = 16) -> st.SearchStrategy[str]:
    """Valid tensor/chunk/group names: Unicode, 1..1024 UTF-8 bytes, the longest included."""
    short = st.text(_CHARS, min_size=1, max_size=max_chars)
    ascii_like = st.text(st.sampled_from("abcdefgh._0123456789"), min_size=1, max_size=max_chars)
    return st.one_of(short, ascii_like, st.sampled_from(LONGEST_NAMES)).filter(_fits)


def tensor_dicts(
    max_size: int = 6, name_strategy: st.SearchStrategy[str] | None = None
) -> st.SearchStrategy[dict[str, np.ndarray]]:
    keys = names() if name_strategy is None else name_strategy
    return st.dictionaries(keys, arrays(), max_size=max_size)


def json_values(max_leaves: int = 8) -> st.SearchStrategy[Any]:
    """Strict JSON (no NaN or infinities), as config.json would hold."""
    scalars = st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-(2**63), 2**63),
        st.floats(allow_nan=False, allow_infinity=False),
        st.text(_CHARS, max_size=8),
    )
    return st.recursive(
        scalars,
        lambda inner: st.one_of(
            st.lists(inner, max_size=3),
            st.dictionaries(st.text(_CHARS, max_size=6), inner, max_size=3),
        ),
        max_leaves=max_leaves,
    )


def configs() -> st.SearchStrategy[dict[str, Any] | None]:
    return st.none() | st.dictionaries(st.text(_CHARS, max_size=8), json_values(), max_size=4)


def metadatas() -> st.SearchStrategy[dict[str, str]]:
    return st.dictionaries(st.text(_CHARS, max_size=10), st.text(_CHARS, max_size=16), max_size=3)


ZSTD = CodecId.ZSTD
BYTEGROUP = CodecId.BYTEGROUP

# Pipelines without frame splits. A frame split depends on the chunk's size, so
# ``container_specs`` draws it per chunk (see ``split_frames``): FRAMES marks "split".
FRAMES = ((-1, -1),)
CODECS: tuple[tuple[CodecStep, ...], ...] = (
    (),
    (CodecStep(ZSTD, 1),),
    (CodecStep(ZSTD, 3),),
    (CodecStep(ZSTD, -5),),
    (CodecStep(ZSTD, 19),),
    (CodecStep(ZSTD),),  # no level recorded
    (CodecStep(ZSTD, 3, frames=FRAMES),),
    (CodecStep(BYTEGROUP, size=2),),
    (CodecStep(BYTEGROUP, size=4), CodecStep(ZSTD, 1)),
    (CodecStep(BYTEGROUP, size=8), CodecStep(ZSTD, 3, frames=FRAMES)),
    (CodecStep(BYTEGROUP, size=2), CodecStep(ZSTD, 1, frames=FRAMES)),
)


def codecs(raw_or_zstd: str | None = None) -> st.SearchStrategy[tuple[CodecStep, ...]]:
    """``"raw"``: the empty pipeline; ``"zstd"``: pipelines ending in zstd; None: any."""
    if raw_or_zstd == "raw":
        return st.just(())
    if raw_or_zstd == "zstd":
        return st.sampled_from([c for c in CODECS if c and c[-1].id is ZSTD])
    return st.sampled_from(CODECS)


# --- groupings of tensors into chunks ------------------------------------------------------------


@dataclass(frozen=True)
class PieceSpec:
    name: str
    rows: tuple[int, int] | None  # None: the whole tensor


@dataclass(frozen=True)
class ChunkSpec:
    name: str
    group: str
    pieces: tuple[PieceSpec, ...]
    pads: tuple[int, ...]  # extra TENSOR_ALIGNMENT units of padding before each piece
    codec: tuple[CodecStep, ...]
    frame_cuts: tuple[float, ...] = ()  # where zstd frames split the stream, as fractions


@dataclass(frozen=True)
class ContainerSpec:
    tensors: dict[str, np.ndarray]
    chunks: tuple[ChunkSpec, ...]
    config: dict[str, Any] | None = None
    metadata: dict[str, str] = field(default_factory=dict)


@st.composite
def row_blocks(draw: st.DrawFn, array: np.ndarray) -> list[tuple[int, int] | None]:
    """The whole tensor, or [start, stop) row blocks that tile its first axis."""
    if array.ndim == 0 or array.shape[0] < 2 or not draw(st.booleans()):
        return [None]
    n = array.shape[0]
    cuts = draw(st.lists(st.integers(1, n - 1), unique=True, max_size=3))
    bounds = [0, *sorted(cuts), n]
    if len(bounds) == 2:
        return [(0, n)]  # a single block covering every row is still a row-block layout
    return list(itertools.pairwise(bounds))


@st.composite
def container_specs(
    draw: st.DrawFn,
    max_tensors: int = 6,
    codec: str | None = None,
    tensors: st.SearchStrategy[dict[str, np.ndarray]] | None = None,
) -> ContainerSpec:
    """Any tensors, any grouping into chunks and groups, blocks of rows split across chunks.

    Pieces of different tensors interleave freely; the row blocks of one tensor stay in row
    order (the format requires it). Chunks may be empty; every chunk picks its own codec.
    """
    tdict = draw(tensors if tensors is not None else tensor_dicts(max_tensors))
    pieces: list[PieceSpec] = []
    for name, array in tdict.items():
        pieces += [PieceSpec(name, r) for r in draw(row_blocks(array))]
    order = draw(st.permutations(range(len(pieces))))
    queues: dict[str, deque[PieceSpec]] = defaultdict(deque)
    for p in pieces:
        queues[p.name].append(p)
    ordered = [queues[pieces[i].name].popleft() for i in order]

    n_chunks = draw(st.integers(1 if ordered else 0, len(ordered) + 1))
    cuts = sorted(
        draw(
            st.lists(
                st.integers(0, len(ordered)),
                min_size=max(n_chunks - 1, 0),
                max_size=max(n_chunks - 1, 0),
            )
        )
    )
    bounds = [0, *cuts, len(ordered)] if n_chunks else []
    chunk_pieces = [ordered[a:b] for a, b in itertools.pairwise(bounds)]

    chunk_names = draw(
        st.lists(names(), min_size=len(chunk_pieces), max_size=len(chunk_pieces), unique=True)
    )
    n_groups = draw(st.integers(1, len(chunk_pieces))) if chunk_pieces else 0
    group_cuts = (
        sorted(
            draw(
                st.sets(
                    st.integers(1, max(len(chunk_pieces) - 1, 1)),
                    min_size=0,
                    max_size=max(n_groups - 1, 0),
                )
            )
        )
        if len(chunk_pieces) > 1
        else []
    )
    group_names = draw(
        st.lists(names(), min_size=len(group_cuts) + 1, max_size=len(group_cuts) + 1, unique=True)
    )
    chunks = []
    g = 0
    for i, (cname, ps) in enumerate(zip(chunk_names, chunk_pieces, strict=True)):
        while g < len(group_cuts) and i >= group_cuts[g]:
            g += 1
        pads = tuple(draw(st.lists(st.integers(0, 2), min_size=len(ps), max_size=len(ps))))
        pipeline = draw(codecs(codec))
        cuts: tuple[float, ...] = ()
        if pipeline and pipeline[-1].frames is not None:
            cuts = tuple(sorted(draw(st.lists(st.floats(0, 1), max_size=3))))
        chunks.append(ChunkSpec(cname, group_names[g], tuple(ps), pads, pipeline, cuts))
    return ContainerSpec(tdict, tuple(chunks), draw(configs()), draw(metadatas()))


# --- byte mutations ------------------------------------------------------------------------------


def flips(size: int, max_flips: int = 4) -> st.SearchStrategy[list[tuple[int, int]]]:
    """Positions in [0, size) with a non-zero XOR mask each."""
    return st.lists(
        st.tuples(st.integers(0, size - 1), st.integers(1, 255)), min_size=1, max_size=max_flips
    )


def apply_flips(data: bytes, changes: list[tuple[int, int]]) -> bytes:
    out = bytearray(data)
    for pos, mask in changes:
        out[pos] ^= mask
    return bytes(out)
