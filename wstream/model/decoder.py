"""The Qwen2 decoder of MiniCPM-V 2.6 (``llm.*``) with a key/value cache.

Groups, in execution order: ``llm.embed``, one ``llm.layer.N`` per block, ``llm.norm``,
``llm.head``. Pre-norm blocks: x + o_proj(attn(RoPE(q), RoPE(k), v)) with GQA and q/k/v biases,
then x + down(silu(gate x) * up x). Positions are plain 0..T-1 (no multimodal RoPE).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from wstream.errors import WStreamError
from wstream.model.blockwise import gather_rows, linear, qkv_proj, rms_norm, swiglu
from wstream.model.config import DecoderConfig
from wstream.model.ops import apply_rope, attention, merge_heads, rope_tables, split_heads
from wstream.model.weights import GroupCursor


@dataclass
class KVCache:
    """Keys and values of every position so far, per layer, preallocated to ``capacity``."""

    k: list[np.ndarray]  # per layer [kv_heads, capacity, head_dim], RoPE applied
    v: list[np.ndarray]  # per layer [kv_heads, capacity, head_dim]
    length: int = 0  # positions filled

    @classmethod
    def empty(cls, cfg: DecoderConfig, capacity: int) -> KVCache:
        shape = (cfg.kv_heads, capacity, cfg.head_dim)
        return cls(
            [np.zeros(shape, np.float32) for _ in range(cfg.layers)],
            [np.zeros(shape, np.float32) for _ in range(cfg.layers)],
        )


def embed(
    ids: np.ndarray, cur: GroupCursor, cfg: DecoderConfig, *, partial: bool = True
) -> np.ndarray:
    """Embedding rows of ``ids`` (the walk may stream only the chunks that hold them). [N, D]"""
    x, found = gather_rows(ids, cur, "weight", cfg.hidden, partial=partial)  # [N, D]
    if not found.all():
        missing = sorted(set(ids[~found].tolist()))[:5]
        raise WStreamError(f"llm.embed: no streamed chunk holds token ids {missing}")
    return x


def block(
    x: np.ndarray,
    cur: GroupCursor,
    cfg: DecoderConfig,
    cache: KVCache,
    layer: int,
    rope: tuple[np.ndarray, np.ndarray],
) -> np.ndarray:
    """One decoder block over the new positions [cache.length, cache.length + T). [T, D]"""
    t0, t = cache.length, x.shape[0]
    cos, sin = rope  # [T, hd/2] each
    h = rms_norm(x, cur, "input_layernorm.weight", cfg.eps)  # [T, D]
    kv = cfg.kv_heads * cfg.head_dim
    q, k, v = qkv_proj(h, cur, (cfg.heads * cfg.head_dim, kv, kv))  # [T, D], [T, kv*hd], [T, kv*hd]
    q = apply_rope(split_heads(q, cfg.heads), cos, sin)  # [H, T, hd]
    keys, values = cache.k[layer], cache.v[layer]  # [kv, capacity, hd]
    keys[:, t0 : t0 + t] = apply_rope(split_heads(k, cfg.kv_heads), cos, sin)
    values[:, t0 : t0 + t] = split_heads(v, cfg.kv_heads)
    a = attention(q, keys[:, : t0 + t], values[:, : t0 + t], causal=True)  # [H, T, hd]
    x = x + linear(merge_heads(a), cur, "self_attn.o_proj.weight")  # [T, D]
    h = rms_norm(x, cur, "post_attention_layernorm.weight", cfg.eps)  # [T, D]
    h = swiglu(h, cur, "mlp.gate_proj.weight", "mlp.up_proj.weight")  # [T, inter]
    out: np.ndarray = x + linear(h, cur, "mlp.down_proj.weight")  # [T, D]
    return out


def lm_head(x: np.ndarray, cur: GroupCursor) -> np.ndarray:
    """Logits, one vocabulary block per weight block. [T, D] -> [T, vocab]"""
    return linear(x, cur, "weight")


def forward(
    x: np.ndarray,
    cursors: Iterator[GroupCursor],
    cfg: DecoderConfig,
    cache: KVCache,
    *,
    last_only: bool = False,
) -> np.ndarray:
    """Input embeddings of the next T positions -> their logits; pulls llm.layer.*, llm.norm and
    llm.head from ``cursors`` and appends T positions to ``cache``. [T, D] -> [T, vocab]

    With ``last_only`` only the last position reaches the norm and the head. -> [1, vocab]"""
    positions = np.arange(cache.length, cache.length + x.shape[0])  # [T]
    rope = rope_tables(positions, cfg.head_dim, cfg.rope_theta)
    for layer in range(cfg.layers):
        x = block(x, next(cursors), cfg, cache, layer, rope)  # [T, D]
    cache.length += x.shape[0]
    if last_only:
        x = x[-1:]  # [1, D]
    x = rms_norm(x, next(cursors), "weight", cfg.eps)  # llm.norm  [T, D]
    return lm_head(x, next(cursors))  # [T, vocab]
