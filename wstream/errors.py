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
    """A chunk's (or an embedded file's) stored bytes do not match its CRC-32."""


class DecodedSizeMismatch(FormatError):
    """A chunk (or an embedded file) decodes to another number of bytes than its raw_nbytes."""


class ZeroPointOutOfRange(FormatError):
    """A uint4 piece's stored zero point is above 15 (SPEC.md rule G3)."""


class CorruptChunk(FormatError):
    """A chunk's (or an embedded file's) codec rejected its bytes."""


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


class FoldedUnpack(InputError):
    """Unpacking a folded container (``pack --fold``) was asked for without allowing it: the
    tensors its folds replaced are not in it."""


class MissingModelFile(InputError):
    """A container lacks a file of the source checkpoint that a command needs (tokenizer.json,
    ...): the checkpoint must be packed again with that file beside its weights."""


class BadModelFile(InputError):
    """A file embedded in a container is not what its use needs (e.g. not strict JSON)."""


class OutputExists(InputError):
    """An output file exists with other content (or is not a regular file): nothing is
    replaced unless asked (``--force``)."""


# --- the real request (wstream/pipeline) ---------------------------------------------------------


class ImageFileError(InputError):
    """An image file is missing, unreadable, truncated, not an image, or of an odd mode."""


class ImageTooLarge(ImageFileError):
    """An image has more pixels than the limit (a bomb guard), or a slice too many patches."""


class PreprocessorConfigError(InputError):
    """A preprocessor_config.json field is missing its type or is outside its allowed range."""


class ReservedTokenInPrompt(InputError):
    """Prompt text contains an image-layout token (``<image>``, ``<slice>``, ...)."""


class ImageBoundError(InputError):
    """Image markers or placeholder spans do not match the images (count, order or span length)."""


# --- the text side of a request (tokenizer, chat template, decoding) -----------------------------


class TokenizerError(InputError):
    """The tokenizer files are malformed, disagree with each other, or lack a needed token."""


class MissingToken(TokenizerError):
    """A token the pipeline needs (``<image>``, ``<|im_end|>``, ...) is not in the vocabulary."""


class ChatTemplateError(InputError):
    """The chat template does not compile, or rendering it failed (incl. ``raise_exception``)."""


class SandboxViolation(ChatTemplateError):
    """The chat template tried something the jinja2 sandbox forbids (``__class__``, mutation)."""


class GenerationConfigError(InputError):
    """``generation_config.json`` is malformed or holds a value out of range."""


class ContextTooLong(InputError):
    """The prompt does not fit the model's context (``max_position_embeddings``)."""


class BadLogits(WStreamError, ValueError):
    """The logits handed to a sampler have the wrong shape or no finite value to choose from."""


# --- files given by the caller (hardening, issue 14) ---------------------------------------------


class NotRegularFile(InputError):
    """A path to read or write is a FIFO, a device, a directory or a socket, not a regular file."""


class OutputAliasesInput(InputError):
    """An output path names one of the command's inputs (the same file, by path or by inode)."""


class SourceModified(SourceError):
    """A checkpoint file changed (size, mtime, ctime or inode) while it was being packed."""


class ContainerClosed(ByteSourceError):
    """A read was asked of a container (or byte source) after close()."""


class WriteFailed(WStreamError, OSError):
    """An output file could not be written (disk full, file too large, I/O error)."""


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
