"""The model's tokenizer, through the Hugging Face ``tokenizers`` library (not transformers).

A :class:`Tokenizer` is built from the bytes of ``tokenizer.json`` and the parsed
``tokenizer_config.json`` (plus ``special_tokens_map.json`` / ``added_tokens.json`` when a
checkpoint ships them), and then encodes and decodes as transformers' fast tokenizer
(``PreTrainedTokenizerFast``) does for the same files:

- the added tokens of ``tokenizer_config.json``'s ``added_tokens_decoder`` are applied on top of
  ``tokenizer.json``, as transformers does at load time. For MiniCPM-V 2.6 this is what makes
  ``<unk>`` one token (id 128244, a base-vocabulary string declared special there): without it
  ``<unk><unk>`` splits into ``<unk``, ``><``, ``unk``, ``>`` and the 64 image placeholders would
  not be 64 ids. Every declared id is checked after loading; a disagreement is a
  :class:`TokenizerError` rather than silently different ids;
- special-token attributes (``bos_token``, ``eos_token``, ``unk_token``, ``pad_token``, ...,
  ``additional_special_tokens``) missing from the vocabulary are added as special tokens;
- ``special_tokens_map.json`` and ``added_tokens.json`` are read only when the config has no
  ``added_tokens_decoder`` (transformers treats them as the legacy layout then); the parsing of
  all three files is :mod:`wstream.pipeline.tokenizer_config`;
- ``decode(skip_special_tokens=True)`` drops every token marked special, which for MiniCPM-V
  includes ``<ref>``/``<box>``/``<quad>``/``<point>`` and ``<unk>``: callers that want grounding
  output decode with ``False`` and strip the terminators themselves;
- ``clean_up_tokenization_spaces`` is honoured (false for Qwen2 and MiniCPM-V).

:class:`StreamDecoder` turns ids into text one at a time without ever emitting a broken UTF-8
sequence: the bytes of an incomplete character are held until a later token completes them, and
:meth:`StreamDecoder.flush` emits what is left. The pieces concatenate to ``decode(all ids)``.

Example::

    tok = Tokenizer.from_files(tokenizer_json_bytes, json.loads(config_bytes))
    ids = tok.encode("<|im_start|>user\\nHi<|im_end|>\\n")
    stream = tok.stream()
    text = "".join(stream.step(i) for i in ids) + stream.flush()
    assert text == tok.decode(ids)
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, NamedTuple

from tokenizers import AddedToken
from tokenizers import Tokenizer as _HFTokenizer

from wstream.errors import MissingToken, TokenizerError
from wstream.pipeline.tokenizer_config import (
    ADDED_TOKEN_FLAGS,
    SpecialTokens,
    parse_tokenizer_config,
    special_strings,
)

# transformers' PreTrainedTokenizerBase.clean_up_tokenization, in its order.
_CLEANUP = (
    (" .", "."),
    (" ?", "?"),
    (" !", "!"),
    (" ,", ","),
    (" ' ", "'"),
    (" n't", "n't"),
    (" 'm", "'m"),
    (" 's", "'s"),
    (" 've", "'ve"),
    (" 're", "'re"),
)

_REPLACEMENT = "\ufffd"  # what a lossy UTF-8 decode puts where bytes are incomplete


class MiniCPMVTokens(NamedTuple):
    """Ids of the tokens the MiniCPM-V pipeline places or stops on, looked up by string."""

    image_start: int  # "<image>"      (HF MiniCPMVTokenizerFast.im_start)
    image_end: int  # "</image>"
    slice_start: int  # "<slice>"
    slice_end: int  # "</slice>"
    image_id_start: int  # "<image_id>"
    image_id_end: int  # "</image_id>"
    unk: int  # "<unk>": the placeholder the resampler rows overwrite
    newline: int  # "\n" (a byte-level base token, id 198 in Qwen2)
    turn_start: int  # "<|im_start|>"
    turn_end: int  # "<|im_end|>": the chat turn terminator
    endoftext: int  # "<|endoftext|>"


# The strings behind each MiniCPMVTokens field (HF MiniCPMVTokenizerFast's attributes).
MINICPMV_TOKEN_STRINGS: Mapping[str, str] = {
    "image_start": "<image>",
    "image_end": "</image>",
    "slice_start": "<slice>",
    "slice_end": "</slice>",
    "image_id_start": "<image_id>",
    "image_id_end": "</image_id>",
    "unk": "<unk>",
    "turn_start": "<|im_start|>",
    "turn_end": "<|im_end|>",
    "endoftext": "<|endoftext|>",
}


class Tokenizer:
    """Encode and decode as transformers' fast tokenizer does for the same files.

    Build with :meth:`from_files`. Thread safety: encode/decode may be called from several
    threads (the ``tokenizers`` object is immutable after loading); a :class:`StreamDecoder`
    belongs to one generation.
    """

    def __init__(
        self,
        backend: _HFTokenizer,
        special: SpecialTokens,
        *,
        clean_up_tokenization_spaces: bool,
        chat_template: str | None,
    ) -> None:
        self._tok = backend
        self.special = special
        self.clean_up_tokenization_spaces = clean_up_tokenization_spaces
        self.chat_template = chat_template
        self.vocab_size = backend.get_vocab_size(with_added_tokens=True)
        self._special_ids = frozenset(
            i for i, t in backend.get_added_tokens_decoder().items() if t.special
        )

    @classmethod
    def from_files(
        cls,
        tokenizer_json: bytes,
        tokenizer_config: Mapping[str, Any],
        *,
        special_tokens_map: Mapping[str, Any] | None = None,
        added_tokens: Mapping[str, Any] | None = None,
    ) -> Tokenizer:
        """Load ``tokenizer.json`` (bytes) with the parsed ``tokenizer_config.json`` and friends."""
        try:
            backend = _HFTokenizer.from_str(tokenizer_json.decode("utf-8"))
        except UnicodeDecodeError as exc:
            raise TokenizerError(
                f"tokenizer.json: not UTF-8 ({exc.reason} at {exc.start})"
            ) from None
        except Exception as exc:  # the Rust side raises a bare Exception for every parse failure
            raise TokenizerError(f"tokenizer.json: {str(exc)[:200]}") from None
        parsed = parse_tokenizer_config(
            tokenizer_config, special_tokens_map=special_tokens_map, added_tokens=added_tokens
        )
        # encode() of one text is neither padded nor truncated in transformers unless asked.
        backend.no_padding()
        backend.no_truncation()

        declared, special = parsed.added_tokens, parsed.special

        # transformers: add the declared tokens the tokenizer.json lacks (or has differently),
        # then the special-token attributes still missing, all in id order, specials flagged.
        existing = {_token_key(t) for t in backend.get_added_tokens_decoder().values()}
        to_add = [t for _, t in sorted(declared.items()) if _token_key(t) not in existing]
        known = {t.content for t in backend.get_added_tokens_decoder().values()}
        known |= {t.content for t in to_add}
        named = [s for s in special_strings(special) if s not in known]
        to_add += [AddedToken(s, special=True, normalized=False) for s in dict.fromkeys(named)]
        named_set = set(special_strings(special))
        for token in to_add:
            is_special = token.special or token.content in named_set
            fixed = _with_special(token, is_special)
            if is_special:
                backend.add_special_tokens([fixed])
            else:
                backend.add_tokens([fixed])
        for index, token in sorted(declared.items()):
            got = backend.token_to_id(token.content)
            if got != index:
                raise TokenizerError(
                    f"tokenizer_config.json: added_tokens_decoder[{index}] is {token.content!r}, "
                    f"but the vocabulary gives it id {got}"
                )

        backend.encode_special_tokens = parsed.split_special_tokens
        return cls(
            backend,
            special,
            clean_up_tokenization_spaces=parsed.clean_up_tokenization_spaces,
            chat_template=parsed.chat_template,
        )

    # --- lookups ---------------------------------------------------------------------------------

    def token_id(self, token: str) -> int:
        """The id of ``token`` (exact string); :class:`MissingToken` when it is not one token."""
        got = self._tok.token_to_id(token)
        if got is None:
            raise MissingToken(f"tokenizer: {token!r} is not a token of this vocabulary")
        return int(got)

    def id_to_token(self, token_id: int) -> str:
        """The vocabulary string of ``token_id`` (byte-level form for base tokens)."""
        self._check_ids((token_id,))
        got = self._tok.id_to_token(token_id)
        if got is None:  # an id hole inside the range: tokenizers has no string for it
            raise TokenizerError(f"token id {token_id} has no string in this vocabulary")
        return str(got)

    def is_special(self, token_id: int) -> bool:
        """Whether ``decode(skip_special_tokens=True)`` drops ``token_id``."""
        return token_id in self._special_ids

    def minicpmv_tokens(self) -> MiniCPMVTokens:
        """The ids of :data:`MINICPMV_TOKEN_STRINGS` and of ``"\\n"``; :class:`MissingToken` names
        the first one absent."""
        ids = {field: self.token_id(s) for field, s in MINICPMV_TOKEN_STRINGS.items()}
        # "\n" is a byte-level token ("Ċ" in the vocabulary), so it is found by encoding.
        newline = self.encode("\n", add_special_tokens=False)
        if len(newline) != 1:
            raise MissingToken(f"tokenizer: '\\n' encodes to {newline}, not to one token")
        return MiniCPMVTokens(**ids, newline=newline[0])

    # --- encode / decode -------------------------------------------------------------------------

    def encode(self, text: str, *, add_special_tokens: bool = True) -> list[int]:
        """Token ids of ``text`` as ``PreTrainedTokenizerFast.encode(text)`` gives them.

        Added tokens are matched first (so ``"<image>"`` typed in ``text`` becomes the special id:
        callers that must not allow that check :meth:`special_tokens_in`). ``add_special_tokens``
        runs the post-processor, which for Qwen2 adds nothing.
        """
        if not isinstance(text, str):
            raise TokenizerError(f"encode: expected a str, got {type(text).__name__}")
        return list(self._tok.encode(text, add_special_tokens=add_special_tokens).ids)

    def decode(self, ids: Sequence[int], *, skip_special_tokens: bool = False) -> str:
        """Text of ``ids`` as ``PreTrainedTokenizerFast.decode(ids, skip_special_tokens=...)``."""
        text = self._decode_raw(ids, skip_special_tokens)
        return _clean_up(text) if self.clean_up_tokenization_spaces else text

    def special_tokens_in(self, text: str) -> list[str]:
        """The added tokens (special or not) that ``encode(text)`` would match, in order."""
        encoding = self._tok.encode(text, add_special_tokens=False)
        added = self._tok.get_added_tokens_decoder()
        return [added[i].content for i in encoding.ids if i in added]

    def stream(self, *, skip_special_tokens: bool = False) -> StreamDecoder:
        """A fresh incremental decoder for one generation."""
        return StreamDecoder(self, skip_special_tokens=skip_special_tokens)

    def _decode_raw(self, ids: Sequence[int], skip_special_tokens: bool) -> str:
        ids = [int(i) for i in ids]
        self._check_ids(ids)
        return str(self._tok.decode(ids, skip_special_tokens=skip_special_tokens))

    def _check_ids(self, ids: Iterable[int]) -> None:
        # tokenizers silently drops ids it does not know; a sampler bug must not vanish that way.
        for i in ids:
            if not 0 <= i < self.vocab_size:
                raise TokenizerError(
                    f"token id {i} is outside the vocabulary [0, {self.vocab_size})"
                )


class StreamDecoder:
    """Incremental detokenizer: :meth:`step` per id, then :meth:`flush` once at the end.

    Each piece is whole characters only. It decodes a window of the last ids (one emitted token of
    context, then the ids not yet emitted) and emits the window's growth once it no longer ends in
    U+FFFD, the mark of a character whose bytes are incomplete; the context token keeps decoders
    that treat a sequence's first token specially (a leading-space strip) from changing the text.
    A genuine U+FFFD or bytes that never complete are held until a later token or the flush, and
    come out as one decode of all ids would give them. With ``clean_up_tokenization_spaces`` on
    (not MiniCPM-V) the clean-up depends on text not yet generated, so the decoder then holds all
    text until :meth:`flush`: still never broken, and still equal to one decode.
    """

    def __init__(self, tokenizer: Tokenizer, *, skip_special_tokens: bool = False) -> None:
        self._tokenizer = tokenizer
        self._skip = skip_special_tokens
        self._ids: list[int] = []
        self._prefix = 0  # start of the window (one already-emitted token of context)
        self._read = 0  # ids before this index have been emitted
        self._emitted = 0  # characters emitted so far
        self._hold_all = tokenizer.clean_up_tokenization_spaces

    def step(self, token_id: int) -> str:
        """Add one id; return the text it completes ('' while a character is still incomplete)."""
        self._tokenizer._check_ids((token_id,))
        self._ids.append(int(token_id))
        if self._hold_all:
            return ""
        done, text = self._window()
        if len(text) <= len(done) or text.endswith(_REPLACEMENT):
            return ""
        if not text.startswith(done):  # a decoder that rewrites earlier text: hold the rest
            self._hold_all = True
            return ""
        self._prefix, self._read = self._read, len(self._ids)
        piece = text[len(done) :]
        self._emitted += len(piece)
        return piece

    def flush(self) -> str:
        """The text not yet emitted (incomplete bytes decode as U+FFFD, as one decode does)."""
        if self._hold_all:
            piece = self._tokenizer.decode(self._ids, skip_special_tokens=self._skip)
            piece = piece[self._emitted :]
        else:
            done, text = self._window()
            piece = text[len(done) :]
        self._prefix = self._read = len(self._ids)
        self._emitted += len(piece)
        return piece

    def _window(self) -> tuple[str, str]:
        decode = self._tokenizer._decode_raw
        done = decode(self._ids[self._prefix : self._read], self._skip)
        return done, decode(self._ids[self._prefix :], self._skip)


# --- helpers --------------------------------------------------------------------------------------


def _token_key(token: AddedToken) -> tuple[Any, ...]:
    return (token.content, *(getattr(token, f) for f in ADDED_TOKEN_FLAGS))


def _with_special(token: AddedToken, special: bool) -> AddedToken:
    flags = {f: getattr(token, f) for f in ADDED_TOKEN_FLAGS if f != "special"}
    return AddedToken(token.content, special=special, **flags)


def _clean_up(text: str) -> str:
    for old, new in _CLEANUP:
        text = text.replace(old, new)
    return text
