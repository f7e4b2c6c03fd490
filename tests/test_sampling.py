"""Decoding against plain re-implementations of HF's formulas, and the stop conditions.

Each ``ref_*`` below is transformers' processor written out element by element (loops, Python
floats), so the vectorised numpy code is checked against the formula, not against itself.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from qwen_vocab import minicpmv_tokenizer

from wstream.errors import BadLogits, ContextTooLong, GenerationConfigError, InputError
from wstream.pipeline.generation_config import (
    GenerationConfig,
    parse_generation_config,
    terminators,
)
from wstream.pipeline.sampling import (
    Sampler,
    SamplingParams,
    Stopper,
    apply_repetition_penalty,
    apply_temperature,
    apply_top_k,
    apply_top_p,
    check_context,
    greedy,
    sample,
)
from wstream.pipeline.tokenizer import Tokenizer

NEG_INF = float("-inf")

logits_st = hnp.arrays(
    np.float64,
    st.integers(1, 48),
    elements=st.floats(-30, 30, allow_nan=False, allow_infinity=False),
)


def ref_repetition_penalty(x: list[float], ids: list[int], penalty: float) -> list[float]:
    out = list(x)
    for i in set(ids):
        out[i] = x[i] * penalty if x[i] < 0 else x[i] / penalty
    return out


def ref_top_k(x: list[float], k: int) -> list[float]:
    k = min(max(k, 1), len(x))
    kth = sorted(x, reverse=True)[k - 1]
    return [NEG_INF if v < kth else v for v in x]


def ref_top_p(x: list[float], p: float) -> list[float]:
    order = sorted(range(len(x)), key=lambda i: x[i])  # ascending, stable
    top = max(x)
    weights = [math.exp(x[i] - top) if x[i] != NEG_INF else 0.0 for i in order]
    total = sum(weights)
    out = list(x)
    cumulative = 0.0
    for rank, i in enumerate(order):
        cumulative += weights[rank] / total
        if cumulative <= 1 - p and rank != len(x) - 1:  # the largest is always kept
            out[i] = NEG_INF
    return out


# --- each processor against its formula -----------------------------------------------------------


@given(logits_st, st.data(), st.floats(0.05, 4))
def test_repetition_penalty_matches_hf(x: np.ndarray, data: Any, penalty: float) -> None:
    ids = data.draw(st.lists(st.integers(0, x.size - 1), max_size=20))
    got = apply_repetition_penalty(x, ids, penalty)
    assert got.tolist() == ref_repetition_penalty(x.tolist(), ids, penalty)
    assert got is not x and np.array_equal(x, x.copy())  # input untouched


@given(logits_st, st.floats(0.01, 5))
def test_temperature_matches_hf(x: np.ndarray, t: float) -> None:
    assert apply_temperature(x, t).tolist() == [v / t for v in x.tolist()]


@given(logits_st, st.integers(0, 60))
def test_top_k_matches_hf(x: np.ndarray, k: int) -> None:
    assert apply_top_k(x, k).tolist() == ref_top_k(x.tolist(), k)


@given(logits_st, st.floats(0.01, 1.0))
def test_top_p_matches_hf(x: np.ndarray, p: float) -> None:
    got = apply_top_p(x, p)
    want = ref_top_p(x.tolist(), p)
    # the sums may differ in the last bit; a tie with the threshold is then the only difference
    weights = np.sort(np.exp(x - x.max()))
    assume(all(abs(c - (1 - p)) > 1e-12 for c in np.cumsum(weights) / weights.sum()))
    assert got.tolist() == want


def test_top_p_removes_a_cumulative_probability_equal_to_the_threshold() -> None:
    # p = 0.25, 0.25, 0.5 exactly; 1 - top_p = 0.25: HF's `<=` removes the first (ties in stable
    # order here; torch.sort is not stable, so with tied logits it may remove the other one)
    x = np.array([0.0, 0.0, math.log(2.0)])
    assert apply_top_p(x, 0.75).tolist() == [NEG_INF, 0.0, math.log(2.0)]
    assert apply_top_p(x, 0.7501).tolist() == x.tolist()


def test_top_p_keeps_the_top_token_and_float32_stays_float32() -> None:
    x = np.array([1.0, 9.0, 2.0], dtype=np.float32)
    assert apply_top_p(x, 1e-6).tolist() == [NEG_INF, 9.0, NEG_INF]
    out = Sampler(SamplingParams(temperature=0.5, top_k=2, top_p=0.9, repetition_penalty=1.1))(
        [0], x
    )
    assert out.dtype == np.float32


# --- the pipeline: order, greedy, seeds -----------------------------------------------------------


def test_processors_run_in_hf_order() -> None:
    params = SamplingParams(temperature=0.7, top_k=5, top_p=0.8, repetition_penalty=1.3)
    sampler = Sampler(params)
    assert sampler.steps == ("repetition_penalty", "temperature", "top_k", "top_p")
    rng = np.random.default_rng(1)
    for _ in range(20):
        x = rng.normal(0, 3, 40)
        ids = rng.integers(0, 40, 10).tolist()
        want = apply_top_p(
            apply_top_k(apply_temperature(apply_repetition_penalty(x, ids, 1.3), 0.7), 5), 0.8
        )
        assert np.array_equal(sampler(ids, x), want)
    # the order matters: top-p before the temperature keeps a different set here
    x = np.array([0.0, 1.0, 2.0])
    hf = apply_top_p(apply_temperature(x, 0.5), 0.8)
    swapped = apply_temperature(apply_top_p(x, 0.8), 0.5)
    assert np.isinf(hf).sum() != np.isinf(swapped).sum()


def test_neutral_values_skip_their_processor() -> None:
    assert Sampler(SamplingParams(temperature=1.0)).steps == ()
    assert Sampler(SamplingParams(temperature=1.0, top_p=1.0, top_k=0)).steps == ()
    assert Sampler(SamplingParams(repetition_penalty=1.2)).steps == ("repetition_penalty",)


@given(logits_st)
def test_greedy_is_argmax(x: np.ndarray) -> None:
    for params in (SamplingParams(), SamplingParams(temperature=0.9, top_k=3, do_sample=False)):
        sampler = Sampler(params)
        assert sampler.steps == ()
        assert sampler.choose(sampler([], x), np.random.default_rng(0)) == int(np.argmax(x))


def test_greedy_still_applies_the_repetition_penalty() -> None:
    sampler = Sampler(SamplingParams(repetition_penalty=2.0))
    x = np.array([3.0, 2.0, -1.0])
    assert sampler.choose(sampler([0], x), np.random.default_rng(0)) == 1  # 3/2 < 2


def test_a_seed_fixes_the_tokens() -> None:
    params = SamplingParams(temperature=1.0, seed=1234)
    x = np.zeros(1000)
    draws = []
    for _ in range(2):
        sampler = Sampler(params)
        rng = sampler.make_rng()
        draws.append([sampler.choose(sampler([], x), rng) for _ in range(30)])
    assert draws[0] == draws[1]
    other = Sampler(SamplingParams(temperature=1.0, seed=1235))
    rng = other.make_rng()
    assert [other.choose(x, rng) for _ in range(30)] != draws[0]


def test_sampling_follows_softmax_and_never_draws_a_dropped_token() -> None:
    x = np.array([0.0, math.log(3.0), NEG_INF, math.log(6.0)])  # p = 0.1, 0.3, 0, 0.6
    rng = np.random.default_rng(7)
    counts = np.bincount([sample(x, rng) for _ in range(4000)], minlength=4)
    assert counts[2] == 0
    assert np.allclose(counts / counts.sum(), [0.1, 0.3, 0.0, 0.6], atol=0.03)
    only = np.full(5, NEG_INF)
    only[3] = 0.0
    assert {sample(only, rng) for _ in range(50)} == {3}


@pytest.mark.parametrize(
    "bad",
    [np.array([np.nan, 1.0]), np.array([NEG_INF, NEG_INF]), np.array([np.inf, 0.0])],
)
def test_broken_logits_are_named(bad: np.ndarray) -> None:
    with pytest.raises(BadLogits, match="logits"):
        greedy(bad)
    with pytest.raises(BadLogits, match="logits"):
        sample(bad, np.random.default_rng(0))


def test_bad_shapes_and_ids_are_named() -> None:
    sampler = Sampler(SamplingParams(repetition_penalty=1.1))
    with pytest.raises(BadLogits, match="1-D"):
        sampler([], np.zeros((2, 3)))
    with pytest.raises(BadLogits, match=r"id 3 is outside the logits' vocabulary \[0, 3\)"):
        sampler([3], np.zeros(3))


# --- parameters ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"temperature": -0.1}, r"--temperature: -0.1 is negative; it must be >= 0"),
        ({"temperature": float("nan")}, "--temperature: nan is not a finite number"),
        ({"top_p": 0.0}, r"--top-p: 0.0 is outside \(0, 1\]"),
        ({"top_p": 1.5}, r"--top-p: 1.5 is outside \(0, 1\]"),
        ({"top_k": -1}, "--top-k: -1 is negative; it must be >= 0"),
        ({"top_k": 2.5}, "--top-k: 2.5 is not an integer"),
        ({"repetition_penalty": 0.0}, "--repetition-penalty: 0.0 must be > 0"),
        ({"repetition_penalty": -1}, "--repetition-penalty: -1.0 must be > 0"),
        ({"max_new_tokens": 0}, "--max-new-tokens: 0 must be >= 1"),
        ({"max_new_tokens": True}, "--max-new-tokens: True is not an integer"),
        ({"seed": -3}, "--seed: -3 must be >= 0"),
        ({"stop": ("",)}, "--stop: an empty stop string"),
        ({"stop": "abc"}, "--stop: 'abc' is not a sequence of strings"),
    ],
)
def test_bad_sampling_params_are_named(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(InputError, match=match):
        SamplingParams(**kwargs)


def test_defaults_are_greedy_and_chat_defaults_are_hf() -> None:
    assert SamplingParams().greedy
    chat = SamplingParams.chat_defaults(seed=3)
    assert (chat.temperature, chat.top_p, chat.top_k, chat.repetition_penalty) == (
        0.7,
        0.8,
        100,
        1.05,
    )
    assert not chat.greedy and chat.seed == 3
    assert SamplingParams(stop=["a", "b"]).stop == ("a", "b")  # type: ignore[arg-type]


# --- stop conditions ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return minicpmv_tokenizer()


def _run(tok: Tokenizer, ids: list[int], **kwargs: Any) -> tuple[list[str], str | None, int]:
    kwargs.setdefault("eos_ids", {151645, 151643})
    kwargs.setdefault("max_new_tokens", 1000)
    stopper = Stopper(tok, **kwargs)
    pieces = []
    for i in ids:
        text, finished, reason = stopper.update(i)
        pieces.append(text)
        if finished:
            return pieces, reason, stopper.generated
    return pieces, None, stopper.generated


def test_eos_stops_and_is_not_emitted(tok: Tokenizer) -> None:
    answer = tok.encode("A cat.")
    pieces, reason, generated = _run(tok, [*answer, 151645, *tok.encode(" more")])
    assert "".join(pieces) == "A cat." and reason == "stop"
    assert generated == len(answer) + 1  # the eos counts as generated, as in HF


def test_max_new_tokens_ends_with_length(tok: Tokenizer) -> None:
    ids = tok.encode("one two three four")
    pieces, reason, generated = _run(tok, ids, max_new_tokens=2)
    assert "".join(pieces) == "one two" and reason == "length" and generated == 2


def test_a_stop_string_across_token_boundaries(tok: Tokenizer) -> None:
    ids = tok.encode("Hello world. The end")
    assert len(ids) >= 5
    pieces, reason, _ = _run(tok, ids, stop=["ld. Th"])
    assert "".join(pieces) == "Hello wor" and reason == "stop"
    # text that starts like a stop string is held, then released when it turns out not to be one
    pieces, reason, _ = _run(tok, ids, stop=["world!"])
    assert "".join(pieces) == "Hello world. The end" and reason is None
    assert pieces[1:3] == [" ", "world."]  # 'world' could begin 'world!': held one token


def test_the_earliest_of_several_stop_strings_wins(tok: Tokenizer) -> None:
    ids = tok.encode("alpha beta gamma")
    pieces, reason, _ = _run(tok, ids, stop=["gamma", "ta g", "zzz"])
    assert "".join(pieces) == "alpha be" and reason == "stop"


def test_stopping_after_the_update_is_refused(tok: Tokenizer) -> None:
    stopper = Stopper(tok, eos_ids={151645}, max_new_tokens=5)
    stopper.update(151645)
    with pytest.raises(InputError, match="already finished"):
        stopper.update(15)


_words = st.lists(st.sampled_from(["a", "b", "ab", " ", "é", "世", "\n", "ba"]), max_size=30)


@given(_words.map("".join), st.text(alphabet="ab é世\n", min_size=1, max_size=4))
def test_stop_strings_on_any_text(tok: Tokenizer, text: str, stop: str) -> None:
    ids = tok.encode(text)
    decoded = tok.decode(ids)
    where = decoded.find(stop)
    # without an end: the emitted text is final, and what is held could start the stop string
    pieces, reason, _ = _run(tok, ids, stop=[stop])
    emitted = "".join(pieces)
    if where >= 0:
        assert emitted == decoded[:where] and reason == "stop"
    else:
        held = decoded[len(emitted) :]
        assert reason is None and decoded.startswith(emitted)
        assert len(held) < len(stop) and stop.startswith(held)
        # an eos then releases the held text: nothing is lost
        pieces, reason, _ = _run(tok, [*ids, 151645], stop=[stop])
        assert "".join(pieces) == decoded and reason == "stop"


# --- context and generation_config ----------------------------------------------------------------


def test_check_context() -> None:
    assert check_context(10, 100, 1000) == 100
    assert check_context(1000, 100, 1000) == 1
    assert check_context(990, 100, 1000) == 11
    with pytest.raises(ContextTooLong, match="1001 tokens exceed the model's context of 1000"):
        check_context(1001, 5, 1000)
    with pytest.raises(InputError, match="encodes to no token"):
        check_context(0, 5, 1000)


def test_generation_config_of_minicpmv(tok: Tokenizer) -> None:
    gen = parse_generation_config(b'{"bos_token_id": 151643, "eos_token_id": 151645}')
    assert gen == GenerationConfig(eos_token_ids=frozenset({151645}), bos_token_id=151643)
    assert terminators(gen, tok) == {151645, 151643}
    listed = parse_generation_config({"eos_token_id": [1, 2], "pad_token_id": 0, "x": "y"})
    assert listed.eos_token_ids == {1, 2} and listed.pad_token_id == 0


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (b"{", "not valid JSON"),
        (b"[1]", "must be a JSON object"),
        ({}, "eos_token_id is missing"),
        ({"eos_token_id": []}, "empty list"),
        ({"eos_token_id": "2"}, "eos_token_id: '2' is not an integer"),
        ({"eos_token_id": [1, True]}, "eos_token_id: True is not an integer"),
        ({"eos_token_id": -1}, "eos_token_id: -1 is negative"),
        ({"eos_token_id": 151666}, r"eos_token_id: 151666 is outside the vocabulary \[0, 151666\)"),
        ({"eos_token_id": 1, "bos_token_id": 1.5}, "bos_token_id: 1.5"),
    ],
)
def test_bad_generation_config_is_named(data: Any, match: str) -> None:
    with pytest.raises(GenerationConfigError, match=match):
        parse_generation_config(data, vocab_size=151666)
