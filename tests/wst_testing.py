"""Plain helpers shared by the container tests (imported by conftest.py and test modules).

Kept apart from ``conftest.py`` so that hypothesis tests can call them directly; nothing here is
a fixture. The builders here are deliberately independent of ``wstream.container.writer`` where that
matters: :func:`build_file` assembles a container byte by byte so that tests can make files the
writer would refuse to write.
"""

from __future__ import annotations

import itertools
import json
import struct
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import zstandard
from safetensors.numpy import save_file
from strategies import ContainerSpec

from wstream.container.writer import ContainerWriter
from wstream.format import spec
from wstream.format.manifest import CodecStep, TensorEntry
from wstream.format.spec import CodecId, DType

# --- comparisons ---------------------------------------------------------------------------------


def same_tensor(a: np.ndarray, b: np.ndarray) -> bool:
    """Equal dtype, shape and bytes (value equality gets NaN and -0.0 wrong)."""
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


def assert_same_tensors(got: Mapping[str, np.ndarray], want: Mapping[str, np.ndarray]) -> None:
    assert set(got) == set(want), sorted(set(got) ^ set(want))
    for name, a in want.items():
        b = got[name]
        assert b.dtype == a.dtype, (name, b.dtype, a.dtype)
        assert b.shape == a.shape, (name, b.shape, a.shape)
        assert b.tobytes() == a.tobytes(), name


# --- safetensors checkpoints -------------------------------------------------------------------


def write_checkpoint(
    directory: Path,
    tensors: Mapping[str, np.ndarray],
    *,
    shards: int = 1,
    config: Mapping[str, Any] | None = None,
    metadata: Mapping[str, str] | None = None,
) -> Path:
    """Write ``tensors`` as a Hugging Face style checkpoint; returns what ``pack`` takes as SRC.

    ``shards == 1``: one ``model.safetensors`` file (returned), with ``config.json`` beside it
    when ``config`` is given. ``shards > 1``: ``model-0000k-of-0000n.safetensors`` files split
    round-robin in insertion order, ``model.safetensors.index.json`` and ``config.json``; the
    directory is returned. The ``safetensors`` package itself writes the shards.
    """
    directory.mkdir(parents=True, exist_ok=True)
    if config is not None:
        (directory / "config.json").write_text(json.dumps(config), encoding="utf-8")
    meta = dict(metadata) if metadata else None
    if shards <= 1:
        path = directory / "model.safetensors"
        save_file(dict(tensors), path, metadata=meta)
        return path
    names = list(tensors)
    weight_map: dict[str, str] = {}
    for k in range(shards):
        file = f"model-{k + 1:05d}-of-{shards:05d}.safetensors"
        part = {n: tensors[n] for n in names[k::shards]}
        save_file(part, directory / file, metadata=meta)
        weight_map.update({n: file for n in part})
    index = {
        "metadata": {"total_size": sum(t.nbytes for t in tensors.values())},
        "weight_map": weight_map,
    }
    (directory / "model.safetensors.index.json").write_text(json.dumps(index), encoding="utf-8")
    return directory


# --- containers through the real writer ----------------------------------------------------------


def _align(n: int, a: int) -> int:
    return -(-n // a) * a


def piece_bytes(array: np.ndarray, rows: tuple[int, int] | None) -> bytes:
    return (array if rows is None else array[rows[0] : rows[1]]).tobytes()


def group_bytes(raw: bytes, size: int) -> bytes:
    """Byte grouping: byte j of every ``size``-byte element into plane j; the tail unchanged."""
    a = np.frombuffer(raw, np.uint8)
    n = a.size // size
    return a[: n * size].reshape(n, size).T.tobytes() + a[n * size :].tobytes()


def encode_independently(
    codec: Sequence[CodecStep], raw: bytes, frame_cuts: Sequence[float] = ()
) -> tuple[bytes, tuple[CodecStep, ...]]:
    """Stored bytes and the pipeline to record, made with numpy and zstandard directly (not
    wstream.format.codecs). A zstd step with ``frames`` set is split into frames at ``frame_cuts``
    (fractions of the stream) and records the real (stored, decoded) sizes."""
    stream = raw
    recorded = []
    for step in codec:
        if step.id is CodecId.BYTEGROUP:
            assert step.size is not None
            stream = group_bytes(stream, step.size)
            recorded.append(step)
        else:
            assert step.id is CodecId.ZSTD
            cctx = zstandard.ZstdCompressor(level=3 if step.level is None else step.level)
            if step.frames is None:
                stream = cctx.compress(stream)
                recorded.append(step)
            else:
                bounds = [0, *(int(f * len(stream)) for f in frame_cuts), len(stream)]
                parts = [stream[a:b] for a, b in itertools.pairwise(bounds)]
                frames = [cctx.compress(p) for p in parts]
                stream = b"".join(frames)
                sizes = tuple((len(f), len(p)) for f, p in zip(frames, parts, strict=True))
                recorded.append(CodecStep(step.id, step.level, step.size, sizes))
    return stream, tuple(recorded)


def write_container(path: Path, cs: ContainerSpec) -> None:
    """Write ``cs`` with :class:`ContainerWriter`, laying each chunk out by hand."""
    with ContainerWriter(path) as w:
        for ch in cs.chunks:
            entries: list[TensorEntry] = []
            raw = bytearray()
            for piece, pad in zip(ch.pieces, ch.pads, strict=True):
                array = cs.tensors[piece.name]
                offset = _align(len(raw), spec.TENSOR_ALIGNMENT) + pad * spec.TENSOR_ALIGNMENT
                data = piece_bytes(array, piece.rows)
                raw += bytes(offset - len(raw)) + data
                dtype = DType.from_numpy(array.dtype)
                entries.append(TensorEntry(piece.name, dtype, array.shape, offset, piece.rows))
            stored, codec = encode_independently(ch.codec, bytes(raw), ch.frame_cuts)
            w.add_chunk(ch.name, ch.group, entries, stored, raw_nbytes=len(raw), codec=codec)
        w.close(config=cs.config, metadata=cs.metadata)


# --- containers byte by byte ---------------------------------------------------------------------


def preamble(
    manifest_offset: int,
    manifest_nbytes: int,
    manifest_crc32: int,
    *,
    magic: bytes = spec.MAGIC,
    version: int = spec.VERSION,
    flags: int = 0,
    reserved: bytes = bytes(24),
    preamble_crc32: int | None = None,
) -> bytes:
    """The 64-byte preamble, with any field overridable (the CRC is recomputed unless given)."""
    body = struct.pack(
        "<8sIIQQI24s",
        magic,
        version,
        flags,
        manifest_offset,
        manifest_nbytes,
        manifest_crc32,
        reserved,
    )
    crc = zlib.crc32(body) if preamble_crc32 is None else preamble_crc32
    return body + struct.pack("<I", crc)


def manifest_bytes(doc: Any) -> bytes:
    return json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def build_file(
    payloads: Sequence[tuple[int, bytes]],
    manifest: Any,
    *,
    manifest_offset: int | None = None,
    manifest_crc32: int | None = None,
    **preamble_fields: Any,
) -> bytes:
    """Preamble + zero padding + payloads at the given absolute offsets + manifest.

    ``manifest`` is a JSON document or raw bytes; by default it starts right after the last
    payload (never before byte 4096) and its CRC is correct.
    """
    body = manifest if isinstance(manifest, bytes) else manifest_bytes(manifest)
    end = max([spec.DATA_START, *(off + len(p) for off, p in payloads)])
    m_off = end if manifest_offset is None else manifest_offset
    out = bytearray(max(m_off, end))
    for off, p in payloads:
        out[off : off + len(p)] = p
    out[m_off:] = body
    crc = zlib.crc32(body) if manifest_crc32 is None else manifest_crc32
    out[: spec.PREAMBLE_NBYTES] = preamble(m_off, len(body), crc, **preamble_fields)
    return bytes(out)


def chunk_doc(
    name: str,
    offset: int,
    stored: bytes,
    tensors: Sequence[Mapping[str, Any]],
    *,
    raw_nbytes: int | None = None,
    codec: Sequence[Mapping[str, Any]] = (),
    group: str | None = None,
    crc32: int | None = None,
) -> dict[str, Any]:
    """One manifest chunk entry for ``stored`` at ``offset`` (CRC computed unless given)."""
    return {
        "name": name,
        "group": name if group is None else group,
        "offset": offset,
        "nbytes": len(stored),
        "raw_nbytes": len(stored) if raw_nbytes is None else raw_nbytes,
        "crc32": zlib.crc32(stored) if crc32 is None else crc32,
        "codec": list(codec),
        "tensors": list(tensors),
    }


def manifest_doc(chunks: Sequence[Mapping[str, Any]], **fields: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "writer": "tests",
        "lossy": False,
        "config": None,
        "metadata": {},
        "chunks": list(chunks),
    }
    doc.update(fields)
    return doc
