"""Weight sources for the forward pass: eager (everything decoded in RAM) and streaming.

Both implement :class:`wstream.model.weights.WeightSource`: they describe the container's chunks
and hand chunks over as float32 arrays in the order asked for. Eager decodes and widens every
chunk once at construction, the load-everything baseline; streaming (below) keeps only a window
of chunks in pooled slabs.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from wstream.model.weights import Piece
from wstream.reader import Container, piece_views


def widen(array: np.ndarray) -> np.ndarray:
    """float32 copy of a floating-point array (exact for bf16/f16); other dtypes unchanged."""
    if array.dtype.kind == "f" or array.dtype.name == "bfloat16":
        return array.astype(np.float32)
    return array


@dataclass
class HeldChunk:
    """A chunk handed to the forward: its piece arrays, valid until release()."""

    name: str
    group: str
    _arrays: Sequence[np.ndarray]
    _on_release: Any = None
    released: bool = field(default=False, init=False)

    def arrays(self) -> Sequence[np.ndarray]:
        return self._arrays

    def release(self) -> None:
        if not self.released:
            self.released = True
            if self._on_release is not None:
                self._on_release()


class ContainerIndex:
    """The WeightSource description methods, from a container's manifest."""

    def __init__(self, container: Container) -> None:
        self.container = container
        m = container.manifest
        self._pieces = {
            c.name: tuple(Piece(t.name, t.rows, t.shape) for t in c.tensors) for c in m.chunks
        }
        self._by_group: dict[str, list[str]] = {}
        for c in m.chunks:
            self._by_group.setdefault(c.group, []).append(c.name)

    @property
    def config(self) -> Mapping[str, Any]:
        return self.container.manifest.config or {}

    @property
    def tensor_names(self) -> Sequence[str]:
        return list(self.container.manifest.tensors)

    def chunks_of(self, group: str) -> Sequence[str]:
        return self._by_group.get(group, [])

    def pieces_of(self, chunk: str) -> Sequence[Piece]:
        return self._pieces[chunk]


class EagerWeights(ContainerIndex):
    """Every chunk decoded and widened to float32 up front: the load-everything baseline."""

    def __init__(self, container: Container, *, verify: bool = True) -> None:
        super().__init__(container)
        self._arrays: dict[str, list[np.ndarray]] = {}
        for chunk in container.manifest.chunks:
            data = container.decode(chunk, verify=verify)
            self._arrays[chunk.name] = [widen(a) for a in piece_views(chunk, data)]
        self.chunk_log: list[str] = []  # every chunk handed out, in order (tests read it)

    def stream(self, chunks: Sequence[str]) -> Iterator[HeldChunk]:
        m = self.container.manifest
        for name in chunks:
            self.chunk_log.append(name)
            yield HeldChunk(name, m.chunks[m.chunk_index[name]].group, self._arrays[name])
