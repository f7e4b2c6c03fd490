"""The forward's fast paths, all in one layer: numpy work split across cores, in place.

BLAS runs the matmuls on every core, but numpy's elementwise ufuncs and casts run on one; they
release the GIL, so splitting rows across threads uses the idle core. Everything here computes
each row (each head, each element) exactly as the plain serial code would, so results are bit
for bit the same; :func:`serial` switches every fast path to that plain reference, which is how
the tests compare them (tests/test_ops.py).

- :func:`rowwise`: ``fn`` applied in place to blocks of rows, on every core. Reference:
  ``fn(rows)`` once over all rows.
- :func:`over_heads`: attention heads split across cores, one BLAS thread each. Reference: all
  heads in one loop on the calling thread.
- :func:`widen_into`: bf16/f16 -> float32 into a buffer, in two halves. Reference: one
  :func:`~wstream.format.chunk.cast_into`.
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from wstream.format.chunk import cast_into

# Elements below which splitting rows across threads costs more than it saves.
PARALLEL_MIN = 1 << 18
# Elements of the blocks ``rowwise`` hands to ``fn`` (256 KiB of float32): small enough that a
# multi-pass elementwise function (gelu: 8 passes) works in L2; 1024 x 4304 gelu measured 11.5
# ms in halves, 8 ms in such blocks, on 2 cores.
CACHE_BLOCK = 1 << 16

_state = {"serial": False}  # set by serial(): every fast path runs its plain reference


@contextlib.contextmanager
def serial() -> Iterator[None]:
    """Within this block every fast path runs its serial reference (for tests and debugging).
    Process-wide: do not use while other threads run the forward."""
    before, _state["serial"] = _state["serial"], True
    try:
        yield
    finally:
        _state["serial"] = before


def _cores() -> int:
    return 1 if _state["serial"] else os.cpu_count() or 1


@functools.cache
def parallel_pool() -> ThreadPoolExecutor:
    """Threads for numpy work split across cores (ufuncs and casts release the GIL)."""
    return ThreadPoolExecutor(max_workers=os.cpu_count() or 1, thread_name_prefix="wstream-ops")


def rowwise(fn: Callable[[np.ndarray], None], x: np.ndarray) -> np.ndarray:
    """Apply ``fn`` in place to blocks of rows of ``x`` on every core; returns ``x``.

    ``fn`` must treat rows independently (a norm, softmax or gelu does), so any split of the
    rows gives the serial result bit for bit."""
    rows = x.reshape(-1, x.shape[-1]) if x.ndim else x.reshape(1, 1)
    parts = min(_cores(), rows.shape[0])
    if x.size < PARALLEL_MIN or parts < 2:
        fn(rows)
        return x
    bounds = np.linspace(0, rows.shape[0], parts + 1).astype(int)
    step = max(1, CACHE_BLOCK // rows.shape[1])

    def part(a: int, b: int) -> None:
        for r in range(a, b, step):  # a few rows at a time: gelu's 8 passes stay in L2
            fn(rows[r : min(r + step, b)])

    list(parallel_pool().map(part, bounds[:-1], bounds[1:]))
    return x


@functools.cache
def _blas_controller() -> Any:
    from threadpoolctl import ThreadpoolController

    return ThreadpoolController()


def over_heads(heads: Callable[[int, int], None], n: int, work: int) -> None:
    """Run ``heads(lo, hi)`` over heads [0, n): split across cores when ``work`` (elements of
    scores per head) is worth it, each part with a one-thread BLAS.

    Small-K matmuls (head_dim 72) scale badly across BLAS threads; whole heads per core measured
    33 ms against 54 for a vision layer's attention."""
    cores = _cores()
    if cores > 1 and n > 1 and work >= PARALLEL_MIN:
        bounds = np.linspace(0, n, min(cores, n) + 1).astype(int)
        with _blas_controller().limit(limits=1, user_api="blas"):
            list(parallel_pool().map(lambda ab: heads(*ab), zip(bounds, bounds[1:])))
    else:
        heads(0, n)


def widen_into(dst: np.ndarray, src: np.ndarray) -> None:
    """``dst`` (float32) = ``src`` (bf16, f16, f64), on every core: the cast releases the GIL,
    and in the decode loop widening is most of the work (2 threads measured 3.1 Gelem/s, one
    1.6). Exact for bf16 and f16."""
    if _cores() < 2 or src.size < PARALLEL_MIN or src.ndim == 0 or src.shape[0] < 2:
        cast_into(dst, src)
        return
    half = src.shape[0] // 2

    def cast(rows: slice) -> None:
        cast_into(dst[rows], src[rows])

    list(parallel_pool().map(cast, [slice(0, half), slice(half, None)]))
