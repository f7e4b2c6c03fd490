"""``wstream run`` of a ~1 GB MiniCPM-V-shaped model from S3 through a capped link.

    python bench/s3_link.py [--rates 100,1000] [--rounds 3] [--budget 256M] [--work DIR]

Makes a checkpoint at the real 2.6 decoder widths (3584 / 18944, 28 / 4 heads; ``--decoder-layers``
blocks, a ``--vocab``-row embedding and lm_head, one vision block, which a text-only run never
reads) with :mod:`wstream.synthetic`, packs it raw and zstd + byte grouping, uploads both to a
fresh SeaweedFS (tests/s3_server.py) and puts the tests' :class:`FaultProxy` in front of it with
a bandwidth cap. Then, rounds interleaved, each run a fresh ``python -m wstream.cli run``:

- per link rate: the plain download of each object through the link (parallel 8 MiB ranged GETs
  with S3Source, a fresh process: the link rate reached), then ``run`` of each container;
- ``run`` of each container from the local file (the baseline of speed and of memory);
- per container, ``run --cache DIR`` twice over the first rate: the first fills the cache, the
  second reads from it.

Every run is the same request (8 ids, one new token: one pass over the decoder's weights) under
the same ``--budget``. Reported: wall time of the process, the run's own time (open + load +
prefill + decode from its report), stored bytes read against the link rate, the speedup of
zstd + grouping over raw, peak RSS (VmHWM, from the run's report; RssAnon, sampled every 2 ms)
of S3 runs against local ones, and the cached second run against the local run.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import functools
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent / "tests"), str(HERE)]

from _measure import Sampler  # noqa: E402
from fault_proxy import FaultProxy  # noqa: E402
from s3_server import running_server  # noqa: E402

from wstream import pack  # noqa: E402
from wstream.container.upload import S3Upload  # noqa: E402
from wstream.synthetic import PRESETS, write_checkpoint  # noqa: E402

MiB = 1 << 20
BUCKET = "bench"
KINDS = {"raw": {}, "zstd+group": {"codec": "zstd", "shuffle": True}}
IDS = "5,6,7,8,9,10,11,12"

# A fresh process that downloads the whole object through the link: 8 ranged GETs of 8 MiB in
# flight, each into its own reused buffer (no object-sized buffer), as S3Source splits a range.
_DOWNLOAD = r"""
import sys, time
from concurrent.futures import ThreadPoolExecutor
import threading
from wstream.container.s3 import S3Source
part = 8 << 20
local = threading.local()
with S3Source(sys.argv[1]) as src:
    def get(off):
        buf = getattr(local, "buf", None)
        if buf is None:
            buf = local.buf = memoryview(bytearray(part))
        src.read_into(off, buf[: min(part, src.size - off)])
    t0 = time.perf_counter()
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(get, range(0, src.size, part)))
    print(time.perf_counter() - t0)
"""


def make_model(root: Path, preset: str, decoder_layers: int, vocab: int) -> dict[str, Path]:
    full = PRESETS[preset]
    cfg = dataclasses.replace(
        full,
        vision=dataclasses.replace(full.vision, layers=1),
        decoder=dataclasses.replace(full.decoder, layers=decoder_layers, vocab=vocab),
    )
    ckpt = write_checkpoint(root / "ckpt", cfg, seed=0).directory
    out = {}
    for kind, kw in KINDS.items():
        out[kind] = root / f"{kind}.wst"
        pack(ckpt, out[kind], **kw)
    shutil.rmtree(ckpt)
    return out


def upload(path: Path, url: str) -> None:
    with S3Upload(url, part_size=64 * MiB) as up, open(path, "rb") as f:
        while block := f.read(16 * MiB):
            up.write(block)


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a live process has used (/proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


CPUS = ("cpu_run", "cpu_server", "cpu_proxy")


def run(
    src: str, env: dict[str, str], budget: str, cache: Path | None = None, *, server_pid: int = 0
) -> dict[str, Any]:
    """One ``wstream run`` in a fresh process: its report, wall time, sampled memory peaks, and
    the CPU seconds it, the server and this process (the proxy, the sampler) used meanwhile."""
    child0, self0 = (
        resource.getrusage(resource.RUSAGE_CHILDREN),
        resource.getrusage(resource.RUSAGE_SELF),
    )
    server0 = _cpu_seconds(server_pid) if server_pid else 0.0
    argv = [sys.executable, "-m", "wstream.cli", "run", src, "--input-ids", IDS]
    argv += ["--max-new-tokens", "1", "--budget", budget, "--json"]
    if cache is not None:
        argv += ["--cache", str(cache)]
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    with Sampler(proc.pid) as sampler:
        out, err = proc.communicate(timeout=900)
    wall = time.perf_counter() - t0
    child1, self1 = (
        resource.getrusage(resource.RUSAGE_CHILDREN),
        resource.getrusage(resource.RUSAGE_SELF),
    )
    server1 = _cpu_seconds(server_pid) if server_pid else 0.0
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({proc.returncode}):\n{err.decode()[-3000:]}")
    report = json.loads(out)
    t = report["timings"]
    return {
        "wall": wall,
        "inrun": t["open"] + t["load"] + t["prefill"] + t["decode"],
        # the link in use: from the open's GETs to the end, less the load step between them
        # (creating the loader; it is where ml_dtypes is imported, seconds with 0.7.0)
        "streamed": t["open"] + t["prefill"] + t["decode"],
        "bytes_read": report["bytes_read"],
        "vmhwm": report["peak_rss_bytes"],
        "rss_anon": sampler.peak.get("RssAnon", 0),
        "stall": report["loader"].get("stall_seconds", 0.0),
        "coalesced": report["loader"].get("chunks_coalesced", 0),
        "load": t["load"],
        "cpu_run": child1.ru_utime + child1.ru_stime - child0.ru_utime - child0.ru_stime,
        "cpu_server": server1 - server0,
        "cpu_proxy": self1.ru_utime + self1.ru_stime - self0.ru_utime - self0.ru_stime,
    }


def download(url: str, env: dict[str, str]) -> float:
    proc = subprocess.run(
        [sys.executable, "-c", _DOWNLOAD, url],
        env=env,
        capture_output=True,
        timeout=900,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"download failed:\n{proc.stderr.decode()[-3000:]}")
    return float(proc.stdout.split()[-1])


def med(rows: list[dict[str, Any]], key: str) -> float:
    return statistics.median(r[key] for r in rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rates", default="100,1000", help="link caps in MB/s, comma-separated")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--budget", default="256M")
    ap.add_argument("--preset", default="full", help="widths (tiny: a smoke test of the script)")
    ap.add_argument("--decoder-layers", type=int, default=2)
    ap.add_argument("--vocab", type=int, default=8192)
    ap.add_argument("--burst-ms", type=float, default=10.0, help="link buffer, milliseconds")
    ap.add_argument("--work", type=Path, default=None, help="scratch directory (default: /tmp)")
    args = ap.parse_args()
    rates = [float(r) for r in args.rates.split(",")]
    res: dict[str, list[dict[str, Any]]] = {}
    sizes: dict[str, int] = {}
    with tempfile.TemporaryDirectory(prefix="wstream-s3link-", dir=args.work) as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        paths = make_model(root, args.preset, args.decoder_layers, args.vocab)
        sizes = {k: p.stat().st_size for k, p in paths.items()}
        print(f"made {sizes} in {time.perf_counter() - t0:.0f} s", flush=True)
        # small volumes: SeaweedFS grows 7 at a time and refuses writes unless the disk holds them
        with running_server(root / "weed", volume_size_limit_mb=256) as server:
            go = functools.partial(run, server_pid=server.pid)
            base = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
            os.environ.update(server.environ())
            server.admin_client().create_bucket(Bucket=BUCKET)
            urls = {k: f"s3://{BUCKET}/{k}.wst" for k in KINDS}
            for kind, path in paths.items():
                upload(path, urls[kind])
            with FaultProxy(server.endpoint) as proxy:
                env = {**base, **server.environ(proxy.endpoint)}
                proxy.burst = args.burst_ms / 1e3
                go(str(paths["raw"]), env, args.budget)  # warm: imports, page cache

                def add(name: str, row: dict[str, Any] | float) -> None:
                    res.setdefault(name, []).append(row if isinstance(row, dict) else {"s": row})
                    shown = row if isinstance(row, float) else row["wall"]
                    print(f"  {name}: {shown:.2f} s", flush=True)

                for r in range(args.rounds):
                    print(f"round {r}", flush=True)
                    for rate in rates:
                        proxy.bandwidth = rate * 1e6
                        for kind, url in urls.items():
                            add(f"download {kind} @{rate:g}", download(url, env))
                            add(f"s3 {kind} @{rate:g}", go(url, env, args.budget))
                    proxy.bandwidth = None
                    for kind, path in paths.items():
                        add(f"local {kind}", go(str(path), env, args.budget))
                    proxy.bandwidth = rates[0] * 1e6
                    for kind, url in urls.items():
                        cache = root / f"cache-{kind}"
                        shutil.rmtree(cache, ignore_errors=True)
                        add(f"cache fill {kind} @{rates[0]:g}", go(url, env, args.budget, cache))
                        add(f"cache hit {kind}", go(url, env, args.budget, cache))
                    proxy.bandwidth = None
    report(args, rates, res, sizes)


def report(
    args: argparse.Namespace,
    rates: list[float],
    res: dict[str, list[dict[str, Any]]],
    sizes: dict[str, int],
) -> None:
    def mb(n: float) -> str:
        return f"{n / MiB:.0f} MiB"

    print()
    print(
        f"machine: {platform.node()} {platform.machine()} {os.cpu_count()} cpus; "
        f"{datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC; load average "
        + " ".join(f"{x:.2f}" for x in os.getloadavg())
    )
    print(
        f"command: python bench/s3_link.py --rates {args.rates} --rounds {args.rounds} "
        f"--budget {args.budget} --preset {args.preset} --decoder-layers {args.decoder_layers} --vocab {args.vocab} "
        f"--burst-ms {args.burst_ms:g}"
    )
    print("containers: " + ", ".join(f"{k} {mb(v)}" for k, v in sizes.items()))
    print(
        f"medians of {args.rounds} rounds; wall = the whole process; run = open + load + "
        "prefill + decode (its report); streamed = run less the load step"
    )
    print()
    print("| figure | raw | zstd+group | ratio / goal |")
    print("|---|---|---|---|")
    for rate in rates:
        s = {k: res[f"s3 {k} @{rate:g}"] for k in KINDS}
        d = {k: med(res[f"download {k} @{rate:g}"], "s") for k in KINDS}
        read = {k: med(s[k], "bytes_read") for k in KINDS}
        bound = {k: read[k] / (rate * 1e6) for k in KINDS}
        for key, what in (("wall", "wall"), ("inrun", "run"), ("streamed", "streamed")):
            v = {k: med(s[k], key) for k in KINDS}
            goal = " (goal >= 1.35x)" if rate <= 100 else ""
            print(
                f"| @{rate:g} MB/s: {what} time; / (stored bytes read / rate) | "
                + " | ".join(f"{v[k]:.2f} s; {v[k] / bound[k]:.2f}x" for k in KINDS)
                + f" | speedup {v['raw'] / v['zstd+group']:.2f}x{goal}; goal <= 1.1x |"
            )
        print(
            f"| @{rate:g} MB/s: stored bytes read; / rate | "
            + " | ".join(f"{mb(read[k])}; {bound[k]:.2f} s" for k in KINDS)
            + " | |"
        )
        print(
            f"| @{rate:g} MB/s: plain download of the object (link reached) | "
            + " | ".join(f"{d[k]:.2f} s ({sizes[k] / d[k] / 1e6:.0f} MB/s)" for k in KINDS)
            + " | |"
        )
        print(
            f"| @{rate:g} MB/s: load step (ml_dtypes import); stall; chunks coalesced | "
            + " | ".join(
                f"{med(s[k], 'load'):.2f} s; {med(s[k], 'stall'):.2f} s; "
                f"{med(s[k], 'coalesced'):.0f}"
                for k in KINDS
            )
            + " | |"
        )
        print(
            f"| @{rate:g} MB/s: CPU s of the run / the server / the proxy (2 cores: 2 s per s) | "
            + " | ".join(
                f"{med(s[k], 'cpu_run'):.2f} / {med(s[k], 'cpu_server'):.2f} / "
                f"{med(s[k], 'cpu_proxy'):.2f} s, {sum(med(s[k], c) for c in CPUS) / med(s[k], 'wall'):.2f} per s"
                for k in KINDS
            )
            + " | |"
        )
    for kind in ["local " + k for k in KINDS]:
        loc = res[kind]
        print(
            f"| {kind}: wall; CPU s of the run | {med(loc, 'wall'):.2f} s; "
            f"{med(loc, 'cpu_run'):.2f} s | | |"
        )
    for kind in KINDS:
        s3 = res[f"s3 {kind} @{rates[0]:g}"]
        loc = res[f"local {kind}"]
        print(
            f"| {kind}: peak VmHWM s3 @{rates[0]:g} / local | {mb(med(s3, 'vmhwm'))} / "
            f"{mb(med(loc, 'vmhwm'))} | | {(med(s3, 'vmhwm') - med(loc, 'vmhwm')) / MiB:+.0f} MiB "
            "(goal within 50 MB) |"
        )
        print(
            f"| {kind}: peak RssAnon s3 / local | {mb(med(s3, 'rss_anon'))} / "
            f"{mb(med(loc, 'rss_anon'))} | | "
            f"{(med(s3, 'rss_anon') - med(loc, 'rss_anon')) / MiB:+.0f} MiB |"
        )
        hit, fill = res[f"cache hit {kind}"], res[f"cache fill {kind} @{rates[0]:g}"]
        print(
            f"| {kind}: --cache fill @{rates[0]:g} / second run / local, wall (run) | "
            f"{med(fill, 'wall'):.2f} s / {med(hit, 'wall'):.2f} s ({med(hit, 'inrun'):.2f} s) / "
            f"{med(loc, 'wall'):.2f} s ({med(loc, 'inrun'):.2f} s) | | second / local "
            f"{med(hit, 'wall') / med(loc, 'wall'):.2f}x wall, "
            f"{med(hit, 'inrun') / med(loc, 'inrun'):.2f}x run (goal ~1x) |"
        )
    print()
    print("per run (seconds wall):")
    for name, rows in res.items():
        key = "s" if "s" in rows[0] else "wall"
        print(f"  {name}: " + ", ".join(f"{r[key]:.2f}" for r in rows))


if __name__ == "__main__":
    main()
