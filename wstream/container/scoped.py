"""``with`` support in one place, for the objects that hold a file (or a whole stream).

Leaving the block calls :meth:`Scoped._on_exit`: ``close()`` for readers; for writers, discard
what was not committed, so an error (or a forgotten commit) publishes nothing.
"""

from __future__ import annotations

from typing import Self


class Scoped:
    def _on_exit(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self._on_exit()
