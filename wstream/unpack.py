"""Unpack a .wst container back into one safetensors file, chunk by chunk, in bounded memory.

The safetensors header is computed from the manifest first (tensors sorted as the safetensors
writer sorts them: larger element size first, then name, so each is naturally aligned); then
every chunk is decoded once and each piece is written at its place. A lossless pack unpacks to
tensors byte-identical to the source.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from wstream.container.atomic import AtomicFile
from wstream.container.cache import ChunkCache
from wstream.container.reader import Container
from wstream.errors import InputError, LossyUnpack
from wstream.format import chunk as wchunk


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


def unpack(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    *,
    allow_lossy: bool = False,
    cache: ChunkCache | None = None,
) -> int:
    """Write ``dst`` (safetensors) from ``src`` (.wst: a path or a URL); returns the number of
    tensors. ``cache`` keeps a remote container's verified chunks on local disk.

    >>> unpack("s3://bucket/model.wst", "model.safetensors")            # doctest: +SKIP
    """
    with Container(src, cache=cache) as c:
        if c.manifest.lossy and not allow_lossy:
            raise LossyUnpack(
                f"{src}: this container is lossy (quantized or converted); its values differ "
                "from the source checkpoint. Pass allow_lossy=True (--dequantize) to unpack anyway"
            )
        head, offsets = safetensors_header(c)
        infos = c.manifest.tensors
        with AtomicFile(Path(dst)) as out:
            out.pwrite_all(head, 0)
            total = len(head) + sum(t.nbytes for t in infos.values())
            os.ftruncate(out.fd, total)
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
