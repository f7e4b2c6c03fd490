"""Library entry points behind ``wstream run`` and ``wstream demo``.

:func:`run` opens a container, validates a request (every problem is an
:class:`~wstream.errors.InputError` naming the argument), builds a weight source with
:func:`make_weights`, runs :func:`wstream.model.vlm.generate` and reports what it measured.
"""

from __future__ import annotations

import os
import resource
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from wstream.container.cache import ChunkCache
from wstream.container.reader import Container
from wstream.errors import InputError
from wstream.model.config import from_hf
from wstream.model.vlm import check_inputs, generate
from wstream.stream.loader import StreamingLoader, forward_weights
from wstream.stream.pieces import WeightSource

MAX_IMAGE_SIDE = 448  # MiniCPM-V's slice resolution: --image is resized to fit it

WeightsFactory = Callable[[Container, int | None, int | None], WeightSource]


DEFAULT_PREFETCH = 2


def make_weights(container: Container, budget: int | None, prefetch: int | None) -> WeightSource:
    """The weight source ``run`` uses: the streaming loader, ``prefetch`` chunks ahead (default
    2) under ``budget`` bytes (None: no limit; every chunk stays once loaded)."""
    return forward_weights(
        container, budget=budget, prefetch=DEFAULT_PREFETCH if prefetch is None else prefetch
    )


def load_everything(container: Container, budget: int | None, prefetch: int | None) -> WeightSource:
    """The baseline: every chunk decoded and widened up front, as a plain loader would."""
    return forward_weights(container, eager=True)


@dataclass(frozen=True)
class RunReport:
    generated: list[int]  # greedy new token ids
    logits: np.ndarray  # prefill logits, float32 [T, vocab]
    timings: dict[str, float]  # seconds: open, load, vision, resampler, prefill, decode
    peak_rss_bytes: int  # VmHWM of this process
    bytes_read: int  # stored bytes read from the container
    bytes_decoded: int  # bytes produced by codecs
    loader: dict[str, Any]  # the streaming loader's own figures (empty for the baseline)
    image_size: tuple[int, int] | None  # H, W of the slice fed to the vision tower
    image_bound: tuple[int, int] | None  # where its embeddings went

    def summary(self) -> dict[str, Any]:
        """Everything but the logits, JSON-ready."""
        return {
            "generated": self.generated,
            "timings": {k: round(v, 6) for k, v in self.timings.items()},
            "peak_rss_bytes": self.peak_rss_bytes,
            "bytes_read": self.bytes_read,
            "bytes_decoded": self.bytes_decoded,
            "loader": self.loader,
            "prompt_tokens": int(self.logits.shape[0]),
            "vocab": int(self.logits.shape[1]),
            "image_size": list(self.image_size) if self.image_size else None,
            "image_bound": list(self.image_bound) if self.image_bound else None,
        }


# --- inputs --------------------------------------------------------------------------------------


def load_image(
    path: str | os.PathLike[str], *, max_side: int = MAX_IMAGE_SIDE, patch: int = 14
) -> np.ndarray:
    """A PNG/JPEG as normalised pixels [3, H, W] float32: RGB, resized (bicubic, aspect kept) so
    the long side is at most ``max_side`` and both sides are multiples of ``patch``, then
    (x/255 - 0.5) / 0.5 as MiniCPM-V's processor does."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            rgb = img.convert("RGB")
    except (OSError, Image.DecompressionBombError) as exc:
        raise InputError(f"image: cannot read {os.fspath(path)!r} ({exc})") from None
    width, height = rgb.size
    scale = min(1.0, max_side / max(width, height))

    def side(n: int) -> int:  # MiniCPM-V's ensure_divide: nearest multiple, at least one patch
        return max(round(n * scale / patch) * patch, patch)

    size = (side(width), side(height))
    if size != rgb.size:
        rgb = rgb.resize(size, Image.Resampling.BICUBIC)
    x = np.asarray(rgb, dtype=np.float32).transpose(2, 0, 1)  # [H, W, 3] -> [3, H, W]
    return (x / 255.0 - 0.5) / 0.5


def load_pixels(path: str | os.PathLike[str]) -> np.ndarray:
    """A .npy array (checked later: float32 [3, H, W])."""
    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise InputError(f"pixels: cannot load {os.fspath(path)!r} as .npy ({exc})") from None
    if not isinstance(array, np.ndarray):
        raise InputError(f"pixels: {os.fspath(path)!r} is not a single .npy array")
    return array


def parse_ids(text: str) -> np.ndarray:
    """Token ids from a .npy file of integers or a comma list ("1,2,3"). [T] int64"""
    if text.endswith(".npy") or Path(text).is_file():
        try:
            ids = np.load(text, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise InputError(f"input-ids: cannot load {text!r} ({exc})") from None
        if not isinstance(ids, np.ndarray) or ids.ndim != 1 or ids.dtype.kind not in "iu":
            raise InputError(f"input-ids: {text!r} must hold a 1-D integer array")
        return ids.astype(np.int64)
    try:
        ids = [int(tok) for tok in text.split(",")]
    except ValueError:
        raise InputError(f"input-ids: {text!r} is neither a .npy file nor a comma list") from None
    bad = next((i for i in ids if not -(1 << 63) <= i < 1 << 63), None)
    if bad is not None:  # np.int64 would overflow; the vocabulary bound is checked later
        raise InputError(f"input-ids: id {bad} is outside the int64 range")
    return np.array(ids, dtype=np.int64)


def parse_bound(text: str) -> tuple[int, int]:
    """ "A:B" -> (A, B)."""
    try:
        a, b = (int(t) for t in text.split(":"))
    except ValueError:
        raise InputError(f"image-bound: {text!r} is not A:B") from None
    return a, b


# --- measurement ---------------------------------------------------------------------------------


def peak_rss_bytes() -> int:
    """The process's peak resident set (VmHWM; mapped file pages count too)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


# --- run -----------------------------------------------------------------------------------------


def loader_figures(loader: StreamingLoader) -> dict[str, Any]:
    """What the streaming loader did: its budget, prefetch, time stalled, peak bytes held, and
    the stored bytes each decode step re-read (the resident subset is not re-read)."""
    s = loader.stats
    decode_steps = loader.history[1:]  # the first stream is the prefill
    return {
        "budget_bytes": loader.budget,
        "prefetch": loader.prefetch,
        "mapped": loader.container.mapping() is not None,  # --mmap: views of a map, no reads
        "stall_seconds": round(s.stall_seconds, 6),
        "read_seconds": round(s.read_seconds, 6),
        "decode_seconds": round(s.decode_seconds, 6),
        "peak_pool_bytes": loader.pool.peak,
        "resident_bytes": loader.resident_bytes,
        "chunks_streamed": s.chunks - s.resident_hits,
        "resident_hits": s.resident_hits,
        "chunks_coalesced": s.coalesced,  # fetched in the request of the chunk before them
        "bytes_read_per_decode_step": (
            round(sum(h.bytes_read for h in decode_steps) / len(decode_steps))
            if decode_steps
            else 0
        ),
    }


def run(
    container_path: str | os.PathLike[str],
    *,
    input_ids: np.ndarray | list[int],
    pixels: np.ndarray | None = None,
    image: str | os.PathLike[str] | None = None,
    image_bound: tuple[int, int] | None = None,
    max_new_tokens: int = 8,
    budget: int | None = None,
    prefetch: int | None = None,
    weights_factory: WeightsFactory | None = None,
    cache: ChunkCache | None = None,
    mapped: bool = False,
) -> RunReport:
    """Prefill and greedy-decode one request from a .wst container (a path or a URL; ``cache``
    keeps a remote container's verified chunks on local disk; ``mapped`` maps a local file
    instead of reading it, see :class:`~wstream.container.reader.Container`).

    With an image but no ``image_bound``, ``query_num`` placeholder positions are prepended to
    the ids and the image fills them.

    >>> run("m.wst", input_ids=[1, 2, 3], image="cat.png").generated  # doctest: +SKIP
    """
    if pixels is not None and image is not None:
        raise InputError("pixels and image: give one, not both")
    if type(max_new_tokens) is not int or max_new_tokens < 0:
        raise InputError(f"max-new-tokens: {max_new_tokens!r} must be a non-negative integer")
    factory = weights_factory or make_weights
    started = time.perf_counter()
    with Container(container_path, cache=cache, mapped=mapped) as container:
        cfg = from_hf(container.manifest.config or {})
        opened = time.perf_counter()
        if image is not None:
            pixels = load_image(image, patch=cfg.vision.patch)
        ids = np.asarray(input_ids)
        if pixels is not None and image_bound is None and ids.ndim == 1:
            queries = cfg.resampler.queries
            ids = np.concatenate([np.zeros(queries, dtype=np.int64), ids.astype(np.int64)])
            image_bound = (0, queries)
        if (pixels is None) != (image_bound is None):
            raise InputError("image_bound: must be given exactly when an image is")
        slices = [pixels] if pixels is not None else []
        bounds = [image_bound] if image_bound is not None else []
        ids = check_inputs(cfg, ids, slices, bounds)  # fail before loading any weight
        loading = time.perf_counter()
        weights = factory(container, budget, prefetch)
        try:
            loaded = time.perf_counter()
            result = generate(
                weights, ids, pixels=pixels, image_bound=image_bound, max_new_tokens=max_new_tokens
            )
        finally:
            close = getattr(weights, "close", None)
            if close is not None:
                close()
        stats = getattr(weights, "stats", None)
        loader = loader_figures(weights) if isinstance(weights, StreamingLoader) else {}
        chunks = container.manifest.chunks
        bytes_read = getattr(stats, "bytes_read", sum(c.nbytes for c in chunks))
        bytes_decoded = getattr(
            stats, "bytes_decoded", sum(c.raw_nbytes for c in chunks if not c.is_raw)
        )
    timings = {"open": opened - started, "load": loaded - loading, **result.timings}
    return RunReport(
        generated=result.tokens,
        logits=result.logits,
        timings=timings,
        peak_rss_bytes=peak_rss_bytes(),
        bytes_read=int(bytes_read),
        bytes_decoded=int(bytes_decoded),
        loader=loader,
        image_size=(int(pixels.shape[1]), int(pixels.shape[2])) if pixels is not None else None,
        image_bound=image_bound,
    )
