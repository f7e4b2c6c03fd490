"""The perceiver resampler of MiniCPM-V 2.6 (``resampler.*``): h*w vision features -> 64 tokens.

One cross-attention (torch ``nn.MultiheadAttention`` with a packed in_proj) from learned queries
to the projected vision features, with a 2D sin-cos position embedding added to the keys only::

    kv = LN_kv(x @ Wkv.T);  q = LN_q(query)
    Q = q Wq.T + bq;  K = (kv + pe) Wk.T + bk;  V = kv Wv.T + bv
    out = LN_post(MHA(Q, K, V) Wo.T + bo) @ proj
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from wstream.model.blockwise import layer_norm, linear, matmul_in_rows, read_rows
from wstream.model.config import ResamplerConfig
from wstream.model.ops import attention, merge_heads, sincos_2d, spans_of, split_heads
from wstream.model.weights import GroupCursor


def in_proj(
    inputs: tuple[np.ndarray, np.ndarray, np.ndarray], cur: GroupCursor, dim: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The packed projection: rows [0:D] of in_proj_weight make Q from inputs[0], [D:2D] K from
    inputs[1], [2D:3D] V from inputs[2]. A row block may straddle a boundary, so each block is
    cut at the segment edges. -> (Q [Tq, D], K [Tk, D], V [Tk, D])"""
    outs = tuple(np.empty((x.shape[0], dim), dtype=np.float32) for x in inputs)
    for r0, r1, (w, b) in cur.blocks("attn.in_proj_weight", "attn.in_proj_bias"):
        for seg, (x, out) in enumerate(zip(inputs, outs, strict=True)):
            lo, hi = max(r0, seg * dim), min(r1, (seg + 1) * dim)  # rows of this segment
            if lo >= hi:
                continue
            rows = slice(lo - r0, hi - r0)  # inside the block
            cols = slice(lo - seg * dim, hi - seg * dim)  # inside the segment's output
            out[:, cols] = x @ w[rows].T + b[rows]  # [T, D] @ [D, n] -> [T, n]
    return outs[0], outs[1], outs[2]


def resample(
    feats: Sequence[np.ndarray],
    grids: Sequence[tuple[int, int]],
    cur: GroupCursor,
    cfg: ResamplerConfig,
) -> list[np.ndarray]:
    """Every slice's vision features -> ``queries`` tokens each, in one pass over the weights.

    Slice i has an h_i x w_i patch grid (its ``tgt_size``) and its own 2D sin-cos positions; the
    learned queries attend to that slice's keys only (the official code pads the slices to one
    length with a key padding mask: the same arithmetic). [h_i*w_i, kv_dim] each -> [Q, D] each
    """
    spans = spans_of([h * w for h, w in grids])
    x = np.concatenate(feats) if len(feats) > 1 else feats[0]  # [L, kv_dim]
    kv = linear(x, cur, "kv_proj.weight")  # [L, kv_dim] -> [L, D]
    kv = layer_norm(kv, cur, "ln_kv.", cfg.eps)  # [L, D]
    query = read_rows(cur, "query")  # copied: ln_q's weights arrive after it  [Q, D]
    q = layer_norm(query, cur, "ln_q.", cfg.eps)  # [Q, D]
    pos = np.concatenate([sincos_2d(h, w, cfg.dim) for h, w in grids])  # [L, D]
    qp, kp, vp = in_proj((q, kv + pos, kv), cur, cfg.dim)  # [Q, D], [L, D], [L, D]
    qh = split_heads(qp, cfg.heads)  # [heads, Q, 128]
    kh, vh = split_heads(kp, cfg.heads), split_heads(vp, cfg.heads)  # [heads, L, 128]
    o = np.concatenate(
        [merge_heads(attention(qh, kh[:, a:b], vh[:, a:b])) for a, b in spans]
    )  # [n*Q, D]: slice i's tokens at rows [i*Q, (i+1)*Q)
    o = linear(o, cur, "attn.out_proj.weight", "attn.out_proj.bias")  # [n*Q, D]
    o = layer_norm(o, cur, "ln_post.", cfg.eps)  # [n*Q, D]
    out = matmul_in_rows(o, cur, "proj")  # [n*Q, D] @ [D, D] -> [n*Q, D]
    return [out[i * cfg.queries : (i + 1) * cfg.queries] for i in range(len(grids))]
