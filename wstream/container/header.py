"""Read a container's preamble and manifest from a byte source: two reads, no chunk byte.

The one way to open a container's description. :class:`~wstream.container.reader.Container`
uses it; so does ``wstream info``, which needs nothing else (and so never imports numpy).
"""

from __future__ import annotations

from wstream.container.source import ByteSource, read_bytes
from wstream.format.manifest import Manifest, Preamble, read_manifest


def read_header(source: ByteSource) -> tuple[Preamble, Manifest]:
    """The validated preamble and manifest of the container in ``source``."""
    return read_manifest(lambda offset, n: read_bytes(source, offset, n), source.size)
