"""The testing seam of the streaming loader: fault injection and use-after-release poisoning.

Kept out of :class:`~wstream.stream.loader.StreamingLoader`'s public constructor. Tests (and
benchmarks that time reads) subclass the loader here instead.
"""

from __future__ import annotations

from typing import Any

from wstream.container.reader import Container
from wstream.stream.loader import StreamingLoader
from wstream.stream.pool import SlabPool
from wstream.stream.worker import StoredReader


class InstrumentedLoader(StreamingLoader):
    """A :class:`StreamingLoader` whose workers get stored bytes from ``stored`` (to inject
    faults or record reads), and whose pool fills released slabs with NaN bytes (``poison``),
    so a test can prove nobody reads a chunk after releasing it."""

    def __init__(
        self,
        container: Container,
        *,
        poison: bool = False,
        stored: StoredReader | None = None,
        **kwargs: Any,
    ) -> None:
        self._poison = poison
        self._stored = stored
        super().__init__(container, **kwargs)

    def _make_pool(self, budget: int | None, timeout: float) -> SlabPool:
        return SlabPool(budget, timeout=timeout, poison=self._poison)

    def _stored_reader(self) -> StoredReader | None:
        return self._stored
