"""The NaViT SigLIP vision tower of MiniCPM-V 2.6 (``vpm.*``), one image slice per call.

Groups, in execution order: ``vision.embed`` (patch conv + learned positions), one
``vision.layer.N`` per pre-LN encoder block, ``vision.post_norm``. The heavy work is a few large
matmuls per block: the patch conv is one [L, 588] @ [588, d] product, and attention runs every
head in one batched matmul.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from wstream.model.blockwise import gather_rows, layer_norm, linear
from wstream.model.config import VisionConfig
from wstream.model.ops import attention, gelu_tanh, merge_heads, navit_position_ids, split_heads
from wstream.model.weights import GroupCursor


def patchify(pixels: np.ndarray, patch: int) -> np.ndarray:
    """[3, H, W] -> [h*w, 3*patch*patch]: row-major patches, each flattened as (c, y, x) to
    match a conv kernel [d, 3, patch, patch] flattened the same way."""
    c, height, width = pixels.shape
    h, w = height // patch, width // patch
    x = pixels.reshape(c, h, patch, w, patch)  # [3, h, p, w, p]
    return x.transpose(1, 3, 0, 2, 4).reshape(h * w, c * patch * patch)  # [h*w, 3*p*p]


def embed(pixels: np.ndarray, cur: GroupCursor, cfg: VisionConfig) -> np.ndarray:
    """Patch embedding plus bucketed learned positions. [3, H, W] -> [h*w, d]"""
    h, w = pixels.shape[1] // cfg.patch, pixels.shape[2] // cfg.patch
    patches = patchify(pixels, cfg.patch)  # [L, 3*p*p]
    x = linear(patches, cur, "patch_embedding.weight", "patch_embedding.bias")  # [L, d]
    ids = navit_position_ids(h, w, cfg.grid)  # [L]
    pos, _ = gather_rows(ids, cur, "position_embedding.weight", cfg.hidden)  # [L, d]
    out: np.ndarray = x + pos  # [L, d]
    return out


def block(x: np.ndarray, cur: GroupCursor, cfg: VisionConfig) -> np.ndarray:
    """One pre-LN encoder block: x + attn(LN1 x), then + fc2(gelu(fc1(LN2 x))). [L, d] -> [L, d]"""
    h = layer_norm(x, cur, "layer_norm1.", cfg.eps)  # [L, d]
    q = split_heads(linear(h, cur, "self_attn.q_proj.weight", "self_attn.q_proj.bias"), cfg.heads)
    k = split_heads(linear(h, cur, "self_attn.k_proj.weight", "self_attn.k_proj.bias"), cfg.heads)
    v = split_heads(linear(h, cur, "self_attn.v_proj.weight", "self_attn.v_proj.bias"), cfg.heads)
    a = merge_heads(attention(q, k, v))  # [H, L, hd] -> [L, d]; one slice: no padding mask
    x = x + linear(a, cur, "self_attn.out_proj.weight", "self_attn.out_proj.bias")  # [L, d]
    h = layer_norm(x, cur, "layer_norm2.", cfg.eps)  # [L, d]
    h = gelu_tanh(linear(h, cur, "mlp.fc1.weight", "mlp.fc1.bias"))  # [L, inter]
    out: np.ndarray = x + linear(h, cur, "mlp.fc2.weight", "mlp.fc2.bias")  # [L, d]
    return out


def encode(pixels: np.ndarray, cursors: Iterator[GroupCursor], cfg: VisionConfig) -> np.ndarray:
    """The whole tower: pulls vision.embed, vision.layer.*, vision.post_norm from ``cursors``.

    pixels [3, H, W] float32, normalised, H and W multiples of the patch -> [h*w, d]
    """
    x = embed(pixels, next(cursors), cfg)  # [L, d]
    for _ in range(cfg.layers):
        x = block(x, next(cursors), cfg)  # [L, d]
    return layer_norm(x, next(cursors), "", cfg.eps)  # post_layernorm  [L, d]
