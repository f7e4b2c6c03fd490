"""``tokenizer_config.json`` (and the legacy side files) parsed once into a value.

The only reader of those files. transformers' loading rules, kept here:

- ``added_tokens_decoder`` (id -> AddedToken fields) is the modern layout; when it is present,
  ``special_tokens_map.json`` and ``added_tokens.json`` are not read;
- without it (the legacy layout), ``special_tokens_map.json`` overrides the config's special-token
  attributes, and each ``added_tokens.json`` entry (string -> id) becomes an added token that is
  special (and not normalized) when it is one of those attributes;
- a special-token attribute is a string or a serialised AddedToken ``{"content": ...}``;
- ``chat_template`` is a string, or a list of ``{"name", "template"}`` of which ``default`` is the
  one ``apply_chat_template`` uses.

Every malformed value is a :class:`TokenizerError` naming the file, the field and the value.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

from tokenizers import AddedToken

from wstream.errors import TokenizerError

# transformers' SPECIAL_TOKENS_ATTRIBUTES, in its order (the order matters for the template
# variables only in that later keys do not override earlier ones).
SPECIAL_TOKEN_ATTRIBUTES = (
    "bos_token",
    "eos_token",
    "unk_token",
    "sep_token",
    "pad_token",
    "cls_token",
    "mask_token",
)

_ADDED_TOKEN_FLAGS = ("single_word", "lstrip", "rstrip", "normalized", "special")

ADDED_TOKEN_FLAGS = ("single_word", "lstrip", "rstrip", "normalized", "special")


class SpecialTokens(NamedTuple):
    """A tokenizer's special-token attributes, as strings (transformers' special_tokens_map)."""

    bos_token: str | None
    eos_token: str | None
    unk_token: str | None
    sep_token: str | None
    pad_token: str | None
    cls_token: str | None
    mask_token: str | None
    additional_special_tokens: tuple[str, ...]

    def template_variables(self) -> dict[str, Any]:
        """The variables transformers passes to a chat template: each set attribute by name."""
        out: dict[str, Any] = {}
        for name in SPECIAL_TOKEN_ATTRIBUTES:
            value = getattr(self, name)
            if value is not None:
                out[name] = value
        if self.additional_special_tokens:
            out["additional_special_tokens"] = list(self.additional_special_tokens)
        return out


@dataclass(frozen=True, slots=True)
class TokenizerConfig:
    """What the tokenizer files say beyond ``tokenizer.json``."""

    added_tokens: Mapping[int, AddedToken]  # declared id -> token, checked after loading
    special: SpecialTokens
    clean_up_tokenization_spaces: bool  # transformers' default: False
    split_special_tokens: bool  # True: added tokens typed in text are not matched
    chat_template: str | None


def parse_tokenizer_config(
    tokenizer_config: Mapping[str, Any],
    *,
    special_tokens_map: Mapping[str, Any] | None = None,
    added_tokens: Mapping[str, Any] | None = None,
) -> TokenizerConfig:
    """Parse ``tokenizer_config.json`` (an object) with the optional legacy side files."""
    if not isinstance(tokenizer_config, Mapping):
        raise TokenizerError("tokenizer_config.json: must be a JSON object")
    config = dict(tokenizer_config)
    declared = _parse_added_tokens_decoder(config.get("added_tokens_decoder"))
    if declared is None:  # the legacy layout: the two side files carry the information
        for key, value in (special_tokens_map or {}).items():
            config[key] = value
    special = _parse_special_tokens(config)
    if declared is None:
        declared = _legacy_added_tokens(added_tokens or {}, special)
    return TokenizerConfig(
        added_tokens=declared,
        special=special,
        clean_up_tokenization_spaces=_flag(config, "clean_up_tokenization_spaces"),
        split_special_tokens=_flag(config, "split_special_tokens"),
        chat_template=_parse_chat_template(config.get("chat_template")),
    )


def special_strings(special: SpecialTokens) -> list[str]:
    """The special-token attribute values, attributes first, then the additional ones."""
    out = [getattr(special, n) for n in SPECIAL_TOKEN_ATTRIBUTES if getattr(special, n) is not None]
    return out + list(special.additional_special_tokens)


def _flag(config: Mapping[str, Any], key: str) -> bool:
    value = config.get(key, False)
    if not isinstance(value, bool):
        raise TokenizerError(f"tokenizer_config.json: {key}: {value!r:.40} is not a boolean")
    return value


def _parse_added_tokens_decoder(raw: Any) -> dict[int, AddedToken] | None:
    if raw is None:
        return None
    where = "tokenizer_config.json: added_tokens_decoder"
    if not isinstance(raw, Mapping):
        raise TokenizerError(f"{where}: must be an object of id -> token, got {type(raw).__name__}")
    out: dict[int, AddedToken] = {}
    for key, entry in raw.items():
        try:
            index = int(key)
        except (TypeError, ValueError):
            raise TokenizerError(f"{where}: key {key!r} is not an integer id") from None
        if index < 0:
            raise TokenizerError(f"{where}: key {key!r} is negative")
        out[index] = _parse_added_token(entry, f"{where}[{key}]")
    return out


def _parse_added_token(entry: Any, where: str) -> AddedToken:
    if not isinstance(entry, Mapping):
        raise TokenizerError(f"{where}: must be an object with 'content', got {entry!r:.80}")
    content = entry.get("content")
    if not isinstance(content, str) or not content:
        raise TokenizerError(f"{where}.content: {content!r:.80} is not a non-empty string")
    flags: dict[str, bool] = {}
    for flag in ADDED_TOKEN_FLAGS:
        if flag in entry:
            value = entry[flag]
            if not isinstance(value, bool):
                raise TokenizerError(f"{where}.{flag}: {value!r:.80} is not a boolean")
            flags[flag] = value
    return AddedToken(content, **flags)


def _legacy_added_tokens(raw: Mapping[str, Any], special: SpecialTokens) -> dict[int, AddedToken]:
    # added_tokens.json maps string -> id; transformers makes each an AddedToken that is special
    # (and not normalized) when it is one of the special-token attributes.
    named = set(special_strings(special))
    out: dict[int, AddedToken] = {}
    for content, index in raw.items():
        if not isinstance(index, int) or isinstance(index, bool) or index < 0:
            raise TokenizerError(f"added_tokens.json: {content!r}: {index!r} is not a token id")
        is_special = content in named
        out[index] = AddedToken(
            content, lstrip=False, rstrip=False, normalized=not is_special, special=is_special
        )
    return out


def _token_string(value: Any, where: str) -> str | None:
    if value is None:
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, Mapping) and isinstance(value.get("content"), str):
        return str(value["content"])  # the serialised AddedToken form {"content": ..., ...}
    raise TokenizerError(f"{where}: {value!r:.80} is not a token string")


def _parse_special_tokens(config: Mapping[str, Any]) -> SpecialTokens:
    values = {
        name: _token_string(config.get(name), f"tokenizer_config.json: {name}")
        for name in SPECIAL_TOKEN_ATTRIBUTES
    }
    extra = config.get("additional_special_tokens") or []
    if not isinstance(extra, list):
        raise TokenizerError(
            f"tokenizer_config.json: additional_special_tokens: {extra!r:.80} is not a list"
        )
    additional = []
    for i, item in enumerate(extra):
        token = _token_string(item, f"tokenizer_config.json: additional_special_tokens[{i}]")
        if token is not None:
            additional.append(token)
    return SpecialTokens(**values, additional_special_tokens=tuple(additional))


def _parse_chat_template(raw: Any) -> str | None:
    # A string, or transformers' named list [{"name": ..., "template": ...}]; "default" is the one
    # apply_chat_template uses when no name is asked for.
    if raw is None or isinstance(raw, str):
        return raw
    where = "tokenizer_config.json: chat_template"
    if isinstance(raw, list):
        named: dict[str, str] = {}
        for i, item in enumerate(raw):
            if not (
                isinstance(item, Mapping)
                and isinstance(item.get("name"), str)
                and isinstance(item.get("template"), str)
            ):
                raise TokenizerError(f"{where}[{i}]: expected {{'name': str, 'template': str}}")
            named[item["name"]] = item["template"]
        if "default" not in named:
            raise TokenizerError(f"{where}: no template named 'default' among {sorted(named)}")
        return named["default"]
    raise TokenizerError(f"{where}: {type(raw).__name__} is neither a string nor a named list")


def load_json_object(data: bytes, name: str) -> dict[str, Any]:
    """Parse a small JSON config file (``tokenizer_config.json`` ...) that must be an object."""
    try:
        value = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise TokenizerError(f"{name}: not UTF-8 ({exc.reason} at byte {exc.start})") from None
    except json.JSONDecodeError as exc:
        raise TokenizerError(f"{name}: invalid JSON ({exc.msg} at line {exc.lineno})") from None
    if not isinstance(value, dict):
        raise TokenizerError(f"{name}: must be a JSON object, got {type(value).__name__}")
    return value
