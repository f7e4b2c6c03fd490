"""y = x @ W.T for a uint4 matrix W as stored (split nibbles, a scale and a zero point per group).

The cursor hands a uint4 row block over packed (:class:`~wstream.format.quant.QuantPiece`), and
this kernel unpacks it in pieces of ``*_ELEMENTS`` values into its own float32 scratch, small
enough to stay in cache between the unpacking and the product:

- **decode and short prefill** (at most ``PARTIAL_MAX_ROWS`` rows of x): the integers are only
  unpacked, never shifted or scaled. With ``P[g] = x_g @ q_g.T`` the per-group partial products,
  ``y = sum_g s_g * P[g] - xsum @ (s * z).T``: the zero points fold into one small product of the
  per-group sums of x, the scales apply to the [groups, T, rows] partials.
- **long prefill** (the vision encoder's 1024 patches): ``(q - z) * s`` in place on the
  unpacked piece (the same arithmetic as :func:`~wstream.format.quant.apply_scales`), then one
  matmul.

Both paths see only the stored bytes, so a streamed and an eager forward (same blocks, same
pieces) give the same bits. Figures: ``bench/results/QUANT.md`` section 5.
"""

from __future__ import annotations

import numpy as np

from wstream.format.quant import QuantPiece, apply_scales
from wstream.format.uint4 import unpack_uint4

# Up to this many rows of x the partial-product path runs; above, (q - z) * s and a matmul.
# Measured at [T, 3584] @ [3584, 18944] against bf16 (bench/results/QUANT.md section 5): T = 1,
# 0.34x; T = 80, 0.71x (the other path 1.36x); T = 448, 19x (the other path 1.23x).
PARTIAL_MAX_ROWS = 80
# float32 elements unpacked per piece. Partial products: 128K (0.5 MiB, in L2) measured 0.34x
# at T = 1 against 0.54x for 4M and 0.39x for 256K, and much worse above 128K at T = 80.
# The matmul path wants large products: 4M measured 1.36x at T = 80 against 2.73x for 1M.
DECODE_ELEMENTS = 1 << 17
PREFILL_ELEMENTS = 1 << 22


def uint4_matmul_t(x: np.ndarray, w: QuantPiece, out: np.ndarray) -> None:
    """``out`` [T, rows] = x [T, cols] @ dequantize(W).T for a uint4 W [rows, cols]."""
    assert w.zeros is not None
    rows, cols = w.shape
    t = x.shape[0]
    decode = t <= PARTIAL_MAX_ROWS
    step = max(1, (DECODE_ELEMENTS if decode else PREFILL_ELEMENTS) // max(cols, 1))
    scratch = np.empty(min(step, rows) * cols, np.float32)
    if not decode:
        for r0 in range(0, rows, step):
            r1 = min(r0 + step, rows)
            q = scratch[: (r1 - r0) * cols].reshape(r1 - r0, cols)
            unpack_uint4(w.values[r0:r1], cols, w.group, q)
            apply_scales(q, w.scales[r0:r1], w.group, w.zeros[r0:r1])
            np.matmul(x, q.T, out=out[:, r0:r1])
        return
    g = cols // w.group
    full = g * w.group
    xg = np.ascontiguousarray(x[:, :full].reshape(t, g, w.group).transpose(1, 0, 2))  # [g,T,k]
    xsum = x[:, :full].reshape(t, g, w.group).sum(axis=2)  # [T, g]
    if full < cols:
        xsum = np.concatenate([xsum, x[:, full:].sum(axis=1, keepdims=True)], axis=1)
    for r0 in range(0, rows, step):
        r1 = min(r0 + step, rows)
        n = r1 - r0
        q = scratch[: n * cols].reshape(n, cols)
        unpack_uint4(w.values[r0:r1], cols, w.group, q)
        s = w.scales[r0:r1]  # [n, G]
        o = out[:, r0:r1]  # [T, n]
        if g:
            part = np.matmul(xg, q[:, :full].reshape(n, g, w.group).transpose(1, 2, 0))
            part *= s[:, :g].T[:, None, :]  # [g, T, n] x [g, 1, n]
            np.sum(part, axis=0, out=o)
        else:
            o[...] = 0
        if full < cols:  # the last, partial group
            tail = x[:, full:] @ q[:, full:].T  # [T, n]
            tail *= s[:, -1]
            o += tail
        o -= xsum @ (s * w.zeros[r0:r1].astype(np.float32)).T  # [T, G] @ [G, n]: zero points
