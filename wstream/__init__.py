"""wstream: a chunked weight container stored in execution order, and a streaming loader.

Public API::

    from wstream import open_container, pack
    pack("checkpoint_dir", "model.wst", codec="zstd", shuffle=True)
    with open_container("model.wst") as c:
        for chunk in c.stream(prefetch=2, budget=64 << 20):
            with chunk:
                ...

Attributes are imported on first use, so ``wstream info`` (which reads only a manifest) does
not pay for numpy. Importing wstream changes nothing in the importing process (no environment
variable, no thread, no signal handler): process-wide settings are made only by the ``wstream``
command for its own process (:func:`wstream.cli.entry`).
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import Any

from wstream._version import __version__

_EXPORTS = {
    "Container": "wstream.container.reader",
    "LocalFile": "wstream.container.source",
    "open_source": "wstream.container.open",
    "ChunkCache": "wstream.container.cache",
    "RemoteOptions": "wstream.container.remote",
    "open_container": "wstream.stream.loader",
    "StreamingContainer": "wstream.stream.loader",
    "Widen": "wstream.stream.plan",
    "StreamingLoader": "wstream.stream.loader",
    "pack": "wstream.pack",
    "unpack": "wstream.unpack",
    "WStreamError": "wstream.errors",
    "FormatError": "wstream.errors",
    "SourceError": "wstream.errors",
    "InputError": "wstream.errors",
    "LoaderError": "wstream.errors",
}
__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'wstream' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


class _Package(types.ModuleType):
    """``wstream.pack`` and ``wstream.unpack`` are the functions, not their modules.

    Importing a submodule makes the import system set it as an attribute of its package, which
    would turn ``from wstream import pack`` into the module once anything has imported
    ``wstream.pack``. This refuses exactly that assignment, so the names stay resolved by
    :func:`__getattr__`. The modules themselves are ``sys.modules["wstream.pack"]`` (and
    ``from wstream.pack import ...`` works as usual)."""

    def __setattr__(self, name: str, value: Any) -> None:
        if isinstance(value, types.ModuleType) and _EXPORTS.get(name) == f"{__name__}.{name}":
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
