"""Decoding: HF generate's logits processors, the choice of the next token, and when to stop.

A decode loop uses three objects, built once per request::

    sampler = Sampler(params)                        # params: SamplingParams, validated
    rng = sampler.make_rng()                         # numpy Generator from --seed
    budget = check_context(len(prompt_ids), params.max_new_tokens, max_position_embeddings)
    eos = terminators(parse_generation_config(data), tokenizer)  # generation_config.py
    stopper = Stopper(tokenizer, eos_ids=eos, stop=params.stop, max_new_tokens=budget)
    while True:
        logits = sampler(ids_so_far, logits)         # [vocab] -> [vocab]
        token = sampler.choose(logits, rng)          # argmax, or a draw from softmax
        text, finished, reason = stopper.update(token)
        ...                                          # print text; feed token to the forward

The processors are those ``GenerationMixin._get_logits_processor`` builds, in its order and with
its arithmetic (``transformers/generation/logits_process.py``):

1. ``RepetitionPenaltyLogitsProcessor`` (also when greedy): for every distinct id in
   ``ids_so_far``, a logit ``< 0`` is multiplied by the penalty, any other divided by it. Which
   ids count is the caller's choice: ``generate(input_ids=...)`` passes prompt and generated ids,
   but MiniCPM-V's ``chat()`` calls ``generate(inputs_embeds=...)``, whose ``input_ids`` start
   empty, so there the penalty sees the generated ids only;
2. only when sampling: ``TemperatureLogitsWarper`` (divide), ``TopKLogitsWarper`` (drop every
   logit below the k-th largest, ties kept), ``TopPLogitsWarper`` (sort ascending, softmax, drop
   the tokens whose cumulative probability is ``<= 1 - top_p``, always keeping the largest one).
   Each is skipped at its neutral value (1.0, 0, 1.0), as HF skips it. Dropped logits are -inf.

Greedy (``temperature == 0`` or ``do_sample=False``, the default) is the argmax, first index on
ties as torch's. Sampling draws from ``softmax`` (float64) by inverse CDF with the numpy Generator:
the same distribution as ``torch.multinomial``, not the same random stream.

Stop conditions: an id in the eos set (not emitted), a ``--stop`` string in the decoded text, or
``max_new_tokens``. HF's ``StopStringCriteria`` ends generation on the token whose text completes
a stop string (the token may run past it) and keeps that token's text in the output; here the
emitted text ends just before the first stop string, and the stop string and whatever follows it
in that token are dropped (the OpenAI-API convention, what a CLI user expects). Text that could be
the start of a stop string is held back until it is known not to be.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple

import numpy as np
import numpy.typing as npt

from wstream.errors import (
    BadLogits,
    ContextTooLong,
    InputError,
)
from wstream.pipeline.tokenizer import Tokenizer

FinishReason = Literal["stop", "length"]
Logits = npt.NDArray[np.floating[Any]]


# --- parameters -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SamplingParams:
    """What the CLI flags set; validated on construction (errors name the flag and the limit).

    The defaults decode greedily. :meth:`chat_defaults` gives MiniCPM-V ``chat()``'s sampling.
    """

    temperature: float = 0.0  # --temperature; 0 = greedy
    top_p: float = 1.0  # --top-p, in (0, 1]; 1 = off
    top_k: int = 0  # --top-k; 0 = off
    repetition_penalty: float = 1.0  # --repetition-penalty, > 0; 1 = off
    max_new_tokens: int = 2048  # --max-new-tokens, >= 1 (chat()'s default)
    seed: int | None = None  # --seed; None = fresh OS entropy
    do_sample: bool = True  # False forces greedy whatever the temperature
    stop: tuple[str, ...] = field(default=())  # --stop, each non-empty

    def __post_init__(self) -> None:
        t = _real("--temperature", self.temperature)
        if t < 0:
            raise InputError(f"--temperature: {t} is negative; it must be >= 0 (0 = greedy)")
        p = _real("--top-p", self.top_p)
        if not 0 < p <= 1:
            raise InputError(f"--top-p: {p} is outside (0, 1]")
        k = _integer("--top-k", self.top_k)
        if k < 0:
            raise InputError(f"--top-k: {k} is negative; it must be >= 0 (0 = off)")
        r = _real("--repetition-penalty", self.repetition_penalty)
        if r <= 0:
            raise InputError(f"--repetition-penalty: {r} must be > 0 (1 = off)")
        n = _integer("--max-new-tokens", self.max_new_tokens)
        if n < 1:
            raise InputError(f"--max-new-tokens: {n} must be >= 1")
        if self.seed is not None and _integer("--seed", self.seed) < 0:
            raise InputError(f"--seed: {self.seed} must be >= 0")
        if not isinstance(self.do_sample, bool):
            raise InputError(f"do_sample: {self.do_sample!r} is not a boolean")
        if isinstance(self.stop, str) or not all(isinstance(s, str) for s in self.stop):
            raise InputError(f"--stop: {self.stop!r:.80} is not a sequence of strings")
        if any(s == "" for s in self.stop):
            raise InputError("--stop: an empty stop string would end generation at once")
        object.__setattr__(self, "stop", tuple(self.stop))

    @property
    def greedy(self) -> bool:
        """True when the next token is the argmax (temperature 0 or do_sample off)."""
        return not self.do_sample or self.temperature == 0

    @classmethod
    def chat_defaults(cls, **overrides: Any) -> SamplingParams:
        """MiniCPM-V ``chat(sampling=True)``: top_p 0.8, top_k 100, temperature 0.7, penalty 1.05.

        ``overrides`` replace any of them (or set other fields).
        """
        values: dict[str, Any] = {
            "temperature": 0.7,
            "top_p": 0.8,
            "top_k": 100,
            "repetition_penalty": 1.05,
        }
        values.update(overrides)
        return cls(**values)


def _real(flag: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InputError(f"{flag}: {value!r:.40} is not a number")
    if not math.isfinite(value):
        raise InputError(f"{flag}: {value} is not a finite number")
    return float(value)


def _integer(flag: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InputError(f"{flag}: {value!r:.40} is not an integer")
    return value


# --- the processors (pure functions; each returns a new array) ------------------------------------


def apply_repetition_penalty(logits: Logits, ids: Sequence[int], penalty: float) -> Logits:
    """HF ``RepetitionPenaltyLogitsProcessor``: ``< 0`` times ``penalty``, else divided by it."""
    out = np.array(logits, copy=True)
    seen = np.unique(np.asarray(ids, dtype=np.int64))
    if seen.size:
        score = out[seen]
        out[seen] = np.where(score < 0, score * penalty, score / penalty)
    return out


def apply_temperature(logits: Logits, temperature: float) -> Logits:
    """HF ``TemperatureLogitsWarper``: ``logits / temperature``."""
    return np.asarray(logits / temperature, dtype=logits.dtype)


def apply_top_k(logits: Logits, top_k: int, min_tokens_to_keep: int = 1) -> Logits:
    """HF ``TopKLogitsWarper``: -inf below the k-th largest logit (ties with it are kept)."""
    k = min(max(top_k, min_tokens_to_keep), logits.shape[-1])
    kth = np.partition(logits, -k)[-k]
    return np.where(logits < kth, np.array(-np.inf, dtype=logits.dtype), logits)


def apply_top_p(logits: Logits, top_p: float, min_tokens_to_keep: int = 1) -> Logits:
    """HF ``TopPLogitsWarper``: -inf on the low tail whose cumulative probability <= 1 - top_p."""
    order = np.argsort(logits, kind="stable")  # ascending, as torch.sort(descending=False)
    ascending = logits[order]
    probs = _softmax(ascending)
    # torch's CPU cumsum of float32 accumulates in double and rounds each partial sum to float32.
    cumulative = np.cumsum(probs, dtype=np.float64).astype(logits.dtype)
    remove_sorted = cumulative <= np.asarray(1 - top_p, dtype=logits.dtype)
    remove_sorted[-min_tokens_to_keep:] = False
    remove = np.empty_like(remove_sorted)
    remove[order] = remove_sorted
    return np.where(remove, np.array(-np.inf, dtype=logits.dtype), logits)


def _softmax(x: Logits) -> Logits:
    e = np.exp(x - np.max(x))
    return np.asarray(e / np.sum(e), dtype=x.dtype)


class Sampler:
    """The processors of one :class:`SamplingParams`, and the choice of the next token."""

    def __init__(self, params: SamplingParams) -> None:
        self.params = params
        steps: list[str] = []
        if params.repetition_penalty != 1.0:
            steps.append("repetition_penalty")
        if not params.greedy:
            if params.temperature != 1.0:
                steps.append("temperature")
            if params.top_k != 0:
                steps.append("top_k")
            if params.top_p < 1.0:
                steps.append("top_p")
        self.steps: tuple[str, ...] = tuple(steps)  # the order they are applied in

    def __call__(
        self, ids_so_far: Sequence[int] | npt.NDArray[np.integer[Any]], logits: Logits
    ) -> Logits:
        """Process one step's ``[vocab]`` logits given the ids the penalty should see."""
        x = _check_logits(logits)
        p = self.params
        for step in self.steps:
            if step == "repetition_penalty":
                x = apply_repetition_penalty(
                    x, _check_ids(ids_so_far, x.shape[0]), p.repetition_penalty
                )
            elif step == "temperature":
                x = apply_temperature(x, p.temperature)
            elif step == "top_k":
                x = apply_top_k(x, p.top_k)
            else:
                x = apply_top_p(x, p.top_p)
        return x

    def make_rng(self) -> np.random.Generator:
        """The Generator of ``--seed`` (the same seed gives the same tokens)."""
        return np.random.default_rng(self.params.seed)

    def choose(self, logits: Logits, rng: np.random.Generator) -> int:
        """The next token: argmax when greedy, else one draw from ``softmax(logits)``."""
        if self.params.greedy:
            return greedy(logits)
        return sample(logits, rng)


def greedy(logits: Logits) -> int:
    """``argmax`` (the first of equal maxima), refusing NaN or all -inf logits."""
    x = _finite_choice(logits)
    return int(np.argmax(x))


def sample(logits: Logits, rng: np.random.Generator) -> int:
    """One draw from ``softmax(logits)`` by inverse CDF; -inf logits are never drawn."""
    x = _finite_choice(logits).astype(np.float64)
    weights = np.exp(x - np.max(x))
    cdf = np.cumsum(weights)
    index = int(np.searchsorted(cdf, rng.random() * cdf[-1], side="right"))
    # rounding can put the draw at the very end: take the last token that has weight
    return min(index, int(np.flatnonzero(weights)[-1]))


def _check_logits(logits: Logits) -> Logits:
    x = np.asarray(logits)
    if x.ndim != 1 or x.shape[0] == 0 or not np.issubdtype(x.dtype, np.floating):
        raise BadLogits(
            f"logits: expected a non-empty 1-D float array, got {x.dtype}{list(x.shape)}"
        )
    return x


def _check_ids(ids: Sequence[int] | npt.NDArray[np.integer[Any]], vocab: int) -> list[int]:
    out = [int(i) for i in ids]
    bad = [i for i in out if not 0 <= i < vocab]
    if bad:
        raise BadLogits(f"ids_so_far: id {bad[0]} is outside the logits' vocabulary [0, {vocab})")
    return out


def _finite_choice(logits: Logits) -> Logits:
    x = _check_logits(logits)
    if np.isnan(x).any() or np.isposinf(x).any():
        raise BadLogits("logits: NaN or +inf among the logits; the forward pass is broken")
    if not np.isfinite(x).any():
        raise BadLogits("logits: every logit is -inf; there is no token to choose")
    return x


# --- stop conditions ------------------------------------------------------------------------------


class Step(NamedTuple):
    """What one generated token gives: text to print now, whether generation ended, and why."""

    text: str
    finished: bool
    reason: FinishReason | None


class Stopper:
    """Decoded text and the stop conditions of one generation; ``update`` once per new token."""

    def __init__(
        self,
        tokenizer: Tokenizer,
        *,
        eos_ids: Iterable[int],
        max_new_tokens: int,
        stop: Sequence[str] = (),
        skip_special_tokens: bool = False,
    ) -> None:
        if _integer("--max-new-tokens", max_new_tokens) < 1:
            raise InputError(f"--max-new-tokens: {max_new_tokens} must be >= 1")
        if any(not isinstance(s, str) or s == "" for s in stop):
            raise InputError("--stop: an empty stop string would end generation at once")
        self.eos_ids = frozenset(int(i) for i in eos_ids)
        self.stop = tuple(stop)
        self.max_new_tokens = max_new_tokens
        self.generated = 0  # tokens seen, eos included
        self.finish_reason: FinishReason | None = None
        self._stream = tokenizer.stream(skip_special_tokens=skip_special_tokens)
        self._held = ""  # decoded text that may be the start of a stop string

    def update(self, token_id: int) -> Step:
        """Take the next generated id: its text (maybe ''), finished, and "stop" or "length"."""
        if self.finish_reason is not None:
            raise InputError(f"Stopper.update: generation already finished ({self.finish_reason})")
        self.generated += 1
        if token_id in self.eos_ids:
            return self._finish(self._stream.flush(), "stop")
        piece = self._stream.step(token_id)
        if self.generated >= self.max_new_tokens:
            return self._finish(piece + self._stream.flush(), "length")
        text = self._held + piece
        cut = self._first_stop(text)
        if cut is not None:
            return self._end(text[:cut], "stop")
        keep = self._partial_stop(text)
        self._held = text[len(text) - keep :]
        return Step(text[: len(text) - keep], False, None)

    def _finish(self, piece: str, reason: FinishReason) -> Step:
        text = self._held + piece
        cut = self._first_stop(text)
        if cut is not None:
            return self._end(text[:cut], "stop")
        return self._end(text, reason)

    def _end(self, text: str, reason: FinishReason) -> Step:
        self._held = ""
        self.finish_reason = reason
        return Step(text, True, reason)

    def _first_stop(self, text: str) -> int | None:
        # Only text not yet emitted is searched: the emitted part held no stop string, and the
        # held suffix is the longest that could begin one, so any match starts inside `text`.
        found = [i for i in (text.find(s) for s in self.stop) if i >= 0]
        return min(found) if found else None

    def _partial_stop(self, text: str) -> int:
        # The longest suffix of `text` that is a proper prefix of some stop string.
        best = 0
        for s in self.stop:
            for n in range(min(len(s) - 1, len(text)), best, -1):
                if text.endswith(s[:n]):
                    best = n
                    break
        return best


def check_context(prompt_len: int, max_new_tokens: int, context: int) -> int:
    """How many new tokens fit: a prompt longer than the context is :class:`ContextTooLong`.

    A prompt of ``L`` tokens fills positions ``0..L-1``; the first new token comes from the last
    prompt position, and each later one needs one more position, so at most ``context - L + 1``
    new tokens can be generated (then ``finish_reason`` is "length").
    """
    if _integer("prompt length", prompt_len) < 1:
        raise InputError("prompt: it encodes to no token; there is nothing to continue")
    if _integer("max_position_embeddings", context) < 1:
        raise InputError(f"max_position_embeddings: {context} must be >= 1")
    if prompt_len > context:
        raise ContextTooLong(
            f"prompt: {prompt_len} tokens exceed the model's context of {context} tokens "
            "(max_position_embeddings); shorten the prompt or use fewer image slices"
        )
    return min(_integer("--max-new-tokens", max_new_tokens), context - prompt_len + 1)
