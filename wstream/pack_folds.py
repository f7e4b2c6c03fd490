"""The packer's view of a checkpoint with ``pack --fold`` applied (see wstream.model.folds).

:class:`FoldedSource` lists the tensors to pack (the source's, minus those the folds replace,
plus the derived ones) and reads any of them a row range at a time, as the packer reads a source
tensor: a stacked tensor's rows come straight from its parts' rows (bytes copied, nothing
rounded); a computed one is computed once, whole, in float64 from its inputs' rows and rounded
once to its stored dtype.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from wstream.container.checkpoint import Checkpoint, CheckpointReader, SourceTensor
from wstream.errors import SourceError
from wstream.format.spec import DType
from wstream.model.folds import Derived, FoldPlan, RowSlice

_NO_FOLDS = FoldPlan((), (), frozenset())


def _rows(t: SourceTensor) -> int:
    return t.shape[0] if t.shape else 1


def _row_nbytes(t: SourceTensor) -> int:
    return t.nbytes // _rows(t) if t.nbytes else 0


def folded_tensors(
    tensors: Mapping[str, SourceTensor], plan: FoldPlan, dtype: DType | None = None
) -> tuple[dict[str, SourceTensor], dict[str, Derived]]:
    """The tensors to pack once ``plan`` is applied, and the derived ones by name. A derived
    tensor is described as a SourceTensor at no offset of its own: a stack has its parts' dtype;
    a computed tensor is stored as ``dtype`` (the pack's ``--dtype``), else float32, so the
    forward reads what it would have computed itself, not a narrower rounding of it."""
    out = {n: t for n, t in tensors.items() if n not in plan.removed}
    derived = {}
    for d in plan.derived:
        parts = [tensors[r.name] for r in d.stack or d.inputs]
        if d.compute is not None:
            stored = dtype or DType.F32
        else:
            dtypes = {t.dtype for t in parts}
            if len(dtypes) != 1:
                names = ", ".join(t.name for t in parts)
                raise SourceError(f"fold: {names} have different dtypes; cannot stack them")
            stored = dtypes.pop()
        nbytes = math.prod(d.shape) * stored.itemsize
        out[d.name] = SourceTensor(d.name, stored, d.shape, parts[0].path, -1, nbytes)
        derived[d.name] = d
    return out, derived


class FoldedSource:
    """The tensors ``pack`` writes, readable by row ranges (see the module docstring)."""

    def __init__(
        self, checkpoint: Checkpoint, plan: FoldPlan = _NO_FOLDS, dtype: DType | None = None
    ) -> None:
        self.checkpoint = checkpoint
        self.tensors, self.derived = folded_tensors(checkpoint.tensors, plan, dtype)
        self._computed: dict[str, np.ndarray] = {}  # bytes of each computed tensor, once

    def read(self, reader: CheckpointReader, name: str, start: int, out: memoryview) -> None:
        """Fill ``out`` with the bytes of tensor ``name`` from row ``start`` on (a 0-d tensor:
        its bytes)."""
        t = self.tensors[name]
        row = _row_nbytes(t)
        d = self.derived.get(name)
        if d is None:
            reader.read_into(t, start * row, out)
        elif d.compute is not None:
            data = self._computed.get(name)
            if data is None:  # whole, in float64, rounded once to the stored dtype
                inputs = [self._source_rows(reader, r) for r in d.inputs]
                data = d.compute(inputs).astype(t.dtype.numpy).reshape(-1).view(np.uint8)
                self._computed[name] = data
            out[:] = data[start * row : start * row + out.nbytes].data
        else:
            self._stacked(reader, d, row, start, out)

    def _stacked(
        self, reader: CheckpointReader, d: Derived, row: int, start: int, out: memoryview
    ) -> None:
        """Rows of a stack from the rows of its parts, in order."""
        stop = start + (out.nbytes // row if row else 0)
        at, base = 0, 0  # bytes filled; first stacked row of the current part
        for part in d.stack:
            lo, hi = max(start, base), min(stop, base + part.stop - part.start)
            if lo < hi:
                src = self.checkpoint.tensors[part.name]
                size = (hi - lo) * row
                reader.read_into(src, (part.start + lo - base) * row, out[at : at + size])
                at += size
            base += part.stop - part.start

    def _source_rows(self, reader: CheckpointReader, r: RowSlice) -> np.ndarray:
        """Rows [r.start, r.stop) of a source tensor, in its dtype."""
        t = self.checkpoint.tensors[r.name]
        buf = np.empty((r.stop - r.start) * _row_nbytes(t), np.uint8)
        reader.read_into(t, r.start * _row_nbytes(t), buf.data)
        return buf.view(t.dtype.numpy).reshape((r.stop - r.start, *t.shape[1:]))
