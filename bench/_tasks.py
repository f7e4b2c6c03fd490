"""What runs inside each fresh subprocess: one small function per measurement.

Every task imports what it measures itself (so import time is not charged to it, and the driver
never holds weights in its own memory), resets VmHWM after those imports where memory matters,
and returns a JSON-able dict. Sizes are bytes, times seconds. Run through ``_child.py``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from pathlib import Path
from typing import Any

from _measure import files_of, read_through, reset_peak, resident, status

MiB = 1 << 20


def _touch(a: Any) -> int:
    """Read one byte of every page ``a`` spans (the consumer 'uses' the chunk)."""
    import numpy as np

    b = np.ascontiguousarray(a).reshape(-1).view(np.uint8)
    if b.size == 0:
        return 0
    return int(b[::4096].sum(dtype=np.uint64)) + int(b[-1])


def _shards(src: str) -> list[Path]:
    return [p for p in files_of([src]) if p.suffix == ".safetensors"]


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# --- figure 1 and 2: pack versus a plain copy ---------------------------------------------------


def copy_shutil(src: str, dst_dir: str) -> dict[str, Any]:
    """shutil.copyfile every shard, then fsync each copy and the directory (pack does both)."""
    out = Path(dst_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = _shards(src)
    t0 = time.perf_counter()
    for f in files:
        shutil.copyfile(f, out / f.name)
        _fsync_path(out / f.name)
    _fsync_path(out)
    dt = time.perf_counter() - t0
    return {"seconds": dt, "bytes": sum(f.stat().st_size for f in files)}


def copy_loop(src: str, dst_dir: str, bufsize: int = 32 * MiB) -> dict[str, Any]:
    """readinto a reused buffer / write, then fsync each copy and the directory."""
    out = Path(dst_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = _shards(src)
    buf = bytearray(bufsize)
    view = memoryview(buf)
    t0 = time.perf_counter()
    for f in files:
        with open(f, "rb", buffering=0) as fi, open(out / f.name, "wb", buffering=0) as fo:
            while True:
                n = fi.readinto(view)
                if not n:
                    break
                done = 0
                while done < n:
                    done += fo.write(view[done:n])
            os.fsync(fo.fileno())
    _fsync_path(out)
    dt = time.perf_counter() - t0
    return {"seconds": dt, "bytes": sum(f.stat().st_size for f in files)}


def pack_run(
    src: str,
    dst: str,
    codec: str = "raw",
    level: int | None = None,
    threads: int = 1,
    shuffle: bool = False,
) -> dict[str, Any]:
    """wstream.pack.pack(src, dst): time, and memory above the post-import baseline."""
    from wstream.pack import pack

    reset_peak()
    base = status()
    t0 = time.perf_counter()
    kw = {"shuffle": True} if shuffle else {}  # older pack() has no shuffle
    report = pack(src, dst, codec=codec, level=level, threads=threads, **kw)
    dt = time.perf_counter() - t0
    end = status()
    chunks = report.manifest.chunks
    return {
        "seconds": dt,
        "bytes": report.bytes_in,
        "bytes_out": report.bytes_out,
        "chunks": len(chunks),
        "largest_chunk": max(c.raw_nbytes for c in chunks),
        "largest_stored": max(c.nbytes for c in chunks),
        "base": base,
        "end": end,
    }


# --- figure 3: the manifest only ----------------------------------------------------------------


def open_times(path: str, repeats: int = 20, cold_first: bool = False) -> dict[str, Any]:
    """In-process: open_container (preamble + manifest + CRC + parse) and info_dict, repeated."""
    t = time.perf_counter()
    from wstream import open_container
    from wstream.cli import info_dict

    imports = time.perf_counter() - t
    first = None
    if cold_first:
        frac = resident(path)
        t = time.perf_counter()
        open_container(path).close()
        first = {"seconds": time.perf_counter() - t, "resident_before": frac}
    opens, infos = [], []
    for _ in range(repeats):
        t = time.perf_counter()
        c = open_container(path)
        opens.append(time.perf_counter() - t)
        c.close()
        t = time.perf_counter()
        info_dict(path)
        infos.append(time.perf_counter() - t)
    with open_container(path) as c:
        m = c.manifest
        manifest_nbytes = c.preamble.manifest_nbytes
        n_chunks, n_tensors, size = len(m.chunks), len(m.tensors), c.file_size
    return {
        "imports": imports,
        "cold_first": first,
        "open": opens,
        "info_dict": infos,
        "manifest_nbytes": manifest_nbytes,
        "chunks": n_chunks,
        "tensors": n_tensors,
        "file_size": size,
    }


# --- figures 4, 6, 7 and the CRC cost: streaming -------------------------------------------------


def stream(
    path: str,
    budget: int | None = None,
    prefetch: int = 2,
    workers: int = 2,
    widen: bool = False,
    verify: bool = True,
    touch: bool = True,
    expect_cold: bool = False,
    mapped: bool = False,
) -> dict[str, Any]:
    """Stream every chunk in file order; the consumer touches every page (or just releases).
    ``mapped``: the zero-copy map of the file instead of the default pread (see MAPPING.md)."""
    from wstream import open_container
    from wstream.stream.loader import StreamingLoader

    res = resident(path) if expect_cold else None
    c = open_container(path, mapped=mapped)
    names = [ch.name for ch in c.manifest.chunks]
    reset_peak()
    base = status()
    t0 = time.perf_counter()
    loader = StreamingLoader(
        c, budget=budget, prefetch=prefetch, workers=workers, widen=_widen(widen), verify=verify
    )
    acc = 0
    handed = 0
    for chunk in loader.stream(names):
        with chunk:
            if touch:
                for a in chunk.arrays():
                    acc += _touch(a)
                    handed += a.nbytes
    dt = time.perf_counter() - t0
    peak = status()
    stats = {k: getattr(loader.stats, k) for k in loader.stats.__dataclass_fields__}
    pool_peak = loader.pool.peak
    slabs = {"allocated": loader.pool.slabs_allocated, "reused": loader.pool.slabs_reused}
    loader.close()
    raw = sum(ch.raw_nbytes for ch in c.manifest.chunks)
    stored = sum(ch.nbytes for ch in c.manifest.chunks)
    c.close()
    return {
        "seconds": dt,
        "raw_bytes": raw,
        "stored_bytes": stored,
        "handed_bytes": handed,
        "resident_before": res,
        "base": base,
        "peak": peak,
        "pool_peak": pool_peak,
        "slabs": slabs,
        "stats": stats,
        "checksum": acc,
    }


def sequential_read(path: str, bufsize: int = 16 * MiB, expect_cold: bool = True) -> dict[str, Any]:
    """The baseline of figure 6: readinto a reused buffer, front to back."""
    import numpy as np

    res = resident(path) if expect_cold else None
    buf = np.empty(bufsize, np.uint8)
    buf[:] = 0  # fault the buffer in before timing
    t0 = time.perf_counter()
    n = read_through(path, memoryview(buf))
    dt = time.perf_counter() - t0
    return {"seconds": dt, "bytes": n, "resident_before": res}


def parallel_read(
    path: str, bufsize: int = 16 * MiB, threads: int = 2, expect_cold: bool = True
) -> dict[str, Any]:
    """Not the figure's baseline, but what the device gives with more than one request in
    flight: ``threads`` threads each pread their contiguous part into their own buffer."""
    import threading

    import numpy as np

    res = resident(path) if expect_cold else None
    size = os.path.getsize(path)
    bounds = [size * i // threads for i in range(threads + 1)]
    bufs = [np.zeros(bufsize, np.uint8) for _ in range(threads)]
    done = [0] * threads

    def part(k: int) -> None:
        fd = os.open(path, os.O_RDONLY)
        try:
            off, end, view = bounds[k], bounds[k + 1], memoryview(bufs[k])
            while off < end:
                n = os.preadv(fd, [view[: min(bufsize, end - off)]], off)
                if n == 0:
                    break
                off += n
                done[k] += n
        finally:
            os.close(fd)

    ts = [threading.Thread(target=part, args=(k,)) for k in range(threads)]
    t0 = time.perf_counter()
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    dt = time.perf_counter() - t0
    return {"seconds": dt, "bytes": sum(done), "resident_before": res}


def safetensors_load_file(src: str) -> dict[str, Any]:
    """safetensors.numpy.load_file of every shard, all tensors kept (a whole state dict)."""
    import ml_dtypes  # noqa: F401  (registers bfloat16 with numpy)
    from safetensors.numpy import load_file

    files = _shards(src)
    reset_peak()
    base = status()
    t0 = time.perf_counter()
    state: dict[str, Any] = {}
    acc = 0
    for f in files:
        state.update(load_file(str(f)))
    for a in state.values():
        acc += _touch(a)
    dt = time.perf_counter() - t0
    peak = status()
    nbytes = sum(a.nbytes for a in state.values())
    return {
        "seconds": dt,
        "bytes": nbytes,
        "base": base,
        "peak": peak,
        "tensors": len(state),
        "checksum": acc,
    }


def safetensors_safe_open(src: str) -> dict[str, Any]:
    """safe_open + get_tensor per tensor; each touched, then dropped (the streaming pattern)."""
    import ml_dtypes  # noqa: F401
    from safetensors import safe_open

    files = _shards(src)
    reset_peak()
    base = status()
    t0 = time.perf_counter()
    acc = nbytes = count = 0
    for f in files:
        with safe_open(str(f), framework="np") as so:
            for k in so.offset_keys() if hasattr(so, "offset_keys") else so.keys():
                a = so.get_tensor(k)
                acc += _touch(a)
                nbytes += a.nbytes
                count += 1
                del a
    dt = time.perf_counter() - t0
    peak = status()
    return {
        "seconds": dt,
        "bytes": nbytes,
        "base": base,
        "peak": peak,
        "tensors": count,
        "checksum": acc,
    }


# --- figure 5: overlap with compute -------------------------------------------------------------


def overlap(
    path: str,
    mode: str,
    tokens: int = 64,
    budget: int | None = 512 * MiB,
    prefetch: int = 2,
    workers: int = 2,
    verify: bool = True,
    seed: int = 0,
    forward_widens: bool = False,
    group_prefix: str = "",
    mapped: bool = False,
) -> dict[str, Any]:
    """Per chunk: for every weight matrix W (float32), x[T, in] @ W.T; 1-d weights x * w.

    ``mode`` "eager": every chunk decoded into RAM first (not timed); "stream":
    StreamingLoader. Only the walk over the chunks is timed.

    ``forward_widens=False``: eager holds float32 (EagerWeights) and the loader's workers widen
    (widen=True). ``forward_widens=True`` is what ``wstream run`` does: both hold the stored
    dtype (eager: bf16 copies in RAM; stream: zero-copy views, widen="dequantize") and the
    consumer widens each matrix in blocks of at most SUB_ELEMENTS, on both cores, into a reused
    buffer before its matmul, like the forward's linear layers; the consumer's work is then the
    same in both modes. ``group_prefix`` keeps only the chunks of groups starting with it."""
    import numpy as np

    from wstream import open_container
    from wstream.format.chunk import piece_views
    from wstream.model.fast import widen_into
    from wstream.model.weights import SUB_ELEMENTS
    from wstream.stream.loader import EagerWeights, StreamingLoader

    c = open_container(path, mapped=mapped)
    chunks = [ch for ch in c.manifest.chunks if ch.group.startswith(group_prefix)]
    names = [ch.name for ch in chunks]
    widths = set()
    for ch in chunks:
        for t in ch.tensors:
            shape = t.piece_shape
            widths.add(int(np.prod(shape[1:])) if len(shape) >= 2 else (shape[0] if shape else 1))
    rng = np.random.default_rng(seed)
    xs = {w: rng.standard_normal((tokens, w), dtype=np.float32) for w in widths}
    (xs[max(widths)] @ np.ones((max(widths), 8), np.float32)).sum()  # BLAS warm-up
    scratch = np.empty(SUB_ELEMENTS, np.float32)

    t_setup = time.perf_counter()
    source: Any = None
    if mode == "eager" and forward_widens:
        held = {
            ch.name: [np.array(v) for v in piece_views(ch, c.decode(ch, verify=verify))]
            for ch in chunks
        }
        walk: Any = ((contextlib.nullcontext(), held[n]) for n in names)
    elif mode == "eager":
        source = EagerWeights(c, verify=verify)
    elif mode == "stream":
        source = StreamingLoader(
            c,
            budget=budget,
            prefetch=prefetch,
            workers=workers,
            verify=verify,
            widen="dequantize" if forward_widens else "float32",
        )
    else:
        raise ValueError(mode)
    setup = time.perf_counter() - t_setup

    flops = 0
    compute = 0.0
    t0 = time.perf_counter()
    if source is not None:
        walk = ((ch, ch.arrays()) for ch in source.stream(names))
    for ctx, arrays in walk:
        with ctx:
            tc = time.perf_counter()
            for a in arrays:
                if a.ndim >= 2:
                    w = a.reshape(a.shape[0], -1)
                    if w.dtype == np.float32:
                        y = xs[w.shape[1]] @ w.T
                    else:  # the forward's linear: widen a block of rows, multiply, next block
                        step = max(1, SUB_ELEMENTS // w.shape[1])
                        y = np.empty((tokens, w.shape[0]), np.float32)
                        for r in range(0, w.shape[0], step):
                            block = w[r : r + step]
                            buf = scratch[: block.size].reshape(block.shape)
                            widen_into(buf, block)
                            np.matmul(xs[w.shape[1]], buf.T, out=y[:, r : r + step])
                    flops += 2 * tokens * w.size
                elif a.ndim == 1 and a.size:
                    y = xs[a.shape[0]] * a.astype(np.float32, copy=False)
                    flops += tokens * a.size
                del y
            compute += time.perf_counter() - tc
    wall = time.perf_counter() - t0
    stats = (
        {k: getattr(source.stats, k) for k in source.stats.__dataclass_fields__}
        if source is not None
        else {"stall_seconds": 0.0, "read_seconds": 0.0, "decode_seconds": 0.0}
    )
    pool = getattr(source, "pool", None)
    slabs = (
        {"allocated": pool.slabs_allocated, "reused": pool.slabs_reused}
        if pool is not None
        else None
    )
    if source is not None:
        source.close()
    c.close()
    return {
        "slabs": slabs,
        "seconds": wall,
        "compute_seconds": compute,
        "setup_seconds": setup,
        "gflop": flops / 1e9,
        "stats": stats,
        "openblas_threads": os.environ.get("OPENBLAS_NUM_THREADS"),
        "peak": status(),
    }


# --- figure 8: open() to the first chunk --------------------------------------------------------


def first_chunk(
    path: str,
    budget: int | None = None,
    prefetch: int = 2,
    workers: int = 2,
    widen: bool | str = True,
    verify: bool = True,
    expect_cold: bool = False,
    preimport: bool = True,
    mapped: bool = False,
) -> dict[str, Any]:
    """open_container -> StreamingLoader -> stream(all chunks) -> next(): the first chunk in hand
    (and then its pages touched). Imports are timed separately; ``preimport`` also imports what
    wstream imports lazily on first use (ml_dtypes, for bf16), so that is not charged either."""
    t = time.perf_counter()
    from wstream import open_container
    from wstream.stream.loader import StreamingLoader

    if preimport:
        import ml_dtypes  # noqa: F401

    imports = time.perf_counter() - t
    res = resident(path) if expect_cold else None
    t0 = time.perf_counter()
    c = open_container(path, mapped=mapped)
    t_open = time.perf_counter()
    names = [ch.name for ch in c.manifest.chunks]
    loader = StreamingLoader(
        c, budget=budget, prefetch=prefetch, workers=workers, widen=_widen(widen), verify=verify
    )
    stream = loader.stream(names)
    t_setup = time.perf_counter()
    chunk = next(stream)
    t_hand = time.perf_counter()
    nbytes = 0
    for a in chunk.arrays():
        _touch(a)
        nbytes += a.nbytes
    t_touch = time.perf_counter()
    first = {"name": chunk.name, "bytes": nbytes, "stored": c.manifest.chunks[0].nbytes}
    chunk.release()
    stream.close()
    loader.close()
    size = c.file_size
    c.close()
    return {
        "imports": imports,
        "open": t_open - t0,
        "setup": t_setup
        - t_open,  # StreamingLoader + stream(): plans, pool, threads, first submits
        "wait": t_hand - t_setup,  # next(): the first chunk read, checked and widened
        "in_hand": t_hand - t0,
        "touched": t_touch - t0,
        "first": first,
        "file_size": size,
        "resident_before": res,
    }


def _widen(value: bool | str) -> str:
    """The loader's widen mode from a figure's setting: True / False as the figures have always
    been labelled (float32 / stored), or a mode by name."""
    if isinstance(value, bool):
        return "float32" if value else "stored"
    return value
