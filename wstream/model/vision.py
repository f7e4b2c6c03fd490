"""The NaViT SigLIP vision tower of MiniCPM-V 2.6 (``vpm.*``), over all slices of a request.

Groups, in execution order: ``vision.embed`` (patch conv + learned positions), one
``vision.layer.N`` per pre-LN encoder block, ``vision.post_norm``. The heavy work is a few large
matmuls per block: the patch conv is one [L, 588] @ [588, d] product, and attention runs every
head in one batched matmul.

Several slices (of one image or of several) go through the tower together, so its weights are
read once per request however many slices there are: the slices' patches are stacked along the
rows, every row-wise step (norms, linears, the MLP) runs once over the whole stack, and only
attention is per slice (``spans``: each slice's rows attend to their own rows). Slices of
different sizes need no padding; each keeps its own NaViT position ids. The official code pads
the slices to one length and masks the padding, which is the same arithmetic.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np

from wstream.model.blockwise import gather_rows, layer_norm, linear, qkv_proj
from wstream.model.config import VisionConfig
from wstream.model.ops import (
    attention,
    gelu_tanh,
    merge_heads,
    navit_position_ids,
    spans_of,
    split_heads,
)
from wstream.model.weights import GroupCursor


def patchify(pixels: np.ndarray, patch: int) -> np.ndarray:
    """[3, H, W] -> [h*w, 3*patch*patch]: row-major patches, each flattened as (c, y, x) to
    match a conv kernel [d, 3, patch, patch] flattened the same way."""
    c, height, width = pixels.shape
    h, w = height // patch, width // patch
    x = pixels.reshape(c, h, patch, w, patch)  # [3, h, p, w, p]
    return x.transpose(1, 3, 0, 2, 4).reshape(h * w, c * patch * patch)  # [h*w, 3*p*p]


Spans = Sequence[tuple[int, int]]  # [start, stop) rows of each slice in the stacked activations


def embed(slices: Sequence[np.ndarray], cur: GroupCursor, cfg: VisionConfig) -> np.ndarray:
    """Patch embedding plus bucketed learned positions of every slice, stacked.
    [3, H_i, W_i] per slice -> [sum h_i*w_i, d]"""
    patches = np.concatenate([patchify(px, cfg.patch) for px in slices])  # [L, 3*p*p]
    ids = np.concatenate(
        [
            navit_position_ids(px.shape[1] // cfg.patch, px.shape[2] // cfg.patch, cfg.grid)
            for px in slices
        ]
    )  # [L]
    x = linear(patches, cur, "patch_embedding.weight", "patch_embedding.bias")  # [L, d]
    pos, _ = gather_rows(ids, cur, "position_embedding.weight", cfg.hidden)  # [L, d]
    out: np.ndarray = x + pos  # [L, d]
    return out


def self_attention(q: np.ndarray, k: np.ndarray, v: np.ndarray, spans: Spans) -> np.ndarray:
    """Each slice's rows attend to that slice's rows only. [H, L, hd] x3 -> [H, L, hd]"""
    if len(spans) == 1:
        return attention(q, k, v)
    out = np.empty_like(q)  # [H, L, hd]
    for a, b in spans:
        out[:, a:b] = attention(q[:, a:b], k[:, a:b], v[:, a:b])  # [H, L_i, hd]
    return out


def block(x: np.ndarray, cur: GroupCursor, cfg: VisionConfig, spans: Spans) -> np.ndarray:
    """One pre-LN encoder block: x + attn(LN1 x), then + fc2(gelu(fc1(LN2 x))). [L, d] -> [L, d]"""
    h = layer_norm(x, cur, "layer_norm1.", cfg.eps)  # [L, d]
    q, k, v = qkv_proj(h, cur, (cfg.hidden,) * 3)  # [L, d] each
    qh, kh, vh = (split_heads(t, cfg.heads) for t in (q, k, v))  # [H, L, hd] each
    a = merge_heads(self_attention(qh, kh, vh, spans))  # [H, L, hd] -> [L, d]
    x = x + linear(a, cur, "self_attn.out_proj.weight", "self_attn.out_proj.bias")  # [L, d]
    h = layer_norm(x, cur, "layer_norm2.", cfg.eps)  # [L, d]
    h = gelu_tanh(linear(h, cur, "mlp.fc1.weight", "mlp.fc1.bias"))  # [L, inter]
    out: np.ndarray = x + linear(h, cur, "mlp.fc2.weight", "mlp.fc2.bias")  # [L, d]
    return out


def encode(
    slices: Sequence[np.ndarray], cursors: Iterator[GroupCursor], cfg: VisionConfig
) -> list[np.ndarray]:
    """The whole tower over every slice in one pass over its weights: pulls vision.embed,
    vision.layer.*, vision.post_norm from ``cursors`` once.

    slices: [3, H_i, W_i] float32, normalised, H_i and W_i multiples of the patch
    -> per slice [h_i*w_i, d]
    """
    spans = spans_of([(px.shape[1] // cfg.patch) * (px.shape[2] // cfg.patch) for px in slices])
    x = embed(slices, next(cursors), cfg)  # [L, d]
    for _ in range(cfg.layers):
        x = block(x, next(cursors), cfg, spans)  # [L, d]
    x = layer_norm(x, next(cursors), "", cfg.eps)  # post_layernorm  [L, d]
    return [x[a:b] for a, b in spans]
