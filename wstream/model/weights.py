"""How the forward pass receives weights: a stream of chunks, read through one cursor per group.

The forward knows nothing of files, pools or threads. It sees a :class:`WeightSource` that can
(1) describe which chunks hold which rows of which tensor, and (2) hand chunks over in an order
the forward chooses, each already widened to float32 and valid until it is released. The
streaming loader and the eager (everything in RAM) path both implement it, so the forward cannot
tell them apart and their logits are bit-identical.

Inside a group the forward reads tensors through :class:`GroupCursor`, which walks the chunks
strictly forward: asking for a tensor that lies behind the cursor is an :class:`OrderError`, so a
forward that runs at all consumed its weights in file order. A chunk is released as soon as the
cursor moves past it; arrays obtained from it must not be used afterwards (the loader may reuse
its slab, and tests poison released slabs to prove the forward never does).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Generator, Iterator, Sequence
from typing import cast

import numpy as np

from wstream.errors import WStreamError
from wstream.format.chunk import Stored
from wstream.format.chunk import widens as _widens
from wstream.format.quant import QuantPiece, apply_scales
from wstream.format.uint4 import unpack_uint4
from wstream.model.fast import PARALLEL_MIN, parallel_pool, widen_into
from wstream.stream.pieces import LoadedChunk, Piece, WeightSource

# A block reaches the forward as float32 pieces of at most this many elements (16 MiB): small
# enough to stay in cache between widening and use, large enough for full-speed matmuls.
SUB_ELEMENTS = 1 << 22

# What quant_blocks() yields per tensor: float32, or a quantized row block as stored (INT8 values
# and scales; uint4 packed bytes, scales and zero points): its kernel widens it in cache-sized
# pieces itself (wstream.model.quant_kernel).
Block = np.ndarray | QuantPiece


class OrderError(WStreamError, RuntimeError):
    """The forward asked for a tensor that is not next in the chunk stream."""


class GroupCursor:
    """Reads one group's tensors, in file order, from a shared chunk iterator.

    ``chunks`` yields this group's chunks (possibly a subset, see :func:`walk`); the cursor pulls
    from it only when the tensor asked for is not in the chunk it holds.
    """

    def __init__(
        self, source: WeightSource, group: str, prefix: str, chunks: Iterator[LoadedChunk]
    ) -> None:
        self.group = group
        self.prefix = prefix
        self._source = source
        self._chunks = chunks
        self._held: LoadedChunk | None = None
        self._pieces: Sequence[Piece] = ()
        self._arrays: Sequence[Stored] = ()
        self._pos = 0  # next unread piece in the held chunk
        self._scratch = np.empty(0, np.float32)  # widened pieces of the current block
        self._names: frozenset[str] | None = None  # the group's tensor names, once asked
        self.block_rows = 0

    def has(self, local: str) -> bool:
        """Whether the group holds tensor ``local``: how the forward tells a folded container
        (``pack --fold``) from an unfolded one."""
        if self._names is None:
            src = self._source
            self._names = frozenset(
                p.name for c in src.chunks_of(self.group) for p in src.pieces_of(c)
            )
        return self.prefix + local in self._names

    def _advance(self) -> bool:
        self.close()
        chunk = next(self._chunks, None)
        if chunk is None:
            return False
        if chunk.group != self.group:
            chunk.release()
            raise OrderError(
                f"group {self.group!r}: received chunk {chunk.name!r} of {chunk.group!r}"
            )
        self._held = chunk
        self._pieces = self._source.pieces_of(chunk.name)
        self._arrays = chunk.arrays()
        self._pos = 0
        return True

    def _find(self, name: str) -> tuple[Piece, Stored] | None:
        """The next piece of ``name`` at or after the cursor, moving the cursor past it; None when
        the group's chunks run out first."""
        while True:
            for i in range(self._pos, len(self._pieces)):
                if self._pieces[i].name == name:
                    self._pos = i + 1
                    return self._pieces[i], self._arrays[i]
            if not self._advance():
                return None

    def _take(self, name: str) -> tuple[Piece, Stored]:
        """The next piece of ``name`` at or after the cursor, moving the cursor past it."""
        found = self._find(name)
        if found is None:
            raise OrderError(
                f"group {self.group!r}: tensor {name!r} is not ahead of the cursor "
                "(asked for out of file order, or absent)"
            )
        return found

    def tensor(self, local: str) -> np.ndarray:
        """A whole tensor as float32. [*shape]"""
        piece, array = self._take(self.prefix + local)
        if piece.rows is not None and piece.rows != (0, piece.shape[0]):
            raise OrderError(
                f"tensor {piece.name!r} is stored in row blocks; read it with blocks()"
            )
        if isinstance(array, QuantPiece):
            out = np.empty(array.shape, np.float32)
            _unpack_into(out, array)
            apply_scales(out, array.scales, array.group, array.zeros)
            return out
        return array

    def blocks(
        self, *locals_: str, partial: bool = False
    ) -> Iterator[tuple[int, int, tuple[np.ndarray, ...]]]:
        """Row blocks of tensors split together, as float32: see :meth:`quant_blocks`."""
        it = self._blocks(locals_, partial, keep_quant=False)
        return cast(Iterator[tuple[int, int, tuple[np.ndarray, ...]]], it)

    def quant_blocks(
        self, *locals_: str, partial: bool = False
    ) -> Iterator[tuple[int, int, tuple[Block, ...]]]:
        """Row blocks of tensors split together: yields (start, stop, (array, ...)).

        A quantized (INT8 or uint4) tensor's block arrives as the stored :class:`QuantPiece`
        rows, for a kernel that widens them and applies the scales where they cost least
        (:mod:`wstream.model.quant_kernel`); :meth:`blocks` dequantizes and yields float32
        arrays only.

        All named tensors must share their row count; blocks arrive in row order and cover every
        row exactly once. The arrays of one block are valid until the next block is requested.
        With ``partial`` (the walk streams only some of the group's chunks, e.g. the embedding
        rows a prompt needs) the blocks that arrive may leave gaps; iteration ends when the
        group's chunks run out.
        """
        return self._blocks(locals_, partial, keep_quant=True)

    def _blocks(
        self, locals_: Sequence[str], partial: bool, *, keep_quant: bool
    ) -> Iterator[tuple[int, int, tuple[Block, ...]]]:
        names = [self.prefix + n for n in locals_]
        done = 0
        while True:
            if partial:
                head = self._find(names[0])
                if head is None:
                    return
                taken = [head] + [self._take(n) for n in names[1:]]
            else:
                taken = [self._take(n) for n in names]
            first = taken[0][0]
            total = first.shape[0] if first.shape else 1
            self.block_rows = total  # rows of the whole tensor(s): callers size outputs by it
            start, stop = first.rows if first.rows is not None else (0, total)
            for piece, _ in taken[1:]:
                rows = piece.rows if piece.rows is not None else (0, piece.shape[0])
                if rows != (start, stop):
                    raise OrderError(
                        f"{piece.name!r} rows {rows} do not match {first.name!r} rows "
                        f"{(start, stop)}: they must be split together"
                    )
            if start < done or (start != done and not partial):
                raise OrderError(f"{first.name!r}: block starts at row {start}, expected {done}")
            yield from self._float32_pieces(start, stop, [a for _, a in taken], keep_quant)
            done = stop
            if done >= total:
                return

    def _float32_pieces(
        self, start: int, stop: int, arrays: list[Stored], keep_quant: bool
    ) -> Iterator[tuple[int, int, tuple[Block, ...]]]:
        """A block as float32 pieces of at most SUB_ELEMENTS per array, rows split together.

        Weights may arrive in their stored dtype (bf16 or int8 straight from the page cache):
        each piece is widened into this cursor's scratch just before it is used, so the float32
        copy stays in cache and the model is never held in float32. float32 input is cut the
        same way (as views), so every matmul has the same shape whatever the source: eager and
        streamed results stay bit-identical."""
        row = max(_row_size(a) for a in arrays)
        n = stop - start
        step = max(1, SUB_ELEMENTS // max(row, 1))
        for s0 in range(0, max(n, 1), step):
            s1 = min(s0 + step, n)
            parts = [_rows(a, s0, s1) for a in arrays]
            need = sum(_wide_size(p) for p in parts if _widened(p, keep_quant))
            if self._scratch.size < need:
                self._scratch = np.empty(need, np.float32)
            pieces: list[Block] = []
            used = 0
            for part in parts:
                if not _widened(part, keep_quant):
                    pieces.append(part)
                    continue
                size = _wide_size(part)
                dst = self._scratch[used : used + size].reshape(part.shape)
                used += size
                if not isinstance(part, QuantPiece):
                    widen_into(dst, part)
                    pieces.append(dst)
                    continue
                _unpack_into(dst, part)
                _on_row_halves(functools.partial(_scale_rows, dst, part), len(dst), dst.size)
                pieces.append(dst)
            yield start + s0, start + s1, tuple(pieces)

    def close(self) -> None:
        """Release the chunk held, if any."""
        if self._held is not None:
            held, self._held = self._held, None
            self._pieces, self._arrays = (), ()
            held.release()


def walk(
    source: WeightSource,
    groups: Sequence[tuple[str, str, Sequence[str] | None]],
    *,
    repeat: bool = False,
) -> Generator[GroupCursor, None, None]:
    """Stream several groups in one go, so prefetching runs across group boundaries.

    ``groups`` lists (group name, prefix, chunk subset or None for all of the group's chunks).
    Each cursor is closed (its last chunk released) when the next one is produced or when the
    walk ends, even on error. ``repeat`` tells the source this walk comes back (the decode loop),
    so it may keep some chunks resident.
    """
    plan = [(g, p, list(source.chunks_of(g)) if c is None else list(c)) for g, p, c in groups]
    stream = source.stream([c for _, _, cs in plan for c in cs], repeat=repeat)
    cursor: GroupCursor | None = None
    try:
        for group, prefix, chunk_names in plan:
            cursor = GroupCursor(source, group, prefix, _take_n(stream, len(chunk_names)))
            yield cursor
            # Drain the rest of the group so the shared stream stays aligned with the plan.
            while cursor._advance():
                pass
            cursor.close()
    finally:
        if cursor is not None:
            cursor.close()
        close = getattr(stream, "close", None)
        if close is not None:
            close()


def _take_n(it: Iterator[LoadedChunk], n: int) -> Iterator[LoadedChunk]:
    for _ in range(n):
        chunk = next(it, None)
        if chunk is None:
            return
        yield chunk


def _widened(a: Stored, keep_quant: bool) -> bool:
    """Widened into scratch before use: a float other than float32, or quantized values (but
    not a block handed to its kernel as stored)."""
    if isinstance(a, QuantPiece):
        return not keep_quant
    return _widens(a.dtype)


def _wide_size(a: Stored) -> int:
    """float32 elements of ``a`` widened."""
    return math.prod(a.shape)


def _unpack_into(dst: np.ndarray, piece: QuantPiece) -> None:
    """``dst`` f32 = a quantized piece's stored integers (not yet scaled)."""
    if piece.zeros is None:
        widen_into(dst, piece.values)
    else:
        unpack_uint4(piece.values, piece.cols, piece.group, dst)


def _row_size(a: Stored) -> int:
    shape = a.shape  # a uint4 piece's logical shape: its float32 rows, not its packed bytes
    return math.prod(shape[1:]) if len(shape) and shape[0] else 1


def _rows(a: Stored, s0: int, s1: int) -> Stored:
    if isinstance(a, QuantPiece):
        return a.row_slice(s0, s1)
    return a[s0:s1] if a.ndim else a


def _scale_rows(dst: np.ndarray, piece: QuantPiece, rows: slice) -> None:
    zeros = None if piece.zeros is None else piece.zeros[rows]
    apply_scales(dst[rows], piece.scales[rows], piece.group, zeros)


def _on_row_halves(fn: Callable[[slice], None], rows: int, size: int) -> None:
    """``fn`` over rows [0, rows) in two halves on both cores (numpy releases the GIL)."""
    if rows < 2 or size < PARALLEL_MIN:
        fn(slice(0, rows))
        return
    half = rows // 2
    list(parallel_pool().map(fn, [slice(0, half), slice(half, rows)]))
