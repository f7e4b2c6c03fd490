"""The ``wstream`` command: pack, unpack, info, verify, run, demo.

Each subcommand parses its arguments and calls one library function. Errors that wstream raises
on purpose print one line, ``wstream <command>: error: <message>``, and exit 1; usage errors exit
2 (argparse's convention).

About 750 lines, over the ~400 a module aims for: half of it is ``build_parser`` (the six
subcommands' argparse definitions, every flag with its help text), the rest the text each
command prints (``info``'s tables, ``run``'s report). Both belong to the command line and to
nothing below it, and splitting the parser across modules would scatter one command's flags.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import sys
from collections.abc import Callable, Sequence
from fractions import Fraction
from typing import Any

from wstream import __version__
from wstream.errors import InputError, WStreamError
from wstream.format import spec

_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
DEFAULT_CACHE_SIZE = 64 << 30
SRC_HELP = "the .wst container: a path, s3://bucket/key or an https:// URL"


MAX_SIZE = 1 << 60  # any size flag: 1 EiB, far above any memory or file, far below overflow


def parse_size(text: str) -> int:
    """'512', '64K', '32M', '1G', '1.5GiB' -> bytes (binary multiples), at most MAX_SIZE.

    Parsed exactly (no float: '9' * 400 is a size too large, not an OverflowError)."""
    m = _SIZE_RE.match(text)
    if m is None:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a size (bytes, or a number with K/M/G/T)"
        )
    number = m.group(1)
    if len(number) > 40:  # longer than any size below MAX_SIZE could be written
        raise argparse.ArgumentTypeError(f"{text[:40]!r}...: above the limit of {MAX_SIZE} bytes")
    value = int(Fraction(number) * _UNITS[m.group(2).lower()])
    if value > MAX_SIZE:
        raise argparse.ArgumentTypeError(f"{text!r}: {value} bytes is above the limit {MAX_SIZE}")
    return value


def bounded_int(lo: int, hi: int) -> Callable[[str], int]:
    """An argparse type: an integer in [lo, hi]."""

    def parse(text: str) -> int:
        try:
            value = int(text) if len(text) <= 40 else None
        except ValueError:
            value = None
        if value is None or not lo <= value <= hi:
            raise argparse.ArgumentTypeError(f"{text[:40]!r} is not an integer in [{lo}, {hi}]")
        return value

    return parse


def size_in(lo: int, hi: int) -> Callable[[str], int]:
    """An argparse type: a size (see :func:`parse_size`) in [lo, hi]."""

    def parse(text: str) -> int:
        value = parse_size(text)
        if not lo <= value <= hi:
            raise argparse.ArgumentTypeError(f"{text!r}: {value} bytes is outside [{lo}, {hi}]")
        return value

    return parse


def printable(text: str) -> str:
    """``text`` with every control and format character escaped (``\\x1b``, ``\\u202e``), so a
    name from a file cannot move the cursor, recolour or retitle the terminal, or reorder the
    line (bidirectional overrides)."""
    if text.isprintable():
        return text
    return "".join(
        ch if ch.isprintable() or ch == " " else ch.encode("unicode_escape").decode("ascii")
        for ch in text
    )


def say(line: str = "") -> None:
    """Print a line that holds text from a file (names, paths), control characters escaped."""
    print(printable(line))


def json_printable(text: str) -> str:
    """JSON text with every non-printable character written as a \\u escape (the same value:
    json.dumps leaves C1 controls, DEL and bidirectional overrides as they are)."""
    if text.isprintable():
        return text
    out = []
    for ch in text:
        if ch.isprintable() or ch == " ":
            out.append(ch)
        else:
            units = ch.encode("utf-16-be")
            out.extend(f"\\u{units[i]:02x}{units[i + 1]:02x}" for i in range(0, len(units), 2))
    return "".join(out)


def human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def _progress_bar(total: int, desc: str) -> tuple[Callable[[int], None], Callable[[], None]]:
    """A tqdm bar on a terminal; nothing when stderr is piped (logs, CI)."""
    if not sys.stderr.isatty():
        return (lambda n: None), (lambda: None)
    from tqdm import tqdm

    bar = tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=desc, leave=False)
    return bar.update, bar.close


def _cache(args: argparse.Namespace) -> Any:
    """The ChunkCache that ``--cache DIR`` (and ``--cache-size``) ask for, or None."""
    if args.cache is None:
        return None
    from wstream.container.cache import ChunkCache

    return ChunkCache(args.cache, args.cache_size)


def _add_cache(sp: argparse.ArgumentParser) -> None:
    sp.add_argument(
        "--cache",
        metavar="DIR",
        help="keep verified chunks of a remote container in DIR and read them from there next "
        "time (ignored for a local file)",
    )
    sp.add_argument(
        "--cache-size",
        type=parse_size,
        default=DEFAULT_CACHE_SIZE,
        metavar="SIZE",
        help="largest total size of --cache DIR; least recently used chunks are evicted "
        "(default: 64G)",
    )


# --- subcommands ---------------------------------------------------------------------------------


def cmd_pack(args: argparse.Namespace) -> int:
    from wstream.container.checkpoint import open_checkpoint
    from wstream.pack import pack

    total = open_checkpoint(args.src).nbytes
    update, close = _progress_bar(total, "pack")
    try:
        report = pack(
            args.src,
            args.output,
            codec=args.codec,
            level=args.level,
            shuffle=args.shuffle,
            quantize=args.quantize,
            group=args.quant_group,
            dtype=args.dtype,
            max_chunk=args.max_chunk,
            threads=args.threads,
            progress=update,
            files=args.files,
            fold=args.fold,
        )
    finally:
        close()
    summary = {
        "output": str(args.output),
        "tensors": report.tensors,
        "chunks": report.chunks,
        "bytes_in": report.bytes_in,
        "bytes_out": report.bytes_out,
        "ratio": round(report.ratio, 4),
        "seconds": round(report.seconds, 3),
        "lossy": report.lossy,
        "files": [_file_row(f) for f in report.manifest.files],
        "folds": list(report.manifest.folds),
    }
    if args.json:
        print(json.dumps(summary))
    else:
        rate = report.bytes_in / report.seconds / 1e6 if report.seconds else 0.0
        print(
            f"packed {report.tensors} tensors into {report.chunks} chunks: "
            f"{human(report.bytes_in)} -> {human(report.bytes_out)} "
            f"(ratio {report.ratio:.3f}) in {report.seconds:.2f} s ({rate:.0f} MB/s) "
            f"-> {args.output}"
            + (" [LOSSY: values differ from the source]" if report.lossy else "")
        )
        names = ", ".join(f.name for f in report.manifest.files)
        print(
            f"embedded {len(report.manifest.files)} model files" + (f": {names}" if names else "")
        )
        if report.manifest.folds:
            print(f"folded {', '.join(report.manifest.folds)}")
    return 0


def _file_row(entry: Any) -> dict[str, Any]:
    """An embedded file as ``pack --json`` and ``info --json`` list it."""
    return {"name": entry.name, "nbytes": entry.nbytes, "raw_nbytes": entry.raw_nbytes}


def cmd_unpack(args: argparse.Namespace) -> int:
    from wstream.unpack import unpack_report

    report = unpack_report(
        args.src,
        args.output,
        allow_lossy=args.dequantize,
        allow_folded=args.folded,
        files=args.files,
        force=args.force,
        cache=_cache(args),
    )
    say(f"unpacked {report.tensors} tensors -> {args.output}")
    if report.folds:
        say(
            f"folded    {', '.join(report.folds)}: wrote the fused tensors the container holds, "
            "not the source checkpoint's"
        )
    for a in report.files:
        verb = {"write": "wrote", "replace": "replaced", "same": "unchanged"}[a.action]
        say(f"{verb:<9} {a.path} ({a.entry.raw_nbytes} bytes)")
    return 0


def info_dict(path: str) -> dict[str, Any]:
    """Everything ``info --json`` prints. Reads the preamble and manifest only (no numpy)."""
    from wstream.container.header import read_header
    from wstream.container.open import open_source

    source = open_source(path)
    try:
        preamble, m = read_header(source)
    finally:
        source.close()
    return {
        "path": path,
        "file_size": source.size,
        "version": preamble.version,
        "writer": m.writer,
        "lossy": m.lossy,
        "tensors": len(m.tensors),
        "raw_nbytes": sum(ch.raw_nbytes for ch in m.chunks),
        "stored_nbytes": sum(ch.nbytes for ch in m.chunks),
        "largest_chunk_raw_nbytes": max((ch.raw_nbytes for ch in m.chunks), default=0),
        "groups": m.groups(),
        "config": m.config,
        "metadata": dict(m.metadata),
        "chunks": [ch.to_json() for ch in m.chunks],
        "files": [_file_row(f) for f in m.files],
        "folds": list(m.folds),
    }


def _step_name(step: dict[str, Any]) -> str:
    return f"bytegroup{step['size']}" if step["id"] == "bytegroup" else str(step["id"])


def cmd_info(args: argparse.Namespace) -> int:
    d = info_dict(args.src)
    if args.json:
        say(json_printable(json.dumps(d, ensure_ascii=False)))
        return 0
    chunks = d["chunks"]
    codecs_used: dict[str, int] = {}
    for ch in chunks:
        key = "+".join(_step_name(s) for s in ch["codec"]) or "raw"
        codecs_used[key] = codecs_used.get(key, 0) + 1
    ratio = d["raw_nbytes"] / d["stored_nbytes"] if d["stored_nbytes"] else 1.0
    from wstream.format.manifest import stage_of

    stages = list(dict.fromkeys(stage_of(g) for g in d["groups"]))
    say(f"file      {d['path']} ({human(d['file_size'])})")
    lossy = "LOSSY (quantized or converted: values differ from the source)"
    say(
        f"format    .wst v{d['version']}, written by {d['writer'] or '?'}, "
        f"{lossy if d['lossy'] else 'lossless'}"
    )
    say(
        f"tensors   {d['tensors']}, {human(d['raw_nbytes'])} decoded, {human(d['stored_nbytes'])} "
        f"stored (ratio {ratio:.3f})"
    )
    say(
        f"chunks    {len(chunks)} ({', '.join(f'{k} {v}' for k, v in codecs_used.items())}); "
        f"largest {human(d['largest_chunk_raw_nbytes'])} decoded"
    )
    say(f"groups    {len(d['groups'])} in stages {', '.join(stages)}")
    say(f"folds     {', '.join(d['folds']) if d['folds'] else '(none)'}")
    if d["config"]:
        keys = ("model_type", "architectures", "hidden_size", "num_hidden_layers", "query_num")
        shown = {k: d["config"][k] for k in keys if k in d["config"]}
        say(f"config    {json.dumps(shown) if shown else '(present)'}")
    files = d["files"]
    say(f"files     {len(files)} embedded" + (":" if files else " (none)"))
    for f in files:
        say(f"          {f['name']:<28} {human(f['raw_nbytes']):>12} ({human(f['nbytes'])} stored)")
    say()
    say(f"{'group':<28} {'chunks':>6} {'tensors':>7} {'decoded':>12} {'stored':>12}  codec")
    by_group: dict[str, list[dict[str, Any]]] = {}
    for ch in chunks:
        by_group.setdefault(ch["group"], []).append(ch)
    for group, members in by_group.items():
        names = {t["name"] for ch in members for t in ch["tensors"]}
        codec = "+".join(_step_name(s) for s in members[0]["codec"]) or "raw"
        layouts = {
            f"{t['quant']['scheme']} g{t['quant']['group']}"
            for c in members
            for t in c["tensors"]
            if "quant" in t
        }
        if layouts:
            codec += " " + ",".join(sorted(layouts))
        say(
            f"{group:<28} {len(members):>6} {len(names):>7} "
            f"{human(sum(c['raw_nbytes'] for c in members)):>12} "
            f"{human(sum(c['nbytes'] for c in members)):>12}  {codec}"
        )
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from wstream.container.reader import Container

    with Container(args.src, cache=_cache(args)) as c:
        c.verify()
        n, n_files = len(c.manifest.chunks), len(c.manifest.files)
    files = f", {n_files} embedded files" if n_files else ""
    say(f"{args.src}: OK ({n} chunks{files} verified)")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    if args.prompt is not None:
        return _answer(args)
    import numpy as np

    from wstream.run import load_everything, load_pixels, parse_bound, parse_ids, run

    if args.input_ids is None:
        raise InputError(
            "--prompt or --input-ids: one is needed"
            + (" (an image needs a question about it)" if args.image else "")
        )
    if args.image is not None and len(args.image) > 1:
        raise InputError("--image: the --input-ids form takes one image; use --prompt for several")
    report = run(
        args.src,
        input_ids=parse_ids(args.input_ids),
        pixels=load_pixels(args.pixels) if args.pixels else None,
        image=args.image[0] if args.image else None,
        image_bound=parse_bound(args.image_bound) if args.image_bound else None,
        max_new_tokens=8 if args.max_new_tokens is None else args.max_new_tokens,
        budget=args.budget,
        prefetch=args.prefetch,
        weights_factory=load_everything if args.eager else None,
        cache=_cache(args),
        mapped=args.mmap,
    )
    if args.logits_out:
        np.save(args.logits_out, report.logits)
    summary = report.summary()
    if args.json:
        print(json.dumps(summary))
        return 0
    t = summary["timings"]
    print(f"generated {summary['generated']}")
    print("timings   " + "  ".join(f"{k} {v * 1e3:.1f} ms" for k, v in t.items()))
    print(
        f"prompt    {summary['prompt_tokens']} tokens"
        + (
            f", image {summary['image_size'][0]}x{summary['image_size'][1]} at "
            f"{summary['image_bound'][0]}:{summary['image_bound'][1]}"
            if summary["image_size"]
            else ", no image"
        )
    )
    print(
        f"memory    peak RSS {human(summary['peak_rss_bytes'])}; read "
        f"{human(summary['bytes_read'])}, decoded {human(summary['bytes_decoded'])}"
    )
    if args.logits_out:
        print(
            f"logits    [{summary['prompt_tokens']}, {summary['vocab']}] float32 -> "
            f"{args.logits_out}"
        )
    return 0


def _answer(args: argparse.Namespace) -> int:
    from wstream.ask import ask

    result = ask(args, _cache(args))
    if args.json:
        print(json.dumps(result.summary(), ensure_ascii=False))
        return 0
    sys.stdout.write("\n")
    t = result.timings
    print(
        f"wstream: {len(result.generated)} tokens ({result.finish_reason}), "
        f"{result.slices} slices, prompt {result.prompt_tokens} tokens; first token "
        f"{result.first_token_seconds:.2f} s (vision {t.get('vision', 0):.2f} s, prefill "
        f"{t.get('prefill', 0):.2f} s), decode {t.get('decode', 0):.2f} s; peak RSS "
        f"{human(result.peak_rss_bytes)}, read {human(result.bytes_read)}",
        file=sys.stderr,
    )
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from wstream.demo import demo

    demo(model=args.model)
    return 0


# --- parser --------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="wstream",
        description="Chunked weight container in execution order, and a streaming loader.",
    )
    p.add_argument("--version", action="version", version=f"wstream {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    sp = sub.add_parser(
        "pack",
        help="convert a safetensors checkpoint into a .wst container",
        description="Convert a .safetensors file, or a directory of shards with "
        "model.safetensors.index.json and config.json, into a .wst container.",
    )
    sp.add_argument("src", help="a .safetensors file or a checkpoint directory")
    sp.add_argument(
        "-o",
        "--output",
        required=True,
        help="the .wst file to write, or s3://bucket/key.wst (uploaded while packing; the "
        "object appears only when complete)",
    )
    sp.add_argument(
        "--codec",
        choices=("raw", "zstd"),
        default="raw",
        help="chunk codec (default: raw, zero-copy to read)",
    )
    sp.add_argument(
        "--level",
        type=bounded_int(spec.MIN_ZSTD_LEVEL, spec.MAX_ZSTD_LEVEL),
        default=None,
        help="zstd level (default: tuned literal coding with --shuffle, else 1; "
        "both measured better than higher levels on trained weights)",
    )
    sp.add_argument(
        "--shuffle",
        action="store_true",
        help="group bytes of each element before zstd (exponents compress, "
        "mantissas do not): ~1.49x on bf16, ~1.2x on fp32",
    )
    sp.add_argument(
        "--quantize",
        choices=("int8", "uint4"),
        default=None,
        help="store linear-layer matrices quantized (lossy): int8 with a float32 scale per "
        "group of a row, or uint4 (two values a byte) with a float32 scale and a zero point "
        "per group",
    )
    sp.add_argument(
        "--quant-group",
        type=bounded_int(1, spec.MAX_QUANT_GROUP),
        default=128,
        metavar="N",
        help="consecutive values of a row sharing one scale with --quantize (default: 128; "
        "even for uint4)",
    )
    sp.add_argument(
        "--dtype",
        choices=("keep", "bfloat16", "float16", "float32"),
        default="keep",
        help="convert floating-point tensors (round to nearest even; lossy when bits are dropped)",
    )
    sp.add_argument(
        "--max-chunk",
        type=size_in(spec.MIN_MAX_CHUNK, spec.MAX_CHUNK_RAW_NBYTES),
        default=spec.DEFAULT_MAX_CHUNK,
        metavar="SIZE",
        help="largest decoded chunk, e.g. 32M (default: 32M); "
        "bigger tensors are split into row blocks",
    )
    sp.add_argument(
        "--threads",
        type=bounded_int(1, 256),
        default=1,
        help="threads compressing zstd frames in parallel (default: 1)",
    )
    sp.add_argument(
        "--no-files",
        dest="files",
        action="store_false",
        help="do not embed the model files beside the weights (tokenizer.json, "
        "tokenizer_config.json, preprocessor_config.json, generation_config.json, "
        "special_tokens_map.json, added_tokens.json)",
    )
    sp.add_argument(
        "--fold",
        default=None,
        metavar="LIST",
        help="fold tensors at pack time: a comma-separated list of folds, or 'all' "
        f"(folds: {', '.join(spec.FOLD_NAMES)}; qkv stacks each attention layer's q/k/v "
        "projections into one matrix: one product instead of three)",
    )
    sp.add_argument("--json", action="store_true", help="print the summary as JSON")
    sp.set_defaults(func=cmd_pack)

    sp = sub.add_parser("unpack", help="write a .wst container back as one safetensors file")
    sp.add_argument("src", help=SRC_HELP)
    _add_cache(sp)
    sp.add_argument("-o", "--output", required=True, help="the .safetensors file to write")
    sp.add_argument(
        "--dequantize",
        action="store_true",
        help="allow unpacking a lossy container (its values differ from the source)",
    )
    sp.add_argument(
        "--folded",
        action="store_true",
        help="allow unpacking a folded container (pack --fold): writes the fused tensors it "
        "holds, which are not the source checkpoint's tensors",
    )
    sp.add_argument(
        "--files",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="write the embedded model files (tokenizer.json, ...) beside the output "
        "(default: yes)",
    )
    sp.add_argument(
        "--force",
        action="store_true",
        help="replace an existing model file whose content differs from the embedded one",
    )
    sp.set_defaults(func=cmd_unpack)

    sp = sub.add_parser("info", help="describe a container (reads the manifest only)")
    sp.add_argument("src", help=SRC_HELP)
    sp.add_argument("--json", action="store_true", help="print everything as one JSON object")
    sp.set_defaults(func=cmd_info)

    sp = sub.add_parser(
        "verify", help="check every chunk's and embedded file's checksum and decode it"
    )
    sp.add_argument("src", help=SRC_HELP)
    _add_cache(sp)
    sp.set_defaults(func=cmd_verify)

    sp = sub.add_parser(
        "run",
        help="ask MiniCPM-V about images, or run it on token ids",
        description="With --prompt: the whole request as MiniCPM-V's chat() does it "
        "(image slicing, placeholders, chat template, tokenizer, stop ids); the answer "
        "streams to stdout. With --input-ids: the low-level form, prefill the ids (with "
        "one image slice) and decode greedily; without --image-bound, query_num "
        "placeholder positions are prepended to the ids for the image. Without an image "
        "no vision weight is read.",
    )
    sp.add_argument("src", help=SRC_HELP)
    _add_cache(sp)
    sp.add_argument(
        "--image",
        metavar="IMG",
        action="append",
        help="an image file; repeat for several, in order. With --prompt it is sliced as "
        "the official processor does; with --input-ids it is resized to one slice (long "
        "side at most 448, sides multiples of 14)",
    )
    sp.add_argument(
        "--pixels",
        metavar="PIX.npy",
        help="(with --input-ids) a float32 [3, H, W] array, normalised, H and W multiples of 14",
    )
    text = sp.add_mutually_exclusive_group()
    text.add_argument("--prompt", metavar="TEXT", help="the question, as the user's message")
    text.add_argument(
        "--input-ids",
        metavar="IDS",
        help="token ids: a .npy of integers or a comma list (1,2,3)",
    )
    sp.add_argument("--system", metavar="TEXT", help="a system prompt (with --prompt)")
    sp.add_argument(
        "--raw-prompt",
        action="store_true",
        help="send the prompt without the chat template (images still go before it)",
    )
    sp.add_argument(
        "--max-slice-nums",
        type=int,
        metavar="N",
        help="most slices per image besides the overview (default: the container's "
        "preprocessor_config.json, 9 for 2.6)",
    )
    sp.add_argument(
        "--temperature",
        type=float,
        default=0.0,
        metavar="T",
        help="sampling temperature; 0 decodes greedily (default: 0)",
    )
    sp.add_argument("--top-p", type=float, default=1.0, metavar="P", help="nucleus, in (0, 1]")
    sp.add_argument("--top-k", type=int, default=0, metavar="K", help="keep the K best; 0 = off")
    sp.add_argument(
        "--repetition-penalty",
        type=float,
        default=1.0,
        metavar="R",
        help="HF's repetition penalty over the generated ids; 1 = off",
    )
    sp.add_argument("--seed", type=int, metavar="S", help="seed of the sampler")
    sp.add_argument(
        "--stop",
        action="append",
        default=[],
        metavar="STR",
        help="end the answer before this text (repeatable)",
    )
    sp.add_argument(
        "--image-bound",
        metavar="A:B",
        help="(with --input-ids) the half-open span of positions the image embeddings "
        "replace; its length must be query_num (the ids inside are ignored)",
    )
    sp.add_argument(
        "--max-new-tokens",
        type=int,
        default=None,
        metavar="N",
        help="most tokens to generate (default: 2048 with --prompt, as chat(); 8 with --input-ids)",
    )
    sp.add_argument(
        "--logits-out", metavar="OUT.npy", help="save the prefill logits, float32 [T, vocab]"
    )
    sp.add_argument(
        "--budget",
        type=parse_size,
        metavar="SIZE",
        help="memory budget for weights, bytes or K/M/G (default: none)",
    )
    sp.add_argument(
        "--prefetch",
        type=bounded_int(0, 1024),
        metavar="K",
        help="chunks to keep decoded ahead on worker threads (default: 2)",
    )
    sp.add_argument(
        "--eager",
        action="store_true",
        help="load every weight up front instead of streaming (the baseline)",
    )
    sp.add_argument(
        "--mmap",
        action="store_true",
        help="map a local container instead of reading it into the loader's slabs: no copy, "
        "about 15%% less decode time with a warm page cache here (bench/results/AB.md), but a file "
        "truncated or rewritten while it runs can kill the process (SIGBUS) or reach the "
        "forward unchecked; for files nothing else writes",
    )
    sp.add_argument("--json", action="store_true", help="print the report as one JSON object")
    sp.set_defaults(func=cmd_run)

    sp = sub.add_parser(
        "demo",
        help="generate a small model, pack it, run it, print measurements",
        description="Generate a small MiniCPM-V-shaped checkpoint (random "
        "weights) in a temporary directory, pack it, run it on a test image and "
        "print the time per stage and memory. Needs no network.",
    )
    sp.add_argument("--model", default="small", help=argparse.SUPPRESS)  # tests use "tiny"
    sp.set_defaults(func=cmd_demo)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except BrokenPipeError:  # `wstream info x.wst | head`: the reader left; that is fine
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except (WStreamError, OSError) as exc:
        name = type(exc).__name__
        if isinstance(exc, OSError) and exc.filename:
            msg = f"{exc.strerror or 'cannot open'}: {exc.filename}"
        else:
            msg = str(exc)
        print(f"wstream {args.command}: error: {name}: {printable(msg)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"wstream {args.command}: interrupted", file=sys.stderr)
        return 130


def configure_process() -> None:
    """Settings for the whole process, made only by the ``wstream`` command (which owns its
    process), never on import, and before numpy loads OpenBLAS, which reads them once.

    ``OPENBLAS_THREAD_TIMEOUT=1``: OpenBLAS threads spin for a while after each matmul. In
    ``wstream run`` they share two cores with the prefetch workers and with the row-parallel
    numpy work between matmuls, which they would starve (a vision layer's attention: 60 ms
    spinning, 37 ms not). An explicit setting in the environment wins."""
    os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "1")
    # SIGTERM (a scheduler stopping the job) unwinds like Ctrl-C instead of killing outright,
    # so `finally` blocks run: a pack to s3:// aborts its upload, a local pack removes its
    # temporary file, streams join their threads. Exit status 143, as if killed by the signal.
    signal.signal(signal.SIGTERM, _terminated)


def _terminated(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def entry() -> None:
    """The ``wstream`` console script: configure the process, then run :func:`main`."""
    configure_process()
    sys.exit(main())


if __name__ == "__main__":
    entry()
