"""Write tests/golden/: MiniCPM-V 2.6 outputs from an independent torch implementation.

Maintainer-only. torch and transformers are never imported by wstream/ or tests/; the tests only
read what this writes. Rerun it when the weight generator (wstream/synthetic.py) or a golden
case below changes; tests/test_forward.py says so when the weights' sha256 no longer matches.

Set up once (a separate venv; torch 2.13.0 CPU comes from the local wheel, never a CUDA build)::

    python3 -m venv /tmp/venv-golden
    /tmp/venv-golden/bin/pip install \
        /opt/wheels/torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl
    /tmp/venv-golden/bin/pip install transformers safetensors ml_dtypes numpy zstandard

Run from the repository root (wstream is imported from the source tree, not installed)::

    /tmp/venv-golden/bin/python tools/make_golden.py            # writes tests/golden/

The reference, per case (float64 throughout, on the same bf16 weights widened exactly):

- vision: transformers' ``Idefics2VisionTransformer`` (the NaViT SigLIP that MiniCPM-V 2.6 uses)
  with an explicit ``patch_attention_mask``, so its own position bucketing runs;
- resampler: ``torch.nn.MultiheadAttention`` with the packed in_proj, the 2D sin-cos added to
  the keys only (ported line by line from MiniCPM-V's resampler.py, float32 as there);
- decoder: ``Qwen2ForCausalLM`` on ``inputs_embeds`` with the resampler output scattered over
  ``image_bound``, then greedy decoding with its own KV cache.

It also writes ``navit_position_ids.json``: the NaViT bucket ids torch computes with MiniCPM-V's
own formula for every side 1..70, and where Idefics2's formula and floor(70*i/h) differ from it.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
import transformers
from safetensors.torch import load_file
from transformers import Qwen2Config, Qwen2ForCausalLM
from transformers.models.idefics2.configuration_idefics2 import Idefics2VisionConfig
from transformers.models.idefics2.modeling_idefics2 import (
    Idefics2VisionEmbeddings,
    Idefics2VisionTransformer,
)

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from wstream.model.config import VLMConfig
from wstream.model.ops import navit_position_ids
from wstream.synthetic import preset, write_checkpoint

# name: (preset, seed, shards, image H x W or None, text ids before / after the image, new tokens)
CASES: dict[str, tuple[str, int, int, tuple[int, int] | None, int, int, int]] = {
    # minicpmv.md section 6 exactly; a 28 x 42 slice is a 2 x 3 patch grid.
    "tiny": ("tiny", 0, 2, (28, 42), 4, 4, 6),
    # Other heads / GQA 8:1 / 3 layers; 350 x 56 is 25 x 4 patches, and h = 25 is a side where
    # torch's bucketing differs from floor(70*i/h).
    "tiny-gqa": ("tiny-gqa", 1, 3, (350, 56), 6, 10, 6),
    # No image: the LLM path alone.
    "tiny-text": ("tiny", 2, 1, None, 12, 0, 6),
}
GRID = 70


def load_weights(directory: Path) -> dict[str, torch.Tensor]:
    """Every tensor of the checkpoint as float64 (bf16 widens exactly)."""
    out: dict[str, torch.Tensor] = {}
    for shard in sorted(directory.glob("*.safetensors")):
        out.update({k: v.to(torch.float64) for k, v in load_file(shard).items()})
    return out


def strip(weights: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix) :]: v for k, v in weights.items() if k.startswith(prefix)}


def vision_tower(cfg: VLMConfig, weights: dict[str, torch.Tensor]) -> Idefics2VisionTransformer:
    v = cfg.vision
    config = Idefics2VisionConfig(
        hidden_size=v.hidden,
        intermediate_size=v.intermediate,
        num_hidden_layers=v.layers,
        num_attention_heads=v.heads,
        image_size=v.image_size,
        patch_size=v.patch,
        hidden_act="gelu_pytorch_tanh",
        layer_norm_eps=v.eps,
    )
    config._attn_implementation = "sdpa"  # math kernel: float64 softmax (eager's is float32)
    model = Idefics2VisionTransformer(config).double().eval()
    model.load_state_dict(strip(weights, "vpm."), strict=True)
    return model


# --- MiniCPM-V 2.6 resampler.py, ported (numpy float32 sincos, as the model computes it) ---------


def get_2d_sincos_pos_embed(embed_dim: int, image_size: tuple[int, int]) -> np.ndarray:
    grid_h_size, grid_w_size = image_size
    grid_h = np.arange(grid_h_size, dtype=np.float32)
    grid_w = np.arange(grid_w_size, dtype=np.float32)
    grid = np.meshgrid(grid_w, grid_h)  # here w goes first
    grid = np.stack(grid, axis=0)
    emb_h = _1d_sincos(embed_dim // 2, grid[0])  # (H, W, D/2)
    emb_w = _1d_sincos(embed_dim // 2, grid[1])  # (H, W, D/2)
    return np.concatenate([emb_h, emb_w], axis=-1)  # (H, W, D)


def _1d_sincos(embed_dim: int, pos: np.ndarray) -> np.ndarray:
    omega = np.arange(embed_dim // 2, dtype=np.float32)
    omega /= embed_dim / 2.0
    omega = 1.0 / 10000**omega  # (D/2,)
    out = np.einsum("hw,d->hwd", pos, omega)  # (H, W, D/2), outer product
    return np.concatenate([np.sin(out), np.cos(out)], axis=-1)  # (H, W, D)


def resampler(
    cfg: VLMConfig, weights: dict[str, torch.Tensor], x: torch.Tensor, grid: tuple[int, int]
) -> torch.Tensor:
    """x [L, kv_dim] float64 -> [Q, D]."""
    r = cfg.resampler
    w = strip(weights, "resampler.")
    attn = torch.nn.MultiheadAttention(r.dim, r.heads).double().eval()
    attn.load_state_dict({k[len("attn.") :]: v for k, v in w.items() if k.startswith("attn.")})

    def ln(t: torch.Tensor, name: str) -> torch.Tensor:
        return torch.nn.functional.layer_norm(
            t, (r.dim,), w[f"{name}.weight"], w[f"{name}.bias"], r.eps
        )

    pos = get_2d_sincos_pos_embed(r.dim, (GRID, GRID))[: grid[0], : grid[1]]  # 70x70 cache
    pos_t = torch.from_numpy(pos.reshape(grid[0] * grid[1], -1)).to(torch.float64)
    kv = ln(x @ w["kv_proj.weight"].T, "ln_kv")  # [L, D]
    q = ln(w["query"], "ln_q")  # [Q, D]
    out = attn(q[:, None], (kv + pos_t)[:, None], kv[:, None], need_weights=False)[0][:, 0]
    return ln(out, "ln_post") @ w["proj"]


def decoder(cfg: VLMConfig, weights: dict[str, torch.Tensor]) -> Qwen2ForCausalLM:
    d = cfg.decoder
    config = Qwen2Config(
        vocab_size=d.vocab,
        hidden_size=d.hidden,
        intermediate_size=d.intermediate,
        num_hidden_layers=d.layers,
        num_attention_heads=d.heads,
        num_key_value_heads=d.kv_heads,
        rms_norm_eps=d.eps,
        tie_word_embeddings=False,
        rope_parameters={"rope_type": "default", "rope_theta": d.rope_theta},
        max_position_embeddings=4096,
        use_sliding_window=False,
    )
    config._attn_implementation = "sdpa"
    model = Qwen2ForCausalLM(config).double().eval()
    model.load_state_dict(strip(weights, "llm."), strict=True)
    return model


# --- NaViT bucketing ----------------------------------------------------------------------------


def minicpmv_buckets(n: int) -> list[int]:
    """modeling_navit_siglip.py, verbatim arithmetic: tgt size as an int tensor, default dtype."""
    boundaries = torch.arange(1 / GRID, 1.0, 1 / GRID)
    nb = torch.tensor([n], dtype=torch.int32)[0]
    frac = torch.arange(0, 1 - 1e-6, 1 / nb)
    return torch.bucketize(frac, boundaries, right=True).tolist()


def idefics2_buckets(n: int) -> list[int]:
    """What transformers' Idefics2VisionEmbeddings computes, read out of the module itself:
    zero patch conv, position table row i = i, a n x 1 patch grid."""
    config = Idefics2VisionConfig(
        hidden_size=4, num_attention_heads=1, image_size=GRID * 14, patch_size=14
    )
    emb = Idefics2VisionEmbeddings(config).double()
    with torch.no_grad():
        emb.patch_embedding.weight.zero_()
        emb.patch_embedding.bias.zero_()
        emb.position_embedding.weight.copy_(torch.arange(GRID * GRID)[:, None].expand(-1, 4))
        mask = torch.ones(1, n, 1, dtype=torch.bool)
        out = emb(torch.zeros(1, 3, 14 * n, 14, dtype=torch.float64), mask)
    return [int(v) // GRID for v in out[0, :, 0].round().tolist()]


def navit_table() -> dict[str, Any]:
    table = {n: minicpmv_buckets(n) for n in range(1, GRID + 1)}
    ours = [
        n for n in table if navit_position_ids(n, 1, GRID).tolist() != [b * GRID for b in table[n]]
    ]
    if ours:
        raise SystemExit(f"wstream.model.ops.navit_position_ids differs from torch at sides {ours}")
    return {
        "grid": GRID,
        "buckets": {str(n): b for n, b in table.items()},  # side -> bucket per patch index
        "idefics2_differs_at": [n for n in table if idefics2_buckets(n) != table[n]],
        "floor_differs_at": [
            n for n in table if table[n] != [math.floor(GRID * i / n) for i in range(n)]
        ],
    }


# --- cases --------------------------------------------------------------------------------------


def run_case(name: str, out_dir: Path, work: Path, navit: dict[str, Any]) -> dict[str, Any]:
    preset_name, seed, shards, image, before, after, new_tokens = CASES[name]
    cfg = preset(preset_name)
    written = write_checkpoint(work / name, preset_name, seed=seed, shards=shards)
    weights = load_weights(written.directory)
    rng = np.random.default_rng(1000 + seed)
    q = cfg.resampler.queries if image else 0
    ids = rng.integers(0, cfg.decoder.vocab, before + q + after).astype(np.int64)
    embeds = strip(weights, "llm.model.")["embed_tokens.weight"][torch.from_numpy(ids)]
    arrays: dict[str, np.ndarray] = {}
    if image is not None:
        h, w = image[0] // 14, image[1] // 14
        for side in (h, w):
            if side in navit["idefics2_differs_at"]:
                raise SystemExit(f"{name}: side {side} buckets differently in Idefics2")
        pixels = rng.uniform(-1.0, 1.0, (3, *image)).astype(np.float32)
        bound = (before, before + q)
        ids[bound[0] : bound[1]] = 0  # placeholders: ignored, overwritten by the image
        tower = vision_tower(cfg, weights)
        with torch.no_grad():
            px = torch.from_numpy(pixels)[None].to(torch.float64)
            feats = tower(px, patch_attention_mask=torch.ones(1, h, w, dtype=torch.bool))
            image_embeds = resampler(cfg, weights, feats.last_hidden_state[0], (h, w))
        embeds[bound[0] : bound[1]] = image_embeds
        arrays.update(pixels=pixels, image_bound=np.array(bound, dtype=np.int64))
    model = decoder(cfg, weights)
    tokens, margins, steps = [], [], []
    with torch.no_grad():
        out = model(inputs_embeds=embeds[None], use_cache=True)
        logits = out.logits[0]  # [T, vocab]
        step = logits[-1]
        for _ in range(new_tokens):
            top2 = torch.topk(step, 2).values
            margins.append(float(top2[0] - top2[1]))
            tokens.append(int(step.argmax()))
            if len(tokens) == new_tokens:
                break
            cache = getattr(out, "cache", None) or out.past_key_values
            out = model(input_ids=torch.tensor([[tokens[-1]]]), cache=cache, use_cache=True)
            step = out.logits[0, -1]
            steps.append(step)
    scale = float(logits.abs().max())
    # The tests allow 1e-3 * scale of error; a top-2 gap above twice that cannot flip a token.
    if min(margins) < 2e-3 * scale:
        raise SystemExit(f"{name}: greedy margin {min(margins):.2e} is too small; change the seed")
    arrays.update(
        input_ids=ids,
        logits=logits.to(torch.float32).numpy(),
        step_logits=torch.stack(steps).to(torch.float32).numpy(),
        tokens=np.array(tokens, dtype=np.int64),
    )
    np.savez_compressed(out_dir / f"{name}.npz", **arrays)
    return {
        "preset": preset_name,
        "seed": seed,
        "shards": shards,
        "weights_sha256": written.sha256,
        "image": list(image) if image else None,
        "new_tokens": new_tokens,
        "max_abs_logit": scale,
        "min_greedy_margin": min(margins),
        "tokens": tokens,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-o", "--output", type=Path, default=ROOT / "tests" / "golden")
    args = parser.parse_args(argv)
    args.output.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    navit = navit_table()
    (args.output / "navit_position_ids.json").write_text(json.dumps(navit) + "\n")
    print(
        f"navit: Idefics2 differs at {navit['idefics2_differs_at']}, "
        f"floor(70*i/h) at {navit['floor_differs_at']}"
    )
    meta: dict[str, Any] = {
        "generator": "tools/make_golden.py",
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "cases": {},
    }
    with tempfile.TemporaryDirectory() as work:
        for name in CASES:
            meta["cases"][name] = run_case(name, args.output, Path(work), navit)
            print(f"{name}: {meta['cases'][name]}")
    (args.output / "golden.json").write_text(json.dumps(meta, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
