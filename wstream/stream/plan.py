"""How one chunk is brought into memory: its load plan, decided from the manifest alone.

A :class:`LoadPlan` says whether a chunk is served zero-copy from the source's map, which slabs
it needs (the bytes handed out, a transient for decoded bytes that are converted, and, for a
source without a map, the stored bytes read into memory), where each piece lands and in which
dtype, and so what the chunk charges the budget while in use.
"""

from __future__ import annotations

import enum
import math
import mmap
from dataclasses import dataclass

import numpy as np

from wstream.errors import InputError
from wstream.format.chunk import widens
from wstream.format.manifest import ChunkEntry, TensorEntry
from wstream.format.spec import TENSOR_ALIGNMENT, QuantScheme, align_up
from wstream.stream.pool import SlabPool

PAGE = mmap.PAGESIZE


class Widen(enum.StrEnum):
    """What a consumer gets for each piece of a chunk.

    - ``STORED``: the declared dtype (a quantized piece dequantized, then rounded into it); raw
      chunks of a local file zero-copy. What the file holds, converted only where it must be.
    - ``FLOAT32``: every float widened to float32 by the workers, quantized pieces dequantized.
    - ``DEQUANTIZE``: quantized pieces as float32, every other piece as stored (zero-copy for raw
      chunks).
    - ``QUANTIZED``: every piece as stored, a quantized one as its int8 values (or packed uint4
      bytes and zero points) and scales (:class:`~wstream.format.quant.QuantPiece`; zero-copy
      for raw chunks): what the forward wants, since it widens bf16 and int8 piece by piece
      while the piece is in cache, and applies scales where they cost least
      (``bench/quant_kernels.py``).
    """

    STORED = "stored"
    FLOAT32 = "float32"
    DEQUANTIZE = "dequantize"
    QUANTIZED = "quantized"

    @classmethod
    def parse(cls, value: Widen | str) -> Widen:
        try:
            return cls(value)
        except ValueError:
            allowed = ", ".join(repr(str(w)) for w in cls)
            raise InputError(f"widen: {value!r} is not one of {allowed}") from None


DEFAULT_WIDEN = Widen.STORED  # the one default of every API that takes a widen mode
_INT8 = np.dtype(np.int8)  # the out dtype of an INT8 piece handed out as stored
_UINT4 = np.dtype(np.uint8)  # ... and of a uint4 piece (its packed bytes)


def _quant_dtype(t: TensorEntry) -> np.dtype:
    assert t.quant is not None
    return _UINT4 if t.quant.scheme is QuantScheme.UINT4 else _INT8


def as_stored(t: TensorEntry, dtype: np.dtype) -> bool:
    """The piece is handed out as it lies in the decoded chunk (no conversion)."""
    return dtype == _quant_dtype(t) if t.quant is not None else dtype == t.dtype.numpy


def page_span(chunk: ChunkEntry) -> tuple[int, int]:
    """(start, length) of the whole pages that hold a chunk's stored bytes."""
    start = chunk.offset - chunk.offset % PAGE
    end = chunk.offset + chunk.nbytes
    return start, align_up(end, PAGE) - start


def out_dtype(t: TensorEntry, widen: Widen) -> np.dtype:
    """The dtype a consumer gets for a piece under ``widen`` (see :class:`Widen`)."""
    logical = t.dtype.numpy
    if t.quant is not None:
        if widen is Widen.QUANTIZED:
            return _quant_dtype(t)  # handed out as stored: values, scales (and zero points)
        return np.dtype(np.float32) if widen is not Widen.STORED else logical
    if widen is Widen.FLOAT32 and widens(logical):
        return np.dtype(np.float32)
    return logical


@dataclass(frozen=True, slots=True)
class LoadPlan:
    """How one chunk is brought into memory, and what it charges the pool while in use.

    Slabs: 0 holds what the consumer gets (decoded or converted bytes; none if zero-copy), 1 the
    decoded stored bytes when they are converted into slab 0 (returned early), 2 the stored bytes
    read from a source without a map (returned early, once decoded)."""

    chunk: ChunkEntry
    zero_copy: bool  # raw, nothing to convert, mapped source: views of the mapping
    mapped_source: bool  # the source has a map: stored bytes are read through it
    out_nbytes: int  # slab 0
    temp_nbytes: int  # slab 1
    read_nbytes: int  # slab 2
    out_offsets: tuple[int, ...]  # per piece, where its array starts in slab 0
    out_dtypes: tuple[np.dtype, ...]  # per piece, the dtype handed out

    @property
    def converts(self) -> bool:
        """Pieces are converted (widened or dequantized) into slab 0."""
        return not all(as_stored(t, d) for t, d in zip(self.chunk.tensors, self.out_dtypes))

    @property
    def sizes(self) -> tuple[int, ...]:
        sizes = (self.out_nbytes, self.temp_nbytes, self.read_nbytes)
        n = len(sizes)
        while n > 1 and sizes[n - 1] == 0:
            n -= 1
        return sizes[:n]

    @property
    def mapped(self) -> int:
        """Bytes of the source's map this chunk charges while its stored bytes are in use."""
        return page_span(self.chunk)[1] if self.chunk.nbytes and self.mapped_source else 0

    @property
    def cost(self) -> int:
        """Bytes the budget must hold while this chunk is loaded (transients included)."""
        return SlabPool.cost(*self.sizes, mapped=self.mapped)


def plan_load(chunk: ChunkEntry, widen: Widen, *, mapped_source: bool = True) -> LoadPlan:
    """The plan for bringing ``chunk`` in under ``widen``, from a source with a map or not."""
    dtypes = tuple(out_dtype(t, widen) for t in chunk.tensors)
    read = 0 if mapped_source or chunk.is_raw else chunk.nbytes
    if all(as_stored(t, d) for t, d in zip(chunk.tensors, dtypes)):
        same = tuple(t.offset for t in chunk.tensors)
        if chunk.is_raw and mapped_source:
            return LoadPlan(chunk, True, True, 0, 0, 0, same, dtypes)
        return LoadPlan(chunk, False, mapped_source, chunk.raw_nbytes, 0, read, same, dtypes)
    offsets, end = [], 0
    for t, d in zip(chunk.tensors, dtypes):
        offsets.append(end)
        end += align_up(math.prod(t.piece_shape) * d.itemsize, TENSOR_ALIGNMENT)
    temp = 0 if chunk.is_raw and mapped_source else chunk.raw_nbytes
    return LoadPlan(chunk, False, mapped_source, end, temp, read, tuple(offsets), dtypes)
