"""Measure the figures the "container" and "loader" issues ask for, and write them down.

    python bench/figures.py [--data DIR] [--only NAME ...] [--quick] [--repeats N]

Every measurement runs in a fresh subprocess (``_tasks.py`` through ``_child.py``), so memory
peaks and imports are the measured code's own. Timings are the median of ``--repeats`` runs
(3 by default); each ratio is taken against a baseline measured in the same round, and the
median of those per-round ratios is reported. Results go to ``bench/results/figures.json`` and
``bench/results/FIGURES.md`` (merged by figure, so ``--only`` refreshes part of the table).

``--quick`` runs everything on the 350 MB "small" preset with 1 repeat: a smoke test of this
script, not figures (its results go to ``DIR/quick/results/``, outside the repository).
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from _data import REPO, Data
from _measure import MiB, drop_cache, median, resident, run_child, wait_quiet, warm

HERE = Path(__file__).resolve().parent
MB = 10**6


# --- rows ---------------------------------------------------------------------------------------


@dataclass
class Row:
    figure: str  # "1" ... "8", or "crc"
    metric: str
    value: float
    unit: str
    target: str = ""  # e.g. ">= 0.8"; empty: reported only
    passed: bool | None = None
    runs: list[float] = field(default_factory=list)
    note: str = ""

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


def speed_row(figure: str, metric: str, bytes_per_s: list[float]) -> Row:
    """A reported (not judged) speed: the median of the runs, in MB/s."""
    return Row(figure, metric, median(bytes_per_s) / MB, "MB/s", runs=[b / MB for b in bytes_per_s])


def check(value: float, op: str, bound: float) -> bool:
    return value >= bound if op == ">=" else value <= bound if op == "<=" else value < bound


def judged(
    figure: str,
    metric: str,
    value: float,
    unit: str,
    op: str,
    bound: float,
    runs: Sequence[float] = (),
    note: str = "",
    show: str | None = None,
) -> Row:
    target = f"{op} {show if show is not None else _fmt(bound)}"
    return Row(figure, metric, value, unit, target, check(value, op, bound), list(runs), note)


def _fmt(x: float) -> str:
    return f"{x:.3g}" if abs(x) < 1000 else f"{x:,.0f}"


# --- context ------------------------------------------------------------------------------------


class Ctx:
    def __init__(self, args: argparse.Namespace) -> None:
        self.quick = args.quick
        self.repeats = args.repeats or (1 if args.quick else 3)
        self.pythonpath = args.wstream
        self.data = Data(
            Path(args.data), args.quick, self.log, self.pythonpath, args.keep_big_checkpoint
        )
        self.started = time.perf_counter()
        self.quiet_wait = args.quiet_wait
        self.busy: list[float] = []  # CPU share used by others just before each timed run

    def log(self, msg: str) -> None:
        print(f"[{time.perf_counter() - self.started:7.1f}s] {msg}", flush=True)

    def child(
        self, task: str, sample: bool = False, env: dict[str, str] | None = None, **kw: Any
    ) -> dict[str, Any]:
        if self.quiet_wait > 0:
            self.busy.append(wait_quiet(timeout=self.quiet_wait, log=self.log))
        return run_child(task, kw, env=env, sample=sample, pythonpath=self.pythonpath)


def rotate(items: Sequence[Any], r: int) -> list[Any]:
    """Round r's order: rotated by r, so no variant always runs first."""
    k = r % len(items)
    return list(items[k:]) + list(items[:k])


def _rm(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()


# --- figure 1: pack raw versus a plain copy -----------------------------------------------------


def fig_pack_speed(ctx: Ctx) -> list[Row]:
    src = ctx.data.checkpoint("2g")
    out = ctx.data.scratch / "pack-speed"
    speeds: dict[str, list[float]] = {"shutil": [], "loop": [], "pack": []}
    r_shutil, r_loop = [], []
    for r in range(ctx.repeats):
        got: dict[str, float] = {}
        for kind in rotate(["shutil", "loop", "pack"], r):
            _rm(out)
            out.mkdir(parents=True)
            warm(src)
            frac = resident(src)
            if kind == "pack":
                res = ctx.child("pack_run", src=str(src), dst=str(out / "x.wst"), codec="raw")
            elif kind == "shutil":
                res = ctx.child("copy_shutil", src=str(src), dst_dir=str(out))
            else:
                res = ctx.child("copy_loop", src=str(src), dst_dir=str(out), bufsize=32 * MiB)
            got[kind] = res["bytes"] / res["seconds"]
            speeds[kind].append(got[kind])
            ctx.log(
                f"  fig 1 round {r + 1}: {kind:6} {got[kind] / MB:7.0f} MB/s "
                f"({res['bytes'] / MB:.0f} MB in {res['seconds']:.2f} s; source {frac:.0%} cached)"
            )
            _rm(out)
        r_shutil.append(got["pack"] / got["shutil"])
        r_loop.append(got["pack"] / got["loop"])
    note = (
        f"medians: pack {median(speeds['pack']) / MB:.0f} MB/s, shutil.copyfile "
        f"{median(speeds['shutil']) / MB:.0f} MB/s, read/write loop {median(speeds['loop']) / MB:.0f} MB/s; "
        "warm source, output fsync'ed in all three"
    )
    return [
        judged(
            "1",
            "pack raw speed / shutil.copyfile speed",
            median(r_shutil),
            "x",
            ">=",
            0.8,
            r_shutil,
            note,
        ),
        judged(
            "1",
            "pack raw speed / 32 MiB read-write loop speed",
            median(r_loop),
            "x",
            ">=",
            0.8,
            r_loop,
        ),
        speed_row("1", "pack raw speed", speeds["pack"]),
        speed_row("1", "shutil.copyfile speed", speeds["shutil"]),
        speed_row("1", "read/write loop speed", speeds["loop"]),
    ]


# --- figure 2: peak RSS of pack -----------------------------------------------------------------


def fig_pack_rss(ctx: Ctx) -> list[Row]:
    src = ctx.data.checkpoint("2g")
    out = ctx.data.scratch / "pack-rss.wst"
    rows = []
    for label, kw in [
        ("raw", {"codec": "raw"}),
        ("zstd", {"codec": "zstd"}),
        ("zstd+shuffle", {"codec": "zstd", "shuffle": True}),
    ]:
        hwm, anon, gain = [], [], []
        res: dict[str, Any] = {}
        for _ in range(max(1, ctx.repeats - 1)):
            _rm(out)
            warm(src)
            res = ctx.child("pack_run", sample=True, src=str(src), dst=str(out), **kw)
            hwm.append(res["end"]["VmHWM"])
            anon.append(res["sampled"].get("RssAnon", 0))
            gain.append(res["end"]["VmHWM"] - res["base"]["VmRSS"])
            ctx.log(
                f"  fig 2 {label}: VmHWM {res['end']['VmHWM'] / MiB:.0f} MiB (baseline after imports "
                f"{res['base']['VmRSS'] / MiB:.0f} MiB), peak RssAnon {anon[-1] / MiB:.0f} MiB, "
                f"largest chunk {res['largest_chunk'] / MiB:.0f} MiB, {res['bytes'] / res['seconds'] / MB:.0f} MB/s"
            )
            _rm(out)
        bound = 2 * res["largest_chunk"] + 100 * MB
        note = (
            f"largest chunk {res['largest_chunk'] / MiB:.1f} MiB decoded; bound = 2 x that + 100 MB = "
            f"{bound / MiB:.0f} MiB; baseline after imports {res['base']['VmRSS'] / MiB:.0f} MiB; "
            f"peak RssAnon (sampled every 2 ms) {median(anon) / MiB:.0f} MiB; VmHWM above baseline "
            f"{median(gain) / MiB:.0f} MiB; {res['bytes'] / MB:.0f} MB in {res['seconds']:.1f} s "
            f"(ratio {res['bytes'] / res['bytes_out']:.3f})"
        )
        rows.append(
            judged(
                "2",
                f"pack {label}: peak RSS (VmHWM, total)",
                median(hwm) / MiB,
                "MiB",
                "<=",
                bound / MiB,
                [h / MiB for h in hwm],
                note,
            )
        )
        rows.append(
            judged(
                "2",
                f"pack {label}: peak RssAnon (sampled)",
                median(anon) / MiB,
                "MiB",
                "<=",
                bound / MiB,
                [a / MiB for a in anon],
            )
        )
    return rows


# --- figure 3: info and open_container read the manifest only -----------------------------------


def _wall(cmd: list[str], n: int, env: dict[str, str] | None = None) -> list[float]:
    out = []
    env = dict(os.environ) if env is None else env
    for _ in range(n):
        t = time.perf_counter()
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, env=env)
        out.append(time.perf_counter() - t)
    return out


def _wstream_cmd() -> list[str]:
    script = Path(sys.executable).parent / "wstream"
    return [str(script)] if script.exists() else [sys.executable, "-m", "wstream.cli"]


def _bytecode_env(ctx: Ctx, cached: bool) -> dict[str, str]:
    """The environment for timing a command: with .pyc caching (as an installed package runs;
    the cache kept outside the repository), or without (PYTHONDONTWRITEBYTECODE=1, as this
    sandbox's shells are set up: every import of wstream then compiles its source)."""
    env = dict(os.environ)
    if cached:
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env["PYTHONPYCACHEPREFIX"] = str(ctx.data.root / "pycache")
    else:
        env["PYTHONDONTWRITEBYTECODE"] = "1"
    if ctx.pythonpath:
        env["PYTHONPATH"] = ctx.pythonpath
    return env


def _regular_install(ctx: Ctx) -> tuple[list[str], dict[str, str]]:
    """`wstream` as a user's ``python -m venv`` + ``pip install`` leaves it (not editable,
    .pyc compiled by pip): without this development venv's editable-install finder, which
    site.py imports at every interpreter start. Only wstream and isal are installed (info
    imports nothing else)."""
    venv = ctx.data.root / "regular-venv"
    stamp = venv / "wstream.code"
    code = _code_stamp()
    if not stamp.exists() or stamp.read_text() != code:
        shutil.rmtree(venv, ignore_errors=True)
        base = getattr(sys, "_base_executable", sys.executable)
        subprocess.run([base, "-m", "venv", str(venv)], check=True)
        subprocess.run(
            [str(venv / "bin" / "pip"), "install", "-q", "--no-deps", str(REPO), "isal"],
            check=True,
        )
        stamp.write_text(code)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    return [str(venv / "bin" / "wstream")], env


def _code_stamp() -> str:
    digest = hashlib.sha256()
    for f in sorted((REPO / "wstream").rglob("*.py")):
        digest.update(f.read_bytes())
    return digest.hexdigest()


def fig_info(ctx: Ctx) -> list[Row]:
    path = ctx.data.container("10g")
    size = path.stat().st_size
    drop_cache(path)
    res = ctx.child("open_times", path=str(path), repeats=30, cold_first=True)
    n = 9 if not ctx.quick else 3
    py = [sys.executable]
    info = [*_wstream_cmd(), "info", str(path)]
    walls: dict[bool, dict[str, list[float]]] = {}
    for cached in (True, False):
        env = _bytecode_env(ctx, cached)
        _wall(info, 1, env)  # fills the bytecode cache (and the page cache)
        if ctx.quiet_wait > 0:
            ctx.busy.append(wait_quiet(timeout=ctx.quiet_wait, log=ctx.log))
        walls[cached] = {
            "startup": _wall([*py, "-c", "pass"], n, env),
            "imports": _wall([*py, "-c", "import wstream.cli"], n, env),
            "cli": _wall(info, n, env),
            "cli_json": _wall([*_wstream_cmd(), "info", "--json", str(path)], n, env),
        }
    regular, regular_env = _regular_install(ctx)
    _wall([*regular, "info", str(path)], 1, regular_env)
    if ctx.quiet_wait > 0:
        ctx.busy.append(wait_quiet(timeout=ctx.quiet_wait, log=ctx.log))
    reg = {
        "startup": _wall([str(Path(regular[0]).with_name("python")), "-c", "pass"], n, regular_env),
        "cli": _wall([*regular, "info", str(path)], n, regular_env),
    }
    imp = subprocess.run(
        [*py, "-X", "importtime", "-c", "import wstream.cli"],
        capture_output=True,
        text=True,
        check=False,
        env=_bytecode_env(ctx, True),
    ).stderr
    top = sorted(
        (
            (int(p[1]), p[2].rstrip())
            for p in (
                ln.split("|")
                for ln in imp.splitlines()
                if ln.startswith("import time:") and "cumulative" not in ln
            )
            if len(p) == 3
        ),
        reverse=True,
    )
    heavy = ", ".join(f"{name.strip()} {us / 1000:.0f} ms" for us, name in top[:6])
    w, nw = walls[True], walls[False]
    ctx.log(
        f"  fig 3: open {median(res['open']) * 1e3:.2f} ms, info_dict {median(res['info_dict']) * 1e3:.2f} ms, "
        f"cold first open {res['cold_first']['seconds'] * 1e3:.1f} ms; CLI {median(w['cli']) * 1e3:.0f} ms "
        f"(no .pyc: {median(nw['cli']) * 1e3:.0f} ms), python startup {median(w['startup']) * 1e3:.0f} ms, "
        f"import wstream.cli {median(w['imports']) * 1e3:.0f} ms (no .pyc: {median(nw['imports']) * 1e3:.0f} ms)"
    )
    ms = 1e3
    desc = (
        f"{size / 1e9:.1f} GB container, {res['chunks']} chunks, {res['tensors']} tensors, manifest "
        f"{res['manifest_nbytes'] / 1e3:.0f} kB"
    )
    cmd = " ".join(Path(c).name if i == 0 else c for i, c in enumerate(info))
    return [
        judged(
            "3",
            "open_container (in-process, warm)",
            median(res["open"]) * ms,
            "ms",
            "<",
            50,
            [x * ms for x in res["open"]],
            desc + f"; median of {len(res['open'])}",
        ),
        judged(
            "3",
            "open_container (in-process, cold: file dropped from page cache)",
            res["cold_first"]["seconds"] * ms,
            "ms",
            "<",
            50,
            [],
            f"page-cache residency before: {res['cold_first']['resident_before']:.1%}; one run",
        ),
        judged(
            "3",
            "info_dict (what `wstream info` computes, in-process)",
            median(res["info_dict"]) * ms,
            "ms",
            "<",
            50,
            [x * ms for x in res["info_dict"]],
        ),
        judged(
            "3",
            "`wstream info` wall time (whole process, .pyc cached)",
            median(w["cli"]) * ms,
            "ms",
            "<",
            50,
            [x * ms for x in w["cli"]],
            f"`{cmd}`; `--json`: {median(w['cli_json']) * ms:.0f} ms",
        ),
        judged(
            "3",
            "`wstream info` wall time (whole process, regular install)",
            median(reg["cli"]) * ms,
            "ms",
            "<",
            50,
            [x * ms for x in reg["cli"]],
            "a fresh `python -m venv` with `pip install` of wstream (not editable) and isal; its "
            f"bare interpreter startup: {median(reg['startup']) * ms:.0f} ms. The row above runs "
            "the development venv's console script, whose editable-install finder site.py "
            "imports at every start",
        ),
        judged(
            "3",
            "`wstream info` wall minus bare interpreter startup (.pyc cached)",
            (median(w["cli"]) - median(w["startup"])) * ms,
            "ms",
            "<",
            50,
            [],
            "imports included",
        ),
        judged(
            "3",
            "`wstream info` wall minus startup and `import wstream.cli` (.pyc cached)",
            (median(w["cli"]) - median(w["imports"])) * ms,
            "ms",
            "<",
            50,
            [],
            "what answering costs",
        ),
        Row(
            "3",
            "python -c pass (interpreter startup, this venv)",
            median(w["startup"]) * ms,
            "ms",
            runs=[x * ms for x in w["startup"]],
            note="includes site's editable-install finder for wstream",
        ),
        Row(
            "3",
            "python -c 'import wstream.cli' (.pyc cached)",
            median(w["imports"]) * ms,
            "ms",
            runs=[x * ms for x in w["imports"]],
            note=f"largest imports (-X importtime, cumulative us): {heavy[:400]}",
        ),
        Row(
            "3",
            "`wstream info` wall, no .pyc (PYTHONDONTWRITEBYTECODE=1, as these shells run)",
            median(nw["cli"]) * ms,
            "ms",
            runs=[x * ms for x in nw["cli"]],
            note=f"every run compiles wstream's modules; import wstream.cli {median(nw['imports']) * ms:.0f} ms",
        ),
    ]


# --- figure 4: peak RSS of streaming versus safetensors -----------------------------------------


def fig_stream_rss(ctx: Ctx) -> list[Row]:
    src = ctx.data.checkpoint("2g")
    path = ctx.data.container("2g")
    variants: list[tuple[str, str, dict[str, Any]]] = [
        ("safetensors load_file", "safetensors_load_file", {"src": str(src)}),
        ("safetensors safe_open + get_tensor", "safetensors_safe_open", {"src": str(src)}),
        ("wstream budget 128 MB", "stream", {"path": str(path), "budget": 128 * MB}),
        ("wstream budget 512 MB", "stream", {"path": str(path), "budget": 512 * MB}),
        ("wstream unlimited budget", "stream", {"path": str(path), "budget": None}),
    ]
    hwm: dict[str, list[float]] = {v[0]: [] for v in variants}
    anon: dict[str, list[float]] = {v[0]: [] for v in variants}
    secs: dict[str, list[float]] = {v[0]: [] for v in variants}
    ratio: list[float] = []
    base: dict[str, float] = {}
    for r in range(ctx.repeats):
        got = {}
        for label, task, kw in rotate(variants, r):
            warm(src, path)
            res = ctx.child(task, sample=True, **kw)
            got[label] = res["peak"]["VmHWM"]
            hwm[label].append(res["peak"]["VmHWM"])
            anon[label].append(res["sampled"].get("RssAnon", 0))
            secs[label].append(res["seconds"])
            base[label] = res["base"]["VmRSS"]
            ctx.log(
                f"  fig 4 round {r + 1}: {label:36} VmHWM {res['peak']['VmHWM'] / MiB:6.0f} MiB "
                f"(baseline {res['base']['VmRSS'] / MiB:.0f}), RssAnon peak {anon[label][-1] / MiB:6.0f} MiB, "
                f"{res['seconds']:.2f} s"
            )
        ratio.append(got["wstream budget 128 MB"] / got["safetensors load_file"])
    gb = path.stat().st_size / 1e9
    rows = [
        judged(
            "4",
            "VmHWM ratio: wstream (128 MB budget) / load_file",
            median(ratio),
            "x",
            "<=",
            0.1,
            ratio,
            f"{gb:.2f} GB bf16 container, warm page cache, raw codec, widen=False, every page touched",
        )
    ]
    for label, *_ in variants:
        rows.append(
            Row(
                "4",
                f"{label}: peak RSS (VmHWM)",
                median(hwm[label]) / MiB,
                "MiB",
                runs=[h / MiB for h in hwm[label]],
                note=f"baseline after imports {base[label] / MiB:.0f} MiB; peak RssAnon "
                f"{median(anon[label]) / MiB:.0f} MiB; wall {median(secs[label]):.2f} s "
                f"({gb * 1e3 / median(secs[label]):.0f} MB/s)",
            )
        )
        rows.append(Row("4", f"{label}: wall time", median(secs[label]), "s", runs=secs[label]))
    return rows


# --- figure 5: overlap of loading with compute --------------------------------------------------


def fig_overlap(ctx: Ctx) -> list[Row]:
    path = ctx.data.container("2g")
    rows = []
    rounds = max(ctx.repeats, 5) if not ctx.quick else 1
    # (label, BLAS threads, verify, task arguments): first the bare worst case, every chunk of
    # the file at T=64 with the workers widening; then the work of `wstream run` per stage
    # (the forward widens each block itself, the loader hands out zero-copy bf16 views).
    configs: list[tuple[str, str, bool, dict[str, Any]]] = [
        (f"T=64, all chunks, workers widen, BLAS threads {t}, verify={v}", t, v, {"tokens": 64})
        for t in ("1", "2")
        for v in (True, False)
    ]
    configs += [
        (
            "vision tower as `wstream run` (T=1024, forward widens), BLAS threads 2, verify=True",
            "2",
            True,
            {"tokens": 1024, "forward_widens": True, "group_prefix": "vision.", "container": "10g"},
        ),
        (
            "decoder prefill as `wstream run` (T=80, forward widens), BLAS threads 2, verify=True",
            "2",
            True,
            {
                "tokens": 80,
                "forward_widens": True,
                "group_prefix": "llm.layer.",
                "container": "10g",
            },
        ),
        (
            "decoder prefill as `wstream run` (T=80, forward widens), BLAS threads 2, verify=False",
            "2",
            False,
            {
                "tokens": 80,
                "forward_widens": True,
                "group_prefix": "llm.layer.",
                "container": "10g",
            },
        ),
    ]
    for tag, threads, verify, config in configs:
        # The per-stage runs use the 11 GB container: all 27 vision layers (the real tower) and
        # 17 decoder layers, so a pass lasts seconds, not the 2 GB container's half second.
        path = ctx.data.container(config.get("container", "2g"))
        kwargs = {k: v for k, v in config.items() if k != "container"}
        env = {"OPENBLAS_NUM_THREADS": threads, "OMP_NUM_THREADS": threads}
        ratios, stalls, eager_s, stream_s, eager_c, stream_c = [], [], [], [], [], []
        info: dict[str, Any] = {}
        for r in range(rounds):
            got = {}
            for mode in rotate(["eager", "stream"], r):
                warm(path)
                got[mode] = ctx.child(
                    "overlap", env=env, path=str(path), mode=mode, verify=verify, **kwargs
                )
            e, st = got["eager"], got["stream"]
            ratios.append(st["seconds"] / e["seconds"])
            stalls.append(st["stats"]["stall_seconds"])
            eager_s.append(e["seconds"])
            stream_s.append(st["seconds"])
            eager_c.append(e["compute_seconds"])
            stream_c.append(st["compute_seconds"])
            info = got
            ctx.log(
                f"  fig 5 {tag} round {r + 1}: eager {e['seconds']:.2f} s, stream "
                f"{st['seconds']:.2f} s (x{ratios[-1]:.3f}); stall {stalls[-1]:.2f} s; time inside the "
                f"matmuls eager {e['compute_seconds']:.2f} s, stream {st['compute_seconds']:.2f} s; workers: "
                f"read+crc {st['stats']['read_seconds']:.2f} s, widen {st['stats']['decode_seconds']:.2f} s; "
                f"slabs {st['slabs']}"
            )
        e = info["eager"]
        widens = kwargs.get("forward_widens", False)
        note = (
            f"OPENBLAS_NUM_THREADS={threads}, verify={verify}; T={kwargs['tokens']} tokens, fp32 matmul "
            f"x @ W.T per weight matrix, x * w per 1-d weight, over "
            f"{'groups ' + kwargs['group_prefix'] + '*' if kwargs.get('group_prefix') else 'every chunk'} "
            f"({e['gflop']:.0f} GFLOP per pass) of the {path.stat().st_size / 1e9:.1f} GB container; "
            + (
                "both hold bf16 (eager: copies in RAM; stream: StreamingLoader(widen='dequantize'), "
                "zero-copy views) and the consumer widens each block of rows before its matmul, as "
                "the forward does; "
                if widens
                else "eager holds float32 (EagerWeights); stream: StreamingLoader(widen=True), the "
                "workers widen; "
            )
            + f"medians: eager {median(eager_s):.2f} s ({e['gflop'] / median(eager_c):.0f} GFLOP/s), "
            f"stream {median(stream_s):.2f} s, stall {median(stalls):.2f} s "
            f"({median(stalls) / median(stream_s):.0%} of the streamed wall); time inside the "
            f"matmuls: eager {median(eager_c):.2f} s, streamed {median(stream_c):.2f} s; budget 512 MB, "
            f"prefetch 2, workers 2; warm page cache"
        )
        rows.append(
            judged(
                "5", f"streamed / eager wall ({tag})", median(ratios), "x", "<=", 1.10, ratios, note
            )
        )
        rows.append(Row("5", f"stall seconds ({tag})", median(stalls), "s", runs=stalls))
        rows.append(
            Row(
                "5",
                f"matmul time streamed / eager ({tag})",
                median(stream_c) / median(eager_c),
                "x",
                runs=[a / b for a, b in zip(stream_c, eager_c)],
                note="the same matmuls run slower while the workers check and widen on the other core",
            )
        )
    return rows


# --- figure 6: cold-cache streaming versus a sequential read ------------------------------------


SETTLE = 1.0  # seconds between dropping the cache and reading: the same for every variant


def fig_cold(ctx: Ctx) -> list[Row]:
    path = ctx.data.container("2g")
    size = path.stat().st_size
    variants = [
        ("read", "sequential_read", {"bufsize": 16 * MiB}),
        ("stream verify=True", "stream", {"budget": 512 * MB, "verify": True}),
        ("stream verify=False", "stream", {"budget": 512 * MB, "verify": False}),
        ("2-thread pread (not the baseline)", "parallel_read", {"bufsize": 16 * MiB, "threads": 2}),
    ]
    rounds = max(ctx.repeats, 5) if not ctx.quick else 1
    tp: dict[str, list[float]] = {v[0]: [] for v in variants}
    ratios: dict[str, list[float]] = {v[0]: [] for v in variants[1:]}
    for r in range(rounds):
        got = {}
        for label, task, kw in rotate(variants, r):
            drop_cache(path)
            if ctx.quiet_wait > 0:
                ctx.busy.append(wait_quiet(timeout=ctx.quiet_wait, log=ctx.log))
            time.sleep(SETTLE)
            res = run_child(
                task, dict(path=str(path), expect_cold=True, **kw), pythonpath=ctx.pythonpath
            )
            got[label] = size / res["seconds"]
            tp[label].append(got[label])
            ctx.log(
                f"  fig 6 round {r + 1}: {label:34} {got[label] / MB:6.0f} MB/s "
                f"(resident before {res['resident_before']:.1%})"
            )
        for label in ratios:
            ratios[label].append(got[label] / got["read"])
    note = (
        f"{size / 1e9:.2f} GB raw container dropped from the page cache (fsync + POSIX_FADV_DONTNEED, "
        f"mincore-checked: 0% resident) {SETTLE:.0f} s before every run; widen=False, every page touched; "
        "budget 512 MB, prefetch 2, 2 workers; baseline: readinto a reused 16 MiB buffer, front to back. "
        "Cold reads on this virtio disk are bimodal and depend on timing (a read right after another is "
        "often 2x faster), hence the same settle time for all and per-round ratios"
    )
    rows = []
    for label in ("stream verify=True", "stream verify=False"):
        rows.append(
            judged(
                "6",
                f"cold {label} / sequential read throughput",
                median(ratios[label]),
                "x",
                ">=",
                0.9,
                ratios[label],
                note if label.endswith("True") else "",
            )
        )
    par = "2-thread pread (not the baseline)"
    rows.append(
        Row(
            "6",
            "cold 2-thread pread / sequential read throughput",
            median(ratios[par]),
            "x",
            runs=ratios[par],
            note="what the device gives with two requests in flight",
        )
    )
    for label in tp:
        rows.append(speed_row("6", f"cold {label} throughput", tp[label]))
    return rows


# --- figure 7: parallel zstd decoding -----------------------------------------------------------


def fig_decode(ctx: Ctx) -> list[Row]:
    rows = []
    for shuffle in (False, True):
        path = ctx.data.container("2g", codec="zstd", shuffle=shuffle)
        kind = "zstd+shuffle" if shuffle else "zstd"
        for verify in (True, False):
            tp: dict[int, list[float]] = {1: [], 2: []}
            ratios = []
            raw = stored = 0
            for r in range(ctx.repeats):
                got = {}
                for workers in rotate([1, 2], r):
                    warm(path)
                    res = ctx.child(
                        "stream",
                        path=str(path),
                        budget=512 * MB,
                        prefetch=2,
                        workers=workers,
                        verify=verify,
                        touch=False,
                    )
                    raw, stored = res["raw_bytes"], res["stored_bytes"]
                    got[workers] = raw / res["seconds"]
                    tp[workers].append(got[workers])
                ratios.append(got[2] / got[1])
                ctx.log(
                    f"  fig 7 {kind} verify={verify} round {r + 1}: 1 worker {got[1] / MB:.0f} MB/s, "
                    f"2 workers {got[2] / MB:.0f} MB/s (x{ratios[-1]:.2f})"
                )
            note = (
                f"{kind} container ({raw / 1e9:.2f} GB decoded, ratio {raw / stored:.3f}), warm cache, widen=False, "
                f"consumer only releases; verify={verify}; budget 512 MB, prefetch 2; medians: 1 worker "
                f"{median(tp[1]) / MB:.0f} MB/s, 2 workers {median(tp[2]) / MB:.0f} MB/s (decoded bytes)"
            )
            rows.append(
                judged(
                    "7",
                    f"{kind} decode, 2 workers / 1 worker (verify={verify})",
                    median(ratios),
                    "x",
                    ">=",
                    1.6,
                    ratios,
                    note,
                )
            )
            for w in (1, 2):
                rows.append(
                    speed_row(
                        "7", f"{kind} decode throughput, {w} worker(s) (verify={verify})", tp[w]
                    )
                )
    return rows


# --- figure 8: open() to the first chunk in hand ------------------------------------------------


def fig_first_chunk(ctx: Ctx) -> list[Row]:
    rows = []
    configs = [
        ("defaults: widen=True, verify=True", {"widen": True, "verify": True}),
        ("widen=False, verify=False", {"widen": False, "verify": False}),
        # what `wstream run` asks for: bf16 handed out zero-copy (the forward widens it)
        (
            "as `wstream run`: widen='dequantize', verify=True",
            {"widen": "dequantize", "verify": True},
        ),
    ]
    n = max(6, 2 * ctx.repeats) if not ctx.quick else 2
    for ds in ("2g", "10g"):
        path = ctx.data.container(ds)
        size = path.stat().st_size
        for cache in ("warm", "cold"):
            for label, kw in configs:
                hand, touched, opens, setups, waits, lazy = [], [], [], [], [], []
                res: dict[str, Any] = {}
                if cache == "warm":
                    ctx.child(
                        "first_chunk", path=str(path), **kw
                    )  # untimed: brings manifest + first chunks in
                for i in range(n):
                    # every other run leaves ml_dtypes to be imported lazily, inside the timed span
                    pre = i % 2 == 0
                    if cache == "cold":
                        drop_cache(path)
                    res = ctx.child(
                        "first_chunk",
                        path=str(path),
                        expect_cold=cache == "cold",
                        preimport=pre,
                        **kw,
                    )
                    if not pre:
                        lazy.append(res["in_hand"] * 1e3)
                        continue
                    hand.append(res["in_hand"] * 1e3)
                    touched.append(res["touched"] * 1e3)
                    opens.append(res["open"] * 1e3)
                    setups.append(res["setup"] * 1e3)
                    waits.append(res["wait"] * 1e3)
                ctx.log(
                    f"  fig 8 {size / 1e9:.1f} GB {cache} {label}: in hand {median(hand):.1f} ms = open "
                    f"{median(opens):.1f} + loader/stream setup {median(setups):.1f} + wait for chunk "
                    f"{median(waits):.1f} ms; pages touched at {median(touched):.1f} ms; with the lazy "
                    f"import of ml_dtypes inside: {median(lazy):.1f} ms"
                )
                f = res["first"]
                note = (
                    f"first chunk {f['name']!r}: {f['stored'] / MiB:.1f} MiB stored, {f['bytes'] / MiB:.1f} MiB "
                    f"handed out; open_container {median(opens):.1f} ms, StreamingLoader + stream() "
                    f"{median(setups):.1f} ms, next() {median(waits):.1f} ms; with its pages touched "
                    f"{median(touched):.1f} ms; imports ({res['imports'] * 1e3:.0f} ms) not counted; budget None, "
                    f"prefetch 2, workers 2; median of {len(hand)}"
                    + ("; dropped from the page cache before each run" if cache == "cold" else "")
                )
                what = f"{size / 1e9:.1f} GB, {cache}, {label}"
                rows.append(
                    judged(
                        "8",
                        f"{what}: open -> first chunk in hand",
                        median(hand),
                        "ms",
                        "<=",
                        20,
                        hand,
                        note,
                    )
                )
                rows.append(
                    judged(
                        "8",
                        f"{what}: same, fresh process (wstream's lazy import of ml_dtypes inside)",
                        median(lazy),
                        "ms",
                        "<=",
                        20,
                        lazy,
                    )
                )
    return rows


# --- CRC cost -----------------------------------------------------------------------------------


def fig_verify_cost(ctx: Ctx) -> list[Row]:
    rows = []
    cases = [
        (
            "raw, widen=False, pages touched",
            ctx.data.container("2g"),
            {"widen": False, "touch": True},
        ),
        ("raw, widen=True", ctx.data.container("2g"), {"widen": True, "touch": False}),
        (
            "zstd, widen=False",
            ctx.data.container("2g", codec="zstd"),
            {"widen": False, "touch": False},
        ),
    ]
    for label, path, kw in cases:
        tp: dict[bool, list[float]] = {True: [], False: []}
        ratios = []
        for r in range(ctx.repeats):
            got = {}
            for verify in rotate([True, False], r):
                warm(path)
                res = ctx.child("stream", path=str(path), budget=512 * MB, verify=verify, **kw)
                got[verify] = res["raw_bytes"] / res["seconds"]
                tp[verify].append(got[verify])
            ratios.append(got[True] / got[False])
            ctx.log(
                f"  crc {label} round {r + 1}: verify {got[True] / MB:.0f} MB/s, no verify {got[False] / MB:.0f} MB/s"
            )
        rows.append(
            Row(
                "crc",
                f"{label}: throughput verify=True / verify=False",
                median(ratios),
                "x",
                runs=ratios,
                note=f"verify {median(tp[True]) / MB:.0f} MB/s, no verify {median(tp[False]) / MB:.0f} MB/s "
                "(decoded bytes/s, warm cache, budget 512 MB, prefetch 2, 2 workers)",
            )
        )
    return rows


FIGURES: dict[str, tuple[str, str, Callable[[Ctx], list[Row]]]] = {
    "pack_speed": ("1", "container: pack raw vs a plain copy", fig_pack_speed),
    "pack_rss": ("2", "container: peak RSS of pack", fig_pack_rss),
    "info": ("3", "container: info / open_container on >= 10 GB", fig_info),
    "stream_rss": ("4", "loader: peak RSS of streaming vs safetensors", fig_stream_rss),
    "overlap": ("5", "loader: overlap with compute", fig_overlap),
    "cold": ("6", "loader: cold-cache streaming vs sequential read", fig_cold),
    "decode": ("7", "loader: zstd decode, 2 workers vs 1", fig_decode),
    "first_chunk": ("8", "loader: open() to first chunk", fig_first_chunk),
    "verify_cost": ("crc", "loader: cost of verifying CRCs", fig_verify_cost),
}


# --- machine and version ------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    cpu = Path("/proc/cpuinfo").read_text()
    model = next(
        (ln.split(":", 1)[1].strip() for ln in cpu.splitlines() if ln.startswith("model name")), "?"
    )

    def field(key: str) -> str:
        return next(
            (
                ln.split(":", 1)[1].strip()
                for ln in cpu.splitlines()
                if ln.split(":", 1)[0].strip() == key
            ),
            "?",
        )

    lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
    caches = ", ".join(
        ln.split(":", 1)[0].strip() + " " + ln.split(":", 1)[1].strip()
        for ln in lscpu.splitlines()
        if ln.strip().startswith(("L1d", "L2", "L3"))
    )
    flags = next(
        (ln.split(":", 1)[1].split() for ln in cpu.splitlines() if ln.startswith("flags")), []
    )
    free = subprocess.run(
        ["free", "-h"], capture_output=True, text=True, check=False
    ).stdout.strip()
    vers = subprocess.run(
        [
            sys.executable,
            "-c",
            "import numpy, zstandard, safetensors, ml_dtypes, sys; "
            "print(sys.version.split()[0], numpy.__version__, zstandard.__version__, safetensors.__version__, ml_dtypes.__version__)",
        ],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.split()
    return {
        "cpu": model,
        "cpu_id": f"family {field('cpu family')}, model {field('model')}, stepping {field('stepping')}",
        "caches": caches,
        "disk": "virtio (/dev/vda), ext4; read_ahead_kb "
        + Path("/sys/block/vda/queue/read_ahead_kb").read_text().strip()
        if Path("/sys/block/vda/queue/read_ahead_kb").exists()
        else "?",
        "vcpus": os.cpu_count(),
        "avx512_bf16": "avx512_bf16" in flags,
        "memory": free,
        "kernel": platform.release(),
        "python": vers[0] if vers else platform.python_version(),
        "numpy": vers[1] if len(vers) > 1 else "?",
        "zstandard": vers[2] if len(vers) > 2 else "?",
        "safetensors": vers[3] if len(vers) > 3 else "?",
        "ml_dtypes": vers[4] if len(vers) > 4 else "?",
    }


def code_version(pythonpath: str | None) -> dict[str, Any]:
    code = "import wstream, os; print(os.path.dirname(os.path.dirname(wstream.__file__)))"
    env = dict(os.environ, **({"PYTHONPATH": pythonpath} if pythonpath else {}))
    root = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=False, env=env
    ).stdout.strip()

    def git(*a: str) -> str:
        return subprocess.run(
            ["git", "-C", root, *a], capture_output=True, text=True, check=False
        ).stdout.strip()

    dirty = [ln for ln in git("status", "--short", "--", "wstream").splitlines()]
    return {
        "wstream": root,
        "commit": git("rev-parse", "--short", "HEAD") or "?",
        "wstream_changes": dirty,
    }


# --- output -------------------------------------------------------------------------------------


def verdict(p: bool | None) -> str:
    return "PASS" if p else "FAIL" if p is not None else "-"


def table(rows: Sequence[dict[str, Any]]) -> str:
    head = "| fig | metric | value | target | result | runs |\n|---|---|---|---|---|---|\n"
    body = ""
    for r in rows:
        runs = ", ".join(_fmt(x) for x in r["runs"]) if r["runs"] else ""
        body += (
            f"| {r['figure']} | {r['metric']} | {_fmt(r['value'])} {r['unit']} | {r['target']} "
            f"| {verdict(r['passed'])} | {runs} |\n"
        )
    return head + body


def write_results(out: Path, results: dict[str, Any]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "figures.json").write_text(json.dumps(results, indent=1) + "\n")
    m = results["machine"]
    lines = [
        "# wstream figures",
        "",
        "Written by `bench/figures.py`; do not edit by hand. Each figure keeps the date and command of",
        "the run that produced it (`--only` refreshes some figures and keeps the others).",
        "",
        "## Machine",
        "",
        f"- CPU: {m['cpu']} ({m.get('cpu_id', '?')}), {m['vcpus']} vCPU (avx512_bf16: {m['avx512_bf16']}); "
        f"caches {m.get('caches', '?')}; kernel {m['kernel']}",
        f"- Disk: {m.get('disk', '?')}",
        f"- Python {m['python']}, numpy {m['numpy']}, zstandard {m['zstandard']}, safetensors {m['safetensors']}, "
        f"ml_dtypes {m['ml_dtypes']}",
        "- Memory (`free -h`):",
        "",
        "```",
        m["memory"],
        "```",
        "",
    ]
    all_rows = []
    for fig in results["figures"].values():
        all_rows.extend(fig["rows"])
    lines += ["## Summary", "", table(all_rows), ""]
    for name, fig in results["figures"].items():
        lines += [
            f"## {fig['figure']}. {fig['title']} (`{name}`)",
            "",
            f"- command: `{fig['command']}`",
            f"- date: {fig['date']}; took {fig['seconds']:.0f} s; wstream {fig['code']['commit']} at "
            f"{fig['code']['wstream']}"
            + (
                f" (uncommitted changes in {len(fig['code']['wstream_changes'])} wstream files)"
                if fig["code"]["wstream_changes"]
                else ""
            ),
            f"- CPU share used by other processes just before each run: median "
            f"{fig.get('others_cpu_share_before_runs', {}).get('median', 0):.0%}, max "
            f"{fig.get('others_cpu_share_before_runs', {}).get('max', 0):.0%}",
            "",
            table(fig["rows"]),
        ]
        notes = [f"- {r['metric']}: {r['note']}" for r in fig["rows"] if r["note"]]
        if notes:
            lines += ["Notes:", "", *notes, ""]
    (out / "FIGURES.md").write_text("\n".join(lines) + "\n")


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--data", default="/work/bench-data/figures", help="where checkpoints and containers live"
    )
    p.add_argument(
        "--only",
        nargs="+",
        choices=list(FIGURES),
        metavar="NAME",
        help=f"run only these figures: {', '.join(FIGURES)}",
    )
    p.add_argument(
        "--quick", action="store_true", help="small data, 1 repeat: a smoke test, not figures"
    )
    p.add_argument("--repeats", type=int, default=0, help="runs per timing (default 3; --quick 1)")
    p.add_argument(
        "--wstream", metavar="DIR", help="measure the wstream package under DIR (PYTHONPATH)"
    )
    p.add_argument(
        "--keep-big-checkpoint",
        action="store_true",
        help="keep the ~11 GB checkpoint after packing it (default: delete it)",
    )
    p.add_argument(
        "--quiet-wait",
        type=float,
        default=180.0,
        metavar="S",
        help="before each run, wait up to S s for other processes to leave the CPUs "
        "(0: don't wait); the load seen is recorded either way",
    )
    p.add_argument(
        "--out",
        default=None,
        help="results directory (default bench/results; --quick: DIR/quick/results)",
    )
    args = p.parse_args(argv)
    ctx = Ctx(args)
    out = (
        Path(args.out)
        if args.out
        else (ctx.data.root / "results" if args.quick else HERE / "results")
    )
    command = "python bench/figures.py " + " ".join(sys.argv[1:] if argv is None else argv)
    previous: dict[str, Any] = {}
    if (out / "figures.json").exists():
        try:
            previous = json.loads((out / "figures.json").read_text())
        except ValueError:
            previous = {}
    results = {"machine": machine(), "figures": previous.get("figures", {})}
    code = code_version(args.wstream)
    if args.wstream and Path(code["wstream"]).resolve() != Path(args.wstream).resolve():
        # An editable install's import hook runs before PYTHONPATH is searched: the children
        # would measure the installed package, not DIR's. bench/ab.py runs each checkout's venv.
        raise SystemExit(
            f"--wstream {args.wstream}: the children import wstream from {code['wstream']} "
            "(an editable install wins over PYTHONPATH); use that checkout's own venv, or "
            "bench/ab.py --a DIR"
        )
    names = args.only or list(FIGURES)
    ctx.log(
        f"figures: {', '.join(names)}; data in {ctx.data.root}; wstream {code['commit']} at {code['wstream']}"
    )
    failed = []
    for name in names:
        fig_no, title, fn = FIGURES[name]
        ctx.log(f"{name} (figure {fig_no}): {title}")
        t0 = time.perf_counter()
        ctx.busy = []
        try:
            rows = [r.to_json() for r in fn(ctx)]
        except Exception as exc:  # keep going: one broken figure must not lose the others
            ctx.log(f"  {name} FAILED TO RUN: {type(exc).__name__}: {str(exc)[:2000]}")
            failed.append(name)
            continue
        seconds = time.perf_counter() - t0
        results["figures"][name] = {
            "figure": fig_no,
            "title": title,
            "rows": rows,
            "seconds": seconds,
            "command": command,
            "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
            "code": code,
            "data": {k: v for k, v in ctx.data.made.items()},
            "others_cpu_share_before_runs": {
                "max": max(ctx.busy, default=0.0),
                "median": median(ctx.busy) if ctx.busy else 0.0,
            },
        }
        for r in rows:
            ctx.log(
                f"  => {r['metric']}: {_fmt(r['value'])} {r['unit']} {r['target']} {verdict(r['passed'])}"
            )
        ctx.log(f"  {name} took {seconds:.0f} s")
        results["figures"] = dict(
            sorted(results["figures"].items(), key=lambda kv: list(FIGURES).index(kv[0]))
        )
        write_results(out, results)
    done = [r for n in names if n in results["figures"] for r in results["figures"][n]["rows"]]
    print()
    print(table(done))
    ctx.log(f"wrote {out / 'figures.json'} and {out / 'FIGURES.md'}")
    if failed:
        ctx.log(f"figures that failed to run: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
