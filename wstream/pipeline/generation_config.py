"""``generation_config.json`` parsed once into a value, and the ids that end an answer.

Only the fields decoding needs are read (``eos_token_id``: an int or a list of ints,
``bos_token_id``, ``pad_token_id``); the rest (``transformers_version``, sampling defaults that
MiniCPM-V's ``chat()`` overrides anyway) is ignored. A bad value is a
:class:`GenerationConfigError` naming the field, the value and the limit.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from wstream.errors import GenerationConfigError, MissingToken
from wstream.pipeline.tokenizer import Tokenizer


@dataclass(frozen=True, slots=True)
class GenerationConfig:
    """The parts of ``generation_config.json`` decoding uses."""

    eos_token_ids: frozenset[int]  # "eos_token_id": an int or a list of ints
    bos_token_id: int | None = None
    pad_token_id: int | None = None


def parse_generation_config(
    data: bytes | Mapping[str, Any], *, vocab_size: int | None = None
) -> GenerationConfig:
    """Parse ``generation_config.json`` (bytes or the parsed object); unknown keys are ignored."""
    if isinstance(data, bytes | bytearray):
        try:
            obj = json.loads(bytes(data).decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise GenerationConfigError(f"generation_config.json: not valid JSON ({exc})") from None
    else:
        obj = data
    if not isinstance(obj, Mapping):
        raise GenerationConfigError("generation_config.json: must be a JSON object")
    eos = obj.get("eos_token_id")
    if eos is None:
        raise GenerationConfigError("generation_config.json: eos_token_id is missing")
    eos_list = eos if isinstance(eos, list) else [eos]
    if not eos_list:
        raise GenerationConfigError("generation_config.json: eos_token_id is an empty list")
    return GenerationConfig(
        eos_token_ids=frozenset(_token_id("eos_token_id", v, vocab_size) for v in eos_list),
        bos_token_id=_optional_id(obj, "bos_token_id", vocab_size),
        pad_token_id=_optional_id(obj, "pad_token_id", vocab_size),
    )


def _optional_id(obj: Mapping[str, Any], key: str, vocab_size: int | None) -> int | None:
    value = obj.get(key)
    return None if value is None else _token_id(key, value, vocab_size)


def _token_id(key: str, value: Any, vocab_size: int | None) -> int:
    where = f"generation_config.json: {key}"
    if isinstance(value, bool) or not isinstance(value, int):
        raise GenerationConfigError(f"{where}: {value!r:.40} is not an integer token id")
    if value < 0:
        raise GenerationConfigError(f"{where}: {value} is negative")
    if vocab_size is not None and value >= vocab_size:
        raise GenerationConfigError(f"{where}: {value} is outside the vocabulary [0, {vocab_size})")
    return value


def terminators(generation: GenerationConfig, tokenizer: Tokenizer) -> frozenset[int]:
    """The ids that end a MiniCPM-V answer: the config's eos ids plus ``chat()``'s terminators.

    ``generation_config.json`` of 2.6 names only ``<|im_end|>`` (151645); ``chat()`` also stops on
    ``<|endoftext|>`` (151643). Each terminator the vocabulary lacks is skipped.
    """
    ids = set(generation.eos_token_ids)
    for token in ("<|im_end|>", "<|endoftext|>"):
        try:
            ids.add(tokenizer.token_id(token))
        except MissingToken:
            continue
    return frozenset(ids)
