"""Image placeholders in the prompt text, and the ``image_bound`` spans found again in token ids.

The path of a request, as HF's ``chat()`` and ``MiniCPMVProcessor`` take it:

1. :func:`message_content`: a message's parts (text, and :data:`IMAGE` where an image goes) are
   joined with ``"\\n"``; each image becomes the marker :data:`IMAGE_MARKER`
   ``(<image>./</image>)``. ``chat(image=...)`` puts the image before the text.
2. the chat template renders the messages (another module; markers pass through it unchanged);
3. :func:`expand_images`: the rendered text is split on the markers, and image *i* (0-based in
   the prompt, counted over all messages) is replaced by :func:`image_placeholder`::

       <image_id>i</image_id>                       (only when use_image_id)
       <image> + <unk> * query_num + </image>       (the overview)
       rows of (<slice> + <unk> * query_num + </slice>) * cols, "\\n" between rows

   (the 2.6 ``get_slice_image_placeholder``: no newline after ``</image>`` nor after the last row);
4. the tokenizer encodes the text (another module);
5. :func:`image_bounds`: the spans ``[start + 1, end)`` between each ``<image>`` or ``<slice>`` id
   and the next ``</image>`` or ``</slice>`` id, in order, as the processor's ``_convert``.

**A literal image token typed by the user is rejected**, not escaped (HF does neither, and the
typed token would become the special id and shift every span). The reserved strings are the
config's ``<image>``, ``</image>``, ``<slice>``, ``</slice>``, ``<image_id>``, ``</image_id>``
(the marker contains ``<image>``). Escaping would need the tokenizer to encode the text without
its special tokens, or would change the text the model reads; a clear error is the honest
answer. ``<unk>`` stays allowed: it cannot open or close a span. :func:`message_content` enforces
the rule on every text part; :func:`check_text` applies it to any other text (a system prompt).
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Sequence

import numpy as np
import numpy.typing as npt

from wstream.errors import ImageBoundError, ReservedTokenInPrompt
from wstream.pipeline.image import PreprocessorConfig, SliceGeometry

IMAGE_MARKER = "(<image>./</image>)"  # the processor's split pattern, fixed in its code


class ContentPart(enum.Enum):
    """A non-text part of a message's content."""

    IMAGE = "image"


IMAGE = ContentPart.IMAGE


def reserved_strings(cfg: PreprocessorConfig) -> tuple[str, ...]:
    """The image-layout token strings a user's text may not contain."""
    return (
        cfg.im_start,
        cfg.im_end,
        cfg.slice_start,
        cfg.slice_end,
        cfg.im_id_start,
        cfg.im_id_end,
    )


def check_text(
    text: str, field: str, cfg: PreprocessorConfig, *, allow_markers: bool = False
) -> None:
    """Raise :class:`ReservedTokenInPrompt` if ``text`` contains an image-layout token.

    ``allow_markers``: the exact marker :data:`IMAGE_MARKER` is allowed (a raw prompt placing its
    images itself); anything else reserved is still refused. ``field`` names the text.
    """
    if not isinstance(text, str):
        raise ReservedTokenInPrompt(f"{field}: {type(text).__name__} is not a string")
    # Blank the markers out (same length, so the reported position stays right).
    scan = text.replace(IMAGE_MARKER, " " * len(IMAGE_MARKER)) if allow_markers else text
    hits = [(scan.find(s), s) for s in reserved_strings(cfg) if s in scan]
    if hits:
        at, token = min(hits)
        raise ReservedTokenInPrompt(
            f"{field}: {token!r} at character {at} is reserved for image placeholders; pass images "
            f"as images, and keep {', '.join(reserved_strings(cfg))} out of the text"
        )


def message_content(
    parts: Sequence[str | ContentPart], cfg: PreprocessorConfig, *, field: str = "prompt"
) -> str:
    """One message's content as ``chat()`` builds it: parts joined by ``"\\n"``, images as markers.

    >>> message_content([IMAGE, "What is in this image?"], PreprocessorConfig())
    '(<image>./</image>)\\nWhat is in this image?'
    """
    out = []
    for i, part in enumerate(parts):
        if part is ContentPart.IMAGE:
            out.append(IMAGE_MARKER)
        else:
            check_text(part, field if len(parts) == 1 else f"{field} part {i}", cfg)
            out.append(part)
    return "\n".join(out)


def image_placeholder(
    geometry: SliceGeometry,
    index: int,
    cfg: PreprocessorConfig,
    *,
    use_image_id: bool | None = None,
) -> str:
    """The placeholder text of image ``index`` (0-based in the prompt) with this geometry.

    ``use_image_id`` overrides the config's (as ``chat(use_image_id=...)``).
    """
    unks = cfg.unk * cfg.image_feature_size
    with_id = cfg.use_image_id if use_image_id is None else use_image_id
    text = f"{cfg.im_id_start}{index}{cfg.im_id_end}" if with_id else ""
    text += cfg.im_start + unks + cfg.im_end
    # Without slice_mode HF adds no grid; the geometry then has none either.
    if geometry.grid is not None:
        cols, rows = geometry.grid
        row = (cfg.slice_start + unks + cfg.slice_end) * cols
        text += "\n".join([row] * rows)
    return text


def expand_images(
    text: str,
    geometries: Sequence[SliceGeometry],
    cfg: PreprocessorConfig,
    *,
    use_image_id: bool | None = None,
) -> str:
    """Replace the i-th :data:`IMAGE_MARKER` of ``text`` by image i's placeholder, in order.

    The number of markers must equal the number of images (HF asserts it); a mismatch is an
    :class:`ImageBoundError`. The result is checked to hold exactly one ``<image>`` per image and
    one ``<slice>`` per cell, so a stray token that slipped past :func:`check_text` (text built
    by hand) cannot shift the spans silently.
    """
    chunks = text.split(IMAGE_MARKER)
    if len(chunks) - 1 != len(geometries):
        raise ImageBoundError(
            f"prompt: {len(chunks) - 1} image markers {IMAGE_MARKER!r} for {len(geometries)} "
            "images; there must be one marker per image"
        )
    out = [chunks[0]]
    for i, (geom, chunk) in enumerate(zip(geometries, chunks[1:])):
        out.append(image_placeholder(geom, i, cfg, use_image_id=use_image_id))
        out.append(chunk)
    final = "".join(out)
    want = {
        cfg.im_start: len(geometries),
        cfg.slice_start: sum(g.n_slices - 1 for g in geometries),
    }
    want[cfg.im_end], want[cfg.slice_end] = want[cfg.im_start], want[cfg.slice_start]
    for token, n in want.items():
        if final.count(token) != n:
            raise ImageBoundError(
                f"prompt: {final.count(token)} {token!r} tokens after expansion, expected {n} "
                "(the text around the markers contains image tokens)"
            )
    return final


def image_bounds(
    ids: Sequence[int] | npt.NDArray[np.integer],
    im_start_id: int,
    im_end_id: int,
    slice_start_id: int,
    slice_end_id: int,
) -> list[tuple[int, int]]:
    """The half-open spans ``(start, end)`` of image features in ``ids``, in token order.

    As ``_convert``: ``start`` = position after each ``<image>`` or ``<slice>`` id, ``end`` =
    position of each ``</image>`` or ``</slice>`` id, paired in order. HF pairs them blindly; here
    unequal counts, an end before its start, or a span overlapping the next (a truncated prompt,
    a stray special id) are an :class:`ImageBoundError`.
    """
    arr = np.asarray(ids)
    if arr.ndim != 1 or (arr.size and not np.issubdtype(arr.dtype, np.integer)):
        raise ImageBoundError(f"ids: shape {arr.shape} dtype {arr.dtype} must be 1-D integers")
    starts = np.flatnonzero((arr == im_start_id) | (arr == slice_start_id)) + 1
    ends = np.flatnonzero((arr == im_end_id) | (arr == slice_end_id))
    if len(starts) != len(ends):
        raise ImageBoundError(
            f"ids: {len(starts)} image/slice start ids but {len(ends)} end ids; they must pair up"
        )
    bounds = [(int(a), int(b)) for a, b in zip(starts, ends)]
    for k, (a, b) in enumerate(bounds):
        if b < a or (k + 1 < len(bounds) and bounds[k + 1][0] - 1 <= b):
            raise ImageBoundError(
                f"ids: span {k} = [{a}, {b}) is not closed before the next one opens"
                if b >= a
                else f"ids: span {k} ends at {b} before it starts at {a}"
            )
    return bounds


def check_image_bounds(bounds: Iterable[tuple[int, int]], n_slices: int, query_num: int) -> None:
    """Raise :class:`ImageBoundError` unless there are ``n_slices`` spans of ``query_num`` each.

    The forward scatters ``n_slices`` resampler outputs of ``query_num`` rows over these spans in
    order; HF does not check, and a mismatch corrupts the scatter or fails deep inside it.
    """
    spans = list(bounds)
    if len(spans) != n_slices:
        raise ImageBoundError(f"ids: {len(spans)} image spans for {n_slices} slices")
    for k, (a, b) in enumerate(spans):
        if b - a != query_num:
            raise ImageBoundError(
                f"ids: span {k} = [{a}, {b}) holds {b - a} tokens, expected {query_num}"
            )
