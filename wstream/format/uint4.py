"""The ``uint4`` quantization scheme: two 4-bit values a byte, a float32 scale and a zero point
per group of a row (SPEC.md section 5.2).

Asymmetric: a group's range ``[min(w, 0), max(w, 0)]`` is cut into 15 steps of ``s``, the zero
point ``z`` is the step that holds 0 (so a zero weight stays exactly zero), and each element is
``q = clip(RNE(w / s) + z, 0, 15)``; its value is ``(q - z) * s``, within ``s / 2`` of ``w``.

The bytes of a group are *split*, not interleaved: byte ``j`` holds element ``j`` in its low
nibble and element ``j + h`` in its high one (``h = ceil(L / 2)`` for a group of ``L``). Unpacking
is then two whole-slice operations (the mask writes the group's first half, the shift its second
half) with no interleave; a 256-entry table lookup measured 4.5x bf16's time against 2.5x for
this layout (``bench/quant_kernels.py``).
"""

from __future__ import annotations

import numpy as np

from wstream import errors as E
from wstream.format.quant import n_groups
from wstream.format.spec import UINT4_MAX


def packed_cols(cols: int) -> int:
    """Bytes of one row of ``cols`` uint4 values (the group is even: only the last group of a
    row can leave a high nibble unused)."""
    return -(-cols // 2)


def _split(cols: int, group: int) -> tuple[int, int, int]:
    """(full groups, elements of the partial last group, its first half) of a row."""
    full = cols // group
    tail = cols - full * group
    return full, tail, -(-tail // 2)


def quantize_uint4(
    w: np.ndarray, group: int, p_out: np.ndarray, s_out: np.ndarray, z_out: np.ndarray
) -> None:
    """Quantize ``w`` [rows, cols] into ``p_out`` uint8 [rows, packed_cols(cols)], ``s_out`` f32
    [rows, n_groups(cols, group)] and ``z_out`` uint8 [rows, n_groups(cols, group)]."""
    rows, cols = w.shape
    g = n_groups(cols, group)
    padded = np.zeros((rows, g * group), np.float64)  # a partial last group is padded with 0,
    padded[:, :cols] = w  # which every group's range holds anyway
    blocks = padded.reshape(rows, g, group)  # [rows, g, group]
    with np.errstate(invalid="ignore"):
        lo = np.minimum(blocks.min(axis=2), 0.0)  # [rows, g]
        hi = np.maximum(blocks.max(axis=2), 0.0)
    span = hi - lo
    scale = (span / UINT4_MAX).astype(np.float32)
    # The stored scale must cover the span (15 s >= hi - lo): round the float32 up if needed,
    # so no element lies more than half a step outside [0, 15] and clipping never adds error.
    short = scale.astype(np.float64) * UINT4_MAX < span
    scale[short] = np.nextafter(scale[short], np.float32(np.inf))
    scale[~np.isfinite(scale) | (scale == 0)] = 1.0  # all zero, or NaN/inf: finite and exact
    s64 = scale.astype(np.float64)
    with np.errstate(invalid="ignore"):
        zero = np.clip(np.rint(-lo / s64), 0, UINT4_MAX)
        zero[~np.isfinite(zero)] = 0
        q = np.rint(blocks / s64[:, :, None]) + zero[:, :, None]  # [rows, g, group]
    q[~np.isfinite(q)] = zero.repeat(group, axis=1).reshape(q.shape)[~np.isfinite(q)]
    np.clip(q, 0, UINT4_MAX, out=q)
    s_out[...] = scale
    z_out[...] = zero
    _pack(q.reshape(rows, g * group)[:, :cols].astype(np.uint8), group, p_out)


def _pack(q: np.ndarray, group: int, out: np.ndarray) -> None:
    """Split-nibble packing of ``q`` uint8 [rows, cols] (values 0..15) into ``out``."""
    rows, cols = q.shape
    full, tail, head = _split(cols, group)
    half = group // 2
    if full:
        qg = q[:, : full * group].reshape(rows, full, 2, half)
        o = out[:, : full * half].reshape(rows, full, half)
        np.left_shift(qg[:, :, 1], 4, out=o)
        np.bitwise_or(o, qg[:, :, 0], out=o)
    if tail:
        at, base = full * half, full * group
        o = out[:, at : at + head]
        o[...] = q[:, base : base + head]
        o[:, : tail - head] |= q[:, base + head : cols] << 4  # an odd tail's last high nibble: 0


def unpack_uint4(p: np.ndarray, cols: int, group: int, out: np.ndarray) -> None:
    """``out`` f32 [rows, cols] = the uint4 values (0..15, exact) of ``p`` uint8 [rows, packed].

    Each half goes through a uint8 temporary (mask or shift), then a plain cast copy: a ufunc
    writing float32 straight from uint8 inputs (``casting="unsafe"``) runs its buffered casting
    loop and measured 1.5x slower (bench/results/QUANT.md section 5)."""
    rows = p.shape[0]
    full, tail, head = _split(cols, group)
    half = group // 2
    if full:
        pg = p[:, : full * half].reshape(rows, full, half)
        og = out[:, : full * group].reshape(rows, full, 2, half)
        np.copyto(og[:, :, 0], pg & np.uint8(15), casting="unsafe")
        np.copyto(og[:, :, 1], pg >> np.uint8(4), casting="unsafe")
    if tail:
        at, base = full * half, full * group
        pt = p[:, at : at + head]
        np.copyto(out[:, base : base + head], pt & np.uint8(15), casting="unsafe")
        np.copyto(out[:, base + head : cols], pt[:, : tail - head] >> np.uint8(4), casting="unsafe")


def check_zeros(zeros: np.ndarray, where: str) -> None:
    """Raise :class:`~wstream.errors.ZeroPointOutOfRange` if a stored zero point is above 15
    (rule G3): such a byte would dequantize to a value no writer can have meant."""
    if zeros.size and int(zeros.max()) > UINT4_MAX:
        r, g = np.unravel_index(int(np.argmax(zeros)), zeros.shape)
        raise E.ZeroPointOutOfRange(
            f"{where}: zero point [{r}, {g}] is {int(zeros[r, g])}, above {UINT4_MAX}"
        )
