"""Streaming a container from S3 (SeaweedFS on loopback) against downloading it, same run.

    python bench/s3_stream.py [--size-mb 1024] [--rounds 3] [--budget-mb 512] [--work DIR]

Packs a generic checkpoint of ``--size-mb`` random float16 bytes (raw codec; chunks of 32 MiB)
straight to the server (``pack`` uploads while packing), deletes the checkpoint, then, rounds interleaved so machine drift hits each alike, measures:

- open to first chunk in hand: ``open_container(url)`` + the first chunk of ``stream()``;
- streaming throughput: every chunk through ``stream()`` (CRC checked, bytes in pool slabs
  under ``--budget-mb``) against the best plain download of the same object with the same
  client (S3Source: 8 MiB ranged GETs, 8 in flight, each into a reused buffer, no CRC);
- time to the first layer's chunks: streaming, against download-then-load (download the whole
  object to a local file, then open it and take the same chunks).

Prints medians and a Markdown table. Memory stays bounded whatever the size (no object-sized
buffer); disk: the checkpoint, then the server's copy and one downloaded copy at a time, all in
a temporary directory (``--work``) removed at the end, the object deleted after the rounds.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
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

from s3_server import running_server

from wstream import open_container, pack
from wstream.container.s3 import S3Source

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


PART = 8 * MiB  # the plain download's ranged GETs: 8 in flight, as S3Source splits a range


def parallel_get(url: str, sink: Callable[[int, memoryview], None] | None = None) -> None:
    """The whole object as 8 MiB ranged GETs, 8 in flight, each into its own reused buffer
    (never an object-sized one); ``sink(offset, data)`` gets each part (e.g. a file write)."""
    local = threading.local()
    with S3Source(url) as src:

        def get(offset: int) -> None:
            buf = getattr(local, "buf", None)
            if buf is None:
                buf = local.buf = memoryview(bytearray(PART))
            view = buf[: min(PART, src.size - offset)]
            src.read_into(offset, view)
            if sink is not None:
                sink(offset, view)

        with ThreadPoolExecutor(8) as pool:
            list(pool.map(get, range(0, src.size, PART)))


def first_chunk(url: str, budget: int) -> float:
    t0 = time.perf_counter()
    with open_container(url) as c:
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


def download(url: str) -> float:
    t0 = time.perf_counter()
    parallel_get(url)
    return time.perf_counter() - t0


def download_then_first_layer(url: str, path: Path, layer: list[str]) -> float:
    t0 = time.perf_counter()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        parallel_get(url, lambda offset, data: _pwrite_all(fd, data, offset))
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


def stream_first_layer(url: str, layer: list[str], budget: int) -> float:
    t0 = time.perf_counter()
    with open_container(url) as c:
        for chunk in c.stream(layer, budget=budget, prefetch=4):
            chunk.release()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size-mb", type=int, default=1024)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--budget-mb", type=int, default=512)
    ap.add_argument("--work", type=Path, default=None, help="scratch directory (default: /tmp)")
    args = ap.parse_args()
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
            make_container(root, args.size_mb, url)
            with open_container(url) as c:
                layer = [ch.name for ch in c.manifest.chunks][:1]
                size = c.file_size
            print(f"packed and uploaded {size / MiB:.0f} MiB in {time.perf_counter() - t0:.0f} s")
            rows: dict[str, list[float]] = {
                k: [] for k in ("first", "stream", "download", "ttfl", "dl_ttfl")
            }
            first_chunk(url, budget)  # warm: session, service model, server caches
            for r in range(args.rounds):
                rows["first"].append(first_chunk(url, budget))
                rows["stream"].append(stream_all(url, budget))
                rows["download"].append(download(url))
                rows["ttfl"].append(stream_first_layer(url, layer, budget))
                rows["dl_ttfl"].append(download_then_first_layer(url, root / "local.wst", layer))
                print(f"round {r}: " + ", ".join(f"{k} {v[-1]:.3f} s" for k, v in rows.items()))
            admin.delete_object(Bucket=BUCKET, Key=KEY)
    med = {k: statistics.median(v) for k, v in rows.items()}
    mbs = size / 1e6
    print()
    print(
        f"machine: {platform.node()} {platform.machine()} {os.cpu_count()} cpus, "
        f"{datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC"
    )
    print(
        f"command: python bench/s3_stream.py --size-mb {args.size_mb} --rounds {args.rounds} "
        f"--budget-mb {args.budget_mb}"
    )
    print(f"container: {size / MiB:.0f} MiB raw, {len(rows['first'])} rounds, medians")
    print()
    print("| figure | value | goal |")
    print("|---|---|---|")
    print(f"| open to first chunk in hand | {med['first'] * 1e3:.0f} ms | <= 50 ms |")
    print(
        f"| streaming (CRC, slabs, budget {args.budget_mb} MiB) | {mbs / med['stream']:.0f} MB/s "
        f"| |"
    )
    print(f"| plain parallel download, same client | {mbs / med['download']:.0f} MB/s | |")
    print(f"| streaming / download | {med['download'] / med['stream']:.2f}x | >= 0.9x |")
    print(
        f"| time to first layer: stream / download-then-load | {med['ttfl'] * 1e3:.0f} ms / "
        f"{med['dl_ttfl'] * 1e3:.0f} ms ({med['dl_ttfl'] / med['ttfl']:.1f}x sooner) | |"
    )


if __name__ == "__main__":
    main()
