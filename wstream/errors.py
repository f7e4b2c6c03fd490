"""One error family. Everything wstream raises on purpose is a :class:`WStreamError`.

- :class:`FormatError` and its subclasses: a ``.wst`` file breaks a rule of ``formats/SPEC.md``.
  Each subclass is one named case; the test vectors in ``formats/vectors/invalid`` name the class
  each file must raise, so another implementation can map them one to one.
- :class:`SourceError`: a checkpoint to be packed is malformed or incomplete.
- :class:`ByteSourceError`: a byte source (a local file, an object in a store) cannot deliver a
  range exactly: past its end, a short read, or content that changed since it was opened.
- :class:`InputError`: a caller's argument is out of range (a CLI flag, an image, token ids).
- :class:`LoaderError`: the streaming loader failed (a worker error, a pool timeout).

Messages name the field, the value and the limit, e.g.
``chunks[3].offset: 4100 is not a multiple of 4096``.
"""

from __future__ import annotations


class WStreamError(Exception):
    """Base of every error wstream raises on purpose."""


# --- container format ----------------------------------------------------------------------------


class FormatError(WStreamError, ValueError):
    """A container violates the format specification."""


class TruncatedFile(FormatError):
    """The file ends before a region it declares (preamble, chunk or manifest)."""


class TrailingBytes(FormatError):
    """Bytes follow the manifest, which must end the file."""


class BadMagic(FormatError):
    """The file does not start with the .wst magic bytes."""


class UnsupportedVersion(FormatError):
    """The format version is not one this reader implements."""


class PreambleChecksumMismatch(FormatError):
    """The preamble's CRC-32 does not match its bytes."""


class ReservedNotZero(FormatError):
    """A reserved preamble field or flag bit is not zero."""


class ManifestTooLarge(FormatError):
    """The declared manifest size exceeds the limit."""


class ManifestChecksumMismatch(FormatError):
    """The manifest's CRC-32 does not match its bytes."""


class ManifestSyntaxError(FormatError):
    """The manifest is not valid UTF-8 JSON (or has duplicate keys, NaN, or is too deep)."""


class ManifestSchemaError(FormatError):
    """A manifest field is missing, unknown, or of the wrong type."""


class LimitExceeded(FormatError):
    """A manifest value is outside its allowed range."""


class UnknownDType(FormatError):
    """A tensor declares a dtype this reader does not know."""


class UnknownCodec(FormatError):
    """A chunk declares a codec step this reader does not know."""


class MisalignedOffset(FormatError):
    """A chunk or tensor offset is not a multiple of the required alignment."""


class OutOfBounds(FormatError):
    """A region extends past the end of its container (file, chunk data area, or chunk)."""


class OverlappingRegions(FormatError):
    """Two chunks, or two tensors in a chunk, share bytes, or chunks are not in file order."""


class DuplicateName(FormatError):
    """A tensor, chunk or row block is declared twice."""


class TensorLayoutError(FormatError):
    """A tensor's row blocks do not tile it, or its size disagrees with its dtype and shape."""


class GroupLayoutError(FormatError):
    """The chunks of one group are not contiguous in the file."""


class ChunkChecksumMismatch(FormatError):
    """A chunk's stored bytes do not match its CRC-32."""


class DecodedSizeMismatch(FormatError):
    """A chunk decodes to a different number of bytes than its declared raw_nbytes."""


class CorruptChunk(FormatError):
    """A chunk's codec rejected its bytes."""


# --- everything else -----------------------------------------------------------------------------


class SourceError(WStreamError, ValueError):
    """A checkpoint to pack is malformed, incomplete or ambiguous."""


class ByteSourceError(WStreamError, OSError):
    """A byte source could not deliver the range asked for, exactly."""


class ReadPastEnd(ByteSourceError):
    """A read asked for bytes beyond the source's size."""


class ShortRead(ByteSourceError):
    """The source returned fewer bytes than its size promised (truncated while open?)."""


class SourceChanged(ByteSourceError):
    """The source's content is no longer the version that was opened."""


class InputError(WStreamError, ValueError):
    """An argument is invalid: the message names it, its value and what is allowed."""


class LoaderError(WStreamError, RuntimeError):
    """The streaming loader could not deliver a chunk."""


class PoolTimeout(LoaderError):
    """No slab became free within the timeout."""


class BudgetTooSmall(LoaderError, InputError):
    """The memory budget cannot hold even the largest chunk the stream needs."""


class LossyUnpack(InputError):
    """Unpacking a lossy container was asked for without allowing it."""


# --- object stores and HTTP sources --------------------------------------------------------------


class RemoteError(WStreamError, OSError):
    """An object store or HTTP server did not deliver what was asked (URL, range, status)."""


class InvalidURL(InputError):
    """A source URL is malformed (e.g. ``s3://`` without a bucket or key)."""


class ObjectNotFound(RemoteError):
    """The bucket or object does not exist (HTTP 404)."""


class AccessDenied(RemoteError):
    """The credentials may not read or write the object (HTTP 401/403)."""


class ObjectChanged(RemoteError):
    """The object was replaced since it was opened (ETag/version differs, or If-Match failed)."""


class RangeError(RemoteError):
    """A range past the end of the object, or a response for a range other than the one asked."""


class ShortBody(RemoteError):
    """A response body kept ending before (or running past) its declared length, after retries."""


class RemoteTimeout(RemoteError):
    """Requests kept timing out (connect or read), after retries within the bounded total."""


class RemoteUnavailable(RemoteError):
    """5xx / 503 SlowDown / dropped connections persisted past the retry bound."""


class UploadError(RemoteError):
    """A multipart upload failed; it was aborted, so no object and no upload are left."""
