"""The few ways the forward consumes a weight, each written for row blocks.

A tensor larger than the pack's ``--max-chunk`` reaches the forward as blocks of rows, one chunk
at a time (see :meth:`GroupCursor.blocks`); a smaller one is a single block covering all rows.
Every helper here iterates blocks, so one code path serves both, and uses each block at once:
a block's arrays are only valid until the next block is asked for. Names are local names inside
the cursor's group (``"self_attn.q_proj.weight"``).
"""

from __future__ import annotations

import functools

import numpy as np

from wstream.format.quant import QuantPiece
from wstream.model.fast import rowwise
from wstream.model.folds import QKV_BIAS, QKV_WEIGHT
from wstream.model.ops import normalize, rms_normalize, silu_factor
from wstream.model.quant_kernel import quant_matmul_t
from wstream.model.weights import Block, GroupCursor


def matmul_t(x: np.ndarray, w: Block, out: np.ndarray) -> None:
    """``out`` [T, rows] = x [T, cols] @ W.T for W [rows, cols], float32 or quantized as stored."""
    if isinstance(w, QuantPiece):
        quant_matmul_t(x, w, out)
    else:
        np.matmul(x, w.T, out=out)


def linear(x: np.ndarray, cur: GroupCursor, weight: str, bias: str | None = None) -> np.ndarray:
    """y = x @ W.T + b with W [out, in...] (torch layout; a conv kernel is flattened). [T, out]

    Each block of rows writes its columns of ``y`` in place (no per-block outputs to join)."""
    names = (weight,) if bias is None else (weight, bias)
    y: np.ndarray | None = None
    for r0, r1, arrays in cur.quant_blocks(*names):
        if y is None:
            y = np.empty((x.shape[0], cur.block_rows), dtype=np.float32)  # [T, out]
        w = arrays[0]
        if not isinstance(w, QuantPiece):
            w = w.reshape(r1 - r0, -1)  # [rows, in]
        out = y[:, r0:r1]  # [T, rows]
        matmul_t(x, w, out)  # [T, in] @ [in, rows]
        if bias is not None:
            b = arrays[1]
            assert isinstance(b, np.ndarray)  # only 2-d matrices are quantized
            rowwise(functools.partial(_add, b=b), out)  # [rows], on both cores
    assert y is not None  # blocks() yields at least one block or raises
    return y


def qkv_proj(
    x: np.ndarray, cur: GroupCursor, widths: tuple[int, int, int]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """An attention layer's q, k and v projections (with biases) of ``x``: one product with the
    fused [q; k; v] matrix when the container holds it (``pack --fold qkv``), else three.
    [T, in] -> ([T, widths[0]], [T, widths[1]], [T, widths[2]])"""
    if cur.has(QKV_WEIGHT):
        y = linear(x, cur, QKV_WEIGHT, QKV_BIAS)  # [T, sum(widths)]
        a, b = widths[0], widths[0] + widths[1]
        return y[:, :a], y[:, a:b], y[:, b:]
    q, k, v = (linear(x, cur, f"self_attn.{p}.weight", f"self_attn.{p}.bias") for p in _QKV)
    return q, k, v


_QKV = ("q_proj", "k_proj", "v_proj")


def swiglu(x: np.ndarray, cur: GroupCursor, gate: str, up: str) -> np.ndarray:
    """silu(x @ G.T) * (x @ U.T): gate and up are split into the same row blocks. [T, inter]"""
    act: np.ndarray | None = None
    for r0, r1, (g, u) in cur.quant_blocks(gate, up):
        if act is None:
            act = np.empty((x.shape[0], cur.block_rows), dtype=np.float32)  # [T, inter]
        a = act[:, r0:r1]  # [T, rows]
        matmul_t(x, g, a)
        a *= silu_factor(a)  # silu(x G^T) = (x G^T) * sigmoid(x G^T)
        b = np.empty_like(a)
        matmul_t(x, u, b)
        a *= b  # [T, rows]
    assert act is not None
    return act


def _add(rows: np.ndarray, b: np.ndarray) -> None:
    np.add(rows, b, out=rows)


def _affine(rows: np.ndarray, w: np.ndarray, b: np.ndarray | None) -> None:
    np.multiply(rows, w, out=rows)
    if b is not None:
        np.add(rows, b, out=rows)


def scale_shift(
    x: np.ndarray, cur: GroupCursor, weight: str, bias: str | None, *, inplace: bool = False
) -> np.ndarray:
    """x * w (+ b) per feature: a norm's affine part; a 1-D weight's "rows" are features. [T, d]

    ``inplace`` overwrites ``x`` (a norm's own fresh output) instead of allocating."""
    names = (weight,) if bias is None else (weight, bias)
    out = x if inplace else x.copy()
    for r0, r1, arrays in cur.blocks(*names):
        b = arrays[1] if bias is not None else None
        rowwise(functools.partial(_affine, w=arrays[0], b=b), out[:, r0:r1])  # [T, rows]
    return out


def layer_norm(x: np.ndarray, cur: GroupCursor, prefix: str, eps: float) -> np.ndarray:
    """LayerNorm with ``<prefix>weight`` and ``<prefix>bias``. [T, d] -> [T, d]"""
    return scale_shift(normalize(x, eps), cur, prefix + "weight", prefix + "bias", inplace=True)


def rms_norm(x: np.ndarray, cur: GroupCursor, weight: str, eps: float) -> np.ndarray:
    """RMSNorm with a scale and no bias. [T, d] -> [T, d]"""
    return scale_shift(rms_normalize(x, eps), cur, weight, None, inplace=True)


def matmul_in_rows(x: np.ndarray, cur: GroupCursor, name: str) -> np.ndarray:
    """x @ M for M [in, out] stored untransposed: a block of rows is a slice of the *input* dim,
    so blocks contribute partial products that are summed. [T, in] -> [T, out]"""
    acc: np.ndarray | None = None
    for r0, r1, (m,) in cur.blocks(name):
        part = x[:, r0:r1] @ m  # [T, rows] @ [rows, out] -> [T, out]
        if acc is None:
            acc = part
        else:
            acc += part
    assert acc is not None  # blocks() yields at least one block or raises
    return acc


def gather_rows(
    ids: np.ndarray, cur: GroupCursor, name: str, width: int, *, partial: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Rows ``ids`` of a [rows, width] table (embeddings, positions): (rows [N, width], found [N]).

    With ``partial`` the walk streamed only the chunks holding some rows; the caller checks
    ``found`` for the ones it needed.
    """
    out = np.zeros((len(ids), width), dtype=np.float32)  # [N, width]
    found = np.zeros(len(ids), dtype=bool)  # [N]
    for r0, r1, (table,) in cur.blocks(name, partial=partial):
        hit = (ids >= r0) & (ids < r1)  # [N]
        out[hit] = table[ids[hit] - r0]  # [n_hit, width]
        found |= hit
    return out, found


def read_rows(cur: GroupCursor, name: str) -> np.ndarray:
    """A whole tensor copied out of its blocks, for a small one that must outlive its chunk
    (e.g. the resampler's learned queries, normalised by weights that come later). [rows, ...]"""
    parts = [arrays[0].copy() for _, _, arrays in cur.blocks(name)]
    return parts[0] if len(parts) == 1 else np.concatenate(parts, axis=0)
