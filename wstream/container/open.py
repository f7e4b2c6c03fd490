"""One place that turns what a user typed into a byte source: a path, ``s3://``, ``https://``.

Every reading command and the library go through :func:`open_source`, so a URL works wherever a
path does. The remote modules (botocore, urllib3) are imported only for a URL: reading a local
file never pays for them.
"""

from __future__ import annotations

import os

from wstream.container.remote import RemoteOptions
from wstream.container.source import ByteSource, LocalFile

REMOTE_SCHEMES = ("s3://", "https://", "http://")


def is_url(location: str | os.PathLike[str]) -> bool:
    """Whether ``location`` names a remote object rather than a local path."""
    return isinstance(location, str) and location.startswith(REMOTE_SCHEMES)


def open_source(
    location: str | os.PathLike[str] | ByteSource,
    options: RemoteOptions | None = None,
    *,
    mapped: bool = False,
) -> ByteSource:
    """A path -> :class:`LocalFile` (read with pread, or through a shared map when ``mapped``);
    ``s3://bucket/key`` -> S3Source; ``http(s)://`` -> HttpSource (``options`` tunes the remote
    ones); a ByteSource is returned as it is."""
    if not isinstance(location, str | os.PathLike):
        return location
    if isinstance(location, str) and location.startswith("s3://"):
        from wstream.container.s3 import S3Source

        return S3Source(location, options)
    if is_url(location):
        from wstream.container.http import HttpSource

        return HttpSource(str(location), options)
    return LocalFile(location, mapped=mapped)
