"""How one chunk is brought into memory: its load plan, decided from the manifest alone.

A :class:`LoadPlan` says whether a chunk is served zero-copy from the source's map, which slabs
it needs (the bytes handed out, and a transient for decoded bytes that are converted), where
each piece lands and in which dtype, and so what the chunk charges the budget while in use.
"""

from __future__ import annotations

import math
import mmap
from dataclasses import dataclass
from typing import Literal

import numpy as np

from wstream.format.manifest import ChunkEntry, TensorEntry
from wstream.format.spec import TENSOR_ALIGNMENT
from wstream.stream.pool import SlabPool

PAGE = mmap.PAGESIZE


def page_span(chunk: ChunkEntry) -> tuple[int, int]:
    start = chunk.offset - chunk.offset % PAGE
    end = chunk.offset + chunk.nbytes
    return start, -(-end // PAGE) * PAGE - start


def _widens(dtype: np.dtype) -> bool:
    return (dtype.kind == "f" and dtype != np.float32) or dtype.name == "bfloat16"


Widen = Literal["float32", "stored", "dequantize"]
WIDEN_MODES: tuple[str, ...] = ("float32", "stored", "dequantize")


def _out_dtype(t: TensorEntry, widen: Widen) -> np.dtype:
    """What the consumer gets for a piece. ``float32``: every float widened, quantized values
    dequantized to float32; ``stored``: the declared dtype (quantized values dequantized into
    it); ``dequantize``: quantized values as float32, every other piece as stored (zero-copy for
    raw chunks: the forward widens them piece by piece, in cache)."""
    logical = t.dtype.numpy
    if t.quant is not None:
        return np.dtype(np.float32) if widen != "stored" else logical
    if widen == "float32" and _widens(logical):
        return np.dtype(np.float32)
    return logical


@dataclass(frozen=True, slots=True)
class Plan:
    """How one chunk is brought into memory, and what it charges the pool while in use."""

    chunk: ChunkEntry
    zero_copy: bool  # raw and nothing to convert: views of the file mapping
    out_nbytes: int  # slab 0: decoded (or converted) bytes handed to the consumer; 0 if zero-copy
    temp_nbytes: int  # slab 1: decoded stored bytes, converted then returned early
    out_offsets: tuple[int, ...]  # per piece, where its array starts in slab 0
    out_dtypes: tuple[np.dtype, ...]  # per piece, the dtype handed out

    @property
    def converts(self) -> bool:
        """Pieces are converted (widened or dequantized) into slab 0."""
        return self.temp_nbytes > 0 or (self.chunk.is_raw and not self.zero_copy)

    @property
    def sizes(self) -> tuple[int, ...]:
        return (self.out_nbytes, self.temp_nbytes) if self.temp_nbytes else (self.out_nbytes,)

    @property
    def mapped(self) -> int:
        return page_span(self.chunk)[1] if self.chunk.nbytes else 0

    @property
    def resident_cost(self) -> int:
        """What stays charged if the chunk is kept resident (transients excluded)."""
        return SlabPool.cost(self.out_nbytes) if not self.zero_copy else self.mapped


def plan_chunk(chunk: ChunkEntry, widen: Widen) -> Plan:
    dtypes = tuple(_out_dtype(t, widen) for t in chunk.tensors)
    same = tuple(t.offset for t in chunk.tensors)
    if all(t.quant is None and d == t.dtype.numpy for t, d in zip(chunk.tensors, dtypes)):
        if chunk.is_raw:
            return Plan(chunk, True, 0, 0, same, dtypes)
        return Plan(chunk, False, chunk.raw_nbytes, 0, same, dtypes)
    offsets, end = [], 0
    for t, d in zip(chunk.tensors, dtypes):
        offsets.append(end)
        end += -(-(math.prod(t.piece_shape) * d.itemsize) // TENSOR_ALIGNMENT) * TENSOR_ALIGNMENT
    temp = 0 if chunk.is_raw else chunk.raw_nbytes
    return Plan(chunk, False, end, temp, tuple(offsets), dtypes)
