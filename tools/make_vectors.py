"""(Re)generate the committed .wst test vectors in ``formats/vectors``. Never run by tests.

    python tools/make_vectors.py [--out formats/vectors] [--no-check]

Writes ``valid/NAME.wst`` with ``valid/NAME.json`` (the content every reader must produce),
``invalid/NAME.wst`` with ``invalid/NAME.json`` (the FormatError subclass every reader must raise,
and why), and ``README.md`` (the list of vectors). Files are assembled byte by byte here, not with
``wstream.container.writer``, so a writer bug cannot leak into the vectors, and so that invalid
files can break exactly one rule while every checksum not under test stays correct. Output is
deterministic: running the tool twice gives identical bytes (given the same zstandard build).

Afterwards the tool opens every vector with wstream's reader and reports any disagreement
(exit status 1); ``--no-check`` skips that.

Regenerate deliberately (a format change, a new vector); the files are a compatibility contract
for other implementations, so changed bytes need a reason in the commit message.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import shutil
import struct
import sys
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import zstandard

from wstream.format.spec import CHUNK_ALIGNMENT, DATA_START, MAGIC, TENSOR_ALIGNMENT, VERSION, DType

WRITER = "tools/make_vectors.py"
ZSTD_LEVEL = 3

# --- byte builders (mirroring formats/SPEC.md, independent of wstream.container.writer) ---------


def preamble(
    m_off: int,
    m_len: int,
    m_crc: int,
    *,
    magic: bytes = MAGIC,
    version: int = VERSION,
    flags: int = 0,
    reserved: bytes = bytes(24),
    preamble_crc: int | None = None,
) -> bytes:
    """magic[8] version:u32 flags:u32 manifest_offset:u64 manifest_nbytes:u64 manifest_crc32:u32
    reserved[24] preamble_crc32:u32, little-endian; the CRC covers bytes [0, 60)."""
    body = struct.pack("<8sIIQQI24s", magic, version, flags, m_off, m_len, m_crc, reserved)
    return body + struct.pack("<I", zlib.crc32(body) if preamble_crc is None else preamble_crc)


def align(n: int, a: int) -> int:
    return -(-n // a) * a


def zstd(raw: bytes, *, content_size: bool = True, checksum: bool = False) -> bytes:
    cctx = zstandard.ZstdCompressor(
        level=ZSTD_LEVEL, write_content_size=content_size, write_checksum=checksum
    )
    return cctx.compress(raw)


@dataclass
class Int8:
    """A quantized tensor (section 5.1): int8 values [rows, cols], one binary32 scale per
    ``group`` consecutive elements of a row."""

    q: np.ndarray  # int8 [rows, cols]
    scales: np.ndarray  # float32 [rows, ceil(cols / group)]
    group: int


@dataclass
class Uint4:
    """A 4-bit tensor (section 5.2): q in [0, 15] [rows, cols], one binary32 scale and one uint8
    zero point per ``group`` consecutive elements of a row; packed with split nibbles."""

    q: np.ndarray  # uint8 [rows, cols], 0..15
    scales: np.ndarray  # float32 [rows, ceil(cols / group)]
    zeros: np.ndarray  # uint8 [rows, ceil(cols / group)] (an invalid vector may hold > 15)
    group: int


def pack_uint4(q: np.ndarray, group: int) -> bytes:
    """Section 5.2, element by element: group k of a row starts at byte k * group / 2; byte j of
    a group of L holds element j (low nibble) and element j + ceil(L / 2) (high, or 0)."""
    out = bytearray()
    for row in q.tolist():
        for start in range(0, len(row), group):
            g = row[start : start + group]
            h = (len(g) + 1) // 2
            out += bytes(g[j] | ((g[j + h] if j + h < len(g) else 0) << 4) for j in range(h))
    return bytes(out)


@dataclass
class Piece:
    name: str
    array: np.ndarray  # the whole tensor as a reader returns it (dequantized when quantized)
    rows: tuple[int, int] | None = None
    pad: int = 0  # extra TENSOR_ALIGNMENT units before this piece
    int8: Int8 | None = None  # stored quantized
    uint4: Uint4 | None = None  # stored as 4-bit values


@dataclass
class Chunk:
    name: str
    group: str
    pieces: list[Piece]
    codec: str = "raw"  # raw | zstd | zstd-nosize (no content size, with checksum)
    gap_pages: int = 0  # extra empty pages before this chunk (allowed: chunks need not touch)
    bytegroup: int = 0  # element size of a byte-grouping step before the codec (0: none)
    frame_cuts: tuple[int, ...] | None = None  # zstd: split the stream here, record "frames"


@dataclass
class File:
    """An embedded file (SPEC.md section 13): opaque bytes after the chunks."""

    name: str
    data: bytes
    codec: str = "raw"  # raw | zstd | zstd-nosize (no content size, with checksum)
    frame_cuts: tuple[int, ...] | None = None  # zstd: split the file here, record "frames"
    gap_pages: int = 0  # extra empty pages before this file


@dataclass
class Layout:
    payloads: list[tuple[int, bytes]]
    doc: dict[str, Any]

    def manifest(self) -> bytes:
        return manifest_bytes(self.doc)


def manifest_bytes(doc: Any) -> bytes:
    return json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def group_bytes(raw: bytes, size: int) -> bytes:
    """Section 6.2: G[j*n + i] = D[i*s + j]; the N - n*s tail bytes unchanged."""
    n = len(raw) // size
    planes = bytearray(len(raw))
    for j in range(size):
        planes[j * n : (j + 1) * n] = raw[j : n * size : size]
    planes[n * size :] = raw[n * size :]
    return bytes(planes)


def _piece_bytes(p: Piece) -> tuple[bytes, bytes, bytes]:
    """(values, scales, zero points) bytes of a piece."""
    sel = slice(None) if p.rows is None else slice(p.rows[0], p.rows[1])
    if p.uint4 is not None:
        u = p.uint4
        return (
            pack_uint4(u.q[sel], u.group),
            u.scales[sel].astype("<f4").tobytes(),
            u.zeros[sel].astype("u1").tobytes(),
        )
    if p.int8 is None:
        return (p.array if p.rows is None else p.array[sel]).tobytes(), b"", b""
    return p.int8.q[sel].astype("<i1").tobytes(), p.int8.scales[sel].astype("<f4").tobytes(), b""


def encode(raw: bytes, ch: Chunk) -> tuple[bytes, list[dict[str, Any]]]:
    """Stored bytes and the ``codec`` member of a chunk."""
    stream, steps = raw, []
    if ch.bytegroup:
        stream = group_bytes(stream, ch.bytegroup)
        steps.append({"id": "bytegroup", "size": ch.bytegroup})
    if ch.codec == "raw":
        return stream, steps
    step: dict[str, Any] = {"id": "zstd", "level": ZSTD_LEVEL}
    kw = {"content_size": ch.codec == "zstd", "checksum": ch.codec != "zstd"}
    if ch.frame_cuts is None:
        stream = zstd(stream, **kw)
    else:
        bounds = [0, *ch.frame_cuts, len(stream)]
        frames = [zstd(stream[a:b], **kw) for a, b in itertools.pairwise(bounds)]
        step["frames"] = [
            [len(f), b - a] for f, (a, b) in zip(frames, itertools.pairwise(bounds), strict=True)
        ]
        stream = b"".join(frames)
    return stream, [*steps, step]


def layout(
    chunks: list[Chunk],
    *,
    config: dict[str, Any] | None = None,
    metadata: dict[str, str] | None = None,
    lossy: bool = False,
    files: list[File] | None = None,
    folds: list[str] | None = None,
) -> Layout:
    payloads: list[tuple[int, bytes]] = []
    entries = []
    end = DATA_START
    for ch in chunks:
        raw = bytearray()
        tensors = []
        for p in ch.pieces:
            offset = align(len(raw), TENSOR_ALIGNMENT) + p.pad * TENSOR_ALIGNMENT
            values, scales, zeros = _piece_bytes(p)
            raw += bytes(offset - len(raw)) + values
            t: dict[str, Any] = {
                "name": p.name,
                "dtype": str(DType.from_numpy(p.array.dtype)),
                "shape": list(p.array.shape),
                "offset": offset,
            }
            if p.rows is not None:
                t["rows"] = list(p.rows)
            if p.int8 is not None:
                at = align(len(raw), TENSOR_ALIGNMENT)
                raw += bytes(at - len(raw)) + scales
                t["quant"] = {"scheme": "int8", "group": p.int8.group, "scales": at}
            if p.uint4 is not None:  # scales after the values, zero points after the scales
                at = align(len(raw), TENSOR_ALIGNMENT)
                raw += bytes(at - len(raw)) + scales
                raw += bytes(align(len(raw), TENSOR_ALIGNMENT) - len(raw)) + zeros
                t["quant"] = {"scheme": "uint4", "group": p.uint4.group, "scales": at}
            tensors.append(t)
        stored, codec = encode(bytes(raw), ch)
        offset = align(end, CHUNK_ALIGNMENT) + ch.gap_pages * CHUNK_ALIGNMENT
        payloads.append((offset, stored))
        entries.append(
            {
                "name": ch.name,
                "group": ch.group,
                "offset": offset,
                "nbytes": len(stored),
                "raw_nbytes": len(raw),
                "crc32": zlib.crc32(stored),
                "codec": codec,
                "tensors": tensors,
            }
        )
        end = offset + len(stored)
    doc: dict[str, Any] = {
        "writer": WRITER,
        "lossy": lossy,
        "config": config,
        "metadata": metadata or {},
        "chunks": entries,
    }
    if files is not None:  # after the last chunk, in list order (SPEC.md section 10, rule 13)
        doc["files"] = []
        for f in files:
            stored, codec = encode(f.data, Chunk(f.name, "", [], f.codec, frame_cuts=f.frame_cuts))
            offset = align(end, CHUNK_ALIGNMENT) + f.gap_pages * CHUNK_ALIGNMENT
            payloads.append((offset, stored))
            doc["files"].append(
                {
                    "name": f.name,
                    "offset": offset,
                    "nbytes": len(stored),
                    "raw_nbytes": len(f.data),
                    "crc32": zlib.crc32(stored),
                    "codec": codec,
                }
            )
            end = offset + len(stored)
    if folds is not None:  # SPEC.md section 14
        doc["folds"] = folds
    return Layout(payloads, doc)


def assemble(
    payloads: list[tuple[int, bytes]],
    manifest: bytes,
    *,
    m_off: int | None = None,
    m_crc: int | None = None,
    m_len: int | None = None,
    **pre: Any,
) -> bytes:
    end = max([DATA_START, *(off + len(p) for off, p in payloads)])
    off = end if m_off is None else m_off
    out = bytearray(max(off, end))
    for o, p in payloads:
        out[o : o + len(p)] = p
    out[off:] = manifest
    crc = zlib.crc32(manifest) if m_crc is None else m_crc
    out[:64] = preamble(off, len(manifest) if m_len is None else m_len, crc, **pre)
    return bytes(out)


def build(lay: Layout, **kw: Any) -> bytes:
    return assemble(lay.payloads, lay.manifest(), **kw)


# --- tensors -------------------------------------------------------------------------------------


def bits(dtype: DType, shape: tuple[int, ...], seed: int) -> np.ndarray:
    """Deterministic arbitrary bit patterns of ``dtype`` (bool: 0/1)."""
    n = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    raw = np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8)
    if dtype is DType.BOOL:
        raw &= 1
    return raw.view(dtype.numpy).reshape(shape)


def u16_view(values: list[int], dtype: DType) -> np.ndarray:
    return np.array(values, np.uint16).view(dtype.numpy)


def u8_view(values: list[int], dtype: DType) -> np.ndarray:
    return np.array(values, np.uint8).view(dtype.numpy)


def int8_piece(
    name: str,
    q: list[list[int]],
    scales: list[list[float]],
    group: int,
    dtype: DType,
    rows: tuple[int, int] | None = None,
) -> Piece:
    """A quantized piece and the tensor a reader must return: each element is the binary32
    product q * scale, converted to ``dtype`` with round-to-nearest-even (section 5.1)."""
    qa = np.array(q, np.int8)
    sa = np.array(scales, np.float32)
    full = np.repeat(sa, group, axis=1)[:, : qa.shape[1]]
    values = (qa.astype(np.float32) * full).astype(dtype.numpy)
    return Piece(name, values, rows, int8=Int8(qa, sa, group))


def uint4_piece(
    name: str,
    q: list[list[int]],
    scales: list[list[float]],
    zeros: list[list[int]],
    group: int,
    dtype: DType,
    rows: tuple[int, int] | None = None,
) -> Piece:
    """A 4-bit piece and the tensor a reader must return: each element is the binary32 product
    (q - z) * s, converted to ``dtype`` with round-to-nearest-even (section 5.2)."""
    qa = np.array(q, np.uint8)
    sa = np.array(scales, np.float32)
    za = np.array(zeros, np.uint8)
    cols = qa.shape[1]
    s_full = np.repeat(sa, group, axis=1)[:, :cols]
    z_full = np.repeat(za, group, axis=1)[:, :cols].astype(np.float32)
    values = ((qa.astype(np.float32) - z_full) * s_full).astype(dtype.numpy)
    return Piece(name, values, rows, uint4=Uint4(qa, sa, za, group))


BASIC = [
    Piece("embed.weight", bits(DType.F32, (2, 3), 1)),
    Piece("layers.0.bias", np.array([1, -2, 3], "<i8")),
    Piece("layers.0.mask", np.array([7, 0, 255, 1, 9], "<u1")),  # 5 bytes: an odd size
]


# --- valid vectors -------------------------------------------------------------------------------


@dataclass
class Valid:
    name: str
    why: str
    lay: Layout
    chunks: list[Chunk]
    files: list[File] = field(default_factory=list)


# Embedded files of the vectors: a chat template with non-ASCII text and newlines, a tokenizer
# long enough for two zstd frames, arbitrary bytes and an empty file.
TOKENIZER_CONFIG = json.dumps(
    {"chat_template": "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}"
     "<|im_end|>\n{% endfor %}", "model_max_length": 32768, "note": "défaut ✓"},
    ensure_ascii=False,
).encode("utf-8")  # fmt: skip
TOKENIZER = json.dumps(
    {"model": {"type": "BPE", "vocab": {f"tok{i}": i for i in range(800)}}}
).encode("utf-8")
GENERATION_CONFIG = b'{"eos_token_id": [151645, 151643], "do_sample": false}\n'


def valid_vectors() -> list[Valid]:
    out: list[Valid] = []

    def add(name: str, why: str, chunks: list[Chunk], **kw: Any) -> None:
        out.append(Valid(name, why, layout(chunks, **kw), chunks, kw.get("files") or []))

    add(
        "raw_basic",
        "One raw chunk: F32 [2,3], I64 [3] and a 5-byte U8 tensor, 64-byte aligned.",
        [Chunk("model.other", "model.other", BASIC)],
    )
    add(
        "zstd_basic",
        "The same tensors in one zstd chunk (frame records its content size).",
        [Chunk("model.other", "model.other", BASIC, codec="zstd")],
    )
    add(
        "zstd_no_content_size",
        "A zstd frame without a content size but with a checksum: the declared raw_nbytes alone "
        "bounds the decode.",
        [Chunk("model.other", "model.other", BASIC, codec="zstd-nosize")],
    )
    add(
        "empty_tensor",
        "Tensors with a zero dimension ([0], [3,0], [0,5,2]) beside a non-empty one, and a chunk "
        "whose stored and decoded sizes are 0.",
        [
            Chunk(
                "a",
                "g",
                [
                    Piece("empty.0", np.zeros(0, "<f4")),
                    Piece("x", bits(DType.I16, (3,), 2)),
                    Piece("empty.1", np.zeros((3, 0), "<i8")),
                    Piece("empty.2", np.zeros((0, 5, 2), DType.BF16.numpy)),
                ],
            ),
            Chunk("b", "g", [Piece("empty.3", np.zeros((0,), "<u1"))]),
        ],
    )
    add(
        "scalar_0d",
        "0-d tensors (shape []) of F64, BOOL and BF16, raw and zstd.",
        [
            Chunk(
                "r", "g", [Piece("s.f64", np.array(-0.0, "<f8")), Piece("s.bool", np.array(True))]
            ),
            Chunk(
                "z",
                "g",
                [Piece("s.bf16", u16_view([0x7FC1], DType.BF16).reshape(()))],
                codec="zstd",
            ),
        ],
    )
    add(
        "bf16",
        "BF16 bit patterns that value comparison gets wrong: NaN payloads, -0, +-inf, subnormals; "
        "F16 and both float8 types beside them. Compare bytes.",
        [
            Chunk(
                "llm.layer.0",
                "llm.layer.0",
                [
                    Piece(
                        "bf16",
                        u16_view(
                            [
                                0x7FC0,
                                0x7F81,
                                0xFFFF,
                                0x8000,
                                0x0000,
                                0x7F80,
                                0xFF80,
                                0x0001,
                                0x8001,
                                0x3F80,
                                0xBF80,
                                0x4049,
                                0x7F7F,
                                0xFF7F,
                                0x0080,
                                0xC2F7,
                            ],
                            DType.BF16,
                        ).reshape(4, 4),
                    ),
                    Piece("f16", u16_view([0x7E01, 0xFC00, 0x8000, 0x0001, 0x3C00], DType.F16)),
                    Piece(
                        "f8_e4m3",
                        u8_view([0x7F, 0xFF, 0x80, 0x01, 0x38, 0x7E, 0x00], DType.F8_E4M3),
                    ),
                    Piece("f8_e5m2", u8_view([0x7C, 0xFC, 0x7F, 0x80, 0x01, 0x3C], DType.F8_E5M2)),
                ],
            )
        ],
    )
    add(
        "all_dtypes",
        "One tensor of every dtype, 7 elements each (odd byte counts), in zstd.",
        [
            Chunk(
                "all",
                "model.other",
                [Piece(f"t.{dt}", bits(dt, (7,), i)) for i, dt in enumerate(DType)],
                codec="zstd",
            )
        ],
    )
    w = bits(DType.F32, (10, 3), 3)
    b = bits(DType.F32, (10,), 4)
    add(
        "row_blocked",
        "A [10,3] weight and its [10] bias split into row blocks [0,4) [4,8) [8,10) across three "
        "chunks of one group (raw, zstd, raw); readers reassemble them.",
        [
            Chunk("llm.head#0", "llm.head", [Piece("w", w, (0, 4)), Piece("b", b, (0, 4))]),
            Chunk(
                "llm.head#1",
                "llm.head",
                [Piece("w", w, (4, 8)), Piece("b", b, (4, 8))],
                codec="zstd",
            ),
            Chunk("llm.head#2", "llm.head", [Piece("w", w, (8, 10)), Piece("b", b, (8, 10))]),
        ],
    )
    add(
        "unicode_names",
        "Non-ASCII tensor, chunk and group names: CJK, an astral-plane emoji, a control character, "
        "quote and backslash, and a name of exactly 1024 UTF-8 bytes.",
        [
            Chunk(
                "块.0 😀",
                "组.视觉",
                [
                    Piece("模型.层.0.权重", bits(DType.F16, (2, 2), 5)),
                    Piece("emoji😀.bias", bits(DType.U8, (3,), 6)),
                    Piece('tab\there "quoted" back\\slash', bits(DType.I32, (1,), 7)),
                    Piece("é" * 512, bits(DType.U8, (1,), 8)),
                ],
            )
        ],
    )
    add(
        "zero_chunks",
        "No chunks at all: the manifest directly follows the 4096-byte data start.",
        [],
        config={"model_type": "empty"},
    )
    add(
        "config_metadata",
        "A nested config (the source config.json) and free-form string metadata, a lossy flag of "
        "true, in a file whose only chunk holds one tensor.",
        [
            Chunk(
                "llm.norm", "llm.norm", [Piece("llm.model.norm.weight", bits(DType.BF16, (8,), 9))]
            )
        ],
        config={
            "model_type": "minicpmv",
            "hidden_size": 8,
            "rope_theta": 1000000.0,
            "architectures": ["MiniCPMV"],
            "vision_config": {"patch_size": 14, "ids": [1, 2]},
            "use_cache": True,
            "pad": None,
            "name": "模型",
        },
        metadata={"format": "pt", "note": "free-form ✓", "": ""},
        lossy=True,
    )
    grouped = [
        Piece("w", bits(DType.F32, (5, 3), 15)),
        Piece("h", bits(DType.BF16, (7,), 16)),
        Piece("tail", bits(DType.U8, (3,), 17)),
    ]
    add(
        "bytegroup_zstd",
        "Pipeline [bytegroup 4, zstd]: bytes grouped in 4 planes, then one zstd frame. The "
        "decoded size (64 + 14 -> 128 + 3 = 131 bytes) is not a multiple of 4: a tail of 3 bytes "
        "stays in place.",
        [Chunk("c", "g", grouped, codec="zstd", bytegroup=4)],
    )
    add(
        "bytegroup_raw",
        "Pipeline [bytegroup 2] alone: stored bytes are the grouped stream, uncompressed "
        "(nbytes == raw_nbytes, odd).",
        [
            Chunk(
                "c",
                "g",
                [Piece("h", bits(DType.F16, (6, 5), 18)), Piece("b", bits(DType.U8, (3,), 19))],
                bytegroup=2,
            )
        ],
    )
    add(
        "zstd_frames",
        "A zstd chunk of three frames recorded in `frames` (decoded sizes 50, 0 and the rest; an "
        "empty frame is allowed), followed by a chunk of [bytegroup 8, zstd] split into two frames "
        "in the middle of a plane.",
        [
            Chunk(
                "c0",
                "g",
                [Piece("a", bits(DType.I32, (40,), 20))],
                codec="zstd",
                frame_cuts=(50, 50),
            ),
            Chunk(
                "c1",
                "g",
                [Piece("d", bits(DType.F64, (9,), 21))],
                codec="zstd-nosize",
                bytegroup=8,
                frame_cuts=(5,),
            ),
        ],
    )
    q = [
        [127, -128, 3, -3, 0, 1, -1, 64, 100, -100],
        [1, 2, 3, 4, 5, 6, 7, 8, 9, 10],
        [-127, 0, 127, 0, -5, 5, 50, -50, 25, -25],
    ]
    s3 = [[0.5, 0.25, 1e-3], [1.0, 3.0, 0.1], [2.0**-10, 7.5, 1e30]]
    qb = [[3, -7, 100, 0, -128], [1, 1, 1, 1, 1]]
    add(
        "quantized_int8",
        "INT8 pieces (lossy: true). An F32 [3, 10] tensor with group 4 (the last group of a row is "
        "partial), split into row blocks across a raw and a zstd chunk, each block carrying its "
        "rows' scales; a BF16 [2, 5] tensor with group 8 whose binary32 products round to bf16 "
        "(RNE); q includes -128, which readers must accept; an unquantized bias beside them.",
        [
            Chunk(
                "c0",
                "g",
                [
                    int8_piece("w", q, s3, 4, DType.F32, (0, 2)),
                    Piece("bias", bits(DType.F32, (3,), 22)),
                ],
            ),
            Chunk(
                "c1",
                "g",
                [
                    int8_piece("w", q, s3, 4, DType.F32, (2, 3)),
                    int8_piece("v", qb, [[0.0123], [3.3]], 8, DType.BF16),
                ],
                codec="zstd",
            ),
        ],
        lossy=True,
    )
    q4 = [
        [0, 15, 7, 8, 1, 14, 2, 13, 3, 12],
        [5, 5, 5, 5, 0, 0, 15, 15, 9, 10],
        [15, 0, 15, 0, 6, 7, 8, 9, 11, 4],
    ]
    s4 = [[0.5, 0.25, 1e-3], [1.0, 3.0, 0.1], [2.0**-10, 7.5, 1e30]]
    z4 = [[0, 15, 8], [5, 0, 9], [15, 7, 11]]
    add(
        "quantized_uint4",
        "uint4 pieces (section 5.2; lossy: true). An F32 [3, 10] tensor with group 4: three groups "
        "a row, the last partial (2 elements), split nibbles (5 bytes a row); zero points 0 to 15 "
        "after the scales, 64-byte aligned; split into row blocks across a raw and a zstd chunk, "
        "each block carrying its rows' scales and zero points. A BF16 [2, 5] tensor with group 6: "
        "one partial group of odd length, so each row's last high nibble is unused (0); its "
        "binary32 products round to bf16 (RNE). An unquantized bias beside them.",
        [
            Chunk(
                "c0",
                "g",
                [
                    uint4_piece("w", q4, s4, z4, 4, DType.F32, (0, 2)),
                    Piece("bias", bits(DType.F32, (3,), 24)),
                ],
            ),
            Chunk(
                "c1",
                "g",
                [
                    uint4_piece("w", q4, s4, z4, 4, DType.F32, (2, 3)),
                    uint4_piece(
                        "v",
                        [[1, 2, 3, 4, 15], [0, 9, 8, 7, 6]],
                        [[0.0123], [3.3]],
                        [[3], [12]],
                        6,
                        DType.BF16,
                    ),
                ],
                codec="zstd",
            ),
        ],
        lossy=True,
    )
    add(
        "multi_group_gaps",
        "Three groups in execution order; chunks separated by an unused page and tensors by extra "
        "padding (both allowed: readers follow offsets, never assume adjacency).",
        [
            Chunk("vision.embed", "vision.embed", [Piece("v.e", bits(DType.F32, (3,), 10))]),
            Chunk(
                "vision.layer.0",
                "vision.layer.0",
                [
                    Piece("v.l0.a", bits(DType.F16, (5,), 11)),
                    Piece("v.l0.b", bits(DType.F16, (5,), 12), pad=2),
                ],
                gap_pages=1,
            ),
            Chunk(
                "resampler", "resampler", [Piece("r.q", bits(DType.BF16, (2, 2), 13))], codec="zstd"
            ),
        ],
    )
    add(
        "files_raw",
        "Three embedded files stored raw after the chunk (section 13): a JSON chat template with "
        "non-ASCII text, 768 arbitrary bytes, and an empty file; each on its own page.",
        [Chunk("model.other", "model.other", BASIC)],
        files=[
            File("tokenizer_config.json", TOKENIZER_CONFIG),
            File("blob.bin", bytes(range(256)) * 3),
            File("Empty_file-0", b""),
        ],
    )
    add(
        "files_zstd",
        "Embedded files in zstd: one split into two recorded frames, one frame without a content "
        "size (with a checksum) after an unused page; listed in reverse file order (allowed).",
        [Chunk("model.other", "model.other", BASIC, codec="zstd")],
        files=[
            File("tokenizer.json", TOKENIZER, codec="zstd", frame_cuts=(8192,)),
            File("generation_config.json", GENERATION_CONFIG, codec="zstd-nosize", gap_pages=1),
        ],
    )
    out[-1].lay.doc["files"].reverse()
    out[-1].files.reverse()
    add(
        "files_only",
        "No chunk at all, one embedded file: its payload starts the chunk data area at 4096.",
        [],
        files=[File("generation_config.json", GENERATION_CONFIG)],
    )
    # One layer packed with --fold qkv (SPEC.md section 14): the fused [q; k; v] weight [8, 4]
    # (q 4 rows, GQA k and v 2 rows each) and bias [8] in place of the three projections.
    add(
        "folds_qkv",
        "A folded file (section 14): `folds` lists `qkv`; the layer holds the fused "
        "self_attn.qkv_proj weight [8, 4] (q 4 rows, k and v 2 each) and bias [8], in place of "
        "the q, k and v projections.",
        [
            Chunk(
                "llm.layer.0",
                "llm.layer.0",
                [
                    Piece("llm.model.layers.0.input_layernorm.weight", bits(DType.BF16, (4,), 31)),
                    Piece(
                        "llm.model.layers.0.self_attn.qkv_proj.weight",
                        bits(DType.BF16, (8, 4), 32),
                    ),
                    Piece("llm.model.layers.0.self_attn.qkv_proj.bias", bits(DType.BF16, (8,), 33)),
                ],
            )
        ],
        folds=["qkv"],
    )
    return out


# --- invalid vectors -----------------------------------------------------------------------------


@dataclass
class Invalid:
    name: str
    error: str  # the wstream.errors.FormatError subclass
    why: str
    data: bytes
    stage: str = "open"  # "open": rejected when opened; "read": when the named chunk is read
    chunk: str | None = None
    file: str | None = None  # "read" of an embedded file: reading or verifying it fails


def small() -> Layout:
    """The base most invalid vectors break: a raw chunk, then a zstd chunk with row blocks."""
    w = bits(DType.F32, (4, 2), 20)
    return layout(
        [
            Chunk("c0", "g0", [Piece("a", bits(DType.F32, (3,), 21)), Piece("w", w, (0, 2))]),
            Chunk(
                "c1",
                "g0",
                [Piece("w", w, (2, 4)), Piece("b", bits(DType.I16, (5,), 22))],
                codec="zstd",
            ),
        ],
        config={"model_type": "x"},
    )


def edited(fn: Callable[[dict[str, Any]], Any]) -> bytes:
    lay = small()
    fn(lay.doc)
    return build(lay)


def text_edited(old: bytes, new: bytes) -> bytes:
    lay = small()
    body = lay.manifest()
    if old not in body:
        raise AssertionError(f"{old!r} not in the base manifest")
    return assemble(lay.payloads, body.replace(old, new, 1))


def with_chunk1(stored: bytes, frames: list[list[int]] | None = None) -> bytes:
    """Replace chunk c1's stored bytes, keeping its CRC correct (so the codec is what fails);
    ``frames``: record these zstd frames."""
    lay = small()
    off, _ = lay.payloads[1]
    lay.payloads[1] = (off, stored)
    lay.doc["chunks"][1].update(nbytes=len(stored), crc32=zlib.crc32(stored))
    if frames is not None:
        lay.doc["chunks"][1]["codec"][0]["frames"] = frames
    return build(lay)


def _with_metadata_text(text: bytes) -> bytes:
    lay = small()
    lay.doc["metadata"] = {"k": "v"}
    return assemble(lay.payloads, lay.manifest().replace(b'{"k":"v"}', text, 1))


def small_quant() -> Layout:
    """A lossy file whose chunk holds an int8 F32 [2, 4] piece (group 4) and its scales."""
    return layout(
        [
            Chunk(
                "c0",
                "g0",
                [
                    int8_piece(
                        "w", [[1, -2, 3, -4], [5, 6, 7, -128]], [[0.5], [0.25]], 4, DType.F32
                    ),
                    Piece("b", bits(DType.F32, (2,), 23)),
                ],
            )
        ],
        lossy=True,
    )


def quant_edited(fn: Callable[[dict[str, Any]], Any], *, lossy: bool = True) -> bytes:
    lay = small_quant()
    fn(lay.doc["chunks"][0]["tensors"][0])
    lay.doc["lossy"] = lossy
    return build(lay)


def small_uint4(zero: int = 3) -> Layout:
    """A lossy file whose chunk holds an F32 [2] bias at 0, then a uint4 F32 [2, 8] piece with
    group 128 (one partial group a row): values [64, 72), scales [128, 136), zero points
    [192, 194), the end of the chunk (so any larger region runs past raw_nbytes)."""
    return layout(
        [
            Chunk(
                "c0",
                "g0",
                [
                    Piece("b", bits(DType.F32, (2,), 25)),
                    uint4_piece(
                        "w",
                        [[0, 1, 2, 3, 12, 13, 14, 15], [15, 7, 0, 8, 1, 2, 3, 4]],
                        [[0.5], [0.25]],
                        [[zero], [8]],
                        128,
                        DType.F32,
                    ),
                ],
            )
        ],
        lossy=True,
    )


def uint4_edited(fn: Callable[[dict[str, Any]], Any]) -> bytes:
    lay = small_uint4()
    fn(lay.doc["chunks"][0]["tensors"][1])
    return build(lay)


def chunk1_raw() -> bytes:
    lay = small()
    return zstandard.ZstdDecompressor().decompress(lay.payloads[1][1])


def invalid_vectors() -> list[Invalid]:
    good = build(small())
    lay = small()
    m_off = len(good) - len(lay.manifest())
    out: list[Invalid] = []

    def add(name: str, error: str, why: str, data: bytes, **kw: Any) -> None:
        if data == good:
            raise AssertionError(f"{name}: identical to the valid base")
        out.append(Invalid(name, error, why, data, **kw))

    def pre(**kw: Any) -> bytes:
        return assemble(lay.payloads, lay.manifest(), **kw)

    add(
        "truncated_file_preamble",
        "TruncatedFile",
        "40 bytes: shorter than the 64-byte preamble.",
        good[:40],
    )
    add(
        "truncated_file_chunk",
        "TruncatedFile",
        "Cut inside chunk c0: the preamble declares a manifest past the end.",
        good[: DATA_START + 10],
    )
    add(
        "truncated_file_manifest",
        "TruncatedFile",
        "The last byte of the manifest is missing.",
        good[:-1],
    )
    add(
        "trailing_bytes",
        "TrailingBytes",
        "One byte after the manifest, which must end the file.",
        good + b"\n",
    )
    add(
        "bad_magic",
        "BadMagic",
        "Text-mode mangled magic (CRLF turned into LF).",
        pre(magic=b"\x89WST\n\x1a\n\x00"),
    )
    add(
        "unsupported_version",
        "UnsupportedVersion",
        "Version 2 (with a correct preamble CRC).",
        pre(version=2),
    )
    add(
        "preamble_checksum_mismatch",
        "PreambleChecksumMismatch",
        "preamble_crc32 does not match bytes [0, 60).",
        pre(preamble_crc=0x12345678),
    )
    add(
        "reserved_not_zero_flags",
        "ReservedNotZero",
        "flags = 1 (must be 0 in version 1).",
        pre(flags=1),
    )
    add(
        "reserved_not_zero_reserved",
        "ReservedNotZero",
        "The last reserved byte is 0x01.",
        pre(reserved=bytes(23) + b"\x01"),
    )
    add(
        "manifest_too_large",
        "ManifestTooLarge",
        "The preamble declares a 200 MB manifest (limit 64 MiB) in a small file: it must be "
        "rejected from the preamble alone, before anything is allocated or read.",
        pre(m_len=200_000_000),
    )
    add(
        "manifest_checksum_mismatch",
        "ManifestChecksumMismatch",
        "manifest_crc32 does not match the manifest bytes.",
        pre(m_crc=0),
    )
    add(
        "manifest_syntax_bad_utf8",
        "ManifestSyntaxError",
        "A 0xFF byte inside a JSON string.",
        text_edited(b'"model_type"', b'"model\xff_type"'),
    )
    add(
        "manifest_syntax_duplicate_key",
        "ManifestSyntaxError",
        'The key "lossy" appears twice at top level.',
        text_edited(b'{"writer"', b'{"lossy":true,"writer"'),
    )
    add(
        "manifest_syntax_nan",
        "ManifestSyntaxError",
        "NaN in the config (strict JSON only).",
        text_edited(b'{"model_type":"x"}', b'{"model_type":NaN}'),
    )
    add(
        "manifest_schema_missing_field",
        "ManifestSchemaError",
        "Chunk c1 has no crc32 field.",
        edited(lambda d: d["chunks"][1].pop("crc32")),
    )
    add(
        "manifest_schema_unknown_field",
        "ManifestSchemaError",
        'An unknown top-level field "compression".',
        edited(lambda d: d.update(compression="x")),
    )
    add(
        "manifest_schema_float_offset",
        "ManifestSchemaError",
        "A chunk offset written as 4096.0 (sizes are integers).",
        edited(lambda d: d["chunks"][0].update(offset=4096.0)),
    )
    add(
        "limit_exceeded_ndim",
        "LimitExceeded",
        "A tensor shape with 9 dimensions (limit 8).",
        edited(lambda d: d["chunks"][0]["tensors"][0].update(shape=[3] + [1] * 8)),
    )
    add(
        "limit_exceeded_name_length",
        "LimitExceeded",
        "A tensor name of 1025 UTF-8 bytes (limit 1024).",
        edited(lambda d: d["chunks"][0]["tensors"][0].update(name="é" * 512 + "x")),
    )
    add(
        "limit_exceeded_tensor_size",
        "LimitExceeded",
        "Shape [2^40, 2^40, 2^40] of F32: a size that wraps a u64 (checked with unbounded "
        "integers, limit 2^48 bytes).",
        edited(lambda d: d["chunks"][0]["tensors"][0].update(shape=[2**40] * 3)),
    )
    add(
        "limit_exceeded_dimension",
        "LimitExceeded",
        "Shape [0, 2^40, 2^40] of F32: no elements, but dimensions no array library can hold "
        "(the product of the non-zero dimensions times 4 bytes is 2^82, limit 2^48).",
        edited(lambda d: d["chunks"][0]["tensors"][0].update(shape=[0, 2**40, 2**40])),
    )
    add(
        "limit_exceeded_nesting",
        "LimitExceeded",
        "The config nests 65 levels deep (limit 64 for the whole manifest).",
        edited(lambda d: d.update(config=json.loads("[" * 65 + "]" * 65))),
    )
    add(
        "unknown_dtype",
        "UnknownDType",
        'dtype "F128".',
        edited(lambda d: d["chunks"][0]["tensors"][0].update(dtype="F128")),
    )
    add(
        "unknown_codec",
        "UnknownCodec",
        'codec id "lz4".',
        edited(lambda d: d["chunks"][1]["codec"][0].update(id="lz4")),
    )
    add(
        "misaligned_offset_chunk",
        "MisalignedOffset",
        "Chunk c0 at offset 4096 + 64 (chunks start on 4096-byte boundaries).",
        edited(lambda d: d["chunks"][0].update(offset=d["chunks"][0]["offset"] + 64)),
    )
    add(
        "misaligned_offset_tensor",
        "MisalignedOffset",
        "A tensor at offset 32 inside its chunk (tensors are 64-byte aligned).",
        edited(lambda d: d["chunks"][0]["tensors"][1].update(offset=32)),
    )
    add(
        "out_of_bounds_chunk_past_end",
        "OutOfBounds",
        "Chunk c1's offset is past the end of the chunk data area (the manifest offset).",
        edited(lambda d: d["chunks"][1].update(offset=1 << 40)),
    )
    add(
        "out_of_bounds_chunk_into_manifest",
        "OutOfBounds",
        "Chunk c1's nbytes runs into the manifest.",
        edited(lambda d: d["chunks"][1].update(nbytes=m_off)),
    )
    add(
        "out_of_bounds_size_overflow",
        "OutOfBounds",
        "Chunk c1's nbytes is 2^64-1: offset + nbytes overflows a u64 (checked with unbounded "
        "integers).",
        edited(lambda d: d["chunks"][1].update(nbytes=2**64 - 1)),
    )
    add(
        "out_of_bounds_tensor",
        "OutOfBounds",
        "A tensor extends past its chunk's raw_nbytes.",
        edited(lambda d: d["chunks"][0]["tensors"][1].update(offset=128)),
    )
    add(
        "overlapping_regions_chunks",
        "OverlappingRegions",
        "Chunk c1 starts at the same offset as chunk c0.",
        edited(lambda d: d["chunks"][1].update(offset=d["chunks"][0]["offset"])),
    )
    add(
        "overlapping_regions_tensors",
        "OverlappingRegions",
        "Two tensors of chunk c0 share bytes.",
        edited(lambda d: d["chunks"][0]["tensors"][1].update(offset=0)),
    )
    add(
        "duplicate_name_chunk",
        "DuplicateName",
        "Both chunks are named c0.",
        edited(lambda d: d["chunks"][1].update(name="c0")),
    )
    add(
        "duplicate_name_tensor",
        "DuplicateName",
        'Tensor "a" (I16 [5]) is declared whole in chunk c0 and again in chunk c1.',
        edited(
            lambda d: (
                d["chunks"][0]["tensors"][0].update(dtype="I16", shape=[5]),
                d["chunks"][1]["tensors"][1].update(name="a"),
            )
        ),
    )
    add(
        "tensor_layout_error_gap",
        "TensorLayoutError",
        "Row blocks [0,2) then [3,4): row 2 is missing.",
        edited(lambda d: d["chunks"][1]["tensors"][0].update(rows=[3, 4])),
    )
    add(
        "tensor_layout_error_incomplete",
        "TensorLayoutError",
        "Row blocks [0,2) [2,4) of a tensor declared with 5 rows.",
        edited(
            lambda d: [
                d["chunks"][i]["tensors"][j].update(shape=[5, 2]) for i, j in ((0, 1), (1, 0))
            ]
        ),
    )
    add(
        "group_layout_error",
        "GroupLayoutError",
        "Groups g0, g1, g0: a group's chunks must be contiguous.",
        _three_chunks_groups(),
    )
    add(
        "decoded_size_mismatch_raw",
        "DecodedSizeMismatch",
        "A raw chunk whose raw_nbytes differs from its stored nbytes.",
        edited(lambda d: d["chunks"][0].update(raw_nbytes=d["chunks"][0]["raw_nbytes"] + 64)),
    )
    add(
        "manifest_syntax_float_overflow",
        "ManifestSyntaxError",
        "The number 1e400 in the config overflows binary64 (rule B4).",
        text_edited(b'{"model_type":"x"}', b'{"model_type":1e400}'),
    )
    add(
        "manifest_schema_surrogate",
        "ManifestSchemaError",
        "A metadata value holds the escape \\ud800, an unpaired surrogate (rule B6).",
        _with_metadata_text(b'{"k":"\\ud800"}'),
    )
    add(
        "limit_exceeded_pipeline_steps",
        "LimitExceeded",
        "A codec pipeline of 3 steps (at most 2).",
        edited(
            lambda d: d["chunks"][1].update(
                codec=[{"id": "bytegroup", "size": 2}] + [{"id": "zstd", "level": 3}] * 2
            )
        ),
    )
    add(
        "manifest_schema_bytegroup_size",
        "ManifestSchemaError",
        "bytegroup size 3 (one of 2, 4, 8).",
        edited(
            lambda d: d["chunks"][1].update(
                codec=[{"id": "bytegroup", "size": 3}, {"id": "zstd", "level": 3}]
            )
        ),
    )
    add(
        "manifest_schema_zstd_not_last",
        "ManifestSchemaError",
        "Pipeline [zstd, bytegroup]: bytegroup must come first, zstd last.",
        edited(
            lambda d: d["chunks"][1].update(
                codec=[{"id": "zstd", "level": 3}, {"id": "bytegroup", "size": 2}]
            )
        ),
    )
    add(
        "out_of_bounds_frames",
        "OutOfBounds",
        "zstd frames whose stored sizes sum to one byte less than nbytes.",
        edited(
            lambda d: d["chunks"][1]["codec"][0].update(
                frames=[[d["chunks"][1]["nbytes"] - 1, d["chunks"][1]["raw_nbytes"]]]
            )
        ),
    )
    add(
        "decoded_size_mismatch_frames",
        "DecodedSizeMismatch",
        "Two zstd frames whose decoded sizes sum to one byte more than raw_nbytes.",
        edited(
            lambda d: d["chunks"][1]["codec"][0].update(
                frames=[[d["chunks"][1]["nbytes"] - 1, d["chunks"][1]["raw_nbytes"]], [1, 1]]
            )
        ),
    )
    add(
        "decoded_size_mismatch_bytegroup",
        "DecodedSizeMismatch",
        "Pipeline [bytegroup 4] without zstd, raw_nbytes differing from nbytes.",
        edited(
            lambda d: d["chunks"][0].update(
                codec=[{"id": "bytegroup", "size": 4}], raw_nbytes=d["chunks"][0]["raw_nbytes"] + 64
            )
        ),
    )
    add(
        "unknown_codec_quant_scheme",
        "UnknownCodec",
        'A quantized piece with scheme "int4".',
        quant_edited(lambda t: t["quant"].update(scheme="int4")),
    )
    add(
        "tensor_layout_error_quant_dtype",
        "TensorLayoutError",
        "A quantized piece declared I32 (only F16, BF16, F32, F64 dequantize).",
        quant_edited(lambda t: t.update(dtype="I32")),
    )
    add(
        "misaligned_offset_scales",
        "MisalignedOffset",
        "Quantization scales at offset 72 (not a multiple of 64).",
        quant_edited(lambda t: t["quant"].update(scales=t["quant"]["scales"] + 8)),
    )
    add(
        "out_of_bounds_scales",
        "OutOfBounds",
        "Quantization scales past the chunk's raw_nbytes.",
        quant_edited(lambda t: t["quant"].update(scales=t["quant"]["scales"] + 64 * 4)),
    )
    add(
        "overlapping_regions_scales",
        "OverlappingRegions",
        "Quantization scales placed on the piece's own int8 values.",
        quant_edited(lambda t: t["quant"].update(scales=t["offset"])),
    )
    add(
        "manifest_schema_quant_not_lossy",
        "ManifestSchemaError",
        "A quantized piece in a file that says lossy: false (rule F1).",
        quant_edited(lambda t: None, lossy=False),
    )
    add(
        "overlapping_regions_uint4_packed_size",
        "OverlappingRegions",
        "A uint4 piece whose shape says [2, 120] (still one group a row, so one scale and one zero "
        "point a row): its packed values, 2 * ceil(120 / 2) = 120 bytes from offset 64, run over "
        "its scales at 128. A reader that took one byte a value would overlap even more.",
        uint4_edited(lambda t: t.update(shape=[2, 120])),
    )
    add(
        "out_of_bounds_uint4_packed_size",
        "OutOfBounds",
        "A uint4 piece whose shape says [2, 300]: its packed values (300 bytes from offset 64) "
        "end past the chunk's raw_nbytes (194), rule E11.",
        uint4_edited(lambda t: t.update(shape=[2, 300])),
    )
    add(
        "out_of_bounds_uint4_scale_count",
        "OutOfBounds",
        "A uint4 piece stored with one scale and one zero point a row (group 128 over 8 columns) "
        "whose manifest says group 4: 2 * 2 scales, then 4 zero points from offset 192, which end "
        "past raw_nbytes (194), rule E13.",
        uint4_edited(lambda t: t["quant"].update(group=4)),
    )
    add(
        "manifest_schema_uint4_odd_group",
        "ManifestSchemaError",
        "A uint4 piece with group 127: a uint4 group is even (two values a byte).",
        uint4_edited(lambda t: t["quant"].update(group=127)),
    )
    add(
        "zero_point_out_of_range",
        "ZeroPointOutOfRange",
        "A uint4 piece whose first zero point byte is 16 (every checksum correct): reading or "
        "verifying chunk c0 must fail (rule G3), never return (q - 16) * s.",
        build(small_uint4(zero=16)),
        stage="read",
        chunk="c0",
    )
    add(
        "chunk_checksum_mismatch",
        "ChunkChecksumMismatch",
        "One bit of chunk c0's stored bytes flipped; the manifest keeps the old CRC.",
        _flip(good, lay.payloads[0][0] + 5),
        stage="read",
        chunk="c0",
    )
    raw1 = chunk1_raw()
    add(
        "decoded_size_mismatch_zstd",
        "DecodedSizeMismatch",
        "Chunk c1's zstd frame decodes to 64 bytes more than its raw_nbytes (the frame header "
        "records no size; CRC correct).",
        with_chunk1(zstd(raw1 + bytes(64), content_size=False)),
        stage="read",
        chunk="c1",
    )
    add(
        "decoded_size_mismatch_zstd_header",
        "DecodedSizeMismatch",
        "Chunk c1's zstd frame header declares one byte less than raw_nbytes (CRC correct).",
        with_chunk1(zstd(raw1[:-1])),
        stage="read",
        chunk="c1",
    )
    add(
        "corrupt_chunk",
        "CorruptChunk",
        "Chunk c1 declares zstd but stores bytes that are not a zstd frame (CRC correct).",
        with_chunk1(b"definitely not zstd"),
        stage="read",
        chunk="c1",
    )
    f1, f2 = zstd(raw1[:30]), zstd(raw1[30:])
    add(
        "corrupt_chunk_frame_boundary",
        "CorruptChunk",
        "Chunk c1 holds two zstd frames, but `frames` puts the split 2 bytes into the second "
        "frame (sizes still sum correctly; CRC correct).",
        with_chunk1(f1 + f2, frames=[[len(f1) + 2, 30], [len(f2) - 2, len(raw1) - 30]]),
        stage="read",
        chunk="c1",
    )
    add(
        "decoded_size_mismatch_frame",
        "DecodedSizeMismatch",
        "Chunk c1 holds two zstd frames of 30 and 50 decoded bytes, recorded as 31 and 49.",
        with_chunk1(f1 + f2, frames=[[len(f1), 31], [len(f2), len(raw1) - 31]]),
        stage="read",
        chunk="c1",
    )
    frame = zstd(raw1)
    add(
        "corrupt_chunk_truncated_frame",
        "CorruptChunk",
        "Chunk c1's zstd frame lacks its last 3 bytes (CRC correct).",
        with_chunk1(frame[:-3]),
        stage="read",
        chunk="c1",
    )
    add(
        "corrupt_chunk_trailing_data",
        "CorruptChunk",
        "Chunk c1 stores a complete zstd frame followed by 4 more bytes: a chunk is exactly one "
        "frame (CRC correct).",
        with_chunk1(frame + b"\x00\x01\x02\x03"),
        stage="read",
        chunk="c1",
    )
    out.extend(file_vectors())
    out.extend(fold_vectors())
    return out


def fold_vectors() -> list[Invalid]:
    """Each breaks one rule of phase J (SPEC.md section 9)."""
    out = []
    for name, error, why, folds in [
        ("folds_empty", "ManifestSchemaError", "`folds` is an empty list (rule J1).", []),
        (
            "folds_too_many",
            "LimitExceeded",
            "`folds` lists 17 names, one more than MAX_FOLDS (rule J1).",
            ["qkv"] * 17,
        ),
        ("folds_not_string", "ManifestSchemaError", "`folds` holds the number 1 (rule J2).", [1]),
        (
            "folds_unknown",
            "UnknownCodec",
            "`folds` names 'unknown-fold', a fold this reader does not implement (rule J2).",
            ["qkv", "unknown-fold"],
        ),
        ("folds_duplicate", "DuplicateName", "`folds` lists 'qkv' twice (rule J3).", ["qkv"] * 2),
    ]:
        lay = layout([Chunk("c0", "g0", [Piece("a", bits(DType.F32, (3,), 21))])], folds=folds)
        out.append(Invalid(name, error, why, build(lay)))
    return out


def small_files(files: list[File] | None = None) -> Layout:
    """The base of the embedded-file vectors: one raw chunk, then two raw files."""
    if files is None:
        files = [
            File("tokenizer.json", TOKENIZER[:600]),
            File("generation_config.json", GENERATION_CONFIG),
        ]
    return layout([Chunk("c0", "g0", [Piece("a", bits(DType.F32, (3,), 21))])], files=files)


def files_edited(fn: Callable[[list[dict[str, Any]]], Any], **kw: Any) -> bytes:
    lay = small_files(**kw)
    fn(lay.doc["files"])
    return build(lay)


def file_vectors() -> list[Invalid]:
    """Each breaks one rule of phases H and I (SPEC.md section 9)."""
    out: list[Invalid] = []
    good = build(small_files())

    def add(name: str, error: str, why: str, data: bytes, **kw: Any) -> None:
        if data == good:
            raise AssertionError(f"{name}: identical to the valid base")
        out.append(Invalid(name, error, why, data, **kw))

    def entry(i: int, **values: Any) -> Callable[[list[dict[str, Any]]], Any]:
        return lambda files: files[i].update(values)

    add(
        "file_overlaps_chunk",
        "OverlappingRegions",
        "An embedded file's offset is chunk c0's: its bytes would be the chunk's (rule H11).",
        files_edited(entry(1, offset=DATA_START)),
    )
    add(
        "file_overlaps_file",
        "OverlappingRegions",
        "Two embedded files at one offset, both non-empty (rule H11).",
        files_edited(lambda f: f[1].update(offset=f[0]["offset"])),
    )
    add(
        "file_bad_name",
        "ManifestSchemaError",
        "An embedded file named '../tokenizer.json': a path, not a plain file name (rule H3).",
        files_edited(entry(0, name="../tokenizer.json")),
    )
    add(
        "file_duplicate_name",
        "DuplicateName",
        "Two embedded files named 'tokenizer.json' (rule H10).",
        files_edited(entry(1, name="tokenizer.json")),
    )
    add(
        "file_duplicate_name_case",
        "DuplicateName",
        "Embedded files 'tokenizer.json' and 'Tokenizer.JSON': one path on a case-insensitive "
        "filesystem (rule H10).",
        files_edited(entry(1, name="Tokenizer.JSON")),
    )
    add(
        "file_too_many",
        "LimitExceeded",
        "33 embedded files (empty ones at one offset, which is allowed): one more than MAX_FILES "
        "(rule H1).",
        build(small_files([File(f"f{i:02d}", b"") for i in range(33)])),
    )
    big = zstandard.ZstdCompressor(level=1).compress(bytes((64 << 20) + 1))
    add(
        "file_too_large",
        "LimitExceeded",
        "An embedded file of 64 MiB + 1 zero bytes (a 2 KiB zstd frame): raw_nbytes exceeds "
        "MAX_FILE_NBYTES, rejected before any decode (rule H7).",
        _file_payload(big, (64 << 20) + 1, [{"id": "zstd"}]),
    )
    add(
        "file_bytegroup_codec",
        "ManifestSchemaError",
        "An embedded file with codec [bytegroup]: a file's codec is [] or [zstd] (rule H9).",
        files_edited(entry(1, codec=[{"id": "bytegroup", "size": 2}])),
    )
    add(
        "file_misaligned",
        "MisalignedOffset",
        "An embedded file's offset is not a multiple of 4096 (rule H5).",
        files_edited(lambda f: f[0].update(offset=f[0]["offset"] + 64)),
    )
    add(
        "file_out_of_bounds",
        "OutOfBounds",
        "An embedded file's bytes run past manifest_offset (rule H6).",
        files_edited(lambda f: f[1].update(nbytes=f[1]["nbytes"] + 4096)),
    )
    lay = small_files()
    off, stored = lay.payloads[1]
    lay.payloads[1] = (off, _flip(stored, 10))
    add(
        "file_checksum_mismatch",
        "ChunkChecksumMismatch",
        "One bit of the embedded tokenizer.json flipped: its CRC-32 no longer matches (rule I1).",
        build(lay),
        stage="read",
        file="tokenizer.json",
    )
    frame = zstd(GENERATION_CONFIG + bytes(64), content_size=False, checksum=True)
    add(
        "file_decoded_size_mismatch",
        "DecodedSizeMismatch",
        "An embedded file's zstd frame decodes to 64 bytes more than its raw_nbytes (no content "
        "size in the frame; CRC correct; rule I2).",
        _file_payload(
            frame, len(GENERATION_CONFIG), [{"id": "zstd"}], name="generation_config.json"
        ),
        stage="read",
        file="generation_config.json",
    )
    add(
        "file_corrupt",
        "CorruptChunk",
        "An embedded file declares zstd but stores bytes that are not a zstd frame (CRC correct; "
        "rule I2).",
        _file_payload(b"definitely not zstd", 64, [{"id": "zstd"}], name="generation_config.json"),
        stage="read",
        file="generation_config.json",
    )
    return out


def _file_payload(
    stored: bytes, raw_nbytes: int, codec: list[dict[str, Any]], *, name: str = "zeros.bin"
) -> bytes:
    """small_files() with file ``name``'s stored bytes and sizes replaced (its CRC correct)."""
    lay = small_files([File("tokenizer.json", TOKENIZER[:600]), File(name, b"")])
    off, _ = lay.payloads[-1]
    lay.payloads[-1] = (off, stored)
    lay.doc["files"][-1].update(
        nbytes=len(stored), raw_nbytes=raw_nbytes, crc32=zlib.crc32(stored), codec=codec
    )
    return build(lay)


def _flip(data: bytes, at: int) -> bytes:
    b = bytearray(data)
    b[at] ^= 0x01
    return bytes(b)


def _three_chunks_groups() -> bytes:
    return build(
        layout(
            [
                Chunk("c0", "g0", [Piece("a", bits(DType.U8, (3,), 30))]),
                Chunk("c1", "g1", [Piece("b", bits(DType.U8, (3,), 31))]),
                Chunk("c2", "g0", [Piece("c", bits(DType.U8, (3,), 32))]),
            ]
        )
    )


# --- output --------------------------------------------------------------------------------------


def expectation(v: Valid) -> dict[str, Any]:
    tensors: dict[str, dict[str, Any]] = {}
    for ch in v.lay.doc["chunks"]:
        for t in ch["tensors"]:
            tensors.setdefault(t["name"], {"dtype": t["dtype"], "shape": t["shape"]})
    arrays: dict[str, np.ndarray] = {}
    for ch in v.chunks:
        for p in ch.pieces:
            arrays[p.name] = p.array
    for name, info in tensors.items():
        info["data_hex"] = arrays[name].tobytes().hex()
    return {
        "description": v.why,
        "writer": v.lay.doc["writer"],
        "lossy": v.lay.doc["lossy"],
        "config": v.lay.doc["config"],
        "metadata": v.lay.doc["metadata"],
        "groups": list(dict.fromkeys(ch["group"] for ch in v.lay.doc["chunks"])),
        "chunks": [
            {
                "name": ch["name"],
                "group": ch["group"],
                "codec": "+".join(c["id"] for c in ch["codec"]) or "raw",
            }
            for ch in v.lay.doc["chunks"]
        ],
        "tensors": tensors,
        **({"files": file_expectation(v)} if v.files else {}),
        **({"folds": v.lay.doc["folds"]} if "folds" in v.lay.doc else {}),
    }


def file_expectation(v: Valid) -> list[dict[str, Any]]:
    """Each embedded file in manifest order: its sizes, codec and bytes (as hex)."""
    return [
        {
            "name": entry["name"],
            "nbytes": entry["nbytes"],
            "raw_nbytes": entry["raw_nbytes"],
            "codec": "+".join(c["id"] for c in entry["codec"]) or "raw",
            "data_hex": f.data.hex(),
        }
        for entry, f in zip(v.lay.doc["files"], v.files, strict=True)
    ]


def write_json(path: Path, doc: Any) -> None:
    path.write_text(json.dumps(doc, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")


def readme(valid: list[Valid], invalid: list[Invalid]) -> str:
    lines = [
        "# .wst test vectors",
        "",
        "Generated by `tools/make_vectors.py` (never by tests; regenerate deliberately).",
        "Tests read them in `tests/test_vectors.py`. Each `NAME.wst` has a `NAME.json` beside it.",
        "",
        "- `valid/NAME.json`: what a reader must return. `tensors` maps each tensor name to its",
        "  `dtype` (safetensors spelling), `shape`, and `data_hex`: its bytes, little-endian,",
        "  C order, row blocks reassembled. Also `config`, `metadata`, `lossy`, `groups` (file",
        "  order) and `chunks` (name, group, codec). Compare bytes, not values (NaN, -0). With",
        "  embedded files (SPEC.md section 13), `files`: each one's `name`, `nbytes`,",
        "  `raw_nbytes`, `codec` and `data_hex`, in manifest order. With folds (section 14),",
        "  `folds`: the names the manifest lists.",
        "- `invalid/NAME.json`: `error`, the `wstream.errors.FormatError` subclass a reader must",
        "  raise; `stage`, `open` (rejected while reading the preamble and manifest) or `read`",
        "  (the metadata is valid; reading or verifying chunk `chunk`, or embedded file `file`,",
        "  fails); and `description`.",
        "- Both carry `sha256` of the `.wst` file, so a stray edit is caught.",
        "",
        "Each invalid file breaks one rule; every checksum not under test is correct, so a reader",
        "must get past the other checks to reach the one under test (preamble checks come first,",
        "in the order magic, version, preamble CRC, reserved, manifest size, offsets, file size).",
        "",
        "## valid",
        "",
        "| vector | exercises |",
        "|---|---|",
    ]
    lines += [f"| `{v.name}` | {v.why} |" for v in valid]
    lines += ["", "## invalid", "", "| vector | error | stage | why |", "|---|---|---|---|"]
    lines += [f"| `{v.name}` | `{v.error}` | {v.stage} | {v.why} |" for v in invalid]
    return "\n".join(lines) + "\n"


def check(root: Path) -> list[str]:
    """Read every vector back with wstream; return the disagreements."""
    from wstream import errors
    from wstream.container.reader import Container

    problems = []
    for exp_path in sorted((root / "valid").glob("*.json")):
        exp = json.loads(exp_path.read_text(encoding="utf-8"))
        try:
            with Container(exp_path.with_suffix(".wst")) as c:
                c.verify()
                got = dict(c.tensors())
                for name, info in exp["tensors"].items():
                    a = got.pop(name)
                    if (str(DType.from_numpy(a.dtype)), list(a.shape), a.tobytes().hex()) != (
                        info["dtype"],
                        info["shape"],
                        info["data_hex"],
                    ):
                        problems.append(f"valid/{exp_path.stem}: tensor {name!r} differs")
                if got:
                    problems.append(f"valid/{exp_path.stem}: unexpected tensors {sorted(got)}")
                files = [
                    {"name": f.name, "nbytes": f.nbytes, "raw_nbytes": f.raw_nbytes,
                     "codec": "+".join(s.id for s in f.codec) or "raw",
                     "data_hex": c.read_file(f.name).hex()}
                    for f in c.files
                ]  # fmt: skip
                if files != exp.get("files", []):
                    problems.append(f"valid/{exp_path.stem}: embedded files differ")
                if list(c.manifest.folds) != exp.get("folds", []):
                    problems.append(f"valid/{exp_path.stem}: folds differ")
        except errors.WStreamError as exc:
            problems.append(f"valid/{exp_path.stem}: {type(exc).__name__}: {exc}")
    for exp_path in sorted((root / "invalid").glob("*.json")):
        exp = json.loads(exp_path.read_text(encoding="utf-8"))
        try:
            with Container(exp_path.with_suffix(".wst")) as c:
                if exp["stage"] == "open":
                    problems.append(f"invalid/{exp_path.stem}: opened without error")
                    continue
                c.verify()
            problems.append(f"invalid/{exp_path.stem}: read without error")
        except errors.FormatError as exc:
            if type(exc).__name__ != exp["error"]:
                problems.append(
                    f"invalid/{exp_path.stem}: {type(exc).__name__} ({exc}), "
                    f"expected {exp['error']}"
                )
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).resolve().parent.parent / "formats" / "vectors"
    )
    parser.add_argument("--no-check", action="store_true", help="skip reading the vectors back")
    args = parser.parse_args(argv)

    valid = valid_vectors()
    invalid = invalid_vectors()
    names = [v.name for v in valid] + [v.name for v in invalid]
    if len(set(names)) != len(names):
        raise SystemExit("duplicate vector names")

    for sub in ("valid", "invalid"):
        d = args.out / sub
        if d.exists():
            shutil.rmtree(d)
        d.mkdir(parents=True)
    for v in valid:
        data = build(v.lay)
        (args.out / "valid" / f"{v.name}.wst").write_bytes(data)
        doc = expectation(v)
        doc["sha256"] = hashlib.sha256(data).hexdigest()
        write_json(args.out / "valid" / f"{v.name}.json", doc)
    for iv in invalid:
        (args.out / "invalid" / f"{iv.name}.wst").write_bytes(iv.data)
        doc = {"description": iv.why, "error": iv.error, "stage": iv.stage}
        if iv.chunk is not None:
            doc["chunk"] = iv.chunk
        if iv.file is not None:
            doc["file"] = iv.file
        doc["sha256"] = hashlib.sha256(iv.data).hexdigest()
        write_json(args.out / "invalid" / f"{iv.name}.json", doc)
    (args.out / "README.md").write_text(readme(valid, invalid), encoding="utf-8")
    print(f"wrote {len(valid)} valid and {len(invalid)} invalid vectors to {args.out}")

    if not args.no_check:
        problems = check(args.out)
        for p in problems:
            print(f"MISMATCH {p}", file=sys.stderr)
        if problems:
            return 1
        print("every vector reads as declared")
    return 0


if __name__ == "__main__":
    sys.exit(main())
