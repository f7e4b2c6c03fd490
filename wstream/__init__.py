"""wstream: a chunked weight container stored in execution order, and a streaming loader.

Public API::

    from wstream import open_container, pack
    pack("checkpoint_dir", "model.wst", codec="zstd")
    with open_container("model.wst") as c:
        print(c.manifest.groups())
"""

from __future__ import annotations

__version__ = "0.1.0"

from wstream.errors import FormatError, InputError, LoaderError, SourceError, WStreamError
from wstream.reader import Container, open_container

__all__ = [
    "Container",
    "FormatError",
    "InputError",
    "LoaderError",
    "SourceError",
    "WStreamError",
    "__version__",
    "open_container",
]
