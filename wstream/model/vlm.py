"""MiniCPM-V 2.6 end to end: image slices -> vision -> resampler -> Qwen2, then decode.

Weights come only through a :class:`WeightSource`, in execution order:

- prefill is ONE walk: ``vision.*`` and ``resampler`` (only when there is an image), then
  ``llm.embed`` (only the chunks holding the prompt's text ids), ``llm.layer.*``, ``llm.norm``,
  ``llm.head``; so a streaming source prefetches across every group boundary;
- each further token is one walk over ``llm.embed`` (the chunk holding that id) and the rest of
  the LLM, marked ``repeat`` so a streaming source may keep a fixed part resident.

So a source sees, per walk, chunks in file order only, and no vision or resampler chunk at all
without an image. Every slice (of every image) goes through the vision tower and the resampler
together, in one pass over their weights; slice i's resampler output replaces the embeddings at
``image_bounds[i]``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Generator, Sequence
from contextlib import closing
from dataclasses import dataclass, field

import numpy as np

from wstream.errors import InputError
from wstream.model import decoder, resampler, vision
from wstream.model.config import VLMConfig, from_hf, tensor_shapes
from wstream.model.folds import folded_shapes
from wstream.model.schedule import ScheduledGroup, execution_order
from wstream.model.weights import walk
from wstream.stream.pieces import WeightSource

STAGES = ("vision", "resampler", "prefill", "decode")  # keys of Generation.timings


@dataclass
class Generation:
    logits: np.ndarray  # prefill logits, float32 [T, vocab]
    tokens: list[int]  # greedy new token ids, max_new_tokens of them
    step_logits: np.ndarray  # logits of each decode step, float32 [max(N-1, 0), vocab]
    timings: dict[str, float] = field(default_factory=dict)  # seconds per stage (STAGES)


class _Lap:
    """Seconds since the previous call (or since construction)."""

    def __init__(self) -> None:
        self._last = time.perf_counter()

    def __call__(self) -> float:
        now = time.perf_counter()
        elapsed, self._last = now - self._last, now
        return elapsed


def check_inputs(
    cfg: VLMConfig,
    input_ids: Sequence[int] | np.ndarray,
    slices: Sequence[np.ndarray],
    image_bounds: Sequence[tuple[int, int]],
) -> np.ndarray:
    """Validate a request; returns the ids as int64 [T]. Every problem is an InputError.

    ``slices`` are normalised float32 [3, H, W] arrays (H, W multiples of the patch), one per
    span of ``image_bounds``: ordered, disjoint, each exactly ``query_num`` positions long.
    """
    ids = np.asarray(input_ids)
    if ids.ndim != 1 or ids.size == 0:
        raise InputError(f"input_ids: shape {ids.shape}, expected a non-empty 1-D sequence")
    if ids.dtype.kind not in "iu":
        raise InputError(f"input_ids: dtype {ids.dtype}, expected integers")
    if ids.dtype.kind == "u" and ids.size and int(ids.max()) > np.iinfo(np.int64).max:
        raise InputError(f"input_ids: id {int(ids.max())} is outside the vocabulary")
    ids = ids.astype(np.int64)
    if len(slices) != len(image_bounds):
        raise InputError(
            f"image_bound: {len(image_bounds)} spans for {len(slices)} image slices; "
            "there must be one span per slice"
        )
    patch, queries = cfg.vision.patch, cfg.resampler.queries
    for n, pixels in enumerate(slices):
        where = "pixels" if len(slices) == 1 else f"pixels[{n}]"
        if not isinstance(pixels, np.ndarray) or pixels.dtype != np.float32:
            raise InputError(
                f"{where}: dtype {getattr(pixels, 'dtype', type(pixels))}, expected float32"
            )
        if pixels.ndim != 3 or pixels.shape[0] != 3:
            raise InputError(f"{where}: shape {pixels.shape}, expected [3, H, W]")
        height, width = pixels.shape[1:]
        if height < patch or width < patch or height % patch or width % patch:
            raise InputError(
                f"{where}: H x W = {height} x {width}; both must be positive multiples of {patch}"
            )
        if not np.isfinite(pixels).all():
            raise InputError(f"{where}: contains NaN or infinity")
    text = np.ones(len(ids), dtype=bool)  # [T] positions that keep their token embedding
    previous = 0
    for a, b in image_bounds:
        if not previous <= a < b <= len(ids) or b - a != queries:
            raise InputError(
                f"image_bound: {a}:{b} must be a span of exactly {queries} (query_num) "
                f"positions inside the {len(ids)} input ids, after the previous span"
            )
        text[a:b] = False
        previous = b
    bad = (ids < 0) | (ids >= cfg.decoder.vocab)
    if (bad & text).any():
        first = int(ids[bad & text][0])
        raise InputError(
            f"input_ids: id {first} is outside the vocabulary [0, {cfg.decoder.vocab})"
        )
    return ids


def check_weights(source: WeightSource, cfg: VLMConfig) -> dict[str, ScheduledGroup]:
    """The container must hold exactly the tensors ``cfg`` implies, with their shapes.

    Returns the execution plan by group name.
    """
    plans = {p.name: p for p in execution_order(source.tensor_names)}
    expected = folded_shapes(tensor_shapes(cfg), source.tensor_names)  # pack --fold
    actual = {
        pc.name: pc.shape for g in plans for c in source.chunks_of(g) for pc in source.pieces_of(c)
    }
    missing = sorted(set(expected) - set(actual))
    extra = sorted(set(actual) - set(expected))
    if missing or extra:
        raise InputError(
            "weights: the container does not match its config.json: "
            f"missing {missing[:3]}{'...' if len(missing) > 3 else ''}, "
            f"unexpected {extra[:3]}{'...' if len(extra) > 3 else ''}"
        )
    for name, shape in expected.items():
        if tuple(actual[name]) != shape:
            raise InputError(
                f"weights: {name} has shape {list(actual[name])}, config.json implies {list(shape)}"
            )
    return plans


def chunks_holding(source: WeightSource, group: str, rows: np.ndarray) -> list[str]:
    """The chunks of a one-tensor group (llm.embed) holding any of ``rows``, in file order."""
    out = []
    for chunk in source.chunks_of(group):
        for piece in source.pieces_of(chunk):
            r0, r1 = piece.rows if piece.rows is not None else (0, piece.shape[0])
            if ((rows >= r0) & (rows < r1)).any():
                out.append(chunk)
                break
    return out


NextToken = Callable[[Sequence[int], np.ndarray], int]  # (ids so far, logits [vocab]) -> id
OnToken = Callable[[int], bool]  # called with each new id; True stops the decode


def greedy(ids: Sequence[int], logits: np.ndarray) -> int:
    """The default choice: the most likely token (the first one on ties, as torch.argmax)."""
    return int(np.argmax(logits))


def generate(
    source: WeightSource,
    input_ids: Sequence[int] | np.ndarray,
    *,
    pixels: np.ndarray | None = None,
    image_bound: tuple[int, int] | None = None,
    slices: Sequence[np.ndarray] = (),
    image_bounds: Sequence[tuple[int, int]] = (),
    max_new_tokens: int = 0,
    next_token: NextToken = greedy,
    on_token: OnToken | None = None,
    keep_logits: bool = True,
) -> Generation:
    """Prefill ``input_ids`` (image slices at their spans), then decode up to ``max_new_tokens``.

    One slice can be given as ``pixels`` + ``image_bound``, several as ``slices`` +
    ``image_bounds`` (one span each, in order). ``next_token`` picks each new id (greedy by
    default; a sampler otherwise); ``on_token`` sees each new id as soon as it is chosen and
    returns True to stop there (an eos id, a stop string). With ``keep_logits`` False only the
    last prefill position goes through the head and no step logits are kept (a long prompt's
    [T, vocab] logits are hundreds of MB at 2.6's vocabulary).

    >>> generate(EagerWeights(open_container("m.wst")), ids, pixels=px,  # doctest: +SKIP
    ...          image_bound=(1, 65), max_new_tokens=8).tokens
    [151, 2208, 11, ...]
    """
    steps = generate_tokens(
        source,
        input_ids,
        pixels=pixels,
        image_bound=image_bound,
        slices=slices,
        image_bounds=image_bounds,
        max_new_tokens=max_new_tokens,
        next_token=next_token,
        keep_logits=keep_logits,
    )
    try:
        token = next(steps)
        while True:
            token = steps.send(on_token is not None and on_token(token))
    except StopIteration as done:
        result: Generation = done.value
        return result


def generate_tokens(
    source: WeightSource,
    input_ids: Sequence[int] | np.ndarray,
    *,
    pixels: np.ndarray | None = None,
    image_bound: tuple[int, int] | None = None,
    slices: Sequence[np.ndarray] = (),
    image_bounds: Sequence[tuple[int, int]] = (),
    max_new_tokens: int = 0,
    next_token: NextToken = greedy,
    keep_logits: bool = True,
) -> Generator[int, bool | None, Generation]:
    """:func:`generate` as a generator: yields each new id as soon as it is chosen; sending
    True stops the decode there. Returns the :class:`Generation` (``StopIteration.value``).

    The caller streams the answer between tokens (the CLI prints each piece of text at once)."""
    cfg = from_hf(source.config)
    if (pixels is None) != (image_bound is None):
        raise InputError("image_bound: must be given exactly when an image is")
    if pixels is not None and image_bound is not None:
        if slices or image_bounds:
            raise InputError("pixels and slices: give one slice or a list of them, not both")
        slices, image_bounds = [pixels], [image_bound]
    ids = check_inputs(cfg, input_ids, slices, image_bounds)
    if type(max_new_tokens) is not int or max_new_tokens < 0:
        raise InputError(f"max_new_tokens: {max_new_tokens!r} must be a non-negative integer")
    plans = check_weights(source, cfg)
    text = np.ones(len(ids), dtype=bool)  # [T]
    for a, b in image_bounds:
        text[a:b] = False

    def group(name: str, subset: list[str] | None = None) -> tuple[str, str, list[str] | None]:
        return name, plans[name].prefix, subset

    llm_rest = [group(f"llm.layer.{i}") for i in range(cfg.decoder.layers)]
    llm_rest += [group("llm.norm"), group("llm.head")]
    prefill = []
    if slices:
        prefill += [group("vision.embed")]
        prefill += [group(f"vision.layer.{i}") for i in range(cfg.vision.layers)]
        prefill += [group("vision.post_norm"), group("resampler")]
    prefill += [group("llm.embed", chunks_holding(source, "llm.embed", ids[text]))] + llm_rest

    cache = decoder.KVCache.empty(cfg.decoder, len(ids) + max(max_new_tokens - 1, 0))
    timings = dict.fromkeys(STAGES, 0.0)
    lap = _Lap()
    with closing(walk(source, prefill)) as cursors:
        x = np.zeros((len(ids), cfg.decoder.hidden), dtype=np.float32)  # [T, D]
        if slices:
            feats = vision.encode(slices, cursors, cfg.vision)  # per slice [h*w, d_v]
            timings["vision"] = lap()
            patch = cfg.vision.patch
            grids = [(px.shape[1] // patch, px.shape[2] // patch) for px in slices]
            images = resampler.resample(feats, grids, next(cursors), cfg.resampler)  # [Q, D] each
            timings["resampler"] = lap()
            for (a, b), image in zip(image_bounds, images):
                x[a:b] = image
        x[text] = decoder.embed(ids[text], next(cursors), cfg.decoder)  # [T_text, D]
        logits = decoder.forward(x, cursors, cfg.decoder, cache, last_only=not keep_logits)
    timings["prefill"] = lap()

    history = ids.tolist()
    tokens: list[int] = []
    steps = []
    row = logits[-1]  # [vocab]
    while len(tokens) < max_new_tokens:
        token = next_token(history, row)
        tokens.append(token)
        history.append(token)
        stop = yield token
        if stop or len(tokens) == max_new_tokens:
            break
        step_ids = np.array([token], dtype=np.int64)  # [1]
        walk_plan = [group("llm.embed", chunks_holding(source, "llm.embed", step_ids))] + llm_rest
        with closing(walk(source, walk_plan, repeat=True)) as cursors:
            x = decoder.embed(step_ids, next(cursors), cfg.decoder)  # [1, D]
            row = decoder.forward(x, cursors, cfg.decoder, cache)[-1]  # [vocab]
        if keep_logits:
            steps.append(row)
    timings["decode"] = lap()
    step_logits = np.stack(steps) if steps else np.zeros((0, cfg.decoder.vocab), np.float32)
    return Generation(logits, tokens, step_logits, timings)
