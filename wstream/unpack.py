"""Unpack a .wst container back into one safetensors file, chunk by chunk, in bounded memory.

The safetensors header is computed from the manifest first (tensors sorted as the safetensors
writer sorts them: larger element size first, then name, so each is naturally aligned); then
every chunk is decoded once and each piece is written at its place. A lossless pack unpacks to
tensors byte-identical to the source. The embedded model files (tokenizer.json, ...) are written
back beside the safetensors file; an existing file with other content is replaced only when
asked, and every conflict is found before anything is written.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import NamedTuple

import numpy as np

from wstream.container.atomic import AtomicFile
from wstream.container.cache import ChunkCache
from wstream.container.paths import check_output
from wstream.container.reader import Container
from wstream.errors import FoldedUnpack, InputError, LossyUnpack, OutputExists
from wstream.format import chunk as wchunk
from wstream.format.manifest import FileEntry


def safetensors_header(container: Container) -> tuple[bytes, dict[str, int]]:
    """The header bytes (8-byte length + padded JSON) and each tensor's absolute file offset."""
    infos = container.manifest.tensors
    if "__metadata__" in infos:  # a valid .wst name, but safetensors reserves it for metadata
        raise InputError("tensor name '__metadata__' is reserved in safetensors; cannot unpack")
    order = sorted(infos.values(), key=lambda t: (-t.dtype.itemsize, t.name))
    header: dict[str, object] = {}
    if container.manifest.metadata:
        header["__metadata__"] = dict(container.manifest.metadata)
    begin = 0
    relative: dict[str, int] = {}
    for t in order:
        header[t.name] = {
            "dtype": str(t.dtype),
            "shape": list(t.shape),
            "data_offsets": [begin, begin + t.nbytes],
        }
        relative[t.name] = begin
        begin += t.nbytes
    text = json.dumps(header, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 8)  # the data area starts 8-byte aligned, as safetensors writes
    head = len(text).to_bytes(8, "little") + text
    return head, {name: len(head) + off for name, off in relative.items()}


class FileAction(NamedTuple):
    """What unpack does with one embedded file: ``write`` (new), ``replace`` (an existing
    different file, with force) or ``same`` (an identical file is there: left alone)."""

    entry: FileEntry
    path: Path
    action: str


class UnpackReport(NamedTuple):
    tensors: int
    files: tuple[FileAction, ...]
    folds: tuple[str, ...] = ()  # the container's folds: its fused tensors were written as held


def plan_files(c: Container, dst: Path, *, force: bool = False) -> tuple[FileAction, ...]:
    """Where each embedded file goes (beside ``dst``) and what happens there; raises
    :class:`~wstream.errors.OutputExists` for a conflict, before anything is written."""
    out = []
    for entry in c.files:
        path = dst.parent / entry.name
        if path.absolute() == dst.absolute():
            raise OutputExists(f"output: {dst} has the name of the embedded file {entry.name!r}")
        try:
            st = os.stat(path)  # follows a symlink: what a reader of the path would get
        except FileNotFoundError:
            st = None
        if st is None and not os.path.lexists(path):
            out.append(FileAction(entry, path, "write"))
            continue
        if st is None or not stat.S_ISREG(st.st_mode):
            # A dangling link, a directory, a device or a FIFO (whose read would block): never
            # replaced, even with force.
            raise OutputExists(f"{path}: exists and is not a regular file; not replaced")
        if st.st_size == entry.raw_nbytes and _same_bytes(path, c.read_file(entry.name)):
            out.append(FileAction(entry, path, "same"))
        elif force:
            out.append(FileAction(entry, path, "replace"))
        else:
            raise OutputExists(
                f"{path}: exists with other content than the embedded {entry.name!r}; pass "
                "--force (force=True) to replace it, or --no-files to skip the files"
            )
    return tuple(out)


def _same_bytes(path: Path, data: bytes) -> bool:
    with open(path, "rb") as f:
        return f.read(len(data) + 1) == data


def write_files(c: Container, actions: tuple[FileAction, ...]) -> None:
    """Write the planned files, each atomically (a temporary file renamed into place)."""
    for a in actions:
        if a.action == "same":
            continue
        with AtomicFile(a.path) as out:
            out.pwrite_all(c.read_file(a.entry.name), 0)
            out.commit()


def unpack(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    *,
    allow_lossy: bool = False,
    allow_folded: bool = False,
    files: bool = True,
    force: bool = False,
    cache: ChunkCache | None = None,
) -> int:
    """Write ``dst`` (safetensors) from ``src`` (.wst: a path or a URL), and with ``files`` the
    embedded model files beside it; returns the number of tensors. ``cache`` keeps a remote
    container's verified chunks on local disk.

    >>> unpack("s3://bucket/model.wst", "model.safetensors")            # doctest: +SKIP
    """
    return unpack_report(
        src,
        dst,
        allow_lossy=allow_lossy,
        allow_folded=allow_folded,
        files=files,
        force=force,
        cache=cache,
    ).tensors


def unpack_report(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    *,
    allow_lossy: bool = False,
    allow_folded: bool = False,
    files: bool = True,
    force: bool = False,
    cache: ChunkCache | None = None,
) -> UnpackReport:
    """:func:`unpack`, telling what was done with each embedded file.

    A folded container (``pack --fold``) no longer holds the tensors its folds replaced: it is
    refused (:class:`~wstream.errors.FoldedUnpack`) unless ``allow_folded``, which writes the
    tensors it holds (the fused ones under their own names; ``pack`` reads such a checkpoint
    back) and reports the folds."""
    with Container(src, cache=cache) as c:
        dst = check_output(dst, [c.name])
        if c.manifest.lossy and not allow_lossy:
            raise LossyUnpack(
                f"{src}: this container is lossy (quantized or converted); its values differ "
                "from the source checkpoint. Pass allow_lossy=True (--dequantize) to unpack anyway"
            )
        folds = c.manifest.folds
        if folds and not allow_folded:
            raise FoldedUnpack(
                f"{src}: this container is folded ({', '.join(folds)}): it holds fused tensors "
                "in place of the source checkpoint's, which are gone. Pass allow_folded=True "
                "(--folded) to write the tensors it holds"
            )
        actions = plan_files(c, Path(dst), force=force) if files else ()
        n = _write_safetensors(c, Path(dst))
        write_files(c, actions)
        return UnpackReport(n, actions, folds)


def _write_safetensors(c: Container, dst: Path) -> int:
    """Write the tensors as one safetensors file at ``dst``; the number of tensors."""
    head, offsets = safetensors_header(c)
    infos = c.manifest.tensors
    with AtomicFile(dst) as out:
        out.pwrite_all(head, 0)
        total = len(head) + sum(t.nbytes for t in infos.values())
        out.truncate(total)
        for chunk in c.manifest.chunks:
            data = c.decode(chunk)
            for e in chunk.tensors:
                info = infos[e.name]
                row_nbytes = info.nbytes // info.shape[0] if info.shape and info.shape[0] else 0
                at = offsets[e.name] + (e.rows[0] * row_nbytes if e.rows else 0)
                if e.quant is not None:  # dequantized, rounded to nearest even
                    piece = np.empty(e.piece_shape, e.dtype.numpy)
                    wchunk.convert_piece(e, data, wchunk.piece_views_of(e, data), piece)
                else:
                    piece = np.ascontiguousarray(data[e.offset : e.offset + e.nbytes])
                out.pwrite_all(piece.reshape(-1).view(np.uint8).data, at)
            del data
            c.drop_pages(chunk)
        out.commit()
    return len(infos)
