"""The ``wstream`` command: pack, unpack, info, verify, run, demo.

Each subcommand parses its arguments and calls one library function. Errors that wstream raises
on purpose print one line, ``wstream <command>: error: <message>``, and exit 1; usage errors exit
2 (argparse's convention).

Somewhat over 400 lines: the argparse definitions of six subcommands and the text each prints
(``info``'s tables, ``run``'s report) belong to the command line and to nothing below it.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import sys
from collections.abc import Callable, Sequence
from typing import Any

from wstream import __version__
from wstream.errors import WStreamError
from wstream.format import spec

_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
DEFAULT_CACHE_SIZE = 64 << 30
SRC_HELP = "the .wst container: a path, s3://bucket/key or an https:// URL"


def parse_size(text: str) -> int:
    """'512', '64K', '32M', '1G', '1.5GiB' -> bytes (binary multiples)."""
    m = _SIZE_RE.match(text)
    if m is None:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a size (bytes, or a number with K/M/G/T)"
        )
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


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
            dtype=args.dtype,
            max_chunk=args.max_chunk,
            threads=args.threads,
            progress=update,
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
    return 0


def cmd_unpack(args: argparse.Namespace) -> int:
    from wstream.unpack import unpack

    n = unpack(args.src, args.output, allow_lossy=args.dequantize, cache=_cache(args))
    print(f"unpacked {n} tensors -> {args.output}")
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
    }


def _step_name(step: dict[str, Any]) -> str:
    return f"bytegroup{step['size']}" if step["id"] == "bytegroup" else str(step["id"])


def cmd_info(args: argparse.Namespace) -> int:
    d = info_dict(args.src)
    if args.json:
        print(json.dumps(d, ensure_ascii=False))
        return 0
    chunks = d["chunks"]
    codecs_used: dict[str, int] = {}
    for ch in chunks:
        key = "+".join(_step_name(s) for s in ch["codec"]) or "raw"
        codecs_used[key] = codecs_used.get(key, 0) + 1
    ratio = d["raw_nbytes"] / d["stored_nbytes"] if d["stored_nbytes"] else 1.0
    from wstream.format.manifest import stage_of

    stages = list(dict.fromkeys(stage_of(g) for g in d["groups"]))
    print(f"file      {d['path']} ({human(d['file_size'])})")
    lossy = "LOSSY (quantized or converted: values differ from the source)"
    print(
        f"format    .wst v{d['version']}, written by {d['writer'] or '?'}, "
        f"{lossy if d['lossy'] else 'lossless'}"
    )
    print(
        f"tensors   {d['tensors']}, {human(d['raw_nbytes'])} decoded, {human(d['stored_nbytes'])} "
        f"stored (ratio {ratio:.3f})"
    )
    print(
        f"chunks    {len(chunks)} ({', '.join(f'{k} {v}' for k, v in codecs_used.items())}); "
        f"largest {human(d['largest_chunk_raw_nbytes'])} decoded"
    )
    print(f"groups    {len(d['groups'])} in stages {', '.join(stages)}")
    if d["config"]:
        keys = ("model_type", "architectures", "hidden_size", "num_hidden_layers", "query_num")
        shown = {k: d["config"][k] for k in keys if k in d["config"]}
        print(f"config    {json.dumps(shown) if shown else '(present)'}")
    print()
    print(f"{'group':<28} {'chunks':>6} {'tensors':>7} {'decoded':>12} {'stored':>12}  codec")
    by_group: dict[str, list[dict[str, Any]]] = {}
    for ch in chunks:
        by_group.setdefault(ch["group"], []).append(ch)
    for group, members in by_group.items():
        names = {t["name"] for ch in members for t in ch["tensors"]}
        codec = "+".join(_step_name(s) for s in members[0]["codec"]) or "raw"
        if any("quant" in t for c in members for t in c["tensors"]):
            codec += " int8"
        print(
            f"{group:<28} {len(members):>6} {len(names):>7} "
            f"{human(sum(c['raw_nbytes'] for c in members)):>12} "
            f"{human(sum(c['nbytes'] for c in members)):>12}  {codec}"
        )
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from wstream.container.reader import Container

    with Container(args.src, cache=_cache(args)) as c:
        c.verify()
        n = len(c.manifest.chunks)
    print(f"{args.src}: OK ({n} chunks verified)")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    import numpy as np

    from wstream.run import load_everything, load_pixels, parse_bound, parse_ids, run

    report = run(
        args.src,
        input_ids=parse_ids(args.input_ids),
        pixels=load_pixels(args.pixels) if args.pixels else None,
        image=args.image,
        image_bound=parse_bound(args.image_bound) if args.image_bound else None,
        max_new_tokens=args.max_new_tokens,
        budget=args.budget,
        prefetch=args.prefetch,
        weights_factory=load_everything if args.eager else None,
        cache=_cache(args),
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
        type=int,
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
        choices=("int8",),
        default=None,
        help="store linear-layer matrices as INT8 with a float32 scale per 128 values (lossy)",
    )
    sp.add_argument(
        "--dtype",
        choices=("keep", "bfloat16", "float16", "float32"),
        default="keep",
        help="convert floating-point tensors (round to nearest even; lossy when bits are dropped)",
    )
    sp.add_argument(
        "--max-chunk",
        type=parse_size,
        default=spec.DEFAULT_MAX_CHUNK,
        metavar="SIZE",
        help="largest decoded chunk, e.g. 32M (default: 32M); "
        "bigger tensors are split into row blocks",
    )
    sp.add_argument(
        "--threads",
        type=int,
        default=1,
        help="threads compressing zstd frames in parallel (default: 1)",
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
    sp.set_defaults(func=cmd_unpack)

    sp = sub.add_parser("info", help="describe a container (reads the manifest only)")
    sp.add_argument("src", help=SRC_HELP)
    sp.add_argument("--json", action="store_true", help="print everything as one JSON object")
    sp.set_defaults(func=cmd_info)

    sp = sub.add_parser("verify", help="check every chunk's checksum and decode it")
    sp.add_argument("src", help=SRC_HELP)
    _add_cache(sp)
    sp.set_defaults(func=cmd_verify)

    sp = sub.add_parser(
        "run",
        help="run MiniCPM-V on one image slice and a prompt",
        description="Prefill the prompt (with one image slice) and decode "
        "greedily. Without --image-bound, query_num placeholder positions are "
        "prepended to the ids for the image; without an image, the prompt is "
        "text only and no vision weight is read.",
    )
    sp.add_argument("src", help=SRC_HELP)
    _add_cache(sp)
    image = sp.add_mutually_exclusive_group()
    image.add_argument(
        "--image",
        metavar="IMG",
        help="a PNG/JPEG, resized so its long side is "
        "at most 448 and both sides are multiples of 14, and normalised",
    )
    image.add_argument(
        "--pixels",
        metavar="PIX.npy",
        help="a float32 [3, H, W] array, normalised, H and W multiples of 14",
    )
    sp.add_argument(
        "--input-ids",
        required=True,
        metavar="IDS",
        help="token ids: a .npy of integers or a comma list (1,2,3)",
    )
    sp.add_argument(
        "--image-bound",
        metavar="A:B",
        help="the half-open span of positions the image embeddings replace; its "
        "length must be query_num (the ids inside are ignored)",
    )
    sp.add_argument(
        "--max-new-tokens",
        type=int,
        default=8,
        metavar="N",
        help="tokens to generate greedily (default: 8)",
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
        type=int,
        metavar="K",
        help="chunks to keep decoded ahead on worker threads (default: 2)",
    )
    sp.add_argument(
        "--eager",
        action="store_true",
        help="load every weight up front instead of streaming (the baseline)",
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
        print(f"wstream {args.command}: error: {name}: {msg}", file=sys.stderr)
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
