"""Streaming a container from S3 (SeaweedFS on loopback) against downloading it, same run.

    python bench/s3_stream.py [--size-mb 1024] [--rounds 3] [--budget-mb 512]

Packs a generic checkpoint of ``--size-mb`` random float16 bytes (raw codec; chunks of 32 MiB),
uploads it, then, rounds interleaved so machine drift hits each alike, measures:

- open to first chunk in hand: ``open_container(url)`` + the first chunk of ``stream()``;
- streaming throughput: every chunk through ``stream()`` (CRC checked, bytes in pool slabs
  under ``--budget-mb``) against the best plain download of the same object with the same
  client (S3Source: parallel 8 MiB ranged GETs into one buffer, no CRC);
- time to the first layer's chunks: streaming, against download-then-load (download the whole
  object to a local file, then open it and take the same chunks).

Prints medians and a Markdown table.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from s3_server import running_server
from wst_testing import write_checkpoint

from wstream import open_container, pack
from wstream.container.s3 import S3Source
from wstream.container.upload import S3Upload

BUCKET, KEY = "bench", "model.wst"
MiB = 1 << 20


def make_container(root: Path, size_mb: int) -> Path:
    rng = np.random.default_rng(0)
    per = 32 * MiB // 2  # float16 elements per tensor: one 32 MiB chunk each
    tensors = {
        f"layers.{i}.w": rng.integers(0, 1 << 16, per, dtype=np.uint16).view(np.float16)
        for i in range(max(1, size_mb // 32))
    }
    ckpt = write_checkpoint(root / "ckpt", tensors)
    out = root / "model.wst"
    pack(ckpt, out)
    return out


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


def download(url: str, buf: memoryview) -> float:
    t0 = time.perf_counter()
    with S3Source(url) as src:
        src.read_into(0, buf)
    return time.perf_counter() - t0


def download_then_first_layer(url: str, buf: memoryview, path: Path, layer: list[str]) -> float:
    t0 = time.perf_counter()
    with S3Source(url) as src:
        src.read_into(0, buf)
    with open(path, "wb") as f:
        f.write(buf)
    with open_container(path) as c:
        for chunk in c.stream(layer):
            chunk.release()
    return time.perf_counter() - t0


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
    args = ap.parse_args()
    budget = args.budget_mb * MiB
    with tempfile.TemporaryDirectory(prefix="wstream-s3stream-") as tmp:
        root = Path(tmp)
        path = make_container(root, args.size_mb)
        size = path.stat().st_size
        with running_server(root / "weed", volume_size_limit_mb=4096) as server:
            os.environ.update(server.environ())
            admin = server.admin_client()
            admin.create_bucket(Bucket=BUCKET)
            with S3Upload(f"s3://{BUCKET}/{KEY}", part_size=64 * MiB) as up, open(path, "rb") as f:
                while block := f.read(16 * MiB):
                    up.write(block)
            with open_container(path) as c:
                layer = [ch.name for ch in c.manifest.chunks][:1]
            path.unlink()
            url = f"s3://{BUCKET}/{KEY}"
            buf = memoryview(bytearray(size))
            rows: dict[str, list[float]] = {
                k: [] for k in ("first", "stream", "download", "ttfl", "dl_ttfl")
            }
            first_chunk(url, budget)  # warm: session, service model, server caches
            for r in range(args.rounds):
                rows["first"].append(first_chunk(url, budget))
                rows["stream"].append(stream_all(url, budget))
                rows["download"].append(download(url, buf))
                rows["ttfl"].append(stream_first_layer(url, layer, budget))
                rows["dl_ttfl"].append(
                    download_then_first_layer(url, buf, root / "local.wst", layer)
                )
                print(f"round {r}: " + ", ".join(f"{k} {v[-1]:.3f} s" for k, v in rows.items()))
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
