"""Choose the S3 client by measurement: parallel ranged-GET download throughput and small-GET
latency against SeaweedFS on loopback, for boto3/botocore, obstore and (if installed) s3fs.

    python bench/s3_client.py [--size-mb 1024] [--part-mb 8] [--concurrency 8] [--rounds 3]

Starts ``weed server -s3`` in a temporary directory (tests/s3_server.py), uploads one object of
``--size-mb`` random bytes, then in the same run, rounds interleaved so drift hits every client
alike: each client downloads the whole object as ``--part-mb`` ranged GETs with ``--concurrency``
in flight into one preallocated buffer (what a streaming source does: bytes land in a slab), and
times 64 ranged GETs of 4 KiB one after another. Prints medians and a Markdown table.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import boto3
from botocore.config import Config
from s3_server import running_server

from wstream.container.remote import RemoteOptions
from wstream.container.s3 import S3Source
from wstream.container.upload import S3Upload

BUCKET, KEY = "bench", "object.bin"
MiB = 1 << 20

Fetch = Callable[[int, memoryview], None]  # fill the view with bytes [offset, offset + len)


def boto3_fetcher(concurrency: int) -> tuple[Fetch, Callable[[], None]]:
    client = boto3.session.Session().client(
        "s3",
        config=Config(
            max_pool_connections=concurrency,
            retries={"max_attempts": 1},
            connect_timeout=5,
            read_timeout=30,
        ),
    )

    def fetch(offset: int, out: memoryview) -> None:
        body = client.get_object(
            Bucket=BUCKET, Key=KEY, Range=f"bytes={offset}-{offset + len(out) - 1}"
        )["Body"]
        got = 0
        while got < len(out):  # straight from the socket into the buffer: no extra copy
            n = body.readinto(out[got:])
            if not n:
                raise RuntimeError("short body")
            got += n
        body.close()

    return fetch, client.close


def obstore_fetcher(concurrency: int) -> tuple[Fetch, Callable[[], None]]:
    import obstore
    from obstore.auth.boto3 import Boto3CredentialProvider
    from obstore.store import S3Store

    # obstore reads AWS_* variables but not the shared config/credentials files or profiles:
    # those need boto3's resolver as its credential provider
    store = S3Store(
        BUCKET,
        region=os.environ["AWS_REGION"],
        credential_provider=Boto3CredentialProvider(boto3.session.Session()),
        client_options={"allow_http": True, "pool_max_idle_per_host": str(concurrency)},
    )

    def fetch(offset: int, out: memoryview) -> None:
        data = obstore.get_range(store, KEY, start=offset, length=len(out))
        out[:] = memoryview(data)  # obstore returns its own buffer: one copy into ours

    return fetch, lambda: None


def s3fs_fetcher(concurrency: int) -> tuple[Fetch, Callable[[], None]] | None:
    try:
        import s3fs
    except ImportError:
        return None
    fs = s3fs.S3FileSystem(endpoint_url=os.environ["AWS_ENDPOINT_URL"], max_concurrency=1)

    def fetch(offset: int, out: memoryview) -> None:
        data = fs.cat_file(f"{BUCKET}/{KEY}", start=offset, end=offset + len(out))
        out[:] = data

    return fetch, lambda: None


def wstream_fetcher(concurrency: int) -> tuple[Fetch, Callable[[], None]]:
    """wstream's own S3Source (boto3/botocore underneath), one read_into per part; the pool
    of this bench issues the parts, so the source reads each one with a single request."""
    src = S3Source(
        f"s3://{BUCKET}/{KEY}", RemoteOptions(concurrency=concurrency, part_size=1 << 30)
    )
    return src.read_into, src.close


def download(fetch: Fetch, buf: memoryview, part: int, pool: ThreadPoolExecutor) -> float:
    t0 = time.perf_counter()
    futures = [
        pool.submit(fetch, off, buf[off : min(off + part, len(buf))])
        for off in range(0, len(buf), part)
    ]
    for f in futures:
        f.result()
    return time.perf_counter() - t0


def small_latency(fetch: Fetch, size: int, n: int = 64) -> float:
    out = memoryview(bytearray(4096))
    times = []
    for i in range(n):
        off = (i * 7919 * 4096) % (size - 4096)
        t0 = time.perf_counter()
        fetch(off, out)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def open_latency(size: int, n: int = 20) -> float:
    """S3Source open (one GET: size, ETag, head bytes) + preamble + a 64 KiB tail read (the
    manifest's GET): what opening a container costs, client creation included."""
    times = []
    tail = memoryview(bytearray(64 * 1024))
    for _ in range(n):
        t0 = time.perf_counter()
        with S3Source(f"s3://{BUCKET}/{KEY}") as src:
            src.read_into(0, memoryview(bytearray(64)))
            src.read_into(size - len(tail), tail)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size-mb", type=int, default=1024)
    ap.add_argument("--part-mb", type=int, default=8)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    size, part = args.size_mb * MiB, args.part_mb * MiB
    with tempfile.TemporaryDirectory(prefix="wstream-s3bench-") as tmp:
        with running_server(Path(tmp) / "weed", volume_size_limit_mb=4096) as server:
            os.environ.update(server.environ())
            admin = server.admin_client()
            admin.create_bucket(Bucket=BUCKET)  # type: ignore[attr-defined]
            src = Path(tmp) / "object.bin"
            with open(src, "wb") as f:
                for _ in range(args.size_mb):
                    f.write(os.urandom(MiB))
            t0 = time.perf_counter()
            with S3Upload(f"s3://{BUCKET}/{KEY}", part_size=64 * MiB) as up, open(src, "rb") as f:
                while block := f.read(16 * MiB):
                    up.write(block)
            upload_s = time.perf_counter() - t0
            digest = hashlib.sha256(src.read_bytes()).hexdigest()
            src.unlink()
            makers = {
                "wstream-S3Source": wstream_fetcher,
                "boto3": boto3_fetcher,
                "obstore": obstore_fetcher,
                "s3fs": s3fs_fetcher,
            }
            clients = {}
            for name, make in makers.items():
                made = make(args.concurrency)
                if made is not None:
                    clients[name] = made
            buf = memoryview(bytearray(size))
            speeds: dict[str, list[float]] = {name: [] for name in clients}
            with ThreadPoolExecutor(args.concurrency) as pool:
                for name, (fetch, _) in clients.items():  # warm-up, and check the bytes
                    download(fetch, buf, part, pool)
                    if hashlib.sha256(buf).hexdigest() != digest:
                        raise SystemExit(f"{name}: downloaded bytes differ from the upload")
                for r in range(args.rounds):
                    for name, (fetch, _) in clients.items():
                        seconds = download(fetch, buf, part, pool)
                        speeds[name].append(size / seconds / 1e6)
                        print(f"round {r} {name}: {size / seconds / 1e6:.0f} MB/s", flush=True)
            latency = {name: small_latency(fetch, size) for name, (fetch, _) in clients.items()}
            opened = open_latency(size)
            for _, close in clients.values():
                close()
    print()
    print(
        f"machine: {platform.node()} {platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}; upload of {args.size_mb} MiB: {upload_s:.1f} s"
    )
    print(
        f"command: python bench/s3_client.py --size-mb {args.size_mb} --part-mb "
        f"{args.part_mb} --concurrency {args.concurrency} --rounds {args.rounds}"
    )
    print()
    print(f"S3Source open + preamble + 64 KiB manifest read: {opened * 1e3:.1f} ms (median of 20)")
    print()
    print("| client | download MB/s (median) | rounds | 4 KiB ranged GET median ms |")
    print("|---|---|---|---|")
    for name in clients:
        rounds = ", ".join(f"{s:.0f}" for s in speeds[name])
        print(
            f"| {name} | {statistics.median(speeds[name]):.0f} | {rounds} | "
            f"{latency[name] * 1e3:.2f} |"
        )


if __name__ == "__main__":
    main()
