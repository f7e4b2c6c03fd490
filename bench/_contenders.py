"""The harness's contenders: weight sources for the one numpy forward, and the child that runs one.

    python bench/_contenders.py KIND '{"arg": value, ...}'   # started by bench/harness.py

Every contender runs the same :func:`wstream.model.vlm.generate` through a
:class:`~wstream.stream.pieces.WeightSource`, so only loading differs. The peers' sources present
one chunk per group (a vision block, a decoder layer, ...) whose pieces are the group's whole
tensors, in the order the forward reads them; each group's tensors reach the forward as float32:

- ``st-load`` (a): ``safetensors.numpy.load_file`` of every shard up front (bf16 copies), then
  every tensor widened to float32 at once, each bf16 copy dropped as soon as it is widened; the
  forward reads from that dict. Holds the whole model in float32 (2x the bf16 file) all along.
- ``st-lazy`` (b): ``safe_open`` of every shard (memory-mapped, kept open), and each tensor's
  ``get_tensor`` (a bf16 copy) widened when the forward asks for its group; dropped after use.
- ``ninja`` (c): one mmap-ninja memory-mapped array per tensor, opened when its group is asked
  for, widened straight from the mapping (zero-copy read), the mapping dropped after use.
- ``layers`` (d): AirLLM's scheme: one safetensors file per group (written once, not timed),
  ``load_file`` of the group's file when the forward needs it, freed after; no prefetch.
- ``wstream``: a ``.wst`` container through :class:`wstream.stream.loader.StreamingLoader` (budget,
  prefetch k, 2 worker threads), which widens on its workers into pooled slabs.

None of the peers prefetches, so for them "stall" is all the time spent inside the stream's
``next()`` (plus, for (a), the up-front load). For every contender the child measures the same
way, through :class:`Timed`: time to the first chunk handed to the forward, and time waiting.
"""

from __future__ import annotations

import time

STARTED = time.monotonic()  # before any import: the child's own clock starts here

import json  # noqa: E402
import sys  # noqa: E402
from collections.abc import Iterator, Mapping, Sequence  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import ml_dtypes  # noqa: E402, F401  (registers bfloat16 for safetensors and mmap-ninja)
import numpy as np  # noqa: E402

from wstream.format.chunk import float32_copy as widen  # noqa: E402
from wstream.model.schedule import ScheduledGroup, execution_order  # noqa: E402
from wstream.stream.pieces import LoadedChunk, Piece, WeightSource  # noqa: E402

# --- sources: one chunk per group -----------------------------------------------------------------


class GroupChunk:
    """A whole group in hand: its tensors as float32, in the forward's order."""

    __slots__ = ("_arrays", "group", "name")

    def __init__(self, group: str, arrays: list[np.ndarray]) -> None:
        self.name = self.group = group
        self._arrays = arrays

    def arrays(self) -> Sequence[np.ndarray]:
        return self._arrays

    def release(self) -> None:
        self._arrays = []  # the last reference for the lazy sources: the arrays are freed here


class GroupSource:
    """A WeightSource whose chunks are whole groups; subclasses say how a group is fetched."""

    def __init__(
        self,
        config: Mapping[str, Any],
        shapes: Mapping[str, tuple[int, ...]],
        plans: Sequence[ScheduledGroup] | None = None,
    ) -> None:
        """``plans``: the groups, when ``shapes`` is not a whole checkpoint (execution_order
        gives a partial one its generic order)."""
        self._config = config
        self._shapes = dict(shapes)
        self.plans = {p.name: p for p in (execution_order(shapes) if plans is None else plans)}
        self._pieces = {
            g: tuple(Piece(n, None, tuple(shapes[n])) for n in p.tensor_names)
            for g, p in self.plans.items()
        }
        self.bytes_read = 0  # stored bytes of the tensors fetched (page-cache hits included)

    @property
    def config(self) -> Mapping[str, Any]:
        return self._config

    @property
    def tensor_names(self) -> Sequence[str]:
        return list(self._shapes)

    def chunks_of(self, group: str) -> Sequence[str]:
        return [group] if group in self._pieces else []

    def pieces_of(self, chunk: str) -> Sequence[Piece]:
        return self._pieces[chunk]

    def fetch(self, group: str) -> list[np.ndarray]:
        """The group's tensors as float32, in the order of ``pieces_of(group)``."""
        raise NotImplementedError

    def stream(self, chunks: Sequence[str], *, repeat: bool = False) -> Iterator[LoadedChunk]:
        for group in chunks:
            # No local name for the arrays: the previous group must be freed before this fetch.
            yield GroupChunk(group, self.fetch(group))

    def close(self) -> None:
        pass


def _names(source: GroupSource, group: str) -> list[str]:
    return [p.name for p in source.pieces_of(group)]


class DictWeights(GroupSource):
    """Everything already in RAM as float32 (contender a; also the micro-benchmarks' source)."""

    def __init__(
        self,
        config: Mapping[str, Any],
        arrays: dict[str, np.ndarray],
        plans: Sequence[ScheduledGroup] | None = None,
    ) -> None:
        super().__init__(config, {n: a.shape for n, a in arrays.items()}, plans)
        self.arrays = arrays

    def fetch(self, group: str) -> list[np.ndarray]:
        return [self.arrays[n] for n in _names(self, group)]


def load_everything(paths: Sequence[Path]) -> tuple[dict[str, np.ndarray], int]:
    """(a): load_file every shard, then widen every tensor, dropping each bf16 copy once widened.
    Returns the float32 arrays and the stored bytes read."""
    from safetensors.numpy import load_file

    stored: dict[str, np.ndarray] = {}
    for p in paths:
        stored.update(load_file(str(p)))
    nbytes = sum(a.nbytes for a in stored.values())
    out = {}
    for name in list(stored):
        out[name] = widen(stored.pop(name))
    return out, nbytes


class SafeOpenWeights(GroupSource):
    """(b): safe_open of every shard, kept open; get_tensor per tensor when its group is asked."""

    def __init__(self, config: Mapping[str, Any], paths: Sequence[Path]) -> None:
        from safetensors import safe_open

        self._files = [safe_open(str(p), framework="np") for p in paths]
        self._where: dict[str, Any] = {}
        shapes: dict[str, tuple[int, ...]] = {}
        for f in self._files:
            for name in f.keys():
                self._where[name] = f
                shapes[name] = tuple(f.get_slice(name).get_shape())
        super().__init__(config, shapes)

    def fetch(self, group: str) -> list[np.ndarray]:
        out = []
        for name in _names(self, group):
            stored = self._where[name].get_tensor(name)  # a bf16 copy out of the mapping
            self.bytes_read += stored.nbytes
            out.append(widen(stored))
            del stored
        return out

    def close(self) -> None:
        self._files.clear()


class NinjaWeights(GroupSource):
    """(c): one mmap-ninja directory per tensor; widened straight from the memory map."""

    def __init__(self, config: Mapping[str, Any], root: Path) -> None:
        from mmap_ninja import base

        self.root = root
        shapes = {}
        for d in sorted(p for p in root.iterdir() if p.is_dir()):
            shapes[d.name] = tuple(base._file_to_shape(d / "shape.ninja"))
        super().__init__(config, shapes)

    def fetch(self, group: str) -> list[np.ndarray]:
        from mmap_ninja import np_open_existing

        out = []
        for name in _names(self, group):
            mapped = np_open_existing(self.root / name)  # np.memmap, bf16, nothing read yet
            self.bytes_read += mapped.nbytes
            out.append(np.asarray(mapped).astype(np.float32))  # pages fault in as it widens
            del mapped  # the last reference: the mapping is closed
        return out


class PerLayerWeights(GroupSource):
    """(d): AirLLM-style: one safetensors file per group, load_file when the group is needed."""

    def __init__(self, config: Mapping[str, Any], root: Path) -> None:
        from safetensors import safe_open

        self.root = root
        shapes: dict[str, tuple[int, ...]] = {}
        for p in sorted(root.glob("*.safetensors")):
            with safe_open(str(p), framework="np") as f:
                for name in f.keys():
                    shapes[name] = tuple(f.get_slice(name).get_shape())
        super().__init__(config, shapes)

    def fetch(self, group: str) -> list[np.ndarray]:
        from safetensors.numpy import load_file

        stored = load_file(str(self.root / f"{group}.safetensors"))
        self.bytes_read += sum(a.nbytes for a in stored.values())
        return [widen(stored.pop(n)) for n in _names(self, group)]


# --- measuring what the forward waits for ---------------------------------------------------------


class Timed:
    """Wraps a WeightSource: when the first chunk reached the forward, and the time spent inside
    the streams' ``next()`` (the forward waiting for weights)."""

    def __init__(self, inner: WeightSource) -> None:
        self.inner = inner
        self.first_chunk: float | None = None  # time.monotonic() of the first hand-over
        self.wait_seconds = 0.0
        self.chunks = 0

    @property
    def config(self) -> Mapping[str, Any]:
        return self.inner.config

    @property
    def tensor_names(self) -> Sequence[str]:
        return self.inner.tensor_names

    def chunks_of(self, group: str) -> Sequence[str]:
        return self.inner.chunks_of(group)

    def pieces_of(self, chunk: str) -> Sequence[Piece]:
        return self.inner.pieces_of(chunk)

    def stream(self, chunks: Sequence[str], *, repeat: bool = False) -> _TimedStream:
        return _TimedStream(self, self.inner.stream(chunks, repeat=repeat))


class _TimedStream:
    def __init__(self, owner: Timed, it: Iterator[LoadedChunk]) -> None:
        self._owner = owner
        self._it = it

    def __iter__(self) -> _TimedStream:
        return self

    def __next__(self) -> LoadedChunk:
        t0 = time.monotonic()
        try:
            chunk = next(self._it)
        finally:
            t1 = time.monotonic()
            self._owner.wait_seconds += t1 - t0
        if self._owner.first_chunk is None:
            self._owner.first_chunk = t1
        self._owner.chunks += 1
        return chunk

    def close(self) -> None:
        close = getattr(self._it, "close", None)
        if close is not None:
            close()


# --- the child ------------------------------------------------------------------------------------


def _proc(name: str, keys: Sequence[str]) -> dict[str, int]:
    out = {}
    with open(f"/proc/self/{name}") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in keys:
                out[key] = int(rest.split()[0]) * (1024 if name == "status" else 1)
    return out


def _memory() -> dict[str, int]:
    return _proc("status", ("VmHWM", "VmRSS", "RssAnon", "RssFile"))


def _io() -> dict[str, int]:
    return _proc("io", ("read_bytes", "rchar"))


def run(kind: str, args: dict[str, Any]) -> dict[str, Any]:
    """Load weights the ``kind`` way and run one request; the measured section starts after the
    imports and the inputs, with VmHWM reset to the RSS at that point."""
    from wstream.model.vlm import generate
    from wstream.run import load_image

    data = Path(args["data"])
    config = json.loads((data / "checkpoint" / "config.json").read_text())
    shards = sorted((data / "checkpoint").glob("*.safetensors"))
    pixels = load_image(data / "card.png")
    queries = int(config["query_num"])
    ids = np.concatenate([np.zeros(queries, np.int64), np.asarray(args["ids"], np.int64)])
    if kind == "wstream":  # import the loader before the section, as the peers' imports are
        from wstream.container.reader import Container
        from wstream.run import make_weights
    else:
        import mmap_ninja  # noqa: F401
        import safetensors.numpy  # noqa: F401

    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # VmHWM := current RSS: the imports' transients are not the contender's
    before, io0 = _memory(), _io()
    section = time.monotonic()
    extra: dict[str, Any] = {}
    upfront = 0.0
    if kind == "st-load":
        arrays, nbytes = load_everything(shards)
        source: Any = DictWeights(config, arrays)
        source.bytes_read = nbytes
        del arrays
        upfront = time.monotonic() - section
    elif kind == "st-lazy":
        source = SafeOpenWeights(config, shards)
    elif kind == "ninja":
        source = NinjaWeights(config, data / "ninja")
    elif kind == "layers":
        source = PerLayerWeights(config, data / "layers")
    elif kind == "wstream":
        # Exactly what `wstream run --budget B --prefetch K` uses; ``mapped`` the zero-copy map
        # instead of the pread default (bench/results/MAPPING.md).
        container = Container(data / args["container"], mapped=args.get("mapped", False))
        source = make_weights(container, args["budget"], args["prefetch"])
    else:
        raise ValueError(f"unknown contender kind {kind!r}")
    timed = Timed(source)
    try:
        gen = generate(
            timed, ids, pixels=pixels, image_bound=(0, queries), max_new_tokens=args["new_tokens"]
        )
    finally:
        source.close()
    end = time.monotonic()
    after, io1 = _memory(), _io()
    if kind == "wstream":
        s = source.stats
        extra = {
            "loader_stall_s": s.stall_seconds,
            "read_s": s.read_seconds,
            "decode_s": s.decode_seconds,
            "peak_pool_bytes": source.pool.peak,
            "resident_bytes": source.resident_bytes,
            "chunks_streamed": s.chunks - s.resident_hits,
            "resident_hits": s.resident_hits,
        }
        bytes_read = s.bytes_read
        container.close()
    else:
        bytes_read = source.bytes_read
    np.savez(args["out"], logits=gen.logits, step_logits=gen.step_logits, tokens=gen.tokens)
    first = timed.first_chunk if timed.first_chunk is not None else end
    import wstream

    return {
        "kind": kind,
        "wstream": str(Path(wstream.__file__).parent),
        "started": STARTED,  # time.monotonic() values: the parent's samples share the clock
        "section": section,
        "first_chunk": first,
        "end": end,
        "first_layer_s": first - section,
        "total_s": end - section,
        "stall_s": upfront + timed.wait_seconds,
        "upfront_s": upfront,
        "chunks": timed.chunks,
        "timings": gen.timings,
        "tokens": gen.tokens,
        "bytes_read": int(bytes_read),
        "disk_read_bytes": io1["read_bytes"] - io0["read_bytes"],
        "rss_before": before["VmRSS"],
        "anon_before": before["RssAnon"],
        "peak_rss": after["VmHWM"],
        **extra,
    }


def main() -> int:
    kind, args = sys.argv[1], json.loads(sys.argv[2])
    result = run(kind, args)
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
