"""An embedded file's bytes, checked (SPEC.md section 13); and JSON read strictly.

To the format an embedded file is opaque bytes: :func:`decode_file` checks the stored bytes'
CRC-32 (rule I1) before any decoder sees them, then decodes into a buffer of exactly
``raw_nbytes`` (rule I2: at most ``MAX_FILE_NBYTES``, whatever a zstd header claims). What the
bytes mean is the business of the tool that uses them: :func:`parse_json` is the strict reading
those tools apply to the JSON ones (and ``pack`` applies before embedding them), with the error
class the caller names.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from wstream import errors as E
from wstream.format import codecs, strictjson
from wstream.format.crc import crc32
from wstream.format.manifest import FileEntry

Buffer = bytes | bytearray | memoryview


def check_file_crc(entry: FileEntry, stored: Buffer) -> None:
    """Rule I1: ``stored`` (the file's ``nbytes`` stored bytes) matches its CRC-32."""
    crc = crc32(stored)
    if crc != entry.crc32:
        raise E.ChunkChecksumMismatch(
            f"file {entry.name!r}: crc32 stored {entry.crc32:#010x}, computed {crc:#010x}"
        )


def decode_file(entry: FileEntry, stored: Buffer, *, verify: bool = True) -> bytes:
    """The file's decoded bytes from its stored bytes: CRC first (unless ``verify`` is off),
    then a decode bounded by ``raw_nbytes``. A codec error is re-raised naming the file."""
    if verify:
        check_file_crc(entry, stored)
    if not entry.codec:
        return bytes(stored)
    out = bytearray(entry.raw_nbytes)
    try:
        codecs.decode_into(entry.codec, stored, memoryview(out))
    except E.FormatError as exc:
        raise type(exc)(f"file {entry.name!r}: {exc}") from None
    return bytes(out)


# --- strict JSON ----------------------------------------------------------------------------------
# RFC 8259 and nothing more, as the manifest (SPEC.md 4.1), through the shared hooks of
# :mod:`wstream.format.strictjson`: Python's json would otherwise accept NaN and Infinity, keep
# the last of two equal member names silently, and read a lone surrogate escape as a string that
# is not text. Each is a file that another reader (transformers, the tokenizers crate) reads
# differently, or not at all.

_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


def parse_json(data: Buffer, where: str, error: type[E.WStreamError]) -> Any:
    """``data`` as one strict JSON value; any departure raises ``error`` naming ``where``."""

    def number(literal: str) -> float:
        value = float(literal)
        if math.isinf(value):
            raise error(f"{where}: number {literal[:40]!r} overflows binary64")
        return value

    try:
        text = bytes(data).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise error(f"{where}: not UTF-8 ({exc.reason} at byte {exc.start})") from None
    try:
        doc = json.loads(
            text,
            object_pairs_hook=strictjson.unique_keys(
                lambda key: error(f"{where}: member name {key[:60]!r} appears twice in one object")
            ),
            parse_constant=strictjson.no_constants(
                lambda name: error(f"{where}: {name} is not JSON (strict JSON only)")
            ),
            parse_float=number,
        )
    except RecursionError:
        raise error(f"{where}: JSON nested too deeply") from None
    except ValueError as exc:  # JSONDecodeError (a BOM included), an over-long integer literal
        if isinstance(exc, E.WStreamError):
            raise
        raise error(f"{where}: not valid JSON ({exc})") from None
    if _SURROGATE_ESCAPE.search(text) is not None and strictjson.first_non_text(doc) is not None:
        raise error(f"{where}: a string holds an unpaired surrogate (not text)")
    return doc
