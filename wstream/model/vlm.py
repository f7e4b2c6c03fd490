"""MiniCPM-V 2.6 end to end: one image slice -> vision -> resampler -> Qwen2, then greedy decode.

Weights come only through a :class:`WeightSource`, in execution order:

- prefill is ONE walk: ``vision.*`` and ``resampler`` (only when there is an image), then
  ``llm.embed`` (only the chunks holding the prompt's text ids), ``llm.layer.*``, ``llm.norm``,
  ``llm.head``; so a streaming source prefetches across every group boundary;
- each further token is one walk over ``llm.embed`` (the chunk holding that id) and the rest of
  the LLM, marked ``repeat`` so a streaming source may keep a fixed part resident.

So a source sees, per walk, chunks in file order only, and no vision or resampler chunk at all
without an image. The image's resampler outputs replace the embeddings at ``image_bound``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from contextlib import closing
from dataclasses import dataclass, field

import numpy as np

from wstream.errors import InputError
from wstream.model import decoder, resampler, vision
from wstream.model.config import VLMConfig, from_hf, tensor_shapes
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
    pixels: np.ndarray | None,
    image_bound: tuple[int, int] | None,
) -> np.ndarray:
    """Validate a request; returns the ids as int64 [T]. Every problem is an InputError."""
    ids = np.asarray(input_ids)
    if ids.ndim != 1 or ids.size == 0:
        raise InputError(f"input_ids: shape {ids.shape}, expected a non-empty 1-D sequence")
    if ids.dtype.kind not in "iu":
        raise InputError(f"input_ids: dtype {ids.dtype}, expected integers")
    ids = ids.astype(np.int64)
    text = np.ones(len(ids), dtype=bool)  # [T] positions that keep their token embedding
    if (pixels is None) != (image_bound is None):
        raise InputError("image_bound: must be given exactly when an image is")
    if pixels is not None and image_bound is not None:
        patch, queries = cfg.vision.patch, cfg.resampler.queries
        if not isinstance(pixels, np.ndarray) or pixels.dtype != np.float32:
            raise InputError(
                f"pixels: dtype {getattr(pixels, 'dtype', type(pixels))}, expected float32"
            )
        if pixels.ndim != 3 or pixels.shape[0] != 3:
            raise InputError(f"pixels: shape {pixels.shape}, expected [3, H, W]")
        height, width = pixels.shape[1:]
        if height < patch or width < patch or height % patch or width % patch:
            raise InputError(
                f"pixels: H x W = {height} x {width}; both must be positive multiples of {patch}"
            )
        if not np.isfinite(pixels).all():
            raise InputError("pixels: contains NaN or infinity")
        a, b = image_bound
        if not 0 <= a < b <= len(ids) or b - a != queries:
            raise InputError(
                f"image_bound: {a}:{b} must be a span of exactly {queries} "
                f"(query_num) positions inside the {len(ids)} input ids"
            )
        text[a:b] = False
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
    expected = tensor_shapes(cfg)
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


def generate(
    source: WeightSource,
    input_ids: Sequence[int] | np.ndarray,
    *,
    pixels: np.ndarray | None = None,
    image_bound: tuple[int, int] | None = None,
    max_new_tokens: int = 0,
) -> Generation:
    """Prefill ``input_ids`` (with one image slice at ``image_bound``) and decode greedily.

    >>> generate(EagerWeights(open_container("m.wst")), ids, pixels=px,  # doctest: +SKIP
    ...          image_bound=(1, 65), max_new_tokens=8).tokens
    [151, 2208, 11, ...]
    """
    cfg = from_hf(source.config)
    ids = check_inputs(cfg, input_ids, pixels, image_bound)
    if type(max_new_tokens) is not int or max_new_tokens < 0:
        raise InputError(f"max_new_tokens: {max_new_tokens!r} must be a non-negative integer")
    plans = check_weights(source, cfg)
    text = np.ones(len(ids), dtype=bool)  # [T]
    if image_bound is not None:
        text[image_bound[0] : image_bound[1]] = False

    def group(name: str, subset: list[str] | None = None) -> tuple[str, str, list[str] | None]:
        return name, plans[name].prefix, subset

    llm_rest = [group(f"llm.layer.{i}") for i in range(cfg.decoder.layers)]
    llm_rest += [group("llm.norm"), group("llm.head")]
    prefill = []
    if pixels is not None:
        prefill += [group("vision.embed")]
        prefill += [group(f"vision.layer.{i}") for i in range(cfg.vision.layers)]
        prefill += [group("vision.post_norm"), group("resampler")]
    prefill += [group("llm.embed", chunks_holding(source, "llm.embed", ids[text]))] + llm_rest

    cache = decoder.KVCache.empty(cfg.decoder, len(ids) + max(max_new_tokens - 1, 0))
    timings = dict.fromkeys(STAGES, 0.0)
    lap = _Lap()
    with closing(walk(source, prefill)) as cursors:
        x = np.zeros((len(ids), cfg.decoder.hidden), dtype=np.float32)  # [T, D]
        if pixels is not None and image_bound is not None:
            feats = vision.encode(pixels, cursors, cfg.vision)  # [h*w, d_v]
            timings["vision"] = lap()
            grid = (pixels.shape[1] // cfg.vision.patch, pixels.shape[2] // cfg.vision.patch)
            image = resampler.resample(feats, grid, next(cursors), cfg.resampler)  # [Q, D]
            timings["resampler"] = lap()
            x[image_bound[0] : image_bound[1]] = image
        x[text] = decoder.embed(ids[text], next(cursors), cfg.decoder)  # [T_text, D]
        logits = decoder.forward(x, cursors, cfg.decoder, cache)  # [T, vocab]
    timings["prefill"] = lap()

    tokens = [int(np.argmax(logits[-1]))] if max_new_tokens else []
    steps = []
    while len(tokens) < max_new_tokens:
        token = np.array(tokens[-1:], dtype=np.int64)  # [1]
        walk_plan = [group("llm.embed", chunks_holding(source, "llm.embed", token))] + llm_rest
        with closing(walk(source, walk_plan, repeat=True)) as cursors:
            x = decoder.embed(token, next(cursors), cfg.decoder)  # [1, D]
            step = decoder.forward(x, cursors, cfg.decoder, cache)  # [1, vocab]
        steps.append(step[-1])
        tokens.append(int(np.argmax(step[-1])))
    timings["decode"] = lap()
    step_logits = np.stack(steps) if steps else np.zeros((0, cfg.decoder.vocab), np.float32)
    return Generation(logits, tokens, step_logits, timings)
