"""Streaming a container from S3 (SeaweedFS on loopback) against downloading it, same run.

    python bench/s3_stream.py [--size-mb 1024] [--layout generic|minicpmv] [--rounds 3]
                              [--budget-mb 512] [--work DIR]

Packs a checkpoint of about ``--size-mb`` straight to the server (``pack`` uploads while
packing; raw codec) and deletes it. ``--layout generic``: random float16 tensors of 32 MiB, one
chunk each. ``--layout minicpmv``: MiniCPM-V 2.6 at its real widths (random bf16, the real
tensors and chunk sequence: a 1.36 MB first chunk, ``vision.embed#0``, a manifest of hundreds of
chunks) with as many decoder layers as reach the size. Then, rounds interleaved so machine drift
hits each alike, measures:

- open to first chunk in hand: ``open_container(url)`` + the first chunk of ``stream()``
  (``--opens`` tries a round), with the default head fetched at open and with ``--head-kib``;
- streaming throughput: every chunk through ``stream()`` (CRC checked, bytes in pool slabs
  under ``--budget-mb``) against the best plain download of the same object with the same
  client (S3Source: 8 and 16 MiB ranged GETs, 8 in flight, each into a reused buffer, no
  CRC; the faster of the two counts);
- time to the first layer's chunks (generic: the first chunk; minicpmv: the vision embedding
  and the first vision block): streaming, against download-then-load (download the whole
  object to a local file, then open it and take the same chunks).

Stream and downloads run in alternating order (ABBA), each after the server's data files were
read through once, dirty pages written back and the machine quiet (:func:`settle`), untimed: the
download-then-load step writes an object-sized local file, which at 10 GB evicts the server's
pages and leaves gigabytes to write back, so whichever ran next paid for it.

Prints medians and a Markdown table. Memory stays bounded whatever the size (no object-sized
buffer); disk: the checkpoint, then the server's copy and one downloaded copy at a time, all in
a temporary directory (``--work``) removed at the end, the object deleted after the rounds.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import math
import os
import platform
import shutil
import statistics
import struct
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _measure import wait_quiet, warm
from s3_server import running_server

from wstream import open_container, pack
from wstream.container.remote import RemoteOptions
from wstream.container.s3 import S3Source
from wstream.model.config import VLMConfig
from wstream.synthetic import PRESETS, checkpoint_order, write_checkpoint

BUCKET, KEY = "bench", "model.wst"
MiB = 1 << 20


def write_safetensors(path: Path, n: int) -> None:
    """``n`` random float16 tensors of 32 MiB in one safetensors file, written one tensor at a
    time (memory: one tensor, whatever ``n``; the header is known from the shapes alone)."""
    per = 32 * MiB // 2  # float16 elements per tensor: one 32 MiB chunk each
    header = {
        f"layers.{i}.w": {
            "dtype": "F16",
            "shape": [per],
            "data_offsets": [i * 2 * per, (i + 1) * 2 * per],
        }
        for i in range(n)
    }
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    rng = np.random.default_rng(0)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw)
        for _ in range(n):
            f.write(rng.integers(0, 1 << 16, per, dtype=np.uint16).tobytes())


def make_container(root: Path, size_mb: int, url: str) -> None:
    """Pack the checkpoint straight to ``url`` (uploaded while packing: no local container),
    then delete the checkpoint: the disk holds one copy at a time, besides the server's."""
    ckpt = root / "ckpt.safetensors"
    write_safetensors(ckpt, max(1, size_mb // 32))
    pack(ckpt, url)
    ckpt.unlink()


def minicpmv_config(size_mb: int) -> VLMConfig:
    """The 2.6's widths with the fewest decoder layers (at least 1) whose bf16 bytes reach
    ``size_mb`` MiB (the real 2.6, 28 layers, is 15,448 MiB)."""
    full = PRESETS["full"]
    for layers in range(1, full.decoder.layers + 1):
        cfg = dataclasses.replace(full, decoder=dataclasses.replace(full.decoder, layers=layers))
        if sum(2 * math.prod(shape) for _, shape in checkpoint_order(cfg)) >= size_mb * MiB:
            break
    return cfg


def make_minicpmv(root: Path, size_mb: int, url: str) -> None:
    """The 2.6-shaped checkpoint, packed straight to ``url``, then deleted."""
    ckpt = root / "ckpt"
    write_checkpoint(ckpt, minicpmv_config(size_mb))
    pack(ckpt, url)
    shutil.rmtree(ckpt)


PARTS = (8 * MiB, 16 * MiB)  # the plain download's ranged GETs, 8 in flight: the best counts


def parallel_get(
    url: str, part: int = 16 * MiB, sink: Callable[[int, memoryview], None] | None = None
) -> None:
    """The whole object as ``part``-sized ranged GETs, 8 in flight, each into its own reused
    buffer (never an object-sized one); ``sink(offset, data)`` gets each part (a file write)."""
    local = threading.local()
    with S3Source(url, RemoteOptions(part_size=part)) as src:

        def get(offset: int) -> None:
            buf = getattr(local, "buf", None)
            if buf is None:
                buf = local.buf = memoryview(bytearray(part))
            view = buf[: min(part, src.size - offset)]
            src.read_into(offset, view)
            if sink is not None:
                sink(offset, view)

        with ThreadPoolExecutor(8) as pool:
            list(pool.map(get, range(0, src.size, part)))


def first_chunk(url: str, budget: int, options: RemoteOptions | None = None) -> float:
    t0 = time.perf_counter()
    with open_container(url, options=options) as c:
        stream = c.stream(budget=budget, prefetch=4)
        chunk = next(stream)
        elapsed = time.perf_counter() - t0
        chunk.release()
        stream.close()  # type: ignore[attr-defined]
    return elapsed


def stream_all(url: str, budget: int) -> float:
    t0 = time.perf_counter()
    with open_container(url) as c:
        for chunk in c.stream(budget=budget, prefetch=8, workers=4):
            chunk.release()
    return time.perf_counter() - t0


def download(url: str, part: int) -> float:
    t0 = time.perf_counter()
    parallel_get(url, part)
    return time.perf_counter() - t0


def download_then_first_layer(url: str, path: Path, layer: list[str]) -> float:
    t0 = time.perf_counter()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        parallel_get(url, sink=lambda offset, data: _pwrite_all(fd, data, offset))
    finally:
        os.close(fd)
    with open_container(path) as c:
        for chunk in c.stream(layer):
            chunk.release()
    elapsed = time.perf_counter() - t0
    path.unlink()  # at 10 GB the disk should not hold it past this round
    return elapsed


def _pwrite_all(fd: int, data: memoryview, offset: int) -> None:
    while data:
        n = os.pwrite(fd, data, offset)
        data, offset = data[n:], offset + n


def settle(server_data: Path) -> None:
    """Before each timed transfer: the server's files read through (in the page cache), dirty
    pages written back, and the machine quiet. Without the last two, whatever ran first in a
    round paid for the writeback of the previous round's downloaded copy (3.4 GB): 0.64-0.78x
    in the rounds the stream ran first against 1.04-1.08x when it ran last."""
    warm(*(f for f in server_data.rglob("*") if f.is_file()))
    os.sync()
    wait_quiet(timeout=60)


def stream_first_layer(url: str, layer: list[str], budget: int) -> float:
    t0 = time.perf_counter()
    with open_container(url) as c:
        for chunk in c.stream(layer, budget=budget, prefetch=4):
            chunk.release()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size-mb", type=int, default=1024)
    ap.add_argument("--layout", choices=["generic", "minicpmv"], default="generic")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--budget-mb", type=int, default=512)
    ap.add_argument("--work", type=Path, default=None, help="scratch directory (default: /tmp)")
    ap.add_argument("--opens", type=int, default=5, help="open-to-first-chunk tries per round")
    ap.add_argument(
        "--head-kib",
        type=int,
        default=256,
        help="the head fetched at open in the comparison row (default 256; the default "
        f"option is {RemoteOptions().head_bytes // 1024})",
    )
    args = ap.parse_args()
    other_head = RemoteOptions(head_bytes=args.head_kib * 1024)
    budget = args.budget_mb * MiB
    url = f"s3://{BUCKET}/{KEY}"
    # Everything (checkpoint, the server's data, the downloaded copy) lives in the temporary
    # directory, removed at the end however the run ends; the object goes with the server's data.
    with tempfile.TemporaryDirectory(prefix="wstream-s3stream-", dir=args.work) as tmp:
        root = Path(tmp)
        # 256 MB volumes: SeaweedFS grows 7 volumes at a time, and with its 1 GB default a 10 GB
        # upload failed with HTTP 500 at 4.3 GB while 11 GB of disk was still free.
        with running_server(root / "weed", volume_size_limit_mb=256) as server:
            os.environ.update(server.environ())
            admin = server.admin_client()
            admin.create_bucket(Bucket=BUCKET)
            t0 = time.perf_counter()
            if args.layout == "generic":
                make_container(root, args.size_mb, url)
            else:
                make_minicpmv(root, args.size_mb, url)
            with open_container(url) as c:
                names = [ch.name for ch in c.manifest.chunks]
                # generic: the first chunk; minicpmv: up to the first vision block, inclusive
                last = names.index("vision.layer.0") if "vision.layer.0" in names else 0
                layer = names[: last + 1]
                size, nchunks, first_nbytes = (
                    c.file_size,
                    len(names),
                    c.manifest.chunks[0].nbytes,
                )
            print(
                f"packed and uploaded {size / MiB:.0f} MiB ({args.layout}, {nchunks} chunks, "
                f"first {first_nbytes:,} bytes) in {time.perf_counter() - t0:.0f} s"
            )
            rows: dict[str, list[float]] = {
                k: []
                for k in ("first", "first_head", "stream")
                + tuple(f"download{p // MiB}" for p in PARTS)
                + ("ttfl", "dl_ttfl")
            }
            first_chunk(url, budget)  # warm: session, service model, server caches
            for r in range(args.rounds):
                for _ in range(args.opens):  # interleaved: the default head, then the other
                    rows["first"].append(first_chunk(url, budget))
                    rows["first_head"].append(first_chunk(url, budget, other_head))
                for what in ("stream", *PARTS)[:: 1 if r % 2 == 0 else -1]:  # ABBA
                    settle(root / "weed")
                    if what == "stream":
                        rows["stream"].append(stream_all(url, budget))
                    else:
                        rows[f"download{what // MiB}"].append(download(url, what))
                rows["ttfl"].append(stream_first_layer(url, layer, budget))
                rows["dl_ttfl"].append(download_then_first_layer(url, root / "local.wst", layer))
                print(f"round {r}: " + ", ".join(f"{k} {v[-1]:.3f} s" for k, v in rows.items()))
                ms = {
                    k: ", ".join(f"{x * 1e3:.0f}" for x in rows[k][-args.opens :])
                    for k in ("first", "first_head")
                }
                print(
                    f"  opens: default head {ms['first']} ms; {args.head_kib} KiB head {ms['first_head']} ms"
                )
            admin.delete_object(Bucket=BUCKET, Key=KEY)
    med = {k: statistics.median(v) for k, v in rows.items()}
    mbs = size / 1e6
    print()
    print(
        f"machine: {platform.node()} {platform.machine()} {os.cpu_count()} cpus, "
        f"{datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC"
    )
    print(
        f"command: python bench/s3_stream.py --size-mb {args.size_mb} --layout {args.layout} "
        f"--rounds {args.rounds} --budget-mb {args.budget_mb}"
    )
    print(
        f"container: {size / MiB:.0f} MiB raw, {args.layout} layout, {nchunks} chunks, the first "
        f"{first_nbytes:,} bytes; {args.rounds} rounds ({args.opens} opens each), medians"
    )
    print()
    print("| figure | value | goal |")
    print("|---|---|---|")
    print(
        f"| open to first chunk in hand ({RemoteOptions().head_bytes // 1024} KiB head, the "
        f"default) | {med['first'] * 1e3:.0f} ms | <= 50 ms |"
    )
    print(
        f"| open to first chunk in hand ({args.head_kib} KiB head) | "
        f"{med['first_head'] * 1e3:.0f} ms | <= 50 ms |"
    )
    print(
        f"| streaming (CRC, slabs, budget {args.budget_mb} MiB) | {mbs / med['stream']:.0f} MB/s "
        f"| |"
    )
    for p in PARTS:
        print(
            f"| plain parallel download, same client, {p // MiB} MiB GETs, 8 in flight | "
            f"{mbs / med[f'download{p // MiB}']:.0f} MB/s | |"
        )
    best = min(PARTS, key=lambda p: med[f"download{p // MiB}"])
    dl = rows[f"download{best // MiB}"]
    ratios = [d / s for d, s in zip(dl, rows["stream"])]
    print(
        f"| streaming / the best download ({best // MiB} MiB) | "
        f"{statistics.median(dl) / med['stream']:.2f}x (per round: "
        f"{', '.join(f'{x:.2f}' for x in ratios)}) | >= 0.9x |"
    )
    print(
        f"| time to first layer: stream / download-then-load | {med['ttfl'] * 1e3:.0f} ms / "
        f"{med['dl_ttfl'] * 1e3:.0f} ms ({med['dl_ttfl'] / med['ttfl']:.1f}x sooner) | |"
    )


if __name__ == "__main__":
    main()
