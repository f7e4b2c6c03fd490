"""wstream against its peers, side by side, on this machine, in one run.

    python bench/harness.py [--size 1G] [--data DIR] [--only a e-k2 ...] [--no-cold]
                            [--new-tokens N] [--repeats N] [--max-chunk 8M] [--budget SIZE]
                            [--as-found-memory] [--snapshot] [--out DIR]

Generates (or reuses) one MiniCPM-V-shaped checkpoint of about ``--size`` bytes of bf16 and the
same weights in every contender's format (see ``_harness_data.py``), then runs one request (a
448 x 448 image slice, 16 text tokens, ``--new-tokens`` greedy tokens) per contender, each in a
fresh process, with a warm and then a cold page cache (fsync + POSIX_FADV_DONTNEED of every data
file before each cold run, of every file but the contender's own before each warm run, so both
start with the same pool of just-freed memory; residency checked with mincore):

    a     safetensors load_file, everything widened to float32 up front
    b     safetensors safe_open, tensor by tensor as each group needs it (lazy, no prefetch)
    c     mmap-ninja, one memory-mapped array per tensor (zero-copy mmap baseline)
    d     one safetensors file per group, loaded when needed (AirLLM's scheme, no prefetch)
    e-kK  wstream raw container, StreamingLoader with prefetch K = 0, 1, 2
    f     wstream zstd + byte grouping, prefetch 2
    g     wstream INT8 linear layers, prefetch 2

The parent samples each child's /proc status every 2 ms (total RSS and RssAnon over time). Every
ratio is taken against (a) in the same round and cache state; every contender's logits are
checked against (a)'s. Writes bench/RESULTS.md, bench/results/harness.json and
bench/results/memory.png (``--out`` moves them, e.g. for a smoke run). A failed contender is
reported and the run goes on.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _harness_data import files_under, prepare  # noqa: E402
from _measure import Sampler, drop_cache, resident, wait_quiet, warm  # noqa: E402

MiB = 1 << 20
CHILD = HERE / "_contenders.py"
TEXT_IDS = 16


@dataclass(frozen=True)
class Contender:
    key: str
    label: str
    kind: str  # _contenders.run's kind
    reads: tuple[str, ...]  # what it reads, under the data directory
    args: dict[str, Any] = field(default_factory=dict)


def contenders(budget: int) -> list[Contender]:
    def ws(key: str, label: str, container: str, k: int, mapped: bool = False) -> Contender:
        return Contender(
            key,
            label,
            "wstream",
            (container,),
            {"container": container, "budget": budget, "prefetch": k, "mapped": mapped},
        )

    return [
        Contender("a", "safetensors load_file (all, float32)", "st-load", ("checkpoint",)),
        Contender("b", "safetensors safe_open, lazy", "st-lazy", ("checkpoint",)),
        Contender("c", "mmap-ninja, per tensor", "ninja", ("ninja",)),
        Contender("d", "per-layer files (AirLLM-style)", "layers", ("layers",)),
        ws("e-k0", "wstream raw, k=0", "raw.wst", 0),
        ws("e-k1", "wstream raw, k=1", "raw.wst", 1),
        ws("e-k2", "wstream raw, k=2", "raw.wst", 2),
        ws("e-k2m", "wstream raw, k=2, mapped (no pread copy)", "raw.wst", 2, mapped=True),
        ws("f", "wstream zstd+bytegroup, k=2", "zstd.wst", 2),
        ws("g", "wstream INT8, k=2", "int8.wst", 2),
    ]


class Trace(Sampler):
    """A Sampler that also keeps every sample: (time.monotonic(), VmRSS, RssAnon, RssFile)."""

    def __init__(self, pid: int, interval: float = 0.002) -> None:
        super().__init__(pid, interval)
        self.series: list[tuple[float, int, int, int]] = []

    def _record(self, s: dict[str, int]) -> None:
        self.series.append((time.monotonic(), s["VmRSS"], s.get("RssAnon", 0), s.get("RssFile", 0)))


def run_child(
    c: Contender, data: Path, common: dict[str, Any], out: Path, timeout: float
) -> dict[str, Any]:
    """One request in a fresh interpreter, sampled from here; raises RuntimeError on failure."""
    args = {**common, **c.args, "data": str(data), "out": str(out)}
    cmd = [sys.executable, str(CHILD), c.kind, json.dumps(args)]
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    with Trace(proc.pid) as trace:
        try:
            stdout, stderr = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            stdout, stderr = proc.communicate()
            raise RuntimeError(f"timed out after {timeout:g} s") from None
    if proc.returncode != 0:
        tail = stderr.strip().splitlines()[-1:] or [f"exit {proc.returncode}"]
        raise RuntimeError(f"exit {proc.returncode}: {tail[0]}\n{stderr[-3000:]}")
    lines = [ln for ln in stdout.splitlines() if ln.startswith("{")]
    if not lines:
        raise RuntimeError(f"no result\n{stderr[-3000:]}")
    r: dict[str, Any] = json.loads(lines[-1])
    r["process_s"] = time.monotonic() - t0
    r["peak_anon"] = trace.peak.get("RssAnon", 0)
    r["peak_rss_sampled"] = trace.peak.get("VmRSS", 0)
    r["samples"] = trace.samples
    r["trace"] = [(t - r["section"], rss, anon, f) for t, rss, anon, f in trace.series]
    return r


# --- checking logits --------------------------------------------------------------------------


def check_logits(ref: Path, got: Path, lossless: bool) -> dict[str, Any]:
    """Compare a run's logits and tokens with (a)'s. Lossless: bitwise, or max |diff| at most
    1e-6 of max |logit|. INT8: cosine of the prefill logits >= 0.999 and the same tokens (where
    the tokens part, how close (a) itself was to the other pick is reported)."""
    import numpy as np

    with np.load(ref) as a, np.load(got) as b:
        la, lb = a["logits"].astype(np.float64), b["logits"].astype(np.float64)
        sa, sb = a["step_logits"].astype(np.float64), b["step_logits"].astype(np.float64)
        ta, tb = a["tokens"].tolist(), b["tokens"].tolist()
    if la.shape != lb.shape or sa.shape != sb.shape:
        return {"ok": False, "verdict": f"shapes differ: {lb.shape} vs {la.shape}"}

    def rel(x: np.ndarray, y: np.ndarray) -> float:
        return float(np.abs(x - y).max() / np.abs(x).max()) if x.size else 0.0

    prefill_rel, steps_rel = rel(la, lb), rel(sa, sb)
    prefill_bitwise, steps_bitwise = bool(np.array_equal(la, lb)), bool(np.array_equal(sa, sb))
    cos = float((la * lb).sum() / np.sqrt((la * la).sum() * (lb * lb).sum()))
    same_tokens = ta == tb
    agree = next((i for i, (x, y) in enumerate(zip(ta, tb)) if x != y), len(ta))
    out: dict[str, Any] = {
        "bitwise": prefill_bitwise and steps_bitwise,
        "prefill_bitwise": prefill_bitwise,
        "steps_bitwise": steps_bitwise,
        "prefill_max_rel_diff": prefill_rel,
        "steps_max_rel_diff": steps_rel,
        "cosine": cos,
        "same_tokens": same_tokens,
        "tokens_agreeing": agree,
    }
    if lossless:
        ok = max(prefill_rel, steps_rel) <= 1e-6 and same_tokens
        if out["bitwise"]:
            verdict = "bitwise"
        else:
            parts = [("prefill", prefill_bitwise, prefill_rel), ("steps", steps_bitwise, steps_rel)]
            verdict = "; ".join(
                f"{n} " + ("bitwise" if bw else f"max rel diff {r:.1e}") for n, bw, r in parts
            )
    else:
        ok = cos >= 0.999 and same_tokens
        verdict = f"cosine {cos:.5f}"
    if not same_tokens:
        row = la[-1] if agree == 0 else sa[agree - 1]  # (a)'s logits where the pick was made
        gap = float((row.max() - row[tb[agree]]) / row.std())
        out["gap_at_divergence_std"] = gap
        verdict += (
            f"; tokens agree up to #{agree}, where (a)'s logit for the other pick is "
            f"{gap:.2f} std below its top"
        )
    out.update(ok=bool(ok), verdict=verdict)
    return out


def fault_rate(nbytes: int = 512 * MiB) -> float:
    """GB/s at which a fresh process first touches ``nbytes`` of new memory (this VM's
    virtio-balloon free page reporting makes it vary by 10x; see RESULTS.md)."""
    code = (
        "import time, numpy as np; t = time.perf_counter(); "
        f"a = np.ones({nbytes}, np.uint8); print({nbytes} / (time.perf_counter() - t) / 1e9)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(out.stdout.strip())


def _git(*a: str) -> str:
    done = subprocess.run(
        ["git", "-C", str(HERE.parent), *a], capture_output=True, text=True, check=False
    )
    return done.stdout.rstrip("\n")


def snapshot(root: Path) -> tuple[Path, str]:
    """A copy of the committed ``wstream/`` (``git archive HEAD``) under ``root``, so edits to the
    working tree during a run cannot mix code versions; returns (its directory, the commit)."""
    commit = _git("rev-parse", "--short", "HEAD")
    dest = root / f"code-{commit}"
    if not (dest / "wstream" / "__init__.py").exists():
        dest.mkdir(parents=True, exist_ok=True)
        archive = subprocess.run(
            ["git", "-C", str(HERE.parent), "archive", "HEAD", "wstream"],
            capture_output=True,
            check=True,
        )
        subprocess.run(["tar", "-x", "-C", str(dest)], input=archive.stdout, check=True)
    return dest, commit


def git_state(snapshot_commit: str | None) -> str:
    if snapshot_commit is not None:
        return f"{snapshot_commit} (a snapshot of the committed wstream/, `--snapshot`)"
    dirty = [ln[3:] for ln in _git("status", "--porcelain", "--", "wstream").splitlines()]
    head = _git("rev-parse", "--short", "HEAD")
    return head + (f" + uncommitted {', '.join(dirty)}" if dirty else "")


# --- the run ----------------------------------------------------------------------------------


RATIO_KEYS = ("peak_rss", "peak_anon", "first_layer_s", "total_s", "stall_s", "bytes_read")


def describe_machine() -> str:
    cpu = next(
        (
            ln.split(":", 1)[1].strip()
            for ln in open("/proc/cpuinfo")
            if ln.startswith("model name")
        ),
        platform.processor() or "?",
    )
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    import numpy

    return (
        f"{cpu}, {os.cpu_count()} vCPU, {mem / (1 << 30):.1f} GiB RAM, "
        f"{platform.platform()}, Python {platform.python_version()}, numpy {numpy.__version__}"
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", default="1G", help="bf16 checkpoint size (K/M/G), default 1G")
    ap.add_argument("--data", type=Path, default=Path("/work/bench-data/harness"))
    keys = [c.key for c in contenders(0)]
    ap.add_argument(
        "--only",
        nargs="+",
        choices=keys,
        default=keys,
        help="contenders to run ((a) always runs: it is every ratio's baseline)",
    )
    ap.add_argument("--no-cold", action="store_true", help="warm page cache only")
    ap.add_argument("--new-tokens", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=1, help="rounds; medians are reported")
    ap.add_argument("--max-chunk", default="8M", help="pack's --max-chunk for the containers")
    ap.add_argument(
        "--budget",
        default=None,
        help="StreamingLoader budget (default: a quarter of the checkpoint)",
    )
    ap.add_argument("--out", type=Path, default=HERE, help="where RESULTS.md and results/ go")
    ap.add_argument("--timeout", type=float, default=1800.0, help="seconds per contender")
    ap.add_argument(
        "--quiet-timeout",
        type=float,
        default=60.0,
        help="wait up to this long for other processes to quieten before each run",
    )
    ap.add_argument(
        "--as-found-memory",
        action="store_true",
        help="before a warm run, leave the other data files cached (by default they are dropped "
        "so warm and cold runs start with the same pool of recently freed memory; see RESULTS.md)",
    )
    ap.add_argument(
        "--snapshot",
        action="store_true",
        help="run a copy of the committed wstream/ (git archive HEAD), not the working tree",
    )
    args = ap.parse_args(argv)
    snap_commit = None
    if args.snapshot:  # before anything imports wstream; children inherit PYTHONPATH
        code, snap_commit = snapshot(args.data)
        sys.path.insert(0, str(code))
        os.environ["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(code), os.environ.get("PYTHONPATH")) if p
        )
    import wstream
    from wstream.cli import parse_size

    print(f"wstream from {Path(wstream.__file__).parent}", flush=True)
    argv_text = " ".join(sys.argv[1:] if argv is None else argv)
    started = time.monotonic()

    def log(msg: str) -> None:
        print(msg, flush=True)

    size = parse_size(args.size)
    log(f"preparing data for --size {args.size} under {args.data} ...")
    data_info = prepare(args.data, size, parse_size(args.max_chunk), log)
    data = Path(data_info["dir"])
    log(f"  model: {data_info['description']}")
    os.sync()  # freshly written data must not be written back while a contender runs
    faults = [fault_rate()]
    log(f"  first touch of new memory in a fresh process: {faults[0]:.2f} GB/s")
    quarter = (data_info["stored_bytes"] // 4 // MiB) * MiB
    budget = parse_size(args.budget) if args.budget else quarter
    chosen = [c for c in contenders(budget) if c.key == "a" or c.key in args.only]
    import numpy as np

    vocab = data_info["config"]["decoder"]["vocab"]
    common = {
        "ids": np.random.default_rng(0).integers(0, vocab, TEXT_IDS).tolist(),
        "new_tokens": args.new_tokens,
    }
    caches = ["warm"] if args.no_cold else ["warm", "cold"]
    every_file = files_under(data)
    logits_dir = data / "logits"
    logits_dir.mkdir(exist_ok=True)
    total = len(caches) * len(chosen) * args.repeats
    runs: dict[str, list[dict[str, Any]]] = {}
    n = 0
    for rnd in range(args.repeats):
        for cache in caches:
            for c in chosen:
                n += 1
                key = f"{c.key}/{cache}"
                files = [f for r in c.reads for f in files_under(data / r)]
                own = set(files)
                if cache == "cold":
                    drop_cache(*every_file)
                else:
                    if not args.as_found_memory:
                        drop_cache(*(f for f in every_file if f not in own))
                    warm(*files)
                cached = resident(*files)
                busy = wait_quiet(timeout=args.quiet_timeout, log=log)
                head = f"[{n}/{total}] {c.key:5} {c.label:38} {cache} ({cached:4.0%} cached)"
                print(head + " ...", end="", flush=True)
                out = logits_dir / f"{c.key}-{cache}-{rnd}.npz"
                try:
                    r = run_child(c, data, common, out, args.timeout)
                except Exception as exc:  # reported, never fatal: the next contender runs
                    msg = str(exc).splitlines()[0]
                    log(f" FAILED: {msg}")
                    runs.setdefault(key, []).append({"error": str(exc)[-3000:], "round": rnd})
                    continue
                r.update(round=rnd, cached_before=cached, busy_before=busy, label=c.label)
                ref = logits_dir / f"a-{cache}-{rnd}.npz"
                if c.key != "a" and ref.exists():
                    r["check"] = check_logits(ref, out, lossless=c.key != "g")
                runs.setdefault(key, []).append(r)
                chk = r.get("check", {}).get("verdict", "reference")
                log(
                    f" peak RSS {r['peak_rss'] / MiB:,.0f} MiB (anon {r['peak_anon'] / MiB:,.0f}),"
                    f" first layer {r['first_layer_s']:.2f} s, total {r['total_s']:.2f} s, stall "
                    f"{r['stall_s']:.2f} s, read {r['bytes_read'] / 1e9:.2f} GB; logits: {chk}"
                )
    faults.append(fault_rate())
    summary = summarize(runs, caches, [c.key for c in chosen])
    results = {
        "command": f"python bench/harness.py {argv_text}".strip(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": describe_machine(),
        "fault_gbps": faults,  # first-touch rate of new memory, before and after the runs
        "code": git_state(snap_commit),
        "model": data_info,
        "settings": {
            "as_found_memory": args.as_found_memory,
            "budget_bytes": budget,
            "max_chunk": args.max_chunk,
            "workers": 2,
            "new_tokens": args.new_tokens,
            "text_ids": TEXT_IDS,
            "image": "448x448",
            "repeats": args.repeats,
            "caches": caches,
        },
        "contenders": {
            c.key: {"label": c.label, "kind": c.kind, "reads": c.reads, **c.args} for c in chosen
        },
        "summary": summary,
        "runs": {
            k: [{kk: vv for kk, vv in r.items() if kk != "trace"} for r in v]
            for k, v in runs.items()
        },
        "elapsed_s": time.monotonic() - started,
    }
    from _harness_report import plot_memory, thin, write_json, write_markdown

    results["traces"] = {
        k: thin(v[0]["trace"])
        for k, v in runs.items()
        if k.split("/")[0] in ("a", "e-k2", "g") and "trace" in v[0]
    }
    (args.out / "results").mkdir(parents=True, exist_ok=True)
    plotted = plot_memory(results["traces"], args.out / "results" / "memory.png", log)
    results["plot"] = plotted
    write_json(results, args.out / "results" / "harness.json")
    write_markdown(results, args.out / "RESULTS.md")
    log(
        f"wrote {args.out / 'RESULTS.md'}, {args.out / 'results' / 'harness.json'}"
        + (f", {args.out / 'results' / 'memory.png'}" if plotted else "")
        + f" in {results['elapsed_s']:.0f} s"
    )
    failed = [k for k, v in runs.items() if any("error" in r for r in v)]
    if failed:
        log(f"failed: {', '.join(failed)}")
    return 0


def summarize(
    runs: dict[str, list[dict[str, Any]]], caches: list[str], keys: list[str]
) -> dict[str, Any]:
    """Per contender and cache: median of each metric over the rounds, and the median of the
    per-round ratios against (a) of the same round and cache."""
    out: dict[str, Any] = {}
    for cache in caches:
        base = {r["round"]: r for r in runs.get(f"a/{cache}", []) if "error" not in r}
        for key in keys:
            ok = [r for r in runs.get(f"{key}/{cache}", []) if "error" not in r]
            entry: dict[str, Any] = {
                "runs": len(ok),
                "failed": len(runs.get(f"{key}/{cache}", [])) - len(ok),
            }
            errors = [r["error"] for r in runs.get(f"{key}/{cache}", []) if "error" in r]
            if errors:
                entry["error"] = errors[0].splitlines()[0]
            if ok:
                for m in (*RATIO_KEYS, "disk_read_bytes", "process_s"):
                    entry[m] = statistics.median(r[m] for r in ok)
                for m in RATIO_KEYS:
                    per = [
                        r[m] / base[r["round"]][m]
                        for r in ok
                        if r["round"] in base and base[r["round"]][m]
                    ]
                    entry[f"{m}_x"] = statistics.median(per) if per else None
                checks = [r["check"] for r in ok if "check" in r]
                entry["check"] = checks[0]["verdict"] if checks else "reference"
                entry["check_ok"] = all(ch["ok"] for ch in checks)
            out[f"{key}/{cache}"] = entry
    return out


if __name__ == "__main__":
    sys.exit(main())
