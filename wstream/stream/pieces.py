"""What the forward needs from a weight source, defined below the model so loaders need no model.

A :class:`WeightSource` (1) describes which chunks hold which rows of which tensor
(:class:`Piece`) and (2) hands chunks over (:class:`LoadedChunk`) in an order its consumer
chooses, each valid until released. :class:`~wstream.stream.loader.StreamingLoader` and
:class:`~wstream.stream.loader.EagerWeights` implement it; :mod:`wstream.model.weights` reads
through it.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from wstream.format.chunk import Stored


@dataclass(frozen=True, slots=True)
class Piece:
    """One tensor, or one row block of it, inside a chunk."""

    name: str  # full tensor name, e.g. "llm.model.layers.3.mlp.up_proj.weight"
    rows: tuple[int, int] | None  # [start, stop) rows of the whole tensor; None: the whole tensor
    shape: tuple[int, ...]  # shape of the whole tensor


class LoadedChunk(Protocol):
    """A chunk in hand: its pieces (arrays, or quantized values with scales), valid until
    release()."""

    name: str
    group: str

    def arrays(self) -> Sequence[Stored]: ...  # one per piece, in piece order

    def release(self) -> None: ...


class WeightSource(Protocol):
    """What the forward needs from a container (or from RAM)."""

    @property
    def config(self) -> Mapping[str, Any]: ...  # the checkpoint's config.json

    @property
    def tensor_names(self) -> Sequence[str]: ...

    def chunks_of(self, group: str) -> Sequence[str]: ...  # chunk names of a group, file order

    def pieces_of(self, chunk: str) -> Sequence[Piece]: ...

    def stream(self, chunks: Sequence[str], *, repeat: bool = False) -> Iterator[LoadedChunk]: ...
