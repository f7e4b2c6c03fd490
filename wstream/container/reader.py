"""Open a .wst container: preamble and manifest parsed once, chunk bytes through a memory map.

Opening reads only the 64-byte preamble and the manifest (``pread``), so ``info`` on a model of
any size costs the same. Chunk payloads are reached through one read-only ``mmap`` of the file,
created on first use: a raw chunk's tensors are numpy views of the page cache (zero copy), and
compressed chunks decode from the map straight into a caller's buffer.
"""

from __future__ import annotations

import mmap
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np

from wstream import errors as E
from wstream.format import codecs
from wstream.format.crc import crc32
from wstream.format.files import decode_file, parse_json
from wstream.format.manifest import ChunkEntry, FileEntry, TensorEntry, read_manifest
from wstream.format.quant import dequantize_int8


def piece_views(chunk: ChunkEntry, buf: np.ndarray | memoryview) -> list[np.ndarray]:
    """numpy views of each tensor piece's stored values in a decoded chunk, in manifest order
    (the int8 values of a quantized piece: see :func:`dequantize_into`)."""
    raw = np.frombuffer(buf, dtype=np.uint8) if not isinstance(buf, np.ndarray) else buf
    out = []
    for t in chunk.tensors:
        dtype = np.dtype(np.int8) if t.quant is not None else t.dtype.numpy
        view = raw[t.offset : t.offset + t.nbytes].view(dtype)
        out.append(view.reshape(t.piece_shape))
    return out


def dequantize_into(entry: TensorEntry, raw: np.ndarray, out: np.ndarray) -> None:
    """The float32 values [piece_shape] of a quantized piece of decoded chunk ``raw``."""
    assert entry.quant is not None
    q = raw[entry.offset : entry.offset + entry.nbytes].view(np.int8).reshape(entry.piece_shape)
    at = entry.quant.scales
    scales = raw[at : at + entry.scales_nbytes].view(np.float32).reshape(entry.scales_shape)
    dequantize_int8(q, scales, entry.quant.group, out)


def _place(out: np.ndarray, entry: TensorEntry, raw: np.ndarray) -> None:
    """Copy one decoded piece into its rows of the whole tensor ``out``."""
    if entry.quant is not None:
        values = np.empty(entry.piece_shape, np.float32)
        dequantize_into(entry, raw, values)
        start = entry.rows[0] if entry.rows else 0
        out[start : start + values.shape[0]] = values  # rounds to the declared dtype (RNE)
        return
    flat = out.reshape(-1).view(np.uint8)
    row_nbytes = flat.nbytes // out.shape[0] if out.ndim and out.shape[0] else 0
    start = entry.rows[0] * row_nbytes if entry.rows else 0
    flat[start : start + entry.nbytes] = raw[entry.offset : entry.offset + entry.nbytes]


class Container:
    """A validated, open .wst file.

    >>> with Container("model.wst") as c:                   # doctest: +SKIP
    ...     w = c.tensor("llm.lm_head.weight")
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._fd = os.open(self.path, os.O_RDONLY)
        self._mmap: mmap.mmap | None = None
        try:
            self.file_size = os.fstat(self._fd).st_size
            self.preamble, self.manifest = read_manifest(self._fd, self.file_size)
        except BaseException:
            os.close(self._fd)
            raise

    # --- raw access ---------------------------------------------------------------------------

    @property
    def fd(self) -> int:
        return self._fd

    def mmap(self) -> mmap.mmap:
        """The read-only map of the whole file (created once, on first use)."""
        if self._mmap is None:
            self._mmap = mmap.mmap(self._fd, 0, access=mmap.ACCESS_READ)
        return self._mmap

    def chunk(self, key: int | str) -> ChunkEntry:
        index = self.manifest.chunk_index[key] if isinstance(key, str) else key
        return self.manifest.chunks[index]

    def stored(self, chunk: ChunkEntry) -> memoryview:
        """The chunk's stored bytes, zero-copy from the map."""
        return memoryview(self.mmap())[chunk.offset : chunk.offset + chunk.nbytes]

    def drop_pages(self, chunk: ChunkEntry) -> None:
        """Unmap a chunk's pages from this process (they stay in the page cache).

        Keeps mapped file pages from piling up in RSS once a chunk has been used.
        """
        if self._mmap is None or chunk.nbytes == 0:
            return
        start = chunk.offset - chunk.offset % mmap.PAGESIZE  # pages may be larger than 4 KiB
        self._mmap.madvise(mmap.MADV_DONTNEED, start, chunk.offset + chunk.nbytes - start)

    def check_crc(self, chunk: ChunkEntry, stored: memoryview | None = None) -> None:
        data = self.stored(chunk) if stored is None else stored
        crc = crc32(data)
        if crc != chunk.crc32:
            raise E.ChunkChecksumMismatch(
                f"chunk {chunk.name!r}: crc32 stored {chunk.crc32:#010x}, computed {crc:#010x}"
            )

    def decode_into(self, chunk: ChunkEntry, out: memoryview, *, verify: bool = True) -> None:
        """Decode a chunk into ``out`` (exactly raw_nbytes long), checking its CRC first."""
        src = self.stored(chunk)
        try:
            if verify:
                self.check_crc(chunk, src)
            codecs.decode_into(chunk.codec, src, out)
        except E.ChunkChecksumMismatch:
            raise
        except E.FormatError as exc:
            raise type(exc)(f"chunk {chunk.name!r}: {exc}") from None
        finally:
            src.release()

    def decode(self, chunk: ChunkEntry, *, verify: bool = True) -> np.ndarray:
        """A chunk's decoded bytes as a new uint8 array (for raw chunks: a read-only view)."""
        if chunk.is_raw:
            if verify:
                self.check_crc(chunk)
            return np.frombuffer(self.mmap(), np.uint8, chunk.nbytes, chunk.offset)
        out = np.empty(chunk.raw_nbytes, np.uint8)
        self.decode_into(chunk, out.data, verify=verify)
        return out

    # --- tensors ------------------------------------------------------------------------------

    def keys(self) -> list[str]:
        """Tensor names in file order."""
        return list(self.manifest.tensors)

    def tensor(self, name: str, *, verify: bool = True) -> np.ndarray:
        """One whole tensor, row blocks reassembled, as a new array."""
        try:
            info = self.manifest.tensors[name]
        except KeyError:
            raise KeyError(f"no tensor named {name!r} in {self.path}") from None
        out = np.empty(info.shape, info.dtype.numpy)
        for ci, ti in info.parts:
            chunk = self.manifest.chunks[ci]
            _place(out, chunk.tensors[ti], self.decode(chunk, verify=verify))
        return out

    def tensors(self, *, verify: bool = True) -> Iterator[tuple[str, np.ndarray]]:
        """(name, array) for every tensor as it completes, decoding each chunk once."""
        infos = self.manifest.tensors
        pending: dict[str, tuple[np.ndarray, int]] = {}  # name -> (array, parts still missing)
        for chunk in self.manifest.chunks:
            data = self.decode(chunk, verify=verify)
            for entry in chunk.tensors:
                info = infos[entry.name]
                out, missing = pending.pop(entry.name, (None, len(info.parts)))
                if out is None:
                    out = np.empty(info.shape, info.dtype.numpy)
                _place(out, entry, data)
                if missing > 1:
                    pending[entry.name] = (out, missing - 1)
                else:
                    yield entry.name, out

    def verify(self) -> None:
        """Check every chunk's CRC and decode it fully, then every embedded file's; raise the
        first error, naming the chunk or file."""
        largest = max((c.raw_nbytes for c in self.manifest.chunks), default=0)
        scratch = np.empty(largest, np.uint8)
        for chunk in self.manifest.chunks:
            if chunk.is_raw:
                self.check_crc(chunk)
            else:
                self.decode_into(chunk, scratch.data[: chunk.raw_nbytes])
        for entry in self.manifest.files:
            self._read_file(entry, verify=True)

    # --- embedded files (SPEC.md section 13) ----------------------------------------------------

    @property
    def files(self) -> tuple[FileEntry, ...]:
        """The embedded files (name, nbytes, raw_nbytes, ...), in manifest order."""
        return self.manifest.files

    def read_file(self, name: str, *, verify: bool = True) -> bytes:
        """An embedded file's bytes, CRC-checked and decoded within its declared size.

        Raises :class:`~wstream.errors.MissingModelFile` when the container has no such file."""
        entry = self.manifest.file(name)
        if entry is None:
            held = ", ".join(f.name for f in self.manifest.files) or "none"
            raise E.MissingModelFile(
                f"{self.path}: has no embedded {name!r} (it holds: {held}); pack the checkpoint "
                f"again with {name} beside its weights"
            )
        return self._read_file(entry, verify=verify)

    def read_json(self, name: str) -> Any:
        """An embedded JSON file (tokenizer.json, generation_config.json, ...), parsed strictly:
        :class:`~wstream.errors.MissingModelFile` when absent, :class:`~wstream.errors.BadModelFile`
        when it is not strict JSON."""
        return parse_json(self.read_file(name), f"{self.path}: {name}", E.BadModelFile)

    def _read_file(self, entry: FileEntry, *, verify: bool) -> bytes:
        stored = memoryview(self.mmap())[entry.offset : entry.offset + entry.nbytes]
        try:
            return decode_file(entry, stored, verify=verify)
        finally:
            stored.release()

    def stream(
        self,
        order: Sequence[str] | None = None,
        *,
        prefetch: int = 2,
        budget: int | None = None,
        workers: int = 2,
        verify: bool = True,
    ) -> Iterator[Any]:
        """Chunks in ``order`` (default: file order), ``prefetch`` decoded ahead on worker
        threads, under ``budget`` bytes. Each chunk is a context manager; leave it (or call
        ``release()``) when done with its arrays.

        >>> for chunk in c.stream(prefetch=2, budget=64 << 20):   # doctest: +SKIP
        ...     with chunk:
        ...         use(chunk.tensors)
        """
        from wstream.stream.loader import StreamingLoader  # the loader builds on this module

        names = [ch.name for ch in self.manifest.chunks] if order is None else list(order)
        loader = StreamingLoader(
            self, budget=budget, prefetch=prefetch, workers=workers, widen=False, verify=verify
        )
        try:
            yield from loader.stream(names)
        finally:
            loader.close()

    # --- lifetime -----------------------------------------------------------------------------

    def close(self) -> None:
        if self._mmap is not None:
            try:
                self._mmap.close()
            except BufferError:
                pass  # arrays still view the map; it is unmapped when the last one goes
            self._mmap = None
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> Container:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def open_container(path: str | os.PathLike[str]) -> Container:
    """Open and validate a .wst file (reads the preamble and manifest only)."""
    return Container(path)
