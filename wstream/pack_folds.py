"""The packer's view of a checkpoint with ``pack --fold`` applied (see wstream.model.folds).

:class:`FoldedSource` lists the tensors to pack (the source's, minus those the folds replace,
plus the derived ones) and reads any of them a row range at a time, as the packer reads a source
tensor: a stacked tensor's rows come straight from its parts' rows (bytes copied, nothing
rounded).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from wstream.container.checkpoint import Checkpoint, CheckpointReader, SourceTensor
from wstream.errors import SourceError
from wstream.model.folds import Derived, FoldPlan

_NO_FOLDS = FoldPlan((), (), frozenset())


def _rows(t: SourceTensor) -> int:
    return t.shape[0] if t.shape else 1


def _row_nbytes(t: SourceTensor) -> int:
    return t.nbytes // _rows(t) if t.nbytes else 0


def folded_tensors(
    tensors: Mapping[str, SourceTensor], plan: FoldPlan
) -> tuple[dict[str, SourceTensor], dict[str, Derived]]:
    """The tensors to pack once ``plan`` is applied, and the derived ones by name. A derived
    tensor is described as a SourceTensor of its parts' dtype at no offset of its own."""
    out = {n: t for n, t in tensors.items() if n not in plan.removed}
    derived = {}
    for d in plan.derived:
        parts = [tensors[r.name] for r in d.stack]
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

    def __init__(self, checkpoint: Checkpoint, plan: FoldPlan = _NO_FOLDS) -> None:
        self.checkpoint = checkpoint
        self.tensors, self.derived = folded_tensors(checkpoint.tensors, plan)

    def read(self, reader: CheckpointReader, name: str, start: int, out: memoryview) -> None:
        """Fill ``out`` with the bytes of tensor ``name`` from row ``start`` on (a 0-d tensor:
        its bytes)."""
        t = self.tensors[name]
        row = _row_nbytes(t)
        d = self.derived.get(name)
        if d is None:
            reader.read_into(t, start * row, out)
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
