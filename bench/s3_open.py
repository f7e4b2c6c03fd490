"""Open latency over S3 (SeaweedFS on loopback): where the time goes, and what each remedy buys.

    python bench/s3_open.py [--tries 20]

The tiny synthetic model packed with ``--max-chunk 96K`` (65 chunks, the first 74 KiB at offset
4096, the manifest at the end). Measured:

- in a fresh process (the first open of a process): importing wstream and the S3 module
  (botocore), the first botocore client (session and service model), the first open, its first
  chunk; then, same process, a second client and one bare ranged GET (the request floor);
- in this process, ``--tries`` rounds, variants interleaved, medians: ``open_container(url)``
  and open to the first chunk in hand (``stream()``, ``next()``), for

  - ``before``: a new client per open, 64 KiB head, no tail (the manifest a second GET, after
    the first; the first chunk a third);
  - ``+reuse``: the client of a closed source reused;
  - ``+tail``: the last 256 KiB fetched in parallel with the head (the manifest in it);
  - ``+head 256K`` (the defaults): the first chunk in the head too: one round trip in all.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

from _s3_tiny import URL, tiny_model_on_s3  # noqa: E402

from wstream import open_container  # noqa: E402
from wstream.container import s3  # noqa: E402
from wstream.container.remote import RemoteOptions  # noqa: E402

KiB = 1 << 10
VARIANTS = {
    "before": (False, RemoteOptions(head_bytes=64 * KiB, tail_bytes=0)),
    "+reuse": (True, RemoteOptions(head_bytes=64 * KiB, tail_bytes=0)),
    "+tail": (True, RemoteOptions(head_bytes=64 * KiB, tail_bytes=256 * KiB)),
    "+head 256K": (True, RemoteOptions()),
}

# The first open of a process, phase by phase (the child prints one JSON line).
_FIRST = r"""
import json, sys, time
t0 = time.perf_counter()
from wstream import open_container
t1 = time.perf_counter()
from wstream.container import s3
from wstream.container.remote import RemoteOptions
t2 = time.perf_counter()
key, client = s3.acquire_client(RemoteOptions())
s3.release_client(key, client)
t3 = time.perf_counter()
with open_container(sys.argv[1]) as c:
    t4 = time.perf_counter()
    stream = c.stream(prefetch=2, budget=64 << 20)
    next(stream).release()
    t5 = time.perf_counter()
    stream.close()
t6 = time.perf_counter()
client = s3.make_client(RemoteOptions())
t7 = time.perf_counter()
url = s3.parse_s3_url(sys.argv[1])
gets = []
for _ in range(5):
    g0 = time.perf_counter()
    r = client.get_object(Bucket=url.bucket, Key=url.key, Range="bytes=0-65535")
    r["Body"].read()
    gets.append(time.perf_counter() - g0)
client.close()
gets.sort()
print(json.dumps({"import wstream": t1 - t0, "import s3 (botocore)": t2 - t1,
                  "first client (session, service model)": t3 - t2,
                  "first open_container (client reused)": t4 - t3,
                  "first chunk after open": t5 - t4, "another client": t7 - t6,
                  "one 64 KiB ranged GET (median of 5)": gets[2]}))
"""


def timed_open(url: str, reuse: bool, options: RemoteOptions) -> tuple[float, float]:
    if not reuse:
        s3._idle.clear()  # as before: every source makes its own client
    t0 = time.perf_counter()
    with open_container(url, options=options) as c:
        t1 = time.perf_counter()
        stream = c.stream(prefetch=2, budget=64 << 20)
        chunk = next(stream)
        t2 = time.perf_counter()
        chunk.release()
        stream.close()  # type: ignore[attr-defined]
    return t1 - t0, t2 - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tries", type=int, default=20)
    args = ap.parse_args()
    with tiny_model_on_s3("wstream-s3open-"):
        url = URL
        with open_container(url) as c:
            n, first = len(c.manifest.chunks), c.manifest.chunks[0]
            manifest = (c.preamble.manifest_offset, c.preamble.manifest_nbytes, c.file_size)
        firsts = []
        for _ in range(3):  # the first open of a process, in fresh processes
            proc = subprocess.run(
                [sys.executable, "-c", _FIRST, url], capture_output=True, check=True
            )
            firsts.append(json.loads(proc.stdout))
        rows: dict[str, list[tuple[float, float]]] = {k: [] for k in VARIANTS}
        for _ in range(args.tries):
            for name, (reuse, options) in VARIANTS.items():
                rows[name].append(timed_open(url, reuse, options))
    print(
        f"machine: {platform.node()} {platform.machine()} {os.cpu_count()} cpus; "
        f"{datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC; load average "
        + " ".join(f"{x:.2f}" for x in os.getloadavg())
    )
    print(f"command: python bench/s3_open.py --tries {args.tries}")
    print(
        f"container: {n} chunks, the first {first.nbytes} bytes at offset {first.offset}; "
        f"manifest {manifest[1]} bytes at {manifest[0]} of {manifest[2]}"
    )
    print()
    print("first open of a process (fresh process; median of 3):")
    print()
    print("| phase | ms |")
    print("|---|---|")
    for key in firsts[0]:
        print(f"| {key} | {statistics.median(f[key] for f in firsts) * 1e3:.1f} |")
    print()
    print(f"later opens in a process ({args.tries} tries, interleaved, medians):")
    print()
    print("| variant | open_container | open to first chunk in hand |")
    print("|---|---|---|")
    for name, vals in rows.items():
        o = statistics.median(v[0] for v in vals) * 1e3
        f = statistics.median(v[1] for v in vals) * 1e3
        print(f"| {name} | {o:.1f} ms | {f:.1f} ms |")


if __name__ == "__main__":
    main()
