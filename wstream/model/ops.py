"""Numpy primitives of MiniCPM-V 2.6, picoGPT style: small block functions over float32
arrays, no weights, no I/O, shapes in the comments.

Conventions: a sequence of T tokens of width d is ``[T, d]``; per-head tensors are
``[heads, T, head_dim]``. Everything is float32 except integer ids. Functions return a new
array unless their docstring says *in place* (gelu_tanh, softmax with ``inplace``): the forward's
largest temporaries are overwritten rather than copied. Work is split across cores only through
:mod:`wstream.model.fast`, whose serial references give the same bits.
"""

from __future__ import annotations

import math

import numpy as np

from wstream.model.fast import over_heads, rowwise

F32 = np.float32


def normalize(x: np.ndarray, eps: float) -> np.ndarray:
    """LayerNorm without its affine part: zero mean, unit (biased) variance per row. [T, d]"""

    def rows(c: np.ndarray) -> None:
        c -= c.mean(axis=-1, keepdims=True)  # centered  [t, d]
        var = np.mean(c * c, axis=-1, keepdims=True)  # [t, 1]
        c *= 1.0 / np.sqrt(var + F32(eps))

    return rowwise(rows, x.copy())


def rms_normalize(x: np.ndarray, eps: float) -> np.ndarray:
    """RMSNorm without its scale: x / sqrt(mean(x^2) + eps) per row. [T, d]"""

    def rows(c: np.ndarray) -> None:
        ms = np.mean(c * c, axis=-1, keepdims=True)  # [t, 1]
        c *= 1.0 / np.sqrt(ms + F32(eps))

    return rowwise(rows, x.copy())


def _gelu_tanh_rows(x: np.ndarray) -> None:
    y = x * x  # [T, d]
    y *= x
    y *= F32(0.044715)
    y += x  # x + 0.044715 x^3
    y *= F32(math.sqrt(2.0 / math.pi))
    np.tanh(y, out=y)
    y += F32(1.0)
    y *= F32(0.5)
    x *= y


def gelu_tanh(x: np.ndarray) -> np.ndarray:
    """GELU, tanh approximation (torch's gelu_pytorch_tanh), in place over ``x``:
    0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))."""
    return rowwise(_gelu_tanh_rows, x)


def silu_factor(x: np.ndarray) -> np.ndarray:
    """sigmoid(x) = 0.5 + 0.5 tanh(x / 2): via tanh, which cannot overflow as exp(-x) does."""
    s = np.tanh(F32(0.5) * x)
    s *= F32(0.5)
    s += F32(0.5)
    return s


def silu(x: np.ndarray) -> np.ndarray:
    """x * sigmoid(x)."""
    out: np.ndarray = x * silu_factor(x)
    return out


def _softmax_rows(x: np.ndarray) -> None:
    x -= x.max(axis=-1, keepdims=True)
    np.exp(x, out=x)
    x /= x.sum(axis=-1, keepdims=True)


def softmax(x: np.ndarray, *, inplace: bool = False) -> np.ndarray:
    """Softmax over the last axis (``inplace`` overwrites x: attention scores are the largest
    temporaries of the forward). Rows that are all -inf would be NaN, and never occur here."""
    return rowwise(_softmax_rows, x if inplace else x.copy())


def split_heads(x: np.ndarray, heads: int) -> np.ndarray:
    """[T, heads*hd] -> [heads, T, hd] (contiguous, so the batched matmuls below run on BLAS)."""
    t, d = x.shape
    return np.ascontiguousarray(x.reshape(t, heads, d // heads).transpose(1, 0, 2))


def merge_heads(x: np.ndarray) -> np.ndarray:
    """[heads, T, hd] -> [T, heads*hd]"""
    h, t, hd = x.shape
    return np.ascontiguousarray(x.transpose(1, 0, 2)).reshape(t, h * hd)


def attention(q: np.ndarray, k: np.ndarray, v: np.ndarray, *, causal: bool = False) -> np.ndarray:
    """Scaled dot-product attention with grouped key/value heads (GQA).

    q [H, Tq, hd]; k, v [Hkv, Tk, hd] with H a multiple of Hkv; query head h reads key/value head
    h // (H // Hkv), as HF's repeat_kv. With ``causal`` the queries are the last Tq positions of
    the Tk keys and each sees only keys at or before its own position. Returns [H, Tq, hd].
    """
    n_heads, tq, hd = q.shape
    n_kv, tk, _ = k.shape
    group = n_heads // n_kv
    # The query heads sharing one K/V head are stacked along the rows, so one matmul per K/V
    # head serves them all and K/V are never repeated in memory.
    qg = (q * F32(1.0 / math.sqrt(hd))).reshape(n_kv, group * tq, hd)  # [Hkv, G*Tq, hd]
    kt = np.ascontiguousarray(k.transpose(0, 2, 1))  # [Hkv, hd, Tk]: contiguous for BLAS
    masked = None
    if causal:
        pos = np.arange(tq) + (tk - tq)  # absolute position of each query  [Tq]
        masked = np.tile(np.arange(tk)[None, :] > pos[:, None], (group, 1))  # [G*Tq, Tk]
    out = np.empty_like(qg)  # [Hkv, G*Tq, hd]

    def heads(lo: int, hi: int) -> None:
        scores = np.empty((group * tq, tk), dtype=np.float32)  # [G*Tq, Tk], reused per head
        for h in range(lo, hi):
            np.matmul(qg[h], kt[h], out=scores)
            if masked is not None:
                scores[masked] = -np.inf
            scores -= scores.max(axis=1, keepdims=True)
            np.exp(scores, out=scores)
            total = scores.sum(axis=1, keepdims=True)  # [G*Tq, 1]
            np.matmul(scores, v[h], out=out[h])  # unnormalised  [G*Tq, hd]
            out[h] /= total  # normalise the [., hd] output, not the [., Tk] scores

    over_heads(heads, n_kv, group * tq * tk)  # [Hkv] heads, across cores
    return out.reshape(n_heads, tq, hd)


def rope_tables(
    positions: np.ndarray, head_dim: int, theta: float
) -> tuple[np.ndarray, np.ndarray]:
    """cos and sin of RoPE angles pos * theta^(-2i/head_dim), i < head_dim/2. Each [T, hd/2]

    Angles are formed in float64 (positions reach 1e5; float32 would lose the low digits).
    """
    inv_freq = theta ** -(np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)  # [hd/2]
    angles = positions.astype(np.float64)[:, None] * inv_freq[None, :]  # [T, hd/2]
    return np.cos(angles).astype(F32), np.sin(angles).astype(F32)


def apply_rope(x: np.ndarray, cos: np.ndarray, sin: np.ndarray) -> np.ndarray:
    """Rotate-half (NeoX / HF) RoPE: pairs are (i, i + hd/2). x [H, T, hd] -> [H, T, hd]"""
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]  # [H, T, hd/2] each
    return np.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)


def sincos_2d(h: int, w: int, dim: int) -> np.ndarray:
    """MAE-style 2D sin-cos position embedding over an h x w grid, row-major. [h*w, dim]

    The first dim/2 channels encode the column, the last dim/2 the row; each half is
    [sin(p*omega), cos(p*omega)] with omega_i = 10000^(-i/(dim/4)) (MiniCPM-V's resampler).
    """
    quarter = dim // 4
    omega = 1.0 / 10000.0 ** (np.arange(quarter, dtype=np.float64) / quarter)  # [dim/4]
    rows, cols = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")  # [h, w] each

    def encode(p: np.ndarray) -> np.ndarray:
        angles = p.reshape(-1, 1) * omega[None, :]  # [h*w, dim/4]
        return np.concatenate([np.sin(angles), np.cos(angles)], axis=1)  # [h*w, dim/2]

    return np.concatenate([encode(cols), encode(rows)], axis=1).astype(F32)  # [h*w, dim]


def _torch_arange_f32(start: float, end: float, step: float) -> np.ndarray:
    """``torch.arange(start, end, step)`` for float32 on CPU, bit for bit.

    Why emulate: the NaViT bucketing below compares these values with bucket boundaries, and
    torch's rounding decides which bucket a patch on a boundary falls in. torch's CPU kernel
    fills 16 elements per loop turn as two 8-lane vectors: a vector's first value is
    ``start + step*i`` in double rounded to float32, and its lanes add ``k*step`` to that rounded
    base (in double, rounded again). The tail past the last full 16 is ``start + step*i``.
    """
    n = math.ceil((end - start) / step)
    idx = np.arange(n)
    lane = idx % 8
    base = (start + step * (idx - lane)).astype(F32).astype(np.float64)  # [n]
    vector = (base + lane * step).astype(F32)  # [n]
    scalar = (start + step * idx).astype(F32)  # [n]
    return np.where(idx < n - n % 16, vector, scalar)


def navit_position_ids(h: int, w: int, grid: int) -> np.ndarray:
    """Rows of the learned grid x grid position table for an h x w patch grid, row-major. [h*w]

    MiniCPM-V 2.6 (``modeling_navit_siglip.py``) buckets fractional coordinates::

        boundaries = torch.arange(1 / grid, 1.0, 1 / grid)
        frac_h = torch.arange(0, 1 - 1e-6, 1 / tgt_h)   # 1 / tgt_h: a float32 tensor
        bucket_h = torch.bucketize(frac_h, boundaries, right=True)

    This reproduces that float32 arithmetic exactly. The closed form floor(grid*i/h) (llama.cpp)
    is NOT the same: for grid 70 it differs at h in {25, 49, 50, 55, 58} (checked against torch
    by tools/make_golden.py; tests/golden/navit_position_ids.json holds torch's table).
    """
    boundaries = _torch_arange_f32(1.0 / grid, 1.0, 1.0 / grid)  # [grid-1]

    def buckets(n: int) -> np.ndarray:
        step = float(F32(1.0) / F32(n))  # torch: 1 / int tensor -> float32
        frac = _torch_arange_f32(0.0, 1.0 - 1e-6, step)  # [n]
        return np.searchsorted(boundaries, frac, side="right")  # bucketize(right=True)

    ids: np.ndarray = buckets(h)[:, None] * grid + buckets(w)[None, :]  # [h, w]
    return ids.reshape(-1).astype(np.int64)
