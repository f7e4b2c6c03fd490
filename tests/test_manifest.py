"""Hostile containers: every malformed preamble, manifest or chunk raises its named FormatError.

Files are built byte by byte (:func:`wst_testing.build_file`), so each case breaks exactly one
rule, with every checksum that is not under test correct. On top of the hand-built cases,
hypothesis mutates valid files (truncation, appended bytes, byte flips, manifest edits with the
checksums fixed up) and checks the one promise that matters: the reader raises a FormatError or
returns exactly the right tensors; nothing else escapes, nothing hangs, nothing is read from
outside the regions the file declares.
"""

from __future__ import annotations

import copy
import itertools
import json
import os
import tracemalloc
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import strategies as S
import zstandard
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from wst_testing import (
    build_file,
    chunk_doc,
    group_bytes,
    manifest_bytes,
    manifest_doc,
    preamble,
    same_tensor,
    write_container,
)

from wstream import errors as E
from wstream.container.reader import Container
from wstream.format import spec
from wstream.format.manifest import parse_manifest, parse_preamble

# --- a small valid file, built by hand -----------------------------------------------------------

A = np.arange(12, dtype="<f4").reshape(3, 4)  # 48 bytes
B = np.arange(5, dtype="<i2")  # 10 bytes, at offset 64
C = (
    np.array([0x3F80, 0x7FC1, 0x8000, 0x0001, 0xFF80, 0x4049], np.uint16)
    .view(spec.DType.BF16.numpy)
    .reshape(2, 3)
)
D = np.arange(6, dtype="<u8").reshape(6, 1)  # split into row blocks across chunks 1 and 2

RAW0 = A.tobytes() + bytes(16) + B.tobytes()  # 74 bytes
RAW1 = C.tobytes() + bytes(52) + D[:2].tobytes()  # 80 bytes
STORED1 = zstandard.ZstdCompressor(level=3).compress(RAW1)
RAW2 = D[2:].tobytes()
EXPECTED = {"a": A, "b": B, "c": C, "d": D}


def tdoc(
    name: str, dtype: str, shape: list[int], offset: int, rows: list[int] | None = None
) -> dict[str, Any]:
    out: dict[str, Any] = {"name": name, "dtype": dtype, "shape": shape, "offset": offset}
    if rows is not None:
        out["rows"] = rows
    return out


def base() -> tuple[list[tuple[int, bytes]], dict[str, Any]]:
    """Payloads at their offsets and the manifest document of the valid base file."""
    payloads = [(4096, RAW0), (8192, STORED1), (12288, RAW2)]
    chunks = [
        chunk_doc(
            "c0", 4096, RAW0, [tdoc("a", "F32", [3, 4], 0), tdoc("b", "I16", [5], 64)], group="g0"
        ),
        chunk_doc(
            "c1",
            8192,
            STORED1,
            [tdoc("c", "BF16", [2, 3], 0), tdoc("d", "U64", [6, 1], 64, [0, 2])],
            raw_nbytes=len(RAW1),
            codec=[{"id": "zstd", "level": 3}],
            group="g1",
        ),
        chunk_doc("c2", 12288, RAW2, [tdoc("d", "U64", [6, 1], 0, [2, 6])], group="g1"),
    ]
    return payloads, manifest_doc(chunks, config={"model_type": "x"}, metadata={"k": "v"})


def base_file() -> bytes:
    payloads, doc = base()
    return build_file(payloads, doc)


def write(tmp_path: Path, data: bytes, name: str = "x.wst") -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def read_everything(path: Path) -> dict[str, np.ndarray]:
    """Open, verify, and read every tensor three ways; all three must agree."""
    with Container(path) as c:
        c.verify()
        one_pass = dict(c.tensors())
        each = {name: c.tensor(name) for name in c.keys()}
        for chunk in c.manifest.chunks:
            c.decode(chunk)
    assert set(one_pass) == set(each)
    for name in each:
        assert same_tensor(one_pass[name], each[name])
    return each


def test_the_building_blocks_of_the_cases_are_valid(tmp_path: Path) -> None:
    # The quantized variant is valid as built: each quant case breaks exactly one thing.
    with Container(write(tmp_path, edit(_quantized())(), "q.wst")) as c:
        c.verify()
        assert c.manifest.lossy and c.manifest.chunks[0].tensors[0].quant is not None
        assert c.tensor("a").shape == (2, 6) and c.tensor("a").dtype == np.float32
    # So is the two-frame chunk.
    with Container(write(tmp_path, _two_frames()(), "f.wst")) as c:
        c.verify()
        assert same_tensor(c.tensor("c"), C) and same_tensor(c.tensor("d"), D)


def test_config_nested_to_the_depth_limit_is_valid(tmp_path: Path) -> None:
    # top-level object (depth 1) > config (2) > "k" (3) > 61 more lists: the innermost at 64
    deep = {"k": json.loads("[" * 62 + "]" * 62), "v": [[1]]}
    with Container(write(tmp_path, edit(setp("config", deep))())) as c:
        assert c.manifest.config == deep


def test_base_file_is_valid(tmp_path: Path) -> None:
    got = read_everything(write(tmp_path, base_file()))
    assert set(got) == set(EXPECTED)
    for name, want in EXPECTED.items():
        assert same_tensor(got[name], want), name


# --- hand-built hostile files --------------------------------------------------------------------
# Each case: a function returning the file's bytes. "open" cases fail in Container();
# "read" cases open fine (the metadata is valid) and fail when the chunk is read.


def edit(fn: Callable[[dict[str, Any]], Any]) -> Callable[[], bytes]:
    """A case: apply ``fn`` to the base manifest document (CRCs stay correct)."""

    def make() -> bytes:
        payloads, doc = base()
        fn(doc)
        return build_file(payloads, doc)

    return make


def text_edit(old: bytes, new: bytes) -> Callable[[], bytes]:
    """A case: replace bytes of the base manifest's JSON text (CRCs stay correct)."""

    def make() -> bytes:
        payloads, doc = base()
        body = manifest_bytes(doc)
        assert old in body, old
        return build_file(payloads, body.replace(old, new, 1))

    return make


def pre(**fields: Any) -> Callable[[], bytes]:
    """A case: the base file with preamble fields overridden (preamble CRC recomputed)."""

    def make() -> bytes:
        payloads, doc = base()
        data = bytearray(build_file(payloads, doc))
        m_off, m_len, m_crc = (
            int.from_bytes(data[a:b], "little") for a, b in ((16, 24), (24, 32), (32, 36))
        )
        args = {"manifest_offset": m_off, "manifest_nbytes": m_len, "manifest_crc32": m_crc}
        args.update({k: v for k, v in fields.items() if k in args})
        rest = {k: v for k, v in fields.items() if k not in args}
        data[:64] = preamble(
            args["manifest_offset"], args["manifest_nbytes"], args["manifest_crc32"], **rest
        )
        return bytes(data)

    return make


def setp(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    """Set doc[path] where path is like 'chunks.0.tensors.1.offset'."""
    keys = [int(k) if k.isdigit() else k for k in path.split(".")]

    def fn(doc: dict[str, Any]) -> None:
        node = doc
        for k in keys[:-1]:
            node = node[k]
        node[keys[-1]] = value

    return fn


def delp(path: str) -> Callable[[dict[str, Any]], None]:
    keys = [int(k) if k.isdigit() else k for k in path.split(".")]

    def fn(doc: dict[str, Any]) -> None:
        node = doc
        for k in keys[:-1]:
            node = node[k]
        del node[keys[-1]]

    return fn


def both(*fns: Callable[[dict[str, Any]], Any]) -> Callable[[dict[str, Any]], None]:
    def fn(doc: dict[str, Any]) -> None:
        for f in fns:
            f(doc)

    return fn


def _quantized(drop: str | None = None, **changes: Any) -> Callable[[dict[str, Any]], None]:
    """Chunk c0 holds only tensor "a", now declared F32 [2, 6] stored as int8: 12 value bytes
    at 0 and one float32 scale per row (group 8) at 64, inside the chunk's 74 bytes. Valid as
    is (with lossy: true); ``changes`` (quant or tensor fields) and ``drop`` break it."""

    def fn(doc: dict[str, Any]) -> None:
        doc["lossy"] = True
        t = tdoc("a", "F32", [2, 6], 0)
        quant = {"scheme": "int8", "group": 8, "scales": 64}
        for k, v in changes.items():
            (quant if k in quant else t)[k] = v
        if drop:
            del quant[drop]
        t["quant"] = quant
        doc["chunks"][0]["tensors"] = [t]

    return fn


def _raw_mismatch(doc: dict[str, Any]) -> None:
    doc["chunks"][0]["raw_nbytes"] = 80


def _swap_chunks(doc: dict[str, Any]) -> None:
    doc["chunks"][1], doc["chunks"][2] = doc["chunks"][2], doc["chunks"][1]


def _overlap_chunks(doc: dict[str, Any]) -> None:
    # chunk 0 claims 4100 bytes, running into chunk 1 at 8192 ... but it must still be in bounds
    # and match its CRC; make chunk 1 start inside chunk 0 instead.
    doc["chunks"][0]["nbytes"] = doc["chunks"][0]["raw_nbytes"] = 4096 + 64


def _truncated(n: int | Callable[[int], int]) -> Callable[[], bytes]:
    def make() -> bytes:
        data = base_file()
        return data[: n(len(data)) if callable(n) else n]

    return make


def _manifest_of(body: bytes) -> Callable[[], bytes]:
    def make() -> bytes:
        payloads, _ = base()
        return build_file(payloads, body)

    return make


def _chunk1_parts(stored: bytes, **fields: Any) -> tuple[list[tuple[int, bytes]], dict[str, Any]]:
    payloads, doc = base()
    payloads[1] = (8192, stored)
    ch = doc["chunks"][1]
    ch["nbytes"] = len(stored)
    ch["crc32"] = zlib.crc32(stored)
    ch.update(fields)
    return payloads, doc


def _with_chunk1(stored: bytes, **fields: Any) -> Callable[[], bytes]:
    """Replace chunk 1's stored bytes (CRC made correct, so the codec is what fails)."""

    def make() -> bytes:
        return build_file(*_chunk1_parts(stored, **fields))

    return make


def _uint4_zero_point(zero: int) -> Callable[[], bytes]:
    """Chunk 1 (zstd) gains a uint4 F32 [2, 8] piece "q" (group 8, SPEC.md 5.2) at 128: packed
    values, scales at 192, zero points at 256, the first of them ``zero``; lossy, CRC correct."""

    def make() -> bytes:
        payloads, doc = base()
        values = bytes([0x40, 0x51, 0x62, 0x73]) * 2  # split nibbles: q = 0..7 a row
        scales = np.array([0.5, 0.25], "<f4").tobytes()
        raw = RAW1 + bytes(48) + values + bytes(56) + scales + bytes(56) + bytes([zero, 3])
        stored = zstandard.ZstdCompressor(level=3).compress(raw)
        payloads[1] = (8192, stored)
        ch = doc["chunks"][1]
        piece = tdoc("q", "F32", [2, 8], 128)
        piece["quant"] = {"scheme": "uint4", "group": 8, "scales": 192}
        ch["tensors"].append(piece)
        ch.update(nbytes=len(stored), raw_nbytes=len(raw), crc32=zlib.crc32(stored))
        doc["lossy"] = True
        return build_file(payloads, doc)

    return make


def test_the_uint4_case_is_valid_with_zero_points_in_range(tmp_path: Path) -> None:
    """The zero-point case below differs from a valid file by that one byte only."""
    with Container(write(tmp_path, _uint4_zero_point(15)())) as c:
        c.verify()
        q = np.tile(np.arange(8, dtype=np.float32), (2, 1))
        want = (q - np.array([[15], [3]], np.float32)) * np.array([[0.5], [0.25]], np.float32)
        assert np.array_equal(c.tensor("q"), want)


def _flip_payload(index: int, at: int) -> Callable[[], bytes]:
    def make() -> bytes:
        payloads, doc = base()
        off, data = payloads[index]
        data = bytearray(data)
        data[at] ^= 0x01
        payloads[index] = (off, bytes(data))
        return build_file(payloads, doc)  # the manifest keeps the old, now wrong, CRC

    return make


def _reserved_block() -> bytes:
    frame = bytearray(STORED1)
    header = zstandard.frame_header_size(STORED1)
    frame[header] |= 0b110  # block type 3: reserved
    return bytes(frame)


def _two_frame_parts(
    lie: bool = False, garbage: bool = False
) -> tuple[list[tuple[int, bytes]], dict[str, Any]]:
    """Chunk c1 as byte-grouped (size 2) then two zstd frames [0, 40) and [40, 80) of the
    grouped stream, recorded in ``frames``; ``lie``: the manifest puts the split at 41;
    ``garbage``: frame 2 is junk."""
    stream = group_bytes(RAW1, 2)
    f1 = zstandard.ZstdCompressor().compress(stream[:40])
    f2 = (
        b"\x28\xb5\x2f\xfd" + bytes(12)
        if garbage
        else zstandard.ZstdCompressor().compress(stream[40:])
    )
    split = 41 if lie else 40
    frames = [[len(f1), split], [len(f2), len(RAW1) - split]]
    codec = [{"id": "bytegroup", "size": 2}, {"id": "zstd", "level": 3, "frames": frames}]
    return _chunk1_parts(f1 + f2, codec=codec)


def _two_frames(lie: bool = False, garbage: bool = False) -> Callable[[], bytes]:
    def make() -> bytes:
        return build_file(*_two_frame_parts(lie, garbage))

    return make


def _quantized_parts() -> tuple[list[tuple[int, bytes]], dict[str, Any]]:
    payloads, doc = base()
    _quantized()(doc)
    return payloads, doc


# Valid files whose manifests the edit fuzzer starts from: plain, with frames and byte
# grouping, with an int8 tensor.
FUZZ_BASES = {"base": base, "two-frames": _two_frame_parts, "quantized": _quantized_parts}


_ZSTD_NO_SIZE = zstandard.ZstdCompressor(write_content_size=False).compress(RAW1)
_BOMB = zstandard.ZstdCompressor(write_content_size=False).compress(bytes(10_000_000))

OPEN_CASES: dict[str, tuple[Callable[[], bytes], type[E.FormatError]]] = {
    # truncation at every region
    "empty-file": (_truncated(0), E.TruncatedFile),
    "inside-magic": (_truncated(5), E.TruncatedFile),
    "inside-preamble": (_truncated(63), E.TruncatedFile),
    "inside-padding": (_truncated(100), E.TruncatedFile),
    "inside-chunk-0": (_truncated(4096 + 10), E.TruncatedFile),
    "between-chunks": (_truncated(6000), E.TruncatedFile),
    "inside-chunk-1": (_truncated(8192 + 5), E.TruncatedFile),
    "at-manifest-start": (_truncated(12288 + len(RAW2)), E.TruncatedFile),
    "inside-manifest": (_truncated(lambda n: n - 50), E.TruncatedFile),
    "last-byte-missing": (_truncated(lambda n: n - 1), E.TruncatedFile),
    "manifest-offset-huge": (pre(manifest_offset=2**64 - 1), E.TruncatedFile),
    "manifest-size-huge-but-allowed": (
        pre(manifest_nbytes=spec.MAX_MANIFEST_NBYTES),
        E.TruncatedFile,
    ),
    "trailing-bytes": (lambda: base_file() + b"\0", E.TrailingBytes),
    "trailing-manifest-copy": (lambda: base_file() + manifest_bytes(base()[1]), E.TrailingBytes),
    "manifest-shorter-than-declared-end": (pre(manifest_nbytes=10), E.TrailingBytes),
    # preamble
    "bad-magic-byte-0": (pre(magic=b"\x88WST\r\n\x1a\n"), E.BadMagic),
    "bad-magic-text-mode": (pre(magic=b"\x89WST\n\x1a\n\0"), E.BadMagic),
    "safetensors-file": (lambda: (8).to_bytes(8, "little") + b"{}      " + bytes(100), E.BadMagic),
    "zeros": (lambda: bytes(8192), E.BadMagic),
    "version-0": (pre(version=0), E.UnsupportedVersion),
    "version-2": (pre(version=2), E.UnsupportedVersion),
    "version-max": (pre(version=0xFFFFFFFF), E.UnsupportedVersion),
    "preamble-crc": (pre(preamble_crc32=0xDEADBEEF), E.PreambleChecksumMismatch),
    "flags-bit-0": (pre(flags=1), E.ReservedNotZero),
    "flags-bit-31": (pre(flags=1 << 31), E.ReservedNotZero),
    "reserved-first": (pre(reserved=b"\1" + bytes(23)), E.ReservedNotZero),
    "reserved-last": (pre(reserved=bytes(23) + b"\x80"), E.ReservedNotZero),
    "manifest-200MB": (pre(manifest_nbytes=200 * 1000 * 1000), E.ManifestTooLarge),
    "manifest-limit-plus-1": (
        pre(manifest_nbytes=spec.MAX_MANIFEST_NBYTES + 1),
        E.ManifestTooLarge,
    ),
    "manifest-size-u64-max": (pre(manifest_nbytes=2**64 - 1), E.ManifestTooLarge),
    "manifest-offset-0": (pre(manifest_offset=0), E.OutOfBounds),
    "manifest-offset-in-preamble-area": (pre(manifest_offset=64), E.OutOfBounds),
    "manifest-crc": (pre(manifest_crc32=0), E.ManifestChecksumMismatch),
    # manifest syntax
    "bad-utf8": (text_edit(b'"model_type"', b'"model\xff_type"'), E.ManifestSyntaxError),
    "overlong-utf8": (text_edit(b'"model_type"', b'"model\xc0\xaf_type"'), E.ManifestSyntaxError),
    "utf8-surrogate-bytes": (
        text_edit(b'"model_type"', b'"model\xed\xa0\x80"'),
        E.ManifestSyntaxError,
    ),
    "duplicate-top-key": (
        text_edit(b'{"writer"', b'{"lossy":true,"writer"'),
        E.ManifestSyntaxError,
    ),
    "duplicate-key-in-config": (
        text_edit(b'{"model_type":"x"}', b'{"a":1,"a":2}'),
        E.ManifestSyntaxError,
    ),
    "duplicate-key-in-tensor": (
        text_edit(b'"name":"a",', b'"name":"a","name":"a",'),
        E.ManifestSyntaxError,
    ),
    "nan": (text_edit(b'{"model_type":"x"}', b'{"a":NaN}'), E.ManifestSyntaxError),
    "infinity": (text_edit(b'{"model_type":"x"}', b'{"a":Infinity}'), E.ManifestSyntaxError),
    "minus-infinity": (text_edit(b'{"model_type":"x"}', b'{"a":-Infinity}'), E.ManifestSyntaxError),
    "empty-manifest": (_manifest_of(b""), E.ManifestSyntaxError),
    "truncated-json": (_manifest_of(manifest_bytes(base()[1])[:-1]), E.ManifestSyntaxError),
    "trailing-garbage": (_manifest_of(manifest_bytes(base()[1]) + b"x"), E.ManifestSyntaxError),
    "bom": (_manifest_of(b"\xef\xbb\xbf" + manifest_bytes(base()[1])), E.ManifestSyntaxError),
    "single-quotes": (text_edit(b'"model_type"', b"'model_type'"), E.ManifestSyntaxError),
    "5000-digit-int": (
        text_edit(b'{"model_type":"x"}', b'{"a":' + b"9" * 5000 + b"}"),
        E.ManifestSyntaxError,
    ),
    # nesting
    "config-nested-65": (edit(setp("config", json.loads("[" * 65 + "]" * 65))), E.LimitExceeded),
    "config-nested-100000": (
        text_edit(b'{"model_type":"x"}', b"[" * 100_000 + b"]" * 100_000),
        E.LimitExceeded,
    ),
    # Outside config every value has a fixed type; one nested too deep is still a depth error.
    "shape-nested-65": (
        edit(setp("chunks.0.tensors.0.shape", json.loads("[" * 65 + "]" * 65))),
        E.LimitExceeded,
    ),
    "frame-nested-65": (
        edit(setp("chunks.0.codec", [{"id": "zstd", "frames": json.loads("[" * 65 + "]" * 65)}])),
        E.LimitExceeded,
    ),
    "metadata-value-nested-65": (
        edit(setp("metadata", {"k": json.loads("[" * 65 + "]" * 65)})),
        E.LimitExceeded,
    ),
    "unknown-field-nested-65": (
        edit(setp("extra", json.loads("[" * 65 + "]" * 65))),
        E.LimitExceeded,
    ),
    # config is at depth 2, its member "k" at 3: 62 nested lists put the innermost at 64, and
    # its members at 65
    "config-list-at-depth-65": (
        edit(setp("config", {"k": json.loads("[" * 63 + "]" * 63)})),
        E.LimitExceeded,
    ),
    "config-scalar-at-depth-65": (
        edit(setp("config", {"k": json.loads("[" * 62 + "1" + "]" * 62)})),
        E.LimitExceeded,
    ),
    "config-member-at-depth-65": (
        edit(setp("config", {"k": json.loads("[" * 61 + '{"k": 1}' + "]" * 61)})),
        E.LimitExceeded,
    ),
    # schema
    "top-level-list": (_manifest_of(b"[]"), E.ManifestSchemaError),
    "top-level-null": (_manifest_of(b"null"), E.ManifestSchemaError),
    "missing-chunks": (edit(delp("chunks")), E.ManifestSchemaError),
    "missing-writer": (edit(delp("writer")), E.ManifestSchemaError),
    "unknown-top-field": (edit(setp("extra", 1)), E.ManifestSchemaError),
    "writer-not-string": (edit(setp("writer", 5)), E.ManifestSchemaError),
    "writer-too-long": (edit(setp("writer", "w" * 257)), E.ManifestSchemaError),
    "lossy-not-bool": (edit(setp("lossy", 0)), E.ManifestSchemaError),
    "config-list": (edit(setp("config", [1])), E.ManifestSchemaError),
    "metadata-non-string": (edit(setp("metadata", {"k": 1})), E.ManifestSchemaError),
    "metadata-list": (edit(setp("metadata", ["k"])), E.ManifestSchemaError),
    "chunks-object": (edit(setp("chunks", {})), E.ManifestSchemaError),
    "chunk-not-object": (edit(setp("chunks.0", [])), E.ManifestSchemaError),
    "chunk-missing-crc": (edit(delp("chunks.0.crc32")), E.ManifestSchemaError),
    "chunk-unknown-field": (edit(setp("chunks.0.extra", None)), E.ManifestSchemaError),
    "chunk-offset-float": (edit(setp("chunks.0.offset", 4096.0)), E.ManifestSchemaError),
    "chunk-offset-string": (edit(setp("chunks.0.offset", "4096")), E.ManifestSchemaError),
    "chunk-nbytes-bool": (edit(setp("chunks.2.nbytes", True)), E.ManifestSchemaError),
    "chunk-name-number": (edit(setp("chunks.0.name", 7)), E.ManifestSchemaError),
    "chunk-name-surrogate": (text_edit(b'"name":"c0"', b'"name":"\\ud800"'), E.ManifestSchemaError),
    "tensors-object": (edit(setp("chunks.0.tensors", {})), E.ManifestSchemaError),
    "tensor-missing-dtype": (edit(delp("chunks.0.tensors.0.dtype")), E.ManifestSchemaError),
    "tensor-unknown-field": (edit(setp("chunks.0.tensors.0.stride", [1])), E.ManifestSchemaError),
    "tensor-dtype-number": (edit(setp("chunks.0.tensors.0.dtype", 1)), E.ManifestSchemaError),
    "tensor-shape-int": (edit(setp("chunks.0.tensors.0.shape", 12)), E.ManifestSchemaError),
    "tensor-shape-float": (edit(setp("chunks.0.tensors.0.shape", [3.0, 4])), E.ManifestSchemaError),
    "tensor-rows-triple": (edit(setp("chunks.1.tensors.1.rows", [0, 1, 2])), E.ManifestSchemaError),
    "tensor-rows-null": (edit(setp("chunks.1.tensors.1.rows", None)), E.ManifestSchemaError),
    "codec-object": (edit(setp("chunks.1.codec", {"id": "zstd"})), E.ManifestSchemaError),
    "codec-step-string": (edit(setp("chunks.1.codec", ["zstd"])), E.ManifestSchemaError),
    "codec-step-no-id": (edit(setp("chunks.1.codec", [{"level": 3}])), E.ManifestSchemaError),
    "codec-step-extra": (
        edit(setp("chunks.1.codec", [{"id": "zstd", "level": 3, "x": 1}])),
        E.ManifestSchemaError,
    ),
    "codec-zstd-then-zstd": (
        edit(setp("chunks.1.codec", [{"id": "zstd", "level": 3}] * 2)),
        E.ManifestSchemaError,
    ),
    "codec-zstd-then-bytegroup": (
        edit(setp("chunks.1.codec", [{"id": "zstd", "level": 3}, {"id": "bytegroup", "size": 2}])),
        E.ManifestSchemaError,
    ),
    "bytegroup-size-3": (
        edit(setp("chunks.1.codec", [{"id": "bytegroup", "size": 3}, {"id": "zstd", "level": 3}])),
        E.ManifestSchemaError,
    ),
    "bytegroup-no-size": (
        edit(setp("chunks.1.codec", [{"id": "bytegroup"}, {"id": "zstd", "level": 3}])),
        E.ManifestSchemaError,
    ),
    "bytegroup-level": (
        edit(setp("chunks.1.codec", [{"id": "bytegroup", "size": 2, "level": 1}, {"id": "zstd"}])),
        E.ManifestSchemaError,
    ),
    "frames-empty": (edit(setp("chunks.1.codec.0.frames", [])), E.ManifestSchemaError),
    "frames-not-pairs": (
        edit(setp("chunks.1.codec.0.frames", [len(STORED1), len(RAW1)])),
        E.ManifestSchemaError,
    ),
    "frames-stored-0": (
        edit(setp("chunks.1.codec.0.frames", [[0, 0], [len(STORED1), len(RAW1)]])),
        E.LimitExceeded,
    ),
    "frames-too-many": (
        edit(setp("chunks.1.codec.0.frames", [[1, 0]] * (spec.MAX_FRAMES_PER_CHUNK + 1))),
        E.LimitExceeded,
    ),
    "frames-stored-short": (
        edit(setp("chunks.1.codec.0.frames", [[len(STORED1) - 1, len(RAW1)]])),
        E.OutOfBounds,
    ),
    "frames-decoded-short": (
        edit(setp("chunks.1.codec.0.frames", [[len(STORED1), len(RAW1) - 1]])),
        E.DecodedSizeMismatch,
    ),
    "bytegroup-alone-size-differs": (
        edit(
            both(
                setp("chunks.2.codec", [{"id": "bytegroup", "size": 8}]),
                setp("chunks.2.raw_nbytes", len(RAW2) + 64),
            )
        ),
        E.DecodedSizeMismatch,
    ),
    # values that are not text or not finite
    "overflowing-float": (text_edit(b'{"model_type":"x"}', b'{"a":1e400}'), E.ManifestSyntaxError),
    "overflowing-negative-float": (
        text_edit(b'{"model_type":"x"}', b'{"a":[-2e308]}'),
        E.ManifestSyntaxError,
    ),
    "surrogate-in-metadata-value": (
        text_edit(b'{"k":"v"}', b'{"k":"\\udfff"}'),
        E.ManifestSchemaError,
    ),
    "surrogate-in-metadata-key": (
        text_edit(b'{"k":"v"}', b'{"\\ud800":"v"}'),
        E.ManifestSchemaError,
    ),
    "surrogate-in-config": (
        text_edit(b'"model_type":"x"', b'"model_type":["\\ud800x"]'),
        E.ManifestSchemaError,
    ),
    "surrogate-in-writer": (
        text_edit(b'"writer":"tests"', b'"writer":"\\udc00"'),
        E.ManifestSchemaError,
    ),
    # int8 quantization
    "quant-unknown-scheme": (edit(_quantized(scheme="int4")), E.UnknownCodec),
    "quant-scheme-not-string": (edit(_quantized(scheme=["int8"])), E.UnknownCodec),
    "quant-missing-group": (edit(_quantized(drop="group")), E.ManifestSchemaError),
    "quant-in-lossless-file": (
        edit(both(_quantized(), setp("lossy", False))),
        E.ManifestSchemaError,
    ),
    "quant-1d-tensor": (edit(_quantized(shape=[16])), E.TensorLayoutError),
    "quant-integer-dtype": (edit(_quantized(dtype="I16")), E.TensorLayoutError),
    "quant-group-0": (edit(_quantized(group=0)), E.LimitExceeded),
    "quant-scales-misaligned": (edit(_quantized(scales=40)), E.MisalignedOffset),
    "quant-scales-past-raw": (edit(_quantized(scales=64 * 10)), E.OutOfBounds),
    "quant-scales-overlap-values": (edit(_quantized(scales=0)), E.OverlappingRegions),
    # limits
    "name-empty": (edit(setp("chunks.0.name", "")), E.LimitExceeded),
    "name-1025-bytes": (edit(setp("chunks.0.tensors.0.name", "é" * 512 + "x")), E.LimitExceeded),
    "group-empty": (edit(setp("chunks.0.group", "")), E.LimitExceeded),
    "ndim-9": (edit(setp("chunks.0.tensors.1.shape", [5] + [1] * 8)), E.LimitExceeded),
    "dim-negative": (edit(setp("chunks.0.tensors.0.shape", [-3, -4])), E.LimitExceeded),
    "dim-2**64": (edit(setp("chunks.0.tensors.0.shape", [2**64, 0])), E.LimitExceeded),
    "tensor-bytes-overflow-u64": (
        edit(setp("chunks.0.tensors.0.shape", [2**40, 2**40, 0 + 2**40])),
        E.LimitExceeded,
    ),
    "tensor-bytes-over-2**48": (
        edit(setp("chunks.0.tensors.0.shape", [2**24, 2**23])),
        E.LimitExceeded,
    ),
    "raw-nbytes-over-1GiB": (
        edit(setp("chunks.1.raw_nbytes", spec.MAX_CHUNK_RAW_NBYTES + 1)),
        E.LimitExceeded,
    ),
    "crc-negative": (edit(setp("chunks.0.crc32", -1)), E.LimitExceeded),
    "crc-over-32-bits": (edit(setp("chunks.0.crc32", 2**32)), E.LimitExceeded),
    "offset-negative": (edit(setp("chunks.0.offset", -4096)), E.LimitExceeded),
    "offset-over-u64": (edit(setp("chunks.0.offset", 2**64)), E.LimitExceeded),
    "tensor-offset-over-1GiB": (edit(setp("chunks.0.tensors.0.offset", 2**31)), E.LimitExceeded),
    "three-codec-steps": (
        edit(
            setp(
                "chunks.1.codec",
                [{"id": "bytegroup", "size": 2}] + [{"id": "zstd", "level": 3}] * 2,
            )
        ),
        E.LimitExceeded,
    ),
    "zstd-level-23": (edit(setp("chunks.1.codec.0.level", 23)), E.LimitExceeded),
    "rows-past-shape": (edit(setp("chunks.2.tensors.0.rows", [2, 7])), E.LimitExceeded),
    "metadata-4097": (
        edit(setp("metadata", {str(i): "" for i in range(spec.MAX_METADATA_ENTRIES + 1)})),
        E.LimitExceeded,
    ),
    "pieces-65537": (
        edit(setp("chunks.0.tensors", [0] * (spec.MAX_PIECES_PER_CHUNK + 1))),
        E.LimitExceeded,
    ),
    "chunks-over-limit": (edit(setp("chunks", [0] * (spec.MAX_CHUNKS + 1))), E.LimitExceeded),
    # dtypes and codecs
    "dtype-F128": (edit(setp("chunks.0.tensors.0.dtype", "F128")), E.UnknownDType),
    "dtype-lowercase": (edit(setp("chunks.0.tensors.0.dtype", "f32")), E.UnknownDType),
    "dtype-empty": (edit(setp("chunks.0.tensors.0.dtype", "")), E.UnknownDType),
    "codec-lz4": (edit(setp("chunks.1.codec.0.id", "lz4")), E.UnknownCodec),
    "codec-uppercase": (edit(setp("chunks.1.codec.0.id", "ZSTD")), E.UnknownCodec),
    # alignment
    "chunk-offset-4160": (edit(setp("chunks.1.offset", 8192 + 64)), E.MisalignedOffset),
    "chunk-offset-odd": (edit(setp("chunks.1.offset", 8193)), E.MisalignedOffset),
    "tensor-offset-32": (edit(setp("chunks.0.tensors.1.offset", 32)), E.MisalignedOffset),
    # bounds
    "chunk-offset-past-end": (edit(setp("chunks.2.offset", 1 << 40)), E.OutOfBounds),
    "chunk-offset-in-preamble": (edit(setp("chunks.0.offset", 0)), E.OutOfBounds),
    "chunk-runs-into-manifest": (edit(setp("chunks.2.nbytes", 4096)), E.OutOfBounds),
    "chunk-nbytes-u64-max": (
        edit(
            both(
                setp("chunks.2.nbytes", 2**64 - 1),
                setp("chunks.2.codec", [{"id": "zstd", "level": 1}]),
            )
        ),
        E.OutOfBounds,
    ),
    "tensor-past-raw-nbytes": (edit(setp("chunks.0.tensors.1.offset", 128)), E.OutOfBounds),
    "tensor-shape-past-raw-nbytes": (edit(setp("chunks.0.tensors.1.shape", [6])), E.OutOfBounds),
    "row-block-past-raw-nbytes": (edit(setp("chunks.2.tensors.0.rows", [1, 6])), E.OutOfBounds),
    # overlap and order
    "chunks-overlap": (edit(both(setp("chunks.1.offset", 4096))), E.OverlappingRegions),
    "chunks-out-of-file-order": (edit(_swap_chunks), E.OverlappingRegions),
    "chunks-overlap-by-one-byte": (edit(setp("chunks.1.nbytes", 4097)), E.OverlappingRegions),
    "tensors-overlap": (edit(setp("chunks.0.tensors.1.offset", 0)), E.OverlappingRegions),
    # names
    "duplicate-chunk-name": (edit(setp("chunks.2.name", "c0")), E.DuplicateName),
    "duplicate-tensor-across-chunks": (
        edit(setp("chunks.2.tensors.0", tdoc("b", "I16", [5], 0))),
        E.DuplicateName,
    ),
    "duplicate-tensor-in-chunk": (
        edit(setp("chunks.1.tensors.1", tdoc("c", "BF16", [2, 3], 64))),
        E.DuplicateName,
    ),
    "whole-and-row-blocks": (
        edit(
            both(
                setp("chunks.1.tensors.1.shape", [2, 1]),
                setp("chunks.2.tensors.0", tdoc("d", "U64", [2, 1], 0)),
            )
        ),
        E.DuplicateName,
    ),
    # row-block layout
    "rows-gap": (edit(setp("chunks.2.tensors.0.rows", [3, 6])), E.TensorLayoutError),
    "rows-short": (edit(setp("chunks.2.tensors.0.rows", [2, 5])), E.TensorLayoutError),
    "rows-overlap": (edit(setp("chunks.2.tensors.0.rows", [1, 5])), E.TensorLayoutError),
    "rows-overlap-to-the-end": (
        edit(
            both(
                setp("chunks.1.tensors.1.shape", [5, 1]),
                setp("chunks.2.tensors.0.shape", [5, 1]),
                setp("chunks.2.tensors.0.rows", [1, 5]),
            )
        ),
        E.TensorLayoutError,
    ),
    "rows-empty": (edit(setp("chunks.2.tensors.0.rows", [2, 2])), E.TensorLayoutError),
    "rows-reversed": (edit(setp("chunks.2.tensors.0.rows", [6, 2])), E.TensorLayoutError),
    "rows-on-0d": (
        edit(both(setp("chunks.0.tensors.1.shape", []), setp("chunks.0.tensors.1.rows", [0, 1]))),
        E.TensorLayoutError,
    ),
    "rows-dtype-disagree": (edit(setp("chunks.2.tensors.0.dtype", "I64")), E.TensorLayoutError),
    "rows-shape-disagree": (edit(setp("chunks.2.tensors.0.shape", [6, 1, 1])), E.TensorLayoutError),
    "rows-in-wrong-order": (
        edit(
            both(
                setp("chunks.1.tensors.1.rows", [2, 6]),
                setp("chunks.2.tensors.0.rows", [0, 2]),
                setp("chunks.1.raw_nbytes", 64 + 32),
            )
        ),
        E.TensorLayoutError,
    ),
    # groups
    "group-not-contiguous": (edit(setp("chunks.2.group", "g0")), E.GroupLayoutError),
    # raw chunk size
    "raw-chunk-raw-nbytes-differs": (edit(_raw_mismatch), E.DecodedSizeMismatch),
}

READ_CASES: dict[str, tuple[Callable[[], bytes], type[E.FormatError]]] = {
    "raw-payload-flipped": (_flip_payload(0, 7), E.ChunkChecksumMismatch),
    "raw-payload-last-byte-flipped": (_flip_payload(2, len(RAW2) - 1), E.ChunkChecksumMismatch),
    "zstd-payload-flipped": (_flip_payload(1, 5), E.ChunkChecksumMismatch),
    "crc-field-wrong": (edit(setp("chunks.0.crc32", 12345)), E.ChunkChecksumMismatch),
    "zstd-frame-declares-more": (
        _with_chunk1(zstandard.ZstdCompressor().compress(RAW1 + b"x")),
        E.DecodedSizeMismatch,
    ),
    "zstd-frame-declares-less": (
        _with_chunk1(zstandard.ZstdCompressor().compress(RAW1[:-1])),
        E.DecodedSizeMismatch,
    ),
    "zstd-no-size-decodes-more": (
        _with_chunk1(zstandard.ZstdCompressor(write_content_size=False).compress(RAW1 + bytes(64))),
        E.DecodedSizeMismatch,
    ),
    "zstd-no-size-decodes-less": (
        _with_chunk1(zstandard.ZstdCompressor(write_content_size=False).compress(RAW1[:40])),
        E.DecodedSizeMismatch,
    ),
    "zstd-bomb-no-size": (_with_chunk1(_BOMB), E.DecodedSizeMismatch),
    "zstd-garbage": (_with_chunk1(b"this is not a zstd frame at all"), E.CorruptChunk),
    "zstd-empty": (_with_chunk1(b""), E.CorruptChunk),
    "zstd-truncated-frame": (_with_chunk1(STORED1[:-3]), E.CorruptChunk),
    "zstd-truncated-frame-no-size": (_with_chunk1(_ZSTD_NO_SIZE[:-3]), E.CorruptChunk),
    "zstd-corrupt-block": (_with_chunk1(STORED1[:12] + bytes(len(STORED1) - 12)), E.CorruptChunk),
    "zstd-trailing-bytes": (_with_chunk1(STORED1 + b"\0"), E.CorruptChunk),
    "zstd-two-frames": (
        _with_chunk1(
            zstandard.ZstdCompressor().compress(RAW1[:40])
            + zstandard.ZstdCompressor().compress(RAW1[40:])
        ),
        E.CorruptChunk,
    ),
    "zstd-skippable-frame": (
        _with_chunk1(b"\x50\x2a\x4d\x18" + (4).to_bytes(4, "little") + b"skip" + STORED1),
        E.CorruptChunk,
    ),
    "zstd-reserved-block-type": (_with_chunk1(_reserved_block()), E.CorruptChunk),
    "frames-split-inside-a-frame": (
        _with_chunk1(
            STORED1,
            codec=[
                {
                    "id": "zstd",
                    "level": 3,
                    "frames": [[10, 40], [len(STORED1) - 10, len(RAW1) - 40]],
                }
            ],
        ),
        E.CorruptChunk,
    ),
    "frames-second-frame-declares-wrong-size": (_two_frames(lie=True), E.DecodedSizeMismatch),
    "uint4-zero-point-16": (_uint4_zero_point(16), E.ZeroPointOutOfRange),
    "uint4-zero-point-255": (_uint4_zero_point(255), E.ZeroPointOutOfRange),
    "frames-second-frame-garbage": (_two_frames(garbage=True), E.CorruptChunk),
}


def test_no_case_is_valid_by_accident() -> None:
    # Every case differs from the valid base file, and every case name is unique.
    good = base_file()
    for name, (make, _) in {**OPEN_CASES, **READ_CASES}.items():
        assert make() != good, name


def test_every_format_error_subclass_has_a_hand_built_case() -> None:
    covered = {err for _, err in [*OPEN_CASES.values(), *READ_CASES.values()]}
    every = {c for c in vars(E).values() if isinstance(c, type) and issubclass(c, E.FormatError)}
    assert every - {E.FormatError} <= covered, sorted(
        c.__name__ for c in every - covered - {E.FormatError}
    )


@pytest.mark.parametrize("case", list(OPEN_CASES))
def test_hostile_file_fails_at_open(tmp_path: Path, case: str) -> None:
    make, error = OPEN_CASES[case]
    path = write(tmp_path, make())
    with pytest.raises(error) as info:
        Container(path)
    assert type(info.value) is error  # the named case itself, not a sibling or a parent
    assert str(info.value)  # and a message
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("case", list(READ_CASES))
def test_hostile_chunk_fails_on_every_read_path(tmp_path: Path, case: str) -> None:
    make, error = READ_CASES[case]
    path = write(tmp_path, make())
    with Container(path) as c:  # the metadata is fine: opening succeeds
        bad = [ch for ch in c.manifest.chunks if ch.name in ("c0", "c1", "c2")]
        for call in (
            c.verify,
            lambda: dict(c.tensors()),
            lambda: [c.tensor(n) for n in c.keys()],
            lambda: [c.decode(ch) for ch in bad],
        ):
            with pytest.raises(error) as info:
                call()
            assert type(info.value) is error
            assert "chunk 'c" in str(info.value)  # names the chunk


def test_unverified_decode_still_bounds_zstd(tmp_path: Path) -> None:
    # verify=False skips the CRC, never the size bound.
    path = write(tmp_path, READ_CASES["zstd-bomb-no-size"][0]())
    with Container(path) as c, pytest.raises(E.DecodedSizeMismatch):
        c.decode(c.chunk("c1"), verify=False)


def test_200MB_manifest_is_rejected_before_allocation(tmp_path: Path) -> None:
    """A preamble declaring a 200 MB manifest, in a (sparse) file really that large."""
    m_len = 200 * 1000 * 1000
    path = tmp_path / "big.wst"
    with open(path, "wb") as f:
        f.write(preamble(spec.DATA_START, m_len, 0))
        f.truncate(spec.DATA_START + m_len)  # sparse: costs no disk
    assert path.stat().st_size == spec.DATA_START + m_len
    tracemalloc.start()
    try:
        with pytest.raises(E.ManifestTooLarge, match="200000000"):
            Container(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20, f"opening allocated {peak} bytes"


def test_manifest_declared_past_eof_is_rejected_before_allocation(tmp_path: Path) -> None:
    path = write(tmp_path, pre(manifest_nbytes=spec.MAX_MANIFEST_NBYTES)())
    tracemalloc.start()
    try:
        with pytest.raises(E.TruncatedFile):
            Container(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20, f"opening allocated {peak} bytes"


def test_parse_preamble_short_buffer() -> None:
    with pytest.raises(E.TruncatedFile):
        parse_preamble(base_file()[:63], 10_000)


# --- properties over mutated files ---------------------------------------------------------------


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("hostile")


def _zero_chunk_file() -> bytes:
    return build_file([], manifest_doc([]))


VALID_FILES = {"base": base_file, "zero-chunks": _zero_chunk_file}


@pytest.mark.parametrize("which", list(VALID_FILES))
@given(data=st.data())
@settings(deadline=None)
def test_truncation_anywhere_raises_truncated_file(
    scratch: Path, which: str, data: st.DataObject
) -> None:
    good = VALID_FILES[which]()
    n = data.draw(st.integers(0, len(good) - 1), label="length")
    path = write(scratch, good[:n], f"trunc-{which}.wst")
    with pytest.raises(E.TruncatedFile):
        Container(path)


def test_truncation_at_every_length_near_the_regions(scratch: Path) -> None:
    good = base_file()
    lengths = {
        *range(0, 70),
        *range(4090, 4200),
        *range(8180, 8300),
        *range(len(good) - 300, len(good)),
    }
    for n in sorted(lengths):
        path = write(scratch, good[:n], "trunc-all.wst")
        with pytest.raises(E.TruncatedFile):
            Container(path)


@given(extra=st.binary(min_size=1, max_size=64))
@settings(deadline=None)
def test_appended_bytes_raise_trailing_bytes(scratch: Path, extra: bytes) -> None:
    path = write(scratch, base_file() + extra, "trailing.wst")
    with pytest.raises(E.TrailingBytes):
        Container(path)


def _read_or_format_error(path: Path) -> dict[str, np.ndarray] | None:
    """All tensors (checked), or None when a FormatError was raised. Nothing else may escape."""
    try:
        return read_everything(path)
    except E.FormatError:
        return None


@given(data=st.data())
@settings(deadline=None, max_examples=S.examples(6))
def test_byte_flips_never_yield_wrong_tensors(scratch: Path, data: st.DataObject) -> None:
    good = base_file()
    changes = data.draw(S.flips(len(good)), label="flips")
    bad = S.apply_flips(good, changes)
    assume(bad != good)
    got = _read_or_format_error(write(scratch, bad, "flip.wst"))
    if got is not None:
        # Accepted: only bytes nobody reads changed (padding), so the tensors are exact.
        assert set(got) == set(EXPECTED)
        for name, want in EXPECTED.items():
            assert same_tensor(got[name], want), name


@given(data=st.data())
@settings(deadline=None, max_examples=S.examples(6))
def test_byte_flips_in_the_regions_that_matter_are_always_caught(
    scratch: Path, data: st.DataObject
) -> None:
    # Preamble, chunk payloads and manifest are all covered by a CRC-32, which catches every
    # burst of up to 32 bits: one to four flips inside 4 adjacent bytes never go unnoticed.
    good = base_file()
    payloads, doc = base()
    regions = (
        [(0, 64)]
        + [(o, o + len(p)) for o, p in payloads]
        + [(len(good) - len(manifest_bytes(doc)), len(good))]
    )
    start, end = data.draw(st.sampled_from(regions), label="region")
    pos = data.draw(st.integers(start, max(start, end - 4)), label="pos")
    masks = data.draw(
        st.lists(st.integers(0, 255), min_size=4, max_size=4).filter(any), label="masks"
    )
    bad = bytearray(good)
    for i, m in enumerate(masks):
        if pos + i < end:
            bad[pos + i] ^= m
    assume(bytes(bad) != good)
    assert _read_or_format_error(write(scratch, bytes(bad), "burst.wst")) is None


@given(cs=S.container_specs(max_tensors=4), data=st.data())
@settings(deadline=None, max_examples=S.examples(1.6))
def test_byte_flips_in_any_written_container(
    scratch: Path, cs: S.ContainerSpec, data: st.DataObject
) -> None:
    path = scratch / "any.wst"
    write_container(path, cs)
    good = path.read_bytes()
    bad = S.apply_flips(good, data.draw(S.flips(len(good)), label="flips"))
    got = _read_or_format_error(write(scratch, bad, "any-flipped.wst"))
    if got is not None:
        assert set(got) == set(cs.tensors)
        for name, want in cs.tensors.items():
            assert same_tensor(got[name], want), name


# --- manifests edited with valid checksums: only FormatError, and what is accepted is sound ------


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(node, dict):
        for k, v in node.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += _paths(v, (*prefix, i))
    return out


_hostile_ints = st.one_of(
    st.integers(-5, 5 * 4096),
    st.sampled_from(
        [2**31, 2**32, 2**32 - 1, 2**48, 2**63, 2**64 - 1, 2**64, -(2**63), 4096, 8192, 12288, 64]
    ),
)
_hostile_values = st.one_of(
    _hostile_ints,
    st.none(),
    st.booleans(),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=4),
    st.sampled_from(
        [
            "F32",
            "BF16",
            "U64",
            "I8",
            "zstd",
            "bytegroup",
            "int8",
            "a",
            "b",
            "c",
            "d",
            "c0",
            "g0",
            "g1",
        ]
    ),
    st.lists(_hostile_ints, max_size=3),
    st.dictionaries(
        st.sampled_from(
            ["id", "level", "name", "size", "frames", "scheme", "group", "scales", "x"]
        ),
        _hostile_ints | st.sampled_from(["zstd", "bytegroup", "int8"]),
        max_size=3,
    ),
    st.lists(st.lists(_hostile_ints, min_size=2, max_size=2), max_size=3),
)


@st.composite
def manifest_edits(draw: st.DrawFn) -> tuple[list[tuple[int, bytes]], dict[str, Any]]:
    payloads, doc = FUZZ_BASES[draw(st.sampled_from(sorted(FUZZ_BASES)))]()
    doc = copy.deepcopy(doc)
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(_paths(doc)[1:]))
        parent = doc
        for k in path[:-1]:
            parent = parent[k]
        action = draw(st.sampled_from(["replace", "delete", "duplicate"]))
        if action == "delete":
            del parent[path[-1]]
        elif action == "duplicate" and isinstance(parent, list):
            parent.insert(path[-1], copy.deepcopy(parent[path[-1]]))
        else:
            parent[path[-1]] = draw(_hostile_values)
    return payloads, doc


def _check_sound(c: Container) -> None:
    """What the parser accepts keeps every region inside the file and apart."""
    m = c.manifest
    end = spec.DATA_START
    seen: set[str] = set()
    for ch in m.chunks:
        assert ch.offset % spec.CHUNK_ALIGNMENT == 0
        assert (
            end <= ch.offset and ch.offset + ch.nbytes <= c.preamble.manifest_offset <= c.file_size
        )
        assert 0 <= ch.raw_nbytes <= spec.MAX_CHUNK_RAW_NBYTES
        assert ch.name not in seen
        seen.add(ch.name)
        end = ch.offset + ch.nbytes
        spans = [(t.offset, t.offset + t.nbytes) for t in ch.tensors]
        spans += [(t.quant.scales, t.quant.scales + t.scales_nbytes) for t in ch.tensors if t.quant]
        for start, stop in spans:
            assert start % spec.TENSOR_ALIGNMENT == 0 and stop <= ch.raw_nbytes
        spans = sorted(sp for sp in spans if sp[1] > sp[0])
        for (_, a_end), (b_start, _) in itertools.pairwise(spans):
            assert a_end <= b_start
        for step in ch.codec:
            if step.frames is not None:
                assert sum(f[0] for f in step.frames) == ch.nbytes
                assert sum(f[1] for f in step.frames) == ch.raw_nbytes


@given(edited=manifest_edits())
@settings(deadline=None, max_examples=S.examples(12))
def test_edited_manifests_raise_only_format_errors(
    scratch: Path, edited: tuple[list[tuple[int, bytes]], dict[str, Any]]
) -> None:
    payloads, doc = edited
    path = write(scratch, build_file(payloads, doc), "edited.wst")
    try:
        with Container(path) as c:
            _check_sound(c)
            c.verify()
            for name, array in c.tensors():
                info = c.manifest.tensors[name]
                assert array.shape == info.shape and array.dtype == info.dtype.numpy
    except E.FormatError:
        pass


@given(data=st.data())
@settings(deadline=None, max_examples=S.examples(6))
def test_manifest_text_flips_with_fixed_checksums_raise_only_format_errors(
    scratch: Path, data: st.DataObject
) -> None:
    payloads, doc = base()
    body = manifest_bytes(doc)
    body = S.apply_flips(body, data.draw(S.flips(len(body)), label="flips"))
    path = write(scratch, build_file(payloads, body), "textflip.wst")
    try:
        with Container(path) as c:
            _check_sound(c)
            c.verify()
            list(c.tensors())
    except E.FormatError:
        pass


@given(body=st.binary(max_size=256))
@settings(deadline=None)
def test_parse_manifest_on_arbitrary_bytes(body: bytes) -> None:
    try:
        parse_manifest(body, data_end=1 << 20)
    except E.FormatError:
        pass


@given(head=st.binary(min_size=64, max_size=64), size=st.integers(0, 2**64))
def test_parse_preamble_on_arbitrary_bytes(head: bytes, size: int) -> None:
    try:
        p = parse_preamble(head, size)
    except E.FormatError:
        return
    assert p.manifest_offset >= spec.DATA_START
    assert p.manifest_offset + p.manifest_nbytes == size


def test_errors_are_value_errors_and_wstream_errors() -> None:
    # Callers may catch ValueError (the stdlib convention for bad data) or WStreamError.
    for cls in (E.BadMagic, E.CorruptChunk, E.TruncatedFile):
        assert issubclass(cls, ValueError) and issubclass(cls, E.WStreamError)


def test_directory_and_missing_path_raise_os_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        Container(tmp_path / "nope.wst")
    with pytest.raises(E.NotRegularFile, match="directory"):
        Container(tmp_path)
    assert os.listdir(tmp_path) == []
