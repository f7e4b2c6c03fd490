"""One request of the tiny MiniCPM-V fixture: its tokenizer, its constants, prompt to answer.

Shared by tools/train_tiny.py (training) and tools/tiny_fixture.py (export and --check). The
preprocessing and the forward themselves are tools/tiny_reference.py.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import tiny_data
import tiny_reference as ref
import torch
from PIL import Image
from tokenizers import (
    AddedToken,
    Regex,
    Tokenizer,
    decoders,
    models,
    normalizers,
    pre_tokenizers,
    processors,
    trainers,
)

PROCESSOR = ref.Processor(
    max_slice_nums=9, scale_resolution=112, patch_size=14, image_feature_size=16
)
# The Qwen2 pre-tokenizer pattern (tokenizer.json of Qwen2 / MiniCPM-V 2.6).
QWEN2_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
# 2.6's added tokens in id order (151643..151665), <unk> first: in 2.6 it is a base-vocab token
# (128244) below them all, so it comes before them here too.
SPECIAL_TOKENS = [
    "<unk>",
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<image>",
    "</image>",
    "<ref>",
    "</ref>",
    "<box>",
    "</box>",
    "<quad>",
    "</quad>",
    "<point>",
    "</point>",
    "<slice>",
    "</slice>",
    "<image_id>",
    "</image_id>",
    *(f"<|reserved_special_token_{i}|>" for i in range(6)),
]
BPE_VOCAB = 676  # + 24 special = 700 ids at most
# The Qwen2-Instruct ChatML template MiniCPM-V 2.6 ships (minicpmv-e2e.md section 4.2).
CHAT_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
MAX_NEW_TOKENS = 8

# --- tokenizer ----------------------------------------------------------------------------------


def build_tokenizer() -> Tokenizer:
    """A Qwen2-style byte-level BPE (the pipeline of transformers' Qwen2Converter)."""
    tok = Tokenizer(models.BPE(unk_token=None, byte_fallback=False, fuse_unk=False))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN2_PATTERN), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=BPE_VOCAB,
        min_frequency=2,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[],
        show_progress=False,
    )
    tok.train_from_iterator(tiny_data.tokenizer_corpus(), trainer)
    tok.add_special_tokens(
        [
            AddedToken(t, special=True, normalized=False, lstrip=False, rstrip=False)
            for t in SPECIAL_TOKENS
        ]
    )
    return tok


def special_ids(tok: Tokenizer) -> dict[str, int]:
    out = {}
    for t in SPECIAL_TOKENS:
        i = tok.token_to_id(t)
        if i is None:
            raise SystemExit(f"tokenizer lacks {t}")
        out[t] = i
    return out


# --- one request ----------------------------------------------------------------------------------


@dataclass
class Encoded:
    prompt: str  # the text after the template and the placeholder expansion
    ids: list[int]  # prompt ids
    pixel_values: list[np.ndarray]
    tgt_sizes: list[tuple[int, int]]
    bounds: list[tuple[int, int]]


def encode(
    tok: Tokenizer,
    image: Image.Image,
    question: str,
    proc: ref.Processor = PROCESSOR,
    template: str = CHAT_TEMPLATE,
) -> Encoded:
    image = image.convert("RGB")
    messages = [{"role": "user", "content": ref.user_content(1, question)}]
    text = ref.expand_images(proc, ref.render_chat(template, messages), [image.size])
    ids = tok.encode(text, add_special_tokens=False).ids
    pixel_values, tgt_sizes = proc.preprocess(image)
    bounds = ref.image_bound(ids, special_ids(tok))
    q = proc.image_feature_size
    if len(bounds) != len(pixel_values) or any(e - s != q for s, e in bounds):
        raise SystemExit(f"bounds {bounds} do not match {len(pixel_values)} slices")
    return Encoded(text, ids, pixel_values, tgt_sizes, bounds)


def answer_ids(tok: Tokenizer, answer: str) -> list[int]:
    return tok.encode(answer, add_special_tokens=False).ids + [tok.token_to_id("<|im_end|>")]


def stop_ids(tok: Tokenizer) -> set[int]:
    return {tok.token_to_id("<|im_end|>"), tok.token_to_id("<|endoftext|>")}


def run_greedy(
    model: ref.MiniCPMV, tok: Tokenizer, enc: Encoded, dtype: torch.dtype
) -> tuple[torch.Tensor, list[int], list[float]]:
    with torch.no_grad():
        px, tgt = ref.as_tensors(enc.pixel_values, enc.tgt_sizes, dtype)
        feats = model.image_features(px, tgt)
        ids = torch.tensor([enc.ids])
        emb = model.embed(ids, [enc.bounds], feats)
        return ref.greedy(model, emb, stop_ids(tok), MAX_NEW_TOKENS)


def decode_answer(tok: Tokenizer, ids: list[int]) -> str:
    """_decode_text: drop the terminators, keep every other token (skip_special_tokens=False)."""
    stops = stop_ids(tok)
    return tok.decode([i for i in ids if i not in stops], skip_special_tokens=False)


def evaluate(
    model: ref.MiniCPMV, tok: Tokenizer, cases: list[tiny_data.Case], dtype: torch.dtype
) -> dict[str, float]:
    model.eval()
    right: dict[str, list[bool]] = {}
    for case in cases:
        right.setdefault(case.kind, [])
        enc = encode(tok, tiny_data.render(case), case.question)
        _, ids, _ = run_greedy(model, tok, enc, dtype)
        right[case.kind].append(decode_answer(tok, ids) == case.answer)
    return {k: sum(v) / len(v) for k, v in right.items() if v}
