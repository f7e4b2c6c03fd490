"""Write a .wst container: chunks in the order given, then the manifest, then the preamble.

:class:`ContainerWriter` is a small state machine (OPEN -> CLOSED, or OPEN -> ABORTED). It writes
into a temporary file beside the target and renames it into place only after the manifest has
been written, checked by the same parser readers use, and fsync'ed. An interrupted write (an
exception, Ctrl-C, a crash) therefore never leaves a file at the target path, and an existing
file there stays untouched until the new one is complete.

The target may also be ``s3://bucket/key``: the bytes then go out as a multipart upload while
they are written (:class:`~wstream.container.upload.UploadFile`), completed by close() and
aborted by abort(), so the object too appears only when whole.
"""

from __future__ import annotations

import enum
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from wstream import errors as E
from wstream._version import __version__
from wstream.container.atomic import AtomicFile
from wstream.container.scoped import Scoped
from wstream.format import codecs, crc, spec
from wstream.format.manifest import (
    ChunkEntry,
    CodecStep,
    FileEntry,
    Manifest,
    TensorEntry,
    build_manifest,
    check_file_name,
    pack_preamble,
    parse_manifest,
    parse_preamble,
)
from wstream.format.spec import CodecId

Buffer = bytes | bytearray | memoryview


class Sink(Protocol):
    """Where a writer's bytes go: a temporary local file, or a multipart upload."""

    def pwrite_all(self, data: Buffer, offset: int) -> None: ...
    def truncate(self, size: int) -> None: ...
    def commit(self) -> None: ...
    def discard(self) -> None: ...


def open_sink(target: str | os.PathLike[str]) -> Sink:
    """An :class:`~wstream.container.atomic.AtomicFile` beside a path, or an upload to S3."""
    if isinstance(target, str) and target.startswith("s3://"):
        from wstream.container.upload import UploadFile

        return UploadFile(target)
    return AtomicFile(target)


class WriterState(enum.Enum):
    OPEN = "open"
    CLOSED = "closed"
    ABORTED = "aborted"


class ContainerWriter(Scoped):
    """Append chunks, then close() to publish the file atomically.

    >>> with ContainerWriter("model.wst") as w:             # doctest: +SKIP
    ...     w.add_chunk("llm.head", "llm.head", entries, payload, raw_nbytes=len(payload))
    ...     w.close(config={"model_type": "minicpmv"})
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.target = str(path)
        self.path = Path(path)
        self.state = WriterState.OPEN
        self._chunks: list[ChunkEntry] = []
        self._names: set[str] = set()
        self._files: list[FileEntry] = []  # after every chunk: the streaming order is the chunks
        self._file = open_sink(path)
        self._end = spec.DATA_START  # next free byte; the preamble is written last
        self.nbytes = 0  # the container's size, once closed
        try:
            self._file.pwrite_all(bytes(spec.DATA_START), 0)
        except BaseException:  # e.g. a full disk: no temporary file is left behind
            self._file.discard()
            raise

    def _guard(self, action: str) -> Sink:
        if self.state is not WriterState.OPEN:
            raise E.WStreamError(f"cannot {action}: writer is {self.state.value}")
        return self._file

    def add_chunk(
        self,
        name: str,
        group: str,
        tensors: Sequence[TensorEntry],
        stored: Buffer | Sequence[Buffer],
        *,
        raw_nbytes: int,
        codec: tuple[CodecStep, ...] = (),
        crc32: int | None = None,
    ) -> ChunkEntry:
        """Write one chunk's stored bytes (one buffer, or consecutive parts such as zstd frames)
        at the next aligned offset and record it."""
        file = self._guard("add a chunk")
        if self._files:
            raise E.WStreamError("cannot add a chunk after a file: files follow the last chunk")
        if name in self._names:
            raise E.DuplicateName(f"chunk name {name!r} is used twice")
        offset = spec.align_up(self._end, spec.CHUNK_ALIGNMENT)
        parts = [stored] if isinstance(stored, bytes | bytearray | memoryview) else list(stored)
        nbytes = 0
        summed = 0
        for part in parts:
            file.pwrite_all(part, offset + nbytes)
            if crc32 is None:
                summed = crc.crc32(part, summed)
            nbytes += memoryview(part).nbytes
        crc32 = summed if crc32 is None else crc32
        entry = ChunkEntry(name, group, offset, nbytes, raw_nbytes, crc32, codec, tuple(tensors))
        self._chunks.append(entry)
        self._names.add(name)
        self._end = offset + nbytes
        return entry

    @property
    def chunks(self) -> tuple[ChunkEntry, ...]:
        return tuple(self._chunks)

    def add_file(self, name: str, data: Buffer, *, zstd: bool = False) -> FileEntry:
        """Embed a file's bytes (stored raw, or with ``zstd`` as zstd frames) at the next aligned
        offset after the chunks (SPEC.md section 13). Call it after the last add_chunk."""
        file = self._guard("add a file")
        check_file_name(name, "file name")
        raw_nbytes = memoryview(data).nbytes
        if raw_nbytes > spec.MAX_FILE_NBYTES:
            raise E.LimitExceeded(
                f"file {name!r}: {raw_nbytes} bytes exceed the limit of {spec.MAX_FILE_NBYTES}"
            )
        if len(self._files) >= spec.MAX_FILES:
            raise E.LimitExceeded(f"file {name!r}: a container holds at most {spec.MAX_FILES}")
        if any(f.name.lower() == name.lower() for f in self._files):
            raise E.DuplicateName(f"file name {name!r} is used twice (names ignore case)")
        parts: list[Buffer] = [data]
        codec: tuple[CodecStep, ...] = ()
        if zstd:
            frames, recorded = codecs.encode((CodecStep(CodecId.ZSTD),), data)
            if sum(memoryview(f).nbytes for f in frames) < raw_nbytes:  # else: stored raw
                parts, codec = frames, recorded
        offset = spec.align_up(self._end, spec.CHUNK_ALIGNMENT)
        nbytes, summed = 0, 0
        for part in parts:
            file.pwrite_all(part, offset + nbytes)
            summed = crc.crc32(part, summed)
            nbytes += memoryview(part).nbytes
        entry = FileEntry(name, offset, nbytes, raw_nbytes, summed, codec)
        self._files.append(entry)
        self._end = offset + nbytes
        return entry

    @property
    def files(self) -> tuple[FileEntry, ...]:
        return tuple(self._files)

    def close(
        self,
        *,
        config: Mapping[str, Any] | None = None,
        metadata: Mapping[str, str] | None = None,
        lossy: bool = False,
        folds: tuple[str, ...] = (),
    ) -> Manifest:
        """Write the manifest and preamble, verify them, fsync, and rename into place.
        ``folds``: the folds the chunks' tensors went through (SPEC.md section 14)."""
        file = self._guard("close")
        try:
            manifest = build_manifest(
                tuple(self._chunks),
                config=config,
                metadata=metadata,
                lossy=lossy,
                writer=f"wstream {__version__}",
                files=tuple(self._files),
                folds=folds,
            )
            body = manifest.to_json()
            if len(body) > spec.MAX_MANIFEST_NBYTES:
                raise E.ManifestTooLarge(
                    f"manifest: {len(body)} bytes exceed the limit of {spec.MAX_MANIFEST_NBYTES}"
                )
            m_off = self._end
            file.pwrite_all(body, m_off)
            file.truncate(m_off + len(body))
            preamble = pack_preamble(m_off, len(body), crc.crc32(body))
            file.pwrite_all(preamble, 0)
            # Read our own output back through the reader's parser: a writer bug must never
            # publish a file that readers reject.
            parse_preamble(preamble, m_off + len(body))
            checked = parse_manifest(body, data_end=m_off)
            file.commit()
        except BaseException:
            self.abort()
            raise
        self.nbytes = m_off + len(body)
        self.state = WriterState.CLOSED
        return checked

    def _on_exit(self) -> None:
        # Leaving the block without close() (an error, or a forgotten call) publishes nothing.
        self.abort()

    def abort(self) -> None:
        """Discard the temporary file; the target path is left as it was."""
        if self.state is not WriterState.OPEN:
            return
        self.state = WriterState.ABORTED
        self._file.discard()
