"""``wstream run --prompt``: one whole request from the command line, the answer streamed.

The answer goes to stdout piece by piece as it is generated (flushed at each token, so a
terminal shows it as it comes and a pipe gets it in order); one line of figures goes to stderr at
the end, as llama.cpp's CLI does. ``--json`` prints one object at the end instead (the answer
under ``text``), and nothing on stderr.
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from wstream.errors import InputError

if TYPE_CHECKING:
    from wstream.container.cache import ChunkCache
    from wstream.pipeline.chat import ChatResult


def ask(args: argparse.Namespace, cache: ChunkCache | None = None) -> ChatResult:
    """Run ``args`` (the ``run`` subcommand's namespace, with ``prompt`` set); the answer is
    written to stdout as it comes unless ``--json``."""
    from wstream.pipeline.chat import Model
    from wstream.pipeline.sampling import SamplingParams

    for flag, value in (("--pixels", args.pixels), ("--image-bound", args.image_bound)):
        if value is not None:
            raise InputError(f"{flag}: belongs to the --input-ids form, not to --prompt")
    if args.logits_out:
        raise InputError("--logits-out: belongs to the --input-ids form, not to --prompt")
    params = SamplingParams(
        temperature=args.temperature,
        top_p=args.top_p,
        top_k=args.top_k,
        repetition_penalty=args.repetition_penalty,
        max_new_tokens=2048 if args.max_new_tokens is None else args.max_new_tokens,
        seed=args.seed,
        stop=tuple(args.stop),
    )
    with Model.open(
        args.src,
        budget=args.budget,
        prefetch=_prefetch(args.prefetch),
        eager=args.eager,
        cache=cache,
        mapped=args.mmap,
    ) as model:
        stream = model.chat(
            args.prompt,
            images=args.image or (),
            system=args.system,
            raw_prompt=args.raw_prompt,
            sampling=params,
            max_slice_nums=args.max_slice_nums,
        )
        try:
            for piece in stream:
                if not args.json:
                    sys.stdout.write(piece)
                    sys.stdout.flush()
        finally:
            stream.close()
        result = stream.result
    if result is None:  # pragma: no cover - the loop above ran to the end
        raise InputError("run: the request ended without a result")
    return result


def _prefetch(value: int | None) -> int:
    if value is None:
        return 2
    if value < 0:
        raise InputError(f"--prefetch: {value} must be >= 0")
    return value
