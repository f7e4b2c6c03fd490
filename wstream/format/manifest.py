"""Parse and build the preamble and the manifest: the only code that interprets untrusted bytes.

:func:`parse_preamble` and :func:`parse_manifest` check every MUST of ``formats/SPEC.md`` that
concerns metadata (each check raises its own named :class:`~wstream.errors.FormatError`) and
return frozen values; code past this module never touches raw JSON. Sizes are computed with
Python integers, which cannot wrap.

Longer than the ~400 lines a module aims for, on purpose: it is the whole trust boundary, and
keeping every check in one file, in the order SPEC.md's check order gives, is what makes that
order auditable (the error a malformed file raises depends on it).
"""

from __future__ import annotations

import gc
import json
import math
import re
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any, NamedTuple

from wstream import errors as E
from wstream.format import spec, strictjson
from wstream.format.crc import crc32
from wstream.format.quant import n_groups
from wstream.format.spec import CodecId, DType, QuantScheme

# Immutable values are NamedTuples rather than frozen dataclasses: `wstream info` imports this
# module at every start, and importing dataclasses (with inspect) and building seven classes
# cost 12-14 ms of its 50 ms budget (measured 56-60 ms against 43-50 for a 11-16 GB container,
# whole process). The same contract: typed fields, immutable, compared by value.

_EMPTY: Mapping[str, Any] = MappingProxyType({})


def stage_of(group: str) -> str:
    """The stage a group (or a chunk of it) belongs to: its first dot-separated component
    (group names are ``<stage>.<part>``, e.g. ``vision.layer.3``)."""
    return group.split(".", 1)[0]


# --- values --------------------------------------------------------------------------------------


class Preamble(NamedTuple):
    version: int
    manifest_offset: int
    manifest_nbytes: int
    manifest_crc32: int


class CodecStep(NamedTuple):
    """One step of a chunk's codec pipeline."""

    id: CodecId
    level: int | None = None  # zstd: the level used to encode (informational for decoding)
    size: int | None = None  # bytegroup: element size in bytes
    frames: tuple[tuple[int, int], ...] | None = None  # zstd: (stored, decoded) bytes per frame

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"id": str(self.id)}
        if self.level is not None:
            out["level"] = self.level
        if self.size is not None:
            out["size"] = self.size
        if self.frames is not None:
            out["frames"] = [list(f) for f in self.frames]
        return out


class Quant(NamedTuple):
    """How a quantized tensor piece is stored: its values at the piece's offset (int8, or uint4
    two a byte), float32 scales [rows, ceil(cols / group)] at ``scales`` and, for uint4, uint8
    zero points of the same shape at the next multiple of 64 after the scales (SPEC.md 5.1,
    5.2); value = int8 x its group's scale, or (uint4 - its group's zero point) x the scale."""

    scheme: QuantScheme
    group: int  # consecutive elements of a row sharing one scale
    scales: int  # byte offset of the scales inside the decoded chunk

    def to_json(self) -> dict[str, Any]:
        return {"scheme": str(self.scheme), "group": self.group, "scales": self.scales}


class TensorEntry(NamedTuple):
    """A tensor, or a block of its rows, inside a chunk's decoded bytes."""

    name: str
    dtype: DType  # the tensor's dtype (for a quantized tensor: the dtype it dequantizes to)
    shape: tuple[int, ...]  # shape of the whole tensor
    offset: int  # byte offset inside the decoded chunk
    rows: tuple[int, int] | None = None  # [start, stop) of shape[0]; None: the whole tensor
    quant: Quant | None = None  # None: stored as ``dtype``

    @property
    def piece_shape(self) -> tuple[int, ...]:
        if self.rows is None:
            return self.shape
        return (self.rows[1] - self.rows[0], *self.shape[1:])

    @property
    def stored_itemsize(self) -> int:
        return 1 if self.quant is not None else self.dtype.itemsize

    @property
    def stored_shape(self) -> tuple[int, ...]:
        """Shape of the values at ``offset``: uint4 rows hold ceil(cols / 2) bytes."""
        if self.quant is not None and self.quant.scheme is QuantScheme.UINT4:
            rows, cols = self.piece_shape
            return (rows, -(-cols // 2))
        return self.piece_shape

    @property
    def nbytes(self) -> int:
        """Bytes of the values at ``offset`` (int8 ones, or packed uint4, when quantized)."""
        return math.prod(self.stored_shape) * self.stored_itemsize

    @property
    def scales_shape(self) -> tuple[int, int]:
        if self.quant is None:
            return (0, 0)
        rows, cols = self.piece_shape
        return (rows, n_groups(cols, self.quant.group))

    @property
    def scales_nbytes(self) -> int:
        return math.prod(self.scales_shape) * 4

    @property
    def zeros_offset(self) -> int:
        """Where a uint4 piece's zero points start: the next multiple of 64 after its scales."""
        if self.quant is None:
            return 0
        return spec.align_up(self.quant.scales + self.scales_nbytes, spec.TENSOR_ALIGNMENT)

    @property
    def zeros_nbytes(self) -> int:
        """Bytes of a uint4 piece's zero points (one uint8 per scale); 0 for other pieces."""
        if self.quant is None or self.quant.scheme is not QuantScheme.UINT4:
            return 0
        return math.prod(self.scales_shape)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": self.name,
            "dtype": str(self.dtype),
            "shape": list(self.shape),
            "offset": self.offset,
        }
        if self.rows is not None:
            out["rows"] = list(self.rows)
        if self.quant is not None:
            out["quant"] = self.quant.to_json()
        return out


class ChunkEntry(NamedTuple):
    name: str
    group: str
    offset: int  # absolute file offset of the stored bytes, a multiple of CHUNK_ALIGNMENT
    nbytes: int  # stored (encoded) size
    raw_nbytes: int  # decoded size: bounds every decode of this chunk
    crc32: int  # CRC-32 (zlib) of the stored bytes
    codec: tuple[CodecStep, ...]  # empty: stored raw
    tensors: tuple[TensorEntry, ...]

    @property
    def stage(self) -> str:
        return stage_of(self.group)

    @property
    def is_raw(self) -> bool:
        return not self.codec

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "group": self.group,
            "offset": self.offset,
            "nbytes": self.nbytes,
            "raw_nbytes": self.raw_nbytes,
            "crc32": self.crc32,
            "codec": [c.to_json() for c in self.codec],
            "tensors": [t.to_json() for t in self.tensors],
        }


class FileEntry(NamedTuple):
    """A file of the source checkpoint (tokenizer.json, ...) stored as opaque bytes in the chunk
    data area, after the chunks (SPEC.md section 13)."""

    name: str  # a plain file name (spec.FILE_NAME_PATTERN), unique ignoring ASCII case
    offset: int  # absolute file offset of the stored bytes, a multiple of CHUNK_ALIGNMENT
    nbytes: int  # stored size
    raw_nbytes: int  # decoded size, at most MAX_FILE_NBYTES: bounds the decode
    crc32: int  # CRC-32 of the stored bytes
    codec: tuple[CodecStep, ...]  # () or (zstd,)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "offset": self.offset,
            "nbytes": self.nbytes,
            "raw_nbytes": self.raw_nbytes,
            "crc32": self.crc32,
            "codec": [c.to_json() for c in self.codec],
        }


class TensorInfo(NamedTuple):
    """A whole tensor and where its pieces are: (chunk index, index in that chunk's tensors)."""

    name: str
    dtype: DType
    shape: tuple[int, ...]
    parts: tuple[tuple[int, int], ...]

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize


class Manifest(NamedTuple):
    chunks: tuple[ChunkEntry, ...]
    config: Mapping[str, Any] | None = None  # the source checkpoint's config.json
    metadata: Mapping[str, str] = _EMPTY  # free-form; safetensors metadata
    lossy: bool = False  # True when any stored value differs from the source
    writer: str = ""
    # Derived by parse_manifest / build; not serialized.
    tensors: Mapping[str, TensorInfo] = _EMPTY
    chunk_index: Mapping[str, int] = _EMPTY
    # Serialized (as the OPTIONAL member ``files``) only when there are some, so that a file
    # without embedded files stays readable by readers that predate the member.
    files: tuple[FileEntry, ...] = ()
    # The folds ``pack --fold`` applied (SPEC.md section 14); serialized, as the OPTIONAL member
    # ``folds``, only when there are some, for the same reason.
    folds: tuple[str, ...] = ()

    def to_json(self) -> bytes:
        doc: dict[str, Any] = {
            "writer": self.writer,
            "lossy": self.lossy,
            "config": self.config,
            "metadata": dict(self.metadata),
            "chunks": [c.to_json() for c in self.chunks],
        }
        if self.files:
            doc["files"] = [f.to_json() for f in self.files]
        if self.folds:
            doc["folds"] = list(self.folds)
        return json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode("utf-8")

    def file(self, name: str) -> FileEntry | None:
        """The embedded file called ``name``, or None."""
        return next((f for f in self.files if f.name == name), None)

    def groups(self) -> list[str]:
        """Group names in file order."""
        seen: dict[str, None] = {}
        for c in self.chunks:
            seen.setdefault(c.group, None)
        return list(seen)


# --- preamble ------------------------------------------------------------------------------------


def pack_preamble(manifest_offset: int, manifest_nbytes: int, manifest_crc32: int) -> bytes:
    body = spec.PREAMBLE.pack(
        spec.MAGIC, spec.VERSION, 0, manifest_offset, manifest_nbytes, manifest_crc32, bytes(24), 0
    )
    crc = crc32(body[: spec.PREAMBLE_CRC_SPAN])
    return body[: spec.PREAMBLE_CRC_SPAN] + crc.to_bytes(4, "little")


def parse_preamble(data: bytes, file_size: int) -> Preamble:
    """Check the 64-byte preamble against the file's size."""
    if file_size < spec.PREAMBLE_NBYTES or len(data) < spec.PREAMBLE_NBYTES:
        raise E.TruncatedFile(
            f"file size: {file_size} bytes is shorter than the {spec.PREAMBLE_NBYTES}-byte preamble"
        )
    magic, version, flags, m_off, m_len, m_crc, reserved, p_crc = spec.PREAMBLE.unpack(
        data[: spec.PREAMBLE_NBYTES]
    )
    if magic != spec.MAGIC:
        raise E.BadMagic(f"magic: {magic!r} is not {spec.MAGIC!r}; not a .wst file")
    if version != spec.VERSION:
        raise E.UnsupportedVersion(
            f"version: {version} is not supported (this reader: {spec.VERSION})"
        )
    actual = crc32(data[: spec.PREAMBLE_CRC_SPAN])
    if actual != p_crc:
        raise E.PreambleChecksumMismatch(
            f"preamble_crc32: stored {p_crc:#010x}, computed {actual:#010x}"
        )
    if flags != 0:
        raise E.ReservedNotZero(f"flags: {flags:#x} must be 0 in version {spec.VERSION}")
    if reserved != bytes(24):
        raise E.ReservedNotZero("reserved: preamble bytes 36..60 must be zero")
    if m_len > spec.MAX_MANIFEST_NBYTES:
        raise E.ManifestTooLarge(
            f"manifest_nbytes: {m_len} exceeds the limit of {spec.MAX_MANIFEST_NBYTES}"
        )
    if m_off < spec.DATA_START:
        raise E.OutOfBounds(f"manifest_offset: {m_off} is below the data start {spec.DATA_START}")
    end = m_off + m_len
    if end > file_size:
        raise E.TruncatedFile(
            f"manifest: ends at byte {end} but the file has {file_size} bytes (truncated?)"
        )
    if end < file_size:
        raise E.TrailingBytes(f"manifest: ends at byte {end} but the file has {file_size} bytes")
    return Preamble(version, m_off, m_len, m_crc)


# --- manifest ------------------------------------------------------------------------------------


def read_manifest(read: Callable[[int, int], bytes], file_size: int) -> tuple[Preamble, Manifest]:
    """Read and validate the preamble and manifest of a container of ``file_size`` bytes, where
    ``read(offset, nbytes)`` returns exactly those bytes: two reads, no chunk byte touched (what
    ``wstream info`` costs, whatever the model's size). The format layer does no I/O itself."""
    head = read(0, min(spec.PREAMBLE_NBYTES, file_size))
    preamble = parse_preamble(head, file_size)
    body = read(preamble.manifest_offset, preamble.manifest_nbytes)
    if len(body) != preamble.manifest_nbytes:
        raise E.TruncatedFile(
            f"manifest: expected {preamble.manifest_nbytes} bytes at offset "
            f"{preamble.manifest_offset}, got {len(body)}"
        )
    crc = crc32(body)
    if crc != preamble.manifest_crc32:
        raise E.ManifestChecksumMismatch(
            f"manifest_crc32: stored {preamble.manifest_crc32:#010x}, computed {crc:#010x}"
        )
    return preamble, parse_manifest(body, data_end=preamble.manifest_offset)


_reject_duplicate_keys = strictjson.unique_keys(
    lambda k: E.ManifestSyntaxError(f"manifest: duplicate key {k!r}")
)
_reject_constant = strictjson.no_constants(
    lambda name: E.ManifestSyntaxError(f"manifest: {name} is not allowed (strict JSON only)")
)


def _reject_overflow(literal: str) -> float:
    value = float(literal)
    if math.isinf(value):
        raise E.ManifestSyntaxError(f"manifest: number {literal[:40]!r} overflows binary64")
    return value


# A lone surrogate can only enter through a \uD800-\uDFFF escape (UTF-8 cannot encode one), so
# documents without such an escape skip the per-string check.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


def _check_depth(value: Any, depth: int = 1) -> None:
    """Every value nested in ``value`` (itself at ``depth``) is within MAX_JSON_DEPTH."""
    level = [value] if type(value) is dict or type(value) is list else []
    while level:  # breadth first, one nesting level at a time, containers only
        if depth >= spec.MAX_JSON_DEPTH and any(level):  # members (scalars count) lie deeper
            raise E.LimitExceeded(f"manifest: nesting depth exceeds {spec.MAX_JSON_DEPTH}")
        deeper: list[Any] = []
        for node in level:
            values = node.values() if type(node) is dict else node
            deeper.extend(v for v in values if type(v) is dict or type(v) is list)
        level, depth = deeper, depth + 1


def _check_text(doc: Any) -> None:
    """Every string and member name must be text (no unpaired surrogate)."""
    bad = strictjson.first_non_text(doc)
    if bad is not None:
        raise E.ManifestSchemaError(f"manifest: string {bad[:40]!r} contains an unpaired surrogate")


def _decode_json(data: bytes) -> Any:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise E.ManifestSyntaxError(
            f"manifest: not UTF-8 ({exc.reason} at byte {exc.start})"
        ) from None
    try:
        doc = json.loads(
            text,
            object_pairs_hook=_reject_duplicate_keys,
            parse_constant=_reject_constant,
            parse_float=_reject_overflow,
        )
    except RecursionError:
        raise E.LimitExceeded(f"manifest: nesting depth exceeds {spec.MAX_JSON_DEPTH}") from None
    except ValueError as exc:  # JSONDecodeError, and int() of an over-long digit string
        if isinstance(exc, E.WStreamError):
            raise
        raise E.ManifestSyntaxError(f"manifest: invalid JSON ({exc})") from None
    if _SURROGATE_ESCAPE.search(text) is not None:
        try:
            _check_text(doc)
        except E.ManifestSchemaError:
            _check_depth(doc)  # B5 (depth) comes before B6 (surrogates) in the check order
            raise
    return doc


def _obj(
    value: Any,
    where: str,
    required: set[str] | frozenset[str],
    optional: frozenset[str] = frozenset(),
) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise E.ManifestSchemaError(f"{where}: expected an object, got {type(value).__name__}")
    keys = value.keys()
    if keys == required:  # the common case: exactly the required members
        return value
    missing = required - keys
    if missing:
        raise E.ManifestSchemaError(f"{where}: missing field(s) {sorted(missing)}")
    unknown = keys - required - optional
    if unknown:
        raise E.ManifestSchemaError(f"{where}: unknown field(s) {sorted(unknown)}")
    return value


def _int(value: Any, where: str, lo: int, hi: int) -> int:
    if type(value) is not int:  # bool is an int subclass; floats are not sizes
        raise E.ManifestSchemaError(f"{where}: expected an integer, got {value!r}")
    if not lo <= value <= hi:
        raise E.LimitExceeded(f"{where}: {value} is outside [{lo}, {hi}]")
    return value


def _name(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise E.ManifestSchemaError(f"{where}: expected a string, got {type(value).__name__}")
    try:
        size = len(value.encode("utf-8"))
    except UnicodeEncodeError:
        raise E.ManifestSchemaError(f"{where}: {value!r} contains an unpaired surrogate") from None
    if not 1 <= size <= spec.MAX_NAME_BYTES:
        raise E.LimitExceeded(
            f"{where}: name of {size} bytes is outside [1, {spec.MAX_NAME_BYTES}]"
        )
    return value


def _frames(value: Any, where: str, nbytes: int, raw_nbytes: int) -> tuple[tuple[int, int], ...]:
    if not isinstance(value, list) or not value:
        raise E.ManifestSchemaError(f"{where}: expected a non-empty list of [stored, decoded]")
    if len(value) > spec.MAX_FRAMES_PER_CHUNK:
        raise E.LimitExceeded(f"{where}: {len(value)} frames exceed {spec.MAX_FRAMES_PER_CHUNK}")
    # A file has thousands of frames: checked column-wise with builtins that loop in C, and the
    # culprit is looked for only when one is bad.
    well_formed = False
    if set(map(type, value)) == {list} and sum(map(len, value)) == 2 * len(value):
        columns = list(zip(*value, strict=False))  # as many columns as the shortest frame
        if len(columns) == 2:  # every frame has >= 2 items and 2 on average: exactly 2
            stored, decoded = columns
            well_formed = (
                set(map(type, stored)) == {int} == set(map(type, decoded))
                and 1 <= min(stored)
                and max(stored) <= nbytes
                and 0 <= min(decoded)
                and max(decoded) <= raw_nbytes
            )
    if not well_formed:
        for i, f in enumerate(value):
            if not isinstance(f, list) or len(f) != 2:
                raise E.ManifestSchemaError(f"{where}[{i}]: expected [stored, decoded], got {f!r}")
            _int(f[0], f"{where}[{i}][0]", 1, nbytes)
            _int(f[1], f"{where}[{i}][1]", 0, raw_nbytes)
        raise AssertionError("unreachable")  # pragma: no cover
    stored_total, raw_total = sum(stored), sum(decoded)
    if stored_total != nbytes:
        raise E.OutOfBounds(f"{where}: frames store {stored_total} bytes; the chunk has {nbytes}")
    if raw_total != raw_nbytes:
        raise E.DecodedSizeMismatch(
            f"{where}: frames decode to {raw_total} bytes; raw_nbytes is {raw_nbytes}"
        )
    return tuple(zip(stored, decoded, strict=True))


def _codec(value: Any, where: str, nbytes: int, raw_nbytes: int) -> tuple[CodecStep, ...]:
    """A pipeline: [], [zstd], [bytegroup] or [bytegroup, zstd] (encode order)."""
    if not isinstance(value, list):
        raise E.ManifestSchemaError(f"{where}: expected a list, got {type(value).__name__}")
    if len(value) > spec.MAX_PIPELINE_STEPS:
        raise E.LimitExceeded(
            f"{where}: {len(value)} steps; at most {spec.MAX_PIPELINE_STEPS} are allowed"
        )
    steps = []
    for i, raw in enumerate(value):
        w = f"{where}[{i}]"
        if not isinstance(raw, dict) or not isinstance(raw.get("id"), str):
            raise E.ManifestSchemaError(f"{w}: expected an object with a string 'id'")
        try:
            cid = CodecId(raw["id"])
        except ValueError:
            raise E.UnknownCodec(f"{w}.id: {raw['id']!r} is not a known codec") from None
        if cid is CodecId.BYTEGROUP:
            step = _obj(raw, w, {"id", "size"})
            size = step["size"]
            if type(size) is not int or size not in spec.BYTEGROUP_SIZES:
                raise E.ManifestSchemaError(
                    f"{w}.size: {size!r} is not one of {list(spec.BYTEGROUP_SIZES)}"
                )
            if i != 0:
                raise E.ManifestSchemaError(f"{w}: bytegroup must be the first step")
            steps.append(CodecStep(cid, size=size))
        else:
            step = _obj(raw, w, {"id"}, frozenset({"level", "frames"}))
            level = None
            if "level" in step:
                level = _int(step["level"], f"{w}.level", spec.MIN_ZSTD_LEVEL, spec.MAX_ZSTD_LEVEL)
            frames = (
                _frames(step["frames"], f"{w}.frames", nbytes, raw_nbytes)
                if "frames" in step
                else None
            )
            if i != len(value) - 1:
                raise E.ManifestSchemaError(f"{w}: zstd must be the last step")
            steps.append(CodecStep(cid, level=level, frames=frames))
    if not any(s.id is CodecId.ZSTD for s in steps) and nbytes != raw_nbytes:
        raise E.DecodedSizeMismatch(
            f"{where}: a chunk without zstd stores {nbytes} bytes "
            f"but declares raw_nbytes {raw_nbytes}"
        )
    return tuple(steps)


_DTYPES = {d.value: d for d in DType}
_TENSOR_KEYS = frozenset({"name", "dtype", "shape", "offset"})
_TENSOR_OPTIONAL = frozenset({"rows", "quant"})


def _shape(value: Any, where: str) -> tuple[int, ...]:
    if not isinstance(value, list):
        raise E.ManifestSchemaError(f"{where}.shape: expected a list, got {value!r}")
    if len(value) > spec.MAX_NDIM:
        raise E.LimitExceeded(f"{where}.shape: {len(value)} dims exceed {spec.MAX_NDIM}")
    if all(type(d) is int and 0 <= d <= spec.MAX_TENSOR_NBYTES for d in value):
        return tuple(value)
    for i, d in enumerate(value):  # name the bad dimension
        _int(d, f"{where}.shape[{i}]", 0, spec.MAX_TENSOR_NBYTES)
    raise AssertionError("unreachable")  # pragma: no cover


def _tensor(
    value: Any, where: str, raw_nbytes: int, spans: list[tuple[int, int, str]]
) -> TensorEntry:
    # Runs once per tensor piece of the model (thousands): field paths for messages are only
    # formatted when a check fails.
    t = _obj(value, where, _TENSOR_KEYS, _TENSOR_OPTIONAL)
    name = _name(t["name"], f"{where}.name")
    dtype = _DTYPES.get(t["dtype"]) if isinstance(t["dtype"], str) else None
    if dtype is None:
        if not isinstance(t["dtype"], str):
            raise E.ManifestSchemaError(f"{where}.dtype: expected a string, got {t['dtype']!r}")
        raise E.UnknownDType(f"{where}.dtype: {t['dtype']!r} is not a known dtype")
    shape = _shape(t["shape"], where)
    total = spec.shape_extent(shape, dtype.itemsize)  # zero dims as 1: bounds every dimension
    if total > spec.MAX_TENSOR_NBYTES:
        raise E.LimitExceeded(
            f"{where}.shape: {list(shape)} spans {total} bytes (zero dimensions counted as 1), "
            f"above {spec.MAX_TENSOR_NBYTES}"
        )
    offset = t["offset"]
    if type(offset) is not int or not 0 <= offset <= spec.MAX_CHUNK_RAW_NBYTES:
        _int(offset, f"{where}.offset", 0, spec.MAX_CHUNK_RAW_NBYTES)
    if offset % spec.TENSOR_ALIGNMENT:
        raise E.MisalignedOffset(
            f"{where}.offset: {offset} is not a multiple of {spec.TENSOR_ALIGNMENT}"
        )
    rows: tuple[int, int] | None = None
    if "rows" in t:
        r = t["rows"]
        if not isinstance(r, list) or len(r) != 2:
            raise E.ManifestSchemaError(f"{where}.rows: expected [start, stop], got {r!r}")
        if not shape:
            raise E.TensorLayoutError(f"{where}.rows: a 0-d tensor cannot be split into rows")
        start = _int(r[0], f"{where}.rows[0]", 0, shape[0])
        stop = _int(r[1], f"{where}.rows[1]", 0, shape[0])
        if start >= stop:
            raise E.TensorLayoutError(f"{where}.rows: [{start}, {stop}) is empty or reversed")
        rows = (start, stop)
    quant = _quant(t["quant"], f"{where}.quant", dtype, shape) if "quant" in t else None
    entry = TensorEntry(name, dtype, shape, offset, rows, quant)
    nbytes = entry.nbytes
    if offset + nbytes > raw_nbytes:
        raise E.OutOfBounds(
            f"{where}: bytes [{offset}, {offset + nbytes}) exceed raw_nbytes {raw_nbytes}"
        )
    if nbytes:
        spans.append((offset, offset + nbytes, name))
    if quant is not None:
        scales_nbytes = entry.scales_nbytes
        if quant.scales + scales_nbytes > raw_nbytes:
            raise E.OutOfBounds(
                f"{where}.quant.scales: bytes [{quant.scales}, {quant.scales + scales_nbytes}) "
                f"exceed raw_nbytes {raw_nbytes}"
            )
        if scales_nbytes:
            spans.append((quant.scales, quant.scales + scales_nbytes, f"{name} (scales)"))
        zeros_nbytes = entry.zeros_nbytes
        if zeros_nbytes:
            at = entry.zeros_offset
            if at + zeros_nbytes > raw_nbytes:
                raise E.OutOfBounds(
                    f"{where}.quant: zero points at bytes [{at}, {at + zeros_nbytes}) (after "
                    f"{entry.scales_shape[0] * entry.scales_shape[1]} scales) exceed raw_nbytes "
                    f"{raw_nbytes}"
                )
            spans.append((at, at + zeros_nbytes, f"{name} (zero points)"))
    return entry


_QUANTIZABLE = frozenset({DType.F16, DType.BF16, DType.F32, DType.F64})


def _quant(value: Any, where: str, dtype: DType, shape: tuple[int, ...]) -> Quant:
    q = _obj(value, where, {"scheme", "group", "scales"})
    try:
        scheme = QuantScheme(q["scheme"])
    except (ValueError, TypeError):
        raise E.UnknownCodec(f"{where}.scheme: {q['scheme']!r} is not a known scheme") from None
    if dtype not in _QUANTIZABLE or len(shape) != 2:
        raise E.TensorLayoutError(
            f"{where}: only 2-d floating-point tensors are quantized, not {dtype}{list(shape)}"
        )
    group = _int(q["group"], f"{where}.group", 1, spec.MAX_QUANT_GROUP)
    if scheme is QuantScheme.UINT4 and group % 2:
        raise E.ManifestSchemaError(
            f"{where}.group: {group} is odd; a uint4 group is even (two values a byte)"
        )
    scales = _int(q["scales"], f"{where}.scales", 0, spec.MAX_CHUNK_RAW_NBYTES)
    if scales % spec.TENSOR_ALIGNMENT:
        raise E.MisalignedOffset(
            f"{where}.scales: {scales} is not a multiple of {spec.TENSOR_ALIGNMENT}"
        )
    return Quant(scheme, group, scales)


def _check_disjoint(spans: list[tuple[int, int, str]], where: str) -> None:
    """No two byte ranges [start, stop) of a chunk's pieces (values or scales) overlap."""
    spans.sort()
    for (_, end_a, name_a), (start_b, _, name_b) in zip(spans, spans[1:]):
        if start_b < end_a:
            raise E.OverlappingRegions(f"{where}: tensors {name_a!r} and {name_b!r} overlap")


_U64_MAX = (1 << 64) - 1


def _chunk(value: Any, where: str, data_end: int) -> ChunkEntry:
    c = _obj(
        value,
        where,
        {"name", "group", "offset", "nbytes", "raw_nbytes", "crc32", "codec", "tensors"},
    )
    name = _name(c["name"], f"{where}.name")
    group = _name(c["group"], f"{where}.group")
    offset, nbytes = _region(c, where, data_end)
    raw_nbytes = _int(c["raw_nbytes"], f"{where}.raw_nbytes", 0, spec.MAX_CHUNK_RAW_NBYTES)
    crc = _int(c["crc32"], f"{where}.crc32", 0, 0xFFFFFFFF)
    codec = _codec(c["codec"], f"{where}.codec", nbytes, raw_nbytes)
    if not isinstance(c["tensors"], list):
        raise E.ManifestSchemaError(f"{where}.tensors: expected a list")
    if len(c["tensors"]) > spec.MAX_PIECES_PER_CHUNK:
        raise E.LimitExceeded(
            f"{where}.tensors: {len(c['tensors'])} entries exceed {spec.MAX_PIECES_PER_CHUNK}"
        )
    spans: list[tuple[int, int, str]] = []
    tensors = tuple(
        _tensor(t, f"{where}.tensors[{i}]", raw_nbytes, spans) for i, t in enumerate(c["tensors"])
    )
    _check_disjoint(spans, f"{where}.tensors")
    return ChunkEntry(name, group, offset, nbytes, raw_nbytes, crc, codec, tensors)


def index_tensors(chunks: tuple[ChunkEntry, ...]) -> dict[str, TensorInfo]:
    """Collect each tensor's pieces and check they tile it exactly, in file order."""
    parts: dict[str, list[tuple[int, int]]] = {}
    for ci, chunk in enumerate(chunks):
        for ti, t in enumerate(chunk.tensors):
            parts.setdefault(t.name, []).append((ci, ti))
    out: dict[str, TensorInfo] = {}
    for name, where in parts.items():
        entries = [chunks[ci].tensors[ti] for ci, ti in where]
        first = entries[0]
        for e in entries[1:]:
            if (e.dtype, e.shape) != (first.dtype, first.shape):
                raise E.TensorLayoutError(
                    f"tensor {name!r}: blocks disagree on dtype/shape "
                    f"({first.dtype}{list(first.shape)} vs {e.dtype}{list(e.shape)})"
                )
        if first.rows is None:
            if len(entries) > 1:
                raise E.DuplicateName(f"tensor {name!r}: declared {len(entries)} times")
        else:
            expect = 0
            for e in entries:
                if e.rows is None:
                    raise E.DuplicateName(f"tensor {name!r}: declared whole and in row blocks")
                if e.rows[0] != expect:
                    raise E.TensorLayoutError(
                        f"tensor {name!r}: row block {list(e.rows)} should start at row {expect}"
                    )
                expect = e.rows[1]
            if expect != first.shape[0]:
                raise E.TensorLayoutError(
                    f"tensor {name!r}: row blocks cover rows [0, {expect}) of {first.shape[0]}"
                )
        out[name] = TensorInfo(name, first.dtype, first.shape, tuple(where))
    return out


def build_manifest(
    chunks: tuple[ChunkEntry, ...],
    *,
    config: Mapping[str, Any] | None = None,
    metadata: Mapping[str, str] | None = None,
    lossy: bool = False,
    writer: str = "",
    files: tuple[FileEntry, ...] = (),
    folds: tuple[str, ...] = (),
) -> Manifest:
    """Assemble a Manifest from trusted values (the writer's side), with its indexes."""
    return Manifest(
        chunks=chunks,
        config=config,
        metadata=dict(metadata or {}),
        lossy=lossy,
        writer=writer,
        tensors=index_tensors(chunks),
        chunk_index={c.name: i for i, c in enumerate(chunks)},
        files=files,
        folds=folds,
    )


def parse_manifest(data: bytes, *, data_end: int) -> Manifest:
    """Validate manifest bytes; chunks must lie in [DATA_START, data_end)."""
    # The parse allocates tens of thousands of containers and drops none: a cyclic collection
    # in the middle would only rescan them (a quarter of the time for a zstd manifest).
    collecting = gc.isenabled()
    gc.disable()
    try:
        doc = _decode_json(data)
        try:
            return _parse_document(doc, data_end)
        except E.FormatError:
            # Outside ``config`` every value has a fixed type, so one nested too deep fails a
            # check of the walk; the depth limit is the error to report then. Walking the whole
            # document up front instead would cost as much as the JSON parse on every open.
            _check_depth(doc)
            raise
    finally:
        if collecting:
            gc.enable()


def _parse_document(raw: Any, data_end: int) -> Manifest:
    doc = _obj(raw, "manifest", {"writer", "lossy", "config", "metadata", "chunks"}, _TOP_OPTIONAL)
    if not isinstance(doc["writer"], str) or len(doc["writer"]) > 256:
        raise E.ManifestSchemaError("writer: expected a string of at most 256 characters")
    if not isinstance(doc["lossy"], bool):
        raise E.ManifestSchemaError(f"lossy: expected true or false, got {doc['lossy']!r}")
    config = doc["config"]
    if config is not None and not isinstance(config, dict):
        raise E.ManifestSchemaError(
            f"config: expected an object or null, got {type(config).__name__}"
        )
    _check_depth(config, depth=2)  # the one free-form value: checked whether or not all else is
    metadata = doc["metadata"]
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise E.ManifestSchemaError("metadata: expected an object of string values")
    if len(metadata) > spec.MAX_METADATA_ENTRIES:
        raise E.LimitExceeded(
            f"metadata: {len(metadata)} entries exceed {spec.MAX_METADATA_ENTRIES}"
        )
    raw_chunks = doc["chunks"]
    if not isinstance(raw_chunks, list):
        raise E.ManifestSchemaError("chunks: expected a list")
    if len(raw_chunks) > spec.MAX_CHUNKS:
        raise E.LimitExceeded(f"chunks: {len(raw_chunks)} entries exceed {spec.MAX_CHUNKS}")

    chunks: list[ChunkEntry] = []
    names: set[str] = set()
    closed_groups: set[str] = set()
    end = spec.DATA_START
    for i, raw in enumerate(raw_chunks):
        chunk = _chunk(raw, f"chunks[{i}]", data_end)
        if chunk.name in names:
            raise E.DuplicateName(f"chunks[{i}].name: {chunk.name!r} is used twice")
        if chunk.offset < end:
            raise E.OverlappingRegions(
                f"chunks[{i}].offset: {chunk.offset} is before the end of the previous chunk "
                f"({end})"
            )
        if chunks and chunk.group != chunks[-1].group:
            closed_groups.add(chunks[-1].group)
        if chunk.group in closed_groups:
            raise E.GroupLayoutError(f"chunks[{i}].group: {chunk.group!r} is not contiguous")
        names.add(chunk.name)
        end = chunk.offset + chunk.nbytes
        chunks.append(chunk)
    if not doc["lossy"]:
        for i, chunk in enumerate(chunks):
            if any(t.quant is not None for t in chunk.tensors):
                raise E.ManifestSchemaError(
                    f"chunks[{i}]: holds quantized tensors but the manifest says lossy: false"
                )
    files = _files(doc["files"], data_end, chunks) if "files" in doc else ()
    folds = _folds(doc["folds"]) if "folds" in doc else ()
    return build_manifest(
        tuple(chunks),
        config=config,
        metadata=metadata,
        lossy=doc["lossy"],
        writer=doc["writer"],
        files=files,
        folds=folds,
    )


def _folds(value: Any) -> tuple[str, ...]:
    """SPEC.md section 14, rules J1-J3: distinct names of folds this reader implements."""
    if not isinstance(value, list) or not value:
        raise E.ManifestSchemaError("folds: expected a non-empty list of fold names")
    if len(value) > spec.MAX_FOLDS:
        raise E.LimitExceeded(f"folds: {len(value)} entries exceed {spec.MAX_FOLDS}")
    for i, name in enumerate(value):
        if not isinstance(name, str):
            raise E.ManifestSchemaError(f"folds[{i}]: expected a string, got {name!r}")
        if name not in spec.FOLD_NAMES:
            raise E.UnknownCodec(
                f"folds[{i}]: {name!r} is not a fold this reader knows "
                f"({', '.join(spec.FOLD_NAMES)})"
            )
        if name in value[:i]:
            raise E.DuplicateName(f"folds[{i}]: {name!r} is listed twice")
    return tuple(value)


# --- embedded files (SPEC.md section 13, rules H1-H11) -------------------------------------------

_TOP_OPTIONAL = frozenset({"files", "folds"})
_FILE_KEYS = frozenset({"name", "offset", "nbytes", "raw_nbytes", "crc32", "codec"})
_FILE_NAME = re.compile(spec.FILE_NAME_PATTERN)


def check_file_name(value: Any, where: str) -> str:
    """A plain file name: safe to create in any directory, on any common filesystem."""
    if not isinstance(value, str):
        raise E.ManifestSchemaError(f"{where}: expected a string, got {type(value).__name__}")
    if _FILE_NAME.fullmatch(value) is None:
        raise E.ManifestSchemaError(
            f"{where}: {value[:140]!r} is not a plain file name (1 to 128 ASCII letters, digits, "
            "'.', '_' or '-', starting with a letter or digit)"
        )
    return value


def _region(obj: dict[str, Any], where: str, data_end: int) -> tuple[int, int]:
    """A chunk's or an embedded file's ``offset`` and ``nbytes``, checked against the chunk data
    area ``[DATA_START, data_end]`` and the chunk alignment (one rule for both)."""
    # Any u64 is a well-formed offset or size; one that points outside the chunk data area is
    # out of bounds (not a limit), whichever side it falls on.
    offset = _int(obj["offset"], f"{where}.offset", 0, _U64_MAX)
    if not spec.DATA_START <= offset <= data_end:
        raise E.OutOfBounds(
            f"{where}.offset: {offset} is outside the chunk data area "
            f"[{spec.DATA_START}, {data_end}]"
        )
    if offset % spec.CHUNK_ALIGNMENT:
        raise E.MisalignedOffset(
            f"{where}.offset: {offset} is not a multiple of {spec.CHUNK_ALIGNMENT}"
        )
    nbytes = _int(obj["nbytes"], f"{where}.nbytes", 0, _U64_MAX)
    if offset + nbytes > data_end:
        raise E.OutOfBounds(
            f"{where}: bytes [{offset}, {offset + nbytes}) run past the chunk data area, "
            f"which ends at {data_end}"
        )
    return offset, nbytes


def _file(value: Any, where: str, data_end: int) -> FileEntry:
    f = _obj(value, where, _FILE_KEYS)
    name = check_file_name(f["name"], f"{where}.name")
    offset, nbytes = _region(f, where, data_end)  # the region rules of a chunk
    raw_nbytes = _int(f["raw_nbytes"], f"{where}.raw_nbytes", 0, spec.MAX_FILE_NBYTES)
    crc = _int(f["crc32"], f"{where}.crc32", 0, 0xFFFFFFFF)
    codec = _codec(f["codec"], f"{where}.codec", nbytes, raw_nbytes)
    if any(step.id is not CodecId.ZSTD for step in codec):
        raise E.ManifestSchemaError(f"{where}.codec: a file's codec is [] or [zstd]")
    return FileEntry(name, offset, nbytes, raw_nbytes, crc, codec)


def _files(value: Any, data_end: int, chunks: list[ChunkEntry]) -> tuple[FileEntry, ...]:
    if not isinstance(value, list):
        raise E.ManifestSchemaError(f"files: expected a list, got {type(value).__name__}")
    if len(value) > spec.MAX_FILES:
        raise E.LimitExceeded(f"files: {len(value)} entries exceed {spec.MAX_FILES}")
    files: list[FileEntry] = []
    folded: dict[str, str] = {}  # ASCII-lower-cased name -> name: one path on macOS and Windows
    for i, raw in enumerate(value):
        entry = _file(raw, f"files[{i}]", data_end)
        twin = folded.get(entry.name.lower())
        if twin is not None:
            raise E.DuplicateName(
                f"files[{i}].name: {entry.name!r} is used twice"
                + ("" if twin == entry.name else f" (as {twin!r}; names ignore case)")
            )
        folded[entry.name.lower()] = entry.name
        files.append(entry)
    # Payloads lie anywhere in the chunk data area, in any order, but share no byte with a chunk
    # or with each other: a reader never sees one region's bytes as another's.
    regions = [(c.offset, c.offset + c.nbytes, f"chunk {c.name!r}") for c in chunks if c.nbytes]
    regions += [(f.offset, f.offset + f.nbytes, f"file {f.name!r}") for f in files if f.nbytes]
    regions.sort()
    for (_, end_a, what_a), (start_b, _, what_b) in zip(regions, regions[1:]):
        if start_b < end_a:
            raise E.OverlappingRegions(f"files: the bytes of {what_a} and {what_b} overlap")
    return tuple(files)
