"""Byte sources: the one interface between a container and where its bytes live.

A :class:`ByteSource` is a read-only byte sequence of fixed size: a local file (here), or an
object in a store (``s3.py``, ``http.py``). The reader and the loader know only this protocol:
they read ranges into their own buffers with :meth:`~ByteSource.read_into`, and use
:meth:`~ByteSource.mapping` for zero-copy views when the source offers a map (a local file only
when opened with ``mapped=True``: see :class:`LocalFile`; a remote source returns None and is
always read into slabs). A read never returns partial data: a range past the end, a
short read or a changed object raises a named :class:`~wstream.errors.ByteSourceError`.
"""

from __future__ import annotations

import mmap
import os
import threading
from pathlib import Path
from typing import Protocol, runtime_checkable

from wstream import errors as E
from wstream.container.paths import open_regular


@runtime_checkable
class ByteSource(Protocol):
    """A read-only byte sequence of fixed size: a local file, or an object in a store."""

    @property
    def name(self) -> str: ...  # path or URL, used in error messages

    @property
    def size(self) -> int: ...  # total length in bytes, fixed when opened

    @property
    def version(self) -> str: ...  # identity of the content: "dev:ino:size:mtime_ns", or an ETag

    def read_into(self, offset: int, out: memoryview) -> None: ...

    def mapping(self) -> mmap.mmap | None: ...  # the whole source mapped read-only, when local

    def close(self) -> None: ...


def check_range(source: ByteSource, offset: int, nbytes: int) -> None:
    """Raise :class:`~wstream.errors.ReadPastEnd` unless [offset, offset+nbytes) is in the source.

    Every implementation calls this first, so the message is the same whatever the source."""
    if offset < 0 or nbytes < 0 or offset + nbytes > source.size:
        raise E.ReadPastEnd(
            f"{source.name}: read of {nbytes} bytes at offset {offset} is past the end "
            f"({source.size} bytes)"
        )


def read_bytes(source: ByteSource, offset: int, nbytes: int) -> bytes:
    """``nbytes`` bytes at ``offset`` as new bytes (small reads: the preamble, the manifest)."""
    out = bytearray(nbytes)
    source.read_into(offset, memoryview(out))
    return bytes(out)


class LocalFile:
    """A local file as a :class:`ByteSource`: ``pread`` for ranges; a read-only ``mmap`` only
    when asked for (``mapped=True``).

    The version is ``dev:ino:size:mtime_ns`` taken when opened; a read that comes up short (the
    file was truncated under us) raises :class:`~wstream.errors.ShortRead`. Only a regular file
    opens (:class:`~wstream.errors.NotRegularFile` otherwise, at once: a FIFO never blocks).

    Why no map by default: touching a mapped page that a truncation has removed is SIGBUS, which
    kills the process (Python cannot recover from it), and pages handed out as zero-copy views
    change under the consumer when the file is rewritten in place, after their CRC was checked.
    ``pread`` into the reader's own memory turns the first into :class:`ShortRead` and makes the
    second impossible: what was checked is what the consumer gets. The copy costs little
    (bench/mapping.py; figures in bench/results/MAPPING.md); ``mapped=True`` keeps zero-copy for
    files nobody else writes.

    After :meth:`close`, every read raises :class:`~wstream.errors.ContainerClosed`; reads in
    flight on other threads finish first (the descriptor is closed by the last of them), so a
    descriptor number reused by another open can never be read by mistake.
    """

    def __init__(self, path: str | os.PathLike[str], *, mapped: bool = False) -> None:
        self.path = Path(path)
        self._fd = open_regular(self.path, "container")
        self._map: mmap.mmap | None = None
        self._mapped = mapped
        self._lock = threading.Lock()
        self._users = 0  # reads in flight
        self._closed = False
        try:
            st = os.fstat(self._fd)
        except BaseException:
            os.close(self._fd)
            raise
        self._size = st.st_size
        self._version = f"{st.st_dev}:{st.st_ino}:{st.st_size}:{st.st_mtime_ns}"

    @property
    def name(self) -> str:
        return str(self.path)

    @property
    def size(self) -> int:
        return self._size

    @property
    def version(self) -> str:
        return self._version

    @property
    def fd(self) -> int:
        """The open descriptor (-1 once closed)."""
        return self._fd

    def _closed_error(self) -> E.ContainerClosed:
        return E.ContainerClosed(f"{self.name}: read after the container was closed")

    def read_into(self, offset: int, out: memoryview) -> None:
        check_range(self, offset, len(out))
        view = out.cast("B") if out.format != "B" or out.ndim != 1 else out
        with self._lock:
            if self._closed:
                raise self._closed_error()
            self._users += 1
        try:
            done = 0
            while done < len(view):
                n = os.preadv(self._fd, [view[done:]], offset + done)
                if n == 0:
                    raise E.ShortRead(
                        f"{self.name}: {len(view) - done} of {len(view)} bytes at offset "
                        f"{offset} could not be read (the file has been truncated since it was "
                        "opened?)"
                    )
                done += n
        finally:
            with self._lock:
                self._users -= 1
                if self._closed and self._users == 0:
                    self._close_fd()

    def mapping(self) -> mmap.mmap | None:
        """The read-only map of the whole file when opened with ``mapped=True`` (created once,
        on first use; None if empty), else None: readers then ``pread`` into their own memory."""
        if not self._mapped:
            return None
        with self._lock:
            if self._closed:
                raise self._closed_error()
            if self._map is None and self._size > 0:
                self._map = mmap.mmap(self._fd, self._size, access=mmap.ACCESS_READ)
            return self._map

    def _close_fd(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def close(self) -> None:
        with self._lock:
            self._closed = True
            if self._map is not None:
                try:
                    self._map.close()
                except BufferError:
                    pass  # arrays still view the map; it is unmapped when the last one goes
                self._map = None
            if self._users == 0:
                self._close_fd()
