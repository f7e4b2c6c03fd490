"""Constants of the .wst v1 format, named as in ``formats/SPEC.md``.

Change a value here only together with the spec (and, for a structural change, ``VERSION``).
"""

from __future__ import annotations

import enum
import functools
import struct
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np

MAGIC = b"\x89WST\r\n\x1a\n"  # PNG-style: high bit, CRLF and ^Z catch text-mode mangling
VERSION = 1

# Preamble: little-endian, 64 bytes, at offset 0.
#   magic[8] version:u32 flags:u32 manifest_offset:u64 manifest_nbytes:u64 manifest_crc32:u32
#   reserved[24] preamble_crc32:u32 (CRC-32 of bytes 0..60)
PREAMBLE = struct.Struct("<8sIIQQI24sI")
PREAMBLE_NBYTES = 64
assert PREAMBLE.size == PREAMBLE_NBYTES
PREAMBLE_CRC_SPAN = 60  # the preamble CRC covers bytes [0, 60)

CHUNK_ALIGNMENT = 4096  # every chunk payload starts on this boundary (mmap, O_DIRECT, madvise)
TENSOR_ALIGNMENT = 64  # every tensor starts on this boundary inside a decoded chunk
DATA_START = CHUNK_ALIGNMENT  # the first byte a chunk may occupy

# Limits. A reader MUST reject a file exceeding any of them before allocating for it.
# Tightened (issue 14): a valid manifest at the old bounds (64 MiB, 2^20 chunks) took 12 s and
# 510 MB to open. The parse costs ~20 us per chunk; these bound an open to about a second, and
# are still ~100x what MiniCPM-V 2.6 needs (11.1 GB: 375 chunks, a 172 kB manifest).
MAX_MANIFEST_NBYTES = 16 * 1024 * 1024
MAX_CHUNKS = 1 << 16
MAX_PIECES_PER_CHUNK = 1 << 16
MAX_NAME_BYTES = 1024  # UTF-8 bytes of a tensor, group or chunk name
MAX_NDIM = 8
MAX_CHUNK_RAW_NBYTES = 1 << 30  # decoded size of one chunk: bounds every slab and every decode
MAX_TENSOR_NBYTES = 1 << 48
MAX_JSON_DEPTH = 64  # nesting of the manifest JSON (config and metadata included)
MAX_METADATA_ENTRIES = 4096
MAX_ZSTD_LEVEL = 22
MIN_ZSTD_LEVEL = -131072  # zstd's fastest negative level
# Embedded files (the checkpoint's tokenizer.json, chat template, ...: SPEC.md section 13).
MAX_FILES = 32  # entries of the manifest's ``files``
MAX_FILE_NBYTES = 64 * 1024 * 1024  # decoded bytes of one file (a Qwen2 tokenizer.json: 7-19 MB)
# Folds (SPEC.md section 14): the names a manifest's ``folds`` may list, and how many.
FOLD_NAMES: tuple[str, ...] = ("qkv",)
MAX_FOLDS = 16
FILE_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"  # a plain name: no path, no dot file

DEFAULT_MAX_CHUNK = 32 * 1024 * 1024  # pack's default bound on a chunk's decoded size
MIN_MAX_CHUNK = 64 * 1024


def align_up(n: int, alignment: int) -> int:
    """The smallest multiple of ``alignment`` that is >= ``n`` (chunk and tensor offsets, slab
    sizes, page spans: every rounding in wstream)."""
    return -(-n // alignment) * alignment


class DType(enum.StrEnum):
    """Tensor element types; the on-disk ids are the strings safetensors uses."""

    BOOL = "BOOL"
    U8 = "U8"
    I8 = "I8"
    F8_E4M3 = "F8_E4M3"
    F8_E5M2 = "F8_E5M2"
    U16 = "U16"
    I16 = "I16"
    F16 = "F16"
    BF16 = "BF16"
    U32 = "U32"
    I32 = "I32"
    F32 = "F32"
    U64 = "U64"
    I64 = "I64"
    F64 = "F64"

    @property
    def itemsize(self) -> int:
        return _ITEMSIZE[self]

    @property
    def numpy(self) -> np.dtype[Any]:
        """The numpy dtype of this element type (ml_dtypes supplies bf16 and the float8s)."""
        return _numpy_table()[self]

    @classmethod
    def from_numpy(cls, dtype: np.dtype[Any]) -> DType:
        import numpy as np

        try:
            return {v: k for k, v in _numpy_table().items()}[np.dtype(dtype)]
        except KeyError:
            raise ValueError(f"dtype {dtype} has no .wst element type") from None


_ITEMSIZE: dict[DType, int] = {
    DType.BOOL: 1, DType.U8: 1, DType.I8: 1, DType.F8_E4M3: 1, DType.F8_E5M2: 1,
    DType.U16: 2, DType.I16: 2, DType.F16: 2, DType.BF16: 2,
    DType.U32: 4, DType.I32: 4, DType.F32: 4,
    DType.U64: 8, DType.I64: 8, DType.F64: 8,
}  # fmt: skip


@functools.cache
def _numpy_table() -> dict[DType, np.dtype[Any]]:
    # Imported on first use: reading a manifest (``wstream info``) needs neither numpy nor
    # ml_dtypes, and importing them costs more than parsing a large manifest.
    import ml_dtypes
    import numpy as np

    return {
        DType.BOOL: np.dtype(np.bool_),
        DType.U8: np.dtype("<u1"),
        DType.I8: np.dtype("<i1"),
        DType.F8_E4M3: np.dtype(ml_dtypes.float8_e4m3fn),
        DType.F8_E5M2: np.dtype(ml_dtypes.float8_e5m2),
        DType.U16: np.dtype("<u2"),
        DType.I16: np.dtype("<i2"),
        DType.F16: np.dtype("<f2"),
        DType.BF16: np.dtype(ml_dtypes.bfloat16),
        DType.U32: np.dtype("<u4"),
        DType.I32: np.dtype("<i4"),
        DType.F32: np.dtype("<f4"),
        DType.U64: np.dtype("<u8"),
        DType.I64: np.dtype("<i8"),
        DType.F64: np.dtype("<f8"),
    }


class CodecId(enum.StrEnum):
    """Codec step ids of a chunk's pipeline (applied in list order when encoding)."""

    BYTEGROUP = "bytegroup"  # byte j of every element into plane j (a bijection; size 2/4/8)
    ZSTD = "zstd"  # one or more zstd frames


class QuantScheme(enum.StrEnum):
    """How a tensor's values are stored when they are not stored in their dtype."""

    INT8 = "int8"  # symmetric, int8 values + one float32 scale per group of a row
    UINT4 = "uint4"  # asymmetric, two 4-bit values a byte; a float32 scale + zero point a group


MAX_PIPELINE_STEPS = 2  # [bytegroup], [zstd] or [bytegroup, zstd]
BYTEGROUP_SIZES = (2, 4, 8)
MAX_FRAMES_PER_CHUNK = 1 << 16
MAX_QUANT_GROUP = 1 << 20
UINT4_MAX = 15  # the largest uint4 value and zero point


def shape_extent(shape: tuple[int, ...] | list[int], itemsize: int) -> int:
    """Bytes of a tensor of ``shape`` with every zero dimension counted as 1: the bound on its
    dimensions (SPEC.md 2.2). A tensor with no elements can still not declare ``[0, 2^40,
    2^40]``, which no array library can even describe (numpy: "array is too big")."""
    extent = itemsize
    for d in shape:
        extent *= max(d, 1)
    return extent


def shape_extent_ok(shape: tuple[int, ...] | list[int], itemsize: int) -> bool:
    return shape_extent(shape, itemsize) <= MAX_TENSOR_NBYTES
