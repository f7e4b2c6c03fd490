"""Small neighbouring chunks coalesced: requests and time, coalescing on against off.

    python bench/s3_coalesce.py [--rounds 5] [--delay-ms 0,20]

The tiny model packed with ``--max-chunk 96K`` (65 chunks of at most 96 KiB: the shape of a
container of many small pieces), streamed from SeaweedFS through the tests' counting
:class:`FaultProxy` with ``stream()`` (prefetch 2, 64 MiB budget, CRC checked), with the default
RemoteOptions (chunks up to 1 MiB share requests of up to 8 MiB) against ``small_chunk=0``
(one request per chunk). ``--delay-ms`` adds that much latency to every request at the proxy
(a store farther away than loopback). Rounds interleaved; medians.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

from _s3_tiny import URL, tiny_model_on_s3  # noqa: E402
from fault_proxy import FaultProxy  # noqa: E402

from wstream import open_container  # noqa: E402
from wstream.container.remote import RemoteOptions  # noqa: E402

VARIANTS = {
    "coalesced (defaults)": RemoteOptions(),
    "one GET per chunk": RemoteOptions(small_chunk=0),
}


def stream_all(url: str, options: RemoteOptions) -> float:
    t0 = time.perf_counter()
    with open_container(url, options=options) as c:
        for chunk in c.stream(prefetch=2, budget=64 << 20):
            chunk.release()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--delay-ms", default="0,20")
    args = ap.parse_args()
    delays = [float(d) for d in args.delay_ms.split(",")]
    rows: dict[tuple[float, str], list[tuple[float, int]]] = {}
    with tiny_model_on_s3("wstream-s3coalesce-") as server:
        url = URL
        with FaultProxy(server.endpoint) as proxy:
            os.environ["AWS_ENDPOINT_URL"] = proxy.endpoint
            with open_container(url) as c:
                n = len(c.manifest.chunks)
            for _ in range(args.rounds):
                for delay in delays:
                    proxy.delay = delay / 1e3
                    for name, options in VARIANTS.items():
                        proxy.seen.clear()
                        seconds = stream_all(url, options)
                        gets = sum(s.method == "GET" for s in proxy.seen)
                        rows.setdefault((delay, name), []).append((seconds, gets))
    print(
        f"machine: {platform.node()} {platform.machine()} {os.cpu_count()} cpus; "
        f"{datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC; load average "
        + " ".join(f"{x:.2f}" for x in os.getloadavg())
    )
    print(f"command: python bench/s3_coalesce.py --rounds {args.rounds} --delay-ms {args.delay_ms}")
    print(f"container: {n} chunks of at most 96 KiB; open + stream every chunk; medians")
    print()
    print("| added latency per request | variant | GETs (open included) | time |")
    print("|---|---|---|---|")
    for (delay, name), vals in rows.items():
        t = statistics.median(v[0] for v in vals) * 1e3
        g = statistics.median(v[1] for v in vals)
        print(f"| {delay:g} ms | {name} | {g:.0f} | {t:.0f} ms |")


if __name__ == "__main__":
    main()
