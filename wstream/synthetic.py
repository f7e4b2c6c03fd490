"""Synthetic MiniCPM-V 2.6-shaped checkpoints: random bf16 weights, real names, real layout.

What :func:`write_checkpoint` writes is what Hugging Face ships: ``config.json``, shards named
``model-0000k-of-0000n.safetensors`` and ``model.safetensors.index.json`` with the real
``metadata.total_size``. The tensors are those of :func:`wstream.model.config.tensor_shapes`.

Memory stays bounded whatever the preset (``full`` is the real 2.6, 16.2 GB): each safetensors
header is written first (all sizes are known from the shapes), then every tensor is generated
and written in slabs of rows, so the peak is a slab, not a tensor.

Values are deterministic in (seed, tensor name), independent of sharding and slab size. They are
uniform (like torch's default ``nn.Linear`` init, and 5x cheaper to draw than normals), scaled
so activations stay sane through every layer: matrices std 0.02, norm weights 1 +- 0.05 (small
noise so a swapped weight shows), biases std 0.02, learned positions and queries std 0.1. Token
embeddings get std 0.3, on par with the resampler's outputs: at 0.02 the residual stream is
dominated by what the branches add whatever the token, and greedy decoding repeats one token,
which would make decode tests blind to the token and its context.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import ml_dtypes
import numpy as np

from wstream.errors import InputError
from wstream.model.config import (
    DecoderConfig,
    ResamplerConfig,
    VisionConfig,
    VLMConfig,
    tensor_shapes,
    to_hf,
)


def _vlm(
    vision: tuple[int, int, int, int],
    decoder: tuple[int, int, int, int, int, int],
    queries: int = 64,
) -> VLMConfig:
    """vision (hidden, intermediate, heads, layers); decoder (hidden, intermediate, heads,
    kv_heads, layers, vocab). Patch 14, image_size 980, eps and RoPE base as in 2.6."""
    v = VisionConfig(*vision, patch=14, image_size=980, eps=1e-6)
    d = DecoderConfig(*decoder, eps=1e-6, rope_theta=1e6)
    r = ResamplerConfig(
        queries=queries, dim=d.hidden, heads=d.hidden // 128, kv_dim=v.hidden, eps=1e-6
    )
    return VLMConfig(v, r, d)


PRESETS: dict[str, VLMConfig] = {
    # minicpmv.md section 6: vision 64/4 heads, resampler 2 heads, Qwen2 256 with 4/2 heads.
    "tiny": _vlm((64, 128, 4, 2), (256, 512, 4, 2, 2, 1024)),
    # A second tiny shape: other head counts, GQA 8:1, three layers each, 4 resampler heads.
    "tiny-gqa": _vlm((96, 192, 6, 3), (512, 768, 8, 1, 3, 1536)),
    # About 350 MB: big enough to measure, small enough for `wstream demo` in seconds.
    "small": _vlm((384, 1536, 6, 6), (1024, 2816, 8, 2, 8, 32000)),
    # The real MiniCPM-V 2.6: 8,099,175,152 parameters, 16,198,350,304 bytes.
    "full": _vlm((1152, 4304, 16, 27), (3584, 18944, 28, 4, 28, 151666)),
}

SLAB_ELEMENTS = 1 << 23  # values generated at once (32 MiB of float32 + 16 MiB of bf16)
ProgressFn = Callable[[int], None]


@dataclass(frozen=True, slots=True)
class WrittenCheckpoint:
    directory: Path
    files: tuple[Path, ...]  # the shards, in order
    total_size: int  # tensor bytes, as metadata.total_size of the index
    sha256: str  # digest of every tensor (name, shape, bytes) in name order: see tensor_digest


def preset(name: str) -> VLMConfig:
    try:
        return PRESETS[name]
    except KeyError:
        raise InputError(f"preset: {name!r} is not one of {', '.join(PRESETS)}") from None


def checkpoint_order(cfg: VLMConfig) -> list[tuple[str, tuple[int, ...]]]:
    """Tensors in the order the real 2.6 shards hold them: LLM body, lm_head, resampler, vpm."""
    shapes = tensor_shapes(cfg)
    rank = {"llm.model.": 0, "llm.lm_head": 1, "resampler.": 2, "vpm.": 3}

    def key(name: str) -> int:
        return next(r for prefix, r in rank.items() if name.startswith(prefix))

    return sorted(shapes.items(), key=lambda item: key(item[0]))  # stable: keeps layer order


def _init(name: str, shape: tuple[int, ...]) -> tuple[float, float]:
    """(mean, std) of a tensor's values, from its role (see the module docstring)."""
    if len(shape) == 1:
        return (1.0, 0.05 / math.sqrt(3.0)) if name.endswith("weight") else (0.0, 0.02)
    if name.endswith(("position_embedding.weight", "resampler.query")):
        return 0.0, 0.1
    if name.endswith("embed_tokens.weight"):
        return 0.0, 0.3
    return 0.0, 0.02


def _rng(seed: int, name: str) -> np.random.Generator:
    key = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "little")
    return np.random.Generator(np.random.SFC64(np.random.SeedSequence([seed, key])))


def tensor_values(name: str, shape: tuple[int, ...], seed: int) -> np.ndarray:
    """One whole tensor as bf16 (for tests; the writer generates the same values in slabs)."""
    return np.concatenate(list(_slabs(name, shape, seed, SLAB_ELEMENTS))).reshape(shape)


def _slabs(name: str, shape: tuple[int, ...], seed: int, slab: int) -> Iterator[np.ndarray]:
    """The tensor's values as flat bf16 arrays of whole rows, in order."""
    rng = _rng(seed, name)
    mean, std = _init(name, shape)
    half_width = np.float32(std * math.sqrt(3.0))  # U(-a, a) has std a / sqrt(3)
    total = math.prod(shape)
    row = math.prod(shape[1:]) if len(shape) > 1 else 1
    step = max(1, slab // row) * row
    buf = np.empty(min(step, total), np.float32)
    out = np.empty(len(buf), ml_dtypes.bfloat16)
    for start in range(0, total, step):
        n = min(step, total - start)
        u = rng.random(out=buf[:n], dtype=np.float32)  # [0, 1)
        u *= 2 * half_width
        u += np.float32(mean) - half_width
        np.copyto(out[:n], u, casting="unsafe")  # round to nearest even bf16
        yield out[:n]


def _header(entries: list[tuple[str, tuple[int, ...]]]) -> bytes:
    """A safetensors header for bf16 tensors laid out back to back, padded to 8 bytes."""
    doc: dict[str, object] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, shape in entries:
        nbytes = 2 * math.prod(shape)
        doc[name] = {
            "dtype": "BF16",
            "shape": list(shape),
            "data_offsets": [offset, offset + nbytes],
        }
        offset += nbytes
    body = json.dumps(doc, separators=(",", ":")).encode()
    body += b" " * (-len(body) % 8)
    return len(body).to_bytes(8, "little") + body


def tensor_digest(digests: dict[str, tuple[tuple[int, ...], str]]) -> str:
    """Digest over name-sorted lines "name shape sha256(bytes)": independent of shard layout."""
    h = hashlib.sha256()
    for name in sorted(digests):
        shape, d = digests[name]
        h.update(f"{name} {list(shape)} {d}\n".encode())
    return h.hexdigest()


def write_checkpoint(
    directory: str | os.PathLike[str],
    config: VLMConfig | str,
    *,
    seed: int = 0,
    shards: int = 2,
    progress: ProgressFn | None = None,
) -> WrittenCheckpoint:
    """Write a MiniCPM-V 2.6-shaped checkpoint with random bf16 weights into ``directory``.

    >>> write_checkpoint("/tmp/tiny", "tiny").total_size
    4975232
    """
    cfg = preset(config) if isinstance(config, str) else config
    order = checkpoint_order(cfg)
    if not 1 <= shards <= len(order):
        raise InputError(f"shards: {shards} must be in [1, {len(order)}]")
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    total = sum(2 * math.prod(s) for _, s in order)
    # Contiguous runs of about total/shards bytes each, none empty.
    groups: list[list[tuple[str, tuple[int, ...]]]] = [[] for _ in range(shards)]
    done = k = 0
    for i, (name, shape) in enumerate(order):
        if min(shards - 1, done * shards // total) > k and groups[k]:
            k += 1  # one shard at a time, so none is skipped
        k = max(k, shards - (len(order) - i))  # the tensors left must fill the shards left
        groups[k].append((name, shape))
        done += 2 * math.prod(shape)
    files, weight_map, digests = [], {}, {}
    for k, entries in enumerate(groups):
        path = out / f"model-{k + 1:05d}-of-{shards:05d}.safetensors"
        with open(path, "wb") as f:
            f.write(_header(entries))
            for name, shape in entries:
                h = hashlib.sha256()
                for values in _slabs(name, shape, seed, SLAB_ELEMENTS):
                    raw = values.view(np.uint8)
                    f.write(raw.data)
                    h.update(raw.data)
                    if progress is not None:
                        progress(raw.nbytes)
                digests[name] = (shape, h.hexdigest())
                weight_map[name] = path.name
        files.append(path)
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    (out / "config.json").write_text(json.dumps(to_hf(cfg), indent=2) + "\n")
    return WrittenCheckpoint(out, tuple(files), total, tensor_digest(digests))
