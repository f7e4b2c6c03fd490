"""The whole request: a photo and a question in, the answer out as text, streamed.

::

    with Model.open("minicpmv.wst", budget=1 << 30) as model:
        for piece in model.chat("What is in this image?", images=["photo.jpg"]):
            print(piece, end="", flush=True)

It is MiniCPM-V 2.6's ``chat()`` step for step (the HF remote code): each image before the
question in one user message, the ``(<image>./</image>)`` markers, the chat template, the
expansion of every marker into the image's placeholder text (overview and slice rows), the
tokenizer, the ``image_bound`` spans recovered from the ids, one pass of the vision tower and of
the resampler over every slice, the prefill, then the decode with HF's logits processors until an
eos id of ``generation_config.json`` (plus ``chat()``'s ``<|endoftext|>``), a stop string or the
token limit. Everything the model needs besides its weights (tokenizer, template, preprocessor and
generation configs) is read from the container, so the ``.wst`` is the whole model.

Deliberate differences from ``chat()``, each a documented choice:

- decoding is greedy unless sampling is asked for (``chat(sampling=False)`` is a 3-beam search);
- HF masks every id-0 token (``"!"``) out of attention, because it pads with id 0, and drops id 0
  from the answer; here ``"!"`` is an ordinary token;
- HF feeds bf16 pixels to a bf16 model; the numpy forward computes in float32 from float32
  pixels.

About 440 lines: :class:`Model` is the request from prompt to streamed text, one method per
step of ``chat()``; the steps are short, and their order is the point of reading it in one file.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import numpy as np

from wstream.container.cache import ChunkCache
from wstream.container.reader import Container
from wstream.errors import InputError, MissingModelFile
from wstream.model.config import VLMConfig, from_hf
from wstream.model.vlm import Generation, generate_tokens
from wstream.pipeline.generation_config import (
    GenerationConfig,
    parse_generation_config,
    terminators,
)
from wstream.pipeline.image import ImageSlices, PreprocessorConfig, load_image, preprocess
from wstream.pipeline.placeholders import (
    IMAGE,
    ContentPart,
    check_image_bounds,
    check_text,
    expand_images,
    image_bounds,
    message_content,
)
from wstream.pipeline.sampling import (
    FinishReason,
    Sampler,
    SamplingParams,
    Stopper,
    check_context,
)
from wstream.pipeline.template import ChatTemplate, build_prompt
from wstream.pipeline.tokenizer import Tokenizer
from wstream.stream.loader import forward_weights
from wstream.stream.pieces import WeightSource

# The files a chat needs beside the weights (HF names), and the optional ones.
REQUIRED_FILES = ("tokenizer.json", "tokenizer_config.json", "preprocessor_config.json")
OPTIONAL_FILES = ("generation_config.json", "special_tokens_map.json", "added_tokens.json")
DEFAULT_CONTEXT = 32768  # Qwen2-7B's max_position_embeddings, when config.json has none


@dataclass(frozen=True)
class Request:
    """One prepared request: what the forward takes, and how it was derived."""

    prompt_text: str  # the text after the template and the placeholder expansion
    input_ids: np.ndarray  # int64 [T]
    slices: tuple[np.ndarray, ...]  # float32 [3, h, w] per slice, image by image
    image_bounds: tuple[tuple[int, int], ...]  # one span of query_num positions per slice
    slices_per_image: tuple[int, ...]
    max_new_tokens: int  # what fits the context, at most the asked number


@dataclass
class ChatResult:
    """What a finished chat did and measured (``--json`` prints :meth:`summary`)."""

    text: str
    generated: list[int]  # new token ids, the final eos included
    finish_reason: FinishReason
    prompt_tokens: int
    slices: int  # slices over all images
    image_tokens: int  # placeholder positions the resampler filled
    timings: dict[str, float]  # seconds: open, preprocess, vision, resampler, prefill, decode
    first_token_seconds: float  # from the request to the first new token
    peak_rss_bytes: int
    bytes_read: int
    bytes_decoded: int
    loader: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        return {
            "text": self.text,
            "generated": self.generated,
            "finish_reason": self.finish_reason,
            "prompt_tokens": self.prompt_tokens,
            "slices": self.slices,
            "image_tokens": self.image_tokens,
            "timings": {k: round(v, 6) for k, v in self.timings.items()},
            "first_token_seconds": round(self.first_token_seconds, 6),
            "peak_rss_bytes": self.peak_rss_bytes,
            "bytes_read": self.bytes_read,
            "bytes_decoded": self.bytes_decoded,
            "loader": self.loader,
        }


class ModelFiles:
    """The tokenizer, template and configs a container carries, parsed once."""

    def __init__(self, files: Mapping[str, bytes], config: Mapping[str, Any]) -> None:
        missing = [name for name in REQUIRED_FILES if name not in files]
        if missing:
            raise MissingModelFile(
                f"container: no {', '.join(missing)} inside; a chat needs the tokenizer and "
                "preprocessor files: re-pack the checkpoint directory that holds them "
                "(or use the low-level --input-ids/--pixels form)"
            )
        self.tokenizer = Tokenizer.from_files(
            files["tokenizer.json"],
            _json(files, "tokenizer_config.json"),
            special_tokens_map=_optional_json(files, "special_tokens_map.json"),
            added_tokens=_optional_json(files, "added_tokens.json"),
        )
        source = self.tokenizer.chat_template
        self.template = ChatTemplate(source) if source else None
        self.preprocessor = PreprocessorConfig.from_hf(_json(files, "preprocessor_config.json"))
        vocab = self.tokenizer.vocab_size
        generation = _optional_json(files, "generation_config.json")
        if generation is None:  # no file: the tokenizer's eos, as transformers falls back
            eos = self.tokenizer.special.eos_token
            ids = [self.tokenizer.token_id(eos)] if eos else []
            self.generation = GenerationConfig(eos_token_ids=frozenset(ids))
        else:
            self.generation = parse_generation_config(generation, vocab_size=vocab)
        self.eos_ids = terminators(self.generation, self.tokenizer)
        context = config.get("max_position_embeddings", DEFAULT_CONTEXT)
        if isinstance(context, bool) or not isinstance(context, int) or context < 1:
            raise InputError(
                f"config.json: max_position_embeddings {context!r:.40} is not a positive integer"
            )
        self.context = context


def _json(files: Mapping[str, bytes], name: str) -> dict[str, Any]:
    obj = _optional_json(files, name)
    if obj is None:
        raise MissingModelFile(f"container: no {name} inside")
    return obj


def _optional_json(files: Mapping[str, bytes], name: str) -> dict[str, Any] | None:
    data = files.get(name)
    if data is None:
        return None
    try:
        obj = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise InputError(f"{name}: not valid JSON ({str(exc)[:120]})") from None
    if not isinstance(obj, dict):
        raise InputError(f"{name}: must be a JSON object, not {type(obj).__name__}")
    return obj


def container_files(container: Container) -> dict[str, bytes]:
    """The model files a container carries (each CRC-checked as it is read)."""
    wanted = REQUIRED_FILES + OPTIONAL_FILES
    return {f.name: container.read_file(f.name) for f in container.files if f.name in wanted}


class ChatStream:
    """The answer of one request as it is generated: iterate for text pieces; ``result`` after.

    Closing it early (or leaving the loop) stops the decode at the next token.
    """

    def __init__(self, pieces: Iterator[str]) -> None:
        self._pieces = pieces
        self.result: ChatResult | None = None

    def __iter__(self) -> Iterator[str]:
        return self

    def __next__(self) -> str:
        return next(self._pieces)

    def text(self) -> str:
        """Run to the end and return the whole answer."""
        return "".join(self)

    def close(self) -> None:
        close = getattr(self._pieces, "close", None)
        if close is not None:
            close()


class Model:
    """A container opened for chat: weights streamed under a budget, the pipeline's files parsed.

    Not thread-safe: one request at a time (the loader's streams and the KV cache are per
    request, but the loader's resident set is shared).
    """

    def __init__(
        self,
        container: Container,
        weights: WeightSource,
        *,
        opened_seconds: float = 0.0,
    ) -> None:
        self.container = container
        self.weights = weights
        self.config: VLMConfig = from_hf(container.manifest.config or {})
        self.files = ModelFiles(container_files(container), container.manifest.config or {})
        self._opened_seconds = opened_seconds

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str],
        *,
        budget: int | None = None,
        prefetch: int = 2,
        eager: bool = False,
        cache: ChunkCache | None = None,
        mapped: bool = False,
    ) -> Model:
        """Open ``path`` for chat, streaming its weights ``prefetch`` chunks ahead under
        ``budget`` bytes (None: no limit, every chunk stays once loaded). ``eager`` loads and
        widens every weight up front instead (the load-everything baseline). ``path`` may be a
        URL (``s3://bucket/key``, ``https://...``); ``cache`` keeps its verified chunks on disk.
        ``mapped`` maps a local file instead of reading it (zero copy; see
        :class:`~wstream.container.reader.Container`)."""
        started = time.perf_counter()
        container = Container(path, cache=cache, mapped=mapped)
        try:
            weights = forward_weights(container, budget=budget, prefetch=prefetch, eager=eager)
            try:
                return cls(container, weights, opened_seconds=time.perf_counter() - started)
            except BaseException:
                close = getattr(weights, "close", None)
                if close is not None:
                    close()
                raise
        except BaseException:
            container.close()
            raise

    def close(self) -> None:
        close = getattr(self.weights, "close", None)
        if close is not None:
            close()
        self.container.close()

    def __enter__(self) -> Model:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # --- the request -----------------------------------------------------------------------------

    def prepare(
        self,
        prompt: str,
        images: Sequence[str | os.PathLike[str] | ImageSlices] = (),
        *,
        system: str | None = None,
        raw_prompt: bool = False,
        max_new_tokens: int = 2048,
        max_slice_nums: int | None = None,
    ) -> Request:
        """Everything up to the forward: slices, prompt text, ids and spans. No weight is read."""
        if not isinstance(prompt, str):
            raise InputError(f"prompt: {type(prompt).__name__} is not text")
        files, pcfg = self.files, self.files.preprocessor
        if system is not None:
            check_text(system, "system", pcfg)
        sliced = [
            image
            if isinstance(image, ImageSlices)
            else preprocess(load_image(image), pcfg, max_slice_nums, name=os.fspath(image))
            for image in images
        ]
        parts: list[str | ContentPart] = [IMAGE] * len(sliced) + [prompt]
        content = message_content(parts, pcfg)
        text = build_prompt(
            content,
            template=files.template,
            system=system,
            raw=raw_prompt,
            special_tokens=files.tokenizer.special.template_variables(),
        )
        text = expand_images(text, [s.geometry for s in sliced], pcfg)
        ids = np.asarray(files.tokenizer.encode(text), dtype=np.int64)
        tok = files.tokenizer
        bounds = image_bounds(
            ids,
            tok.token_id(pcfg.im_start),
            tok.token_id(pcfg.im_end),
            tok.token_id(pcfg.slice_start),
            tok.token_id(pcfg.slice_end),
        )
        n_slices = sum(len(s.pixels) for s in sliced)
        check_image_bounds(bounds, n_slices, self.config.resampler.queries)
        budget = check_context(len(ids), max_new_tokens, files.context)
        return Request(
            prompt_text=text,
            input_ids=ids,
            slices=tuple(px for s in sliced for px in s.pixels),
            image_bounds=tuple(bounds),
            slices_per_image=tuple(len(s.pixels) for s in sliced),
            max_new_tokens=budget,
        )

    def chat(
        self,
        prompt: str,
        images: Sequence[str | os.PathLike[str] | ImageSlices] = (),
        *,
        system: str | None = None,
        raw_prompt: bool = False,
        sampling: SamplingParams | None = None,
        max_slice_nums: int | None = None,
    ) -> ChatStream:
        """Answer ``prompt`` about ``images`` (files, in order, each placed before the text).

        Returns at once; the work happens as the stream is iterated. Greedy by default;
        ``sampling`` sets temperature, top-p, top-k, repetition penalty, seed, stop strings and
        ``max_new_tokens`` (see :class:`SamplingParams`; ``SamplingParams.chat_defaults()`` is
        ``chat(sampling=True)``'s). Every bad input raises before any weight is read.
        """
        params = sampling or SamplingParams()
        started = time.perf_counter()
        request = self.prepare(
            prompt,
            images,
            system=system,
            raw_prompt=raw_prompt,
            max_new_tokens=params.max_new_tokens,
            max_slice_nums=max_slice_nums,
        )
        preprocessed = time.perf_counter() - started
        stream = ChatStream(iter(()))
        stream._pieces = self._run(request, params, started, preprocessed, stream)
        return stream

    def _run(
        self,
        request: Request,
        params: SamplingParams,
        started: float,
        preprocess_seconds: float,
        stream: ChatStream,
    ) -> Iterator[str]:
        sampler = Sampler(params)
        rng = sampler.make_rng()
        stopper = Stopper(
            self.files.tokenizer,
            eos_ids=self.files.eos_ids,
            max_new_tokens=request.max_new_tokens,
            stop=params.stop,
        )
        prompt_len = len(request.input_ids)

        def next_token(history: Sequence[int], logits: np.ndarray) -> int:
            # chat() passes inputs_embeds to generate, so the penalty sees generated ids only.
            return sampler.choose(sampler(history[prompt_len:], logits), rng)

        steps = generate_tokens(
            self.weights,
            request.input_ids,
            slices=request.slices,
            image_bounds=request.image_bounds,
            max_new_tokens=request.max_new_tokens,
            next_token=next_token,
            keep_logits=False,
        )
        chunks: list[str] = []
        first_token = 0.0
        try:
            token = next(steps)
            first_token = time.perf_counter() - started
            while True:
                step = stopper.update(token)
                if step.text:
                    chunks.append(step.text)
                    yield step.text
                token = steps.send(step.finished)
        except StopIteration as done:
            result: Generation = done.value
        finally:
            steps.close()  # a consumer that stopped early: the decode ends here
        stats = getattr(self.weights, "stats", None)
        timings = {"open": self._opened_seconds, "preprocess": preprocess_seconds}
        timings.update(result.timings)
        self._opened_seconds = 0.0  # only the first request paid for the open
        stream.result = ChatResult(
            text="".join(chunks),
            generated=result.tokens,
            finish_reason=stopper.finish_reason or "length",
            prompt_tokens=prompt_len,
            slices=len(request.slices),
            image_tokens=sum(b - a for a, b in request.image_bounds),
            timings=timings,
            first_token_seconds=first_token,
            peak_rss_bytes=_peak_rss_bytes(),
            bytes_read=int(getattr(stats, "bytes_read", 0)),
            bytes_decoded=int(getattr(stats, "bytes_decoded", 0)),
        )


def _peak_rss_bytes() -> int:
    """The process's peak resident set (VmHWM; mapped file pages count too)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0
