"""The loader's figures from two checkouts, interleaved in one run: did a change move them?

    python bench/ab.py --a /path/to/old/checkout [--b .] [--rounds 3] [--data DIR] [--out FILE]

Each checkout measures with its own code: its ``bench/_child.py`` and ``bench/_tasks.py`` run by
its own ``.venv/bin/python`` (an editable install there, so ``import wstream`` is that
checkout's package; PYTHONPATH cannot override an editable install's finder). Both read the
same containers (``bench/_data.py``'s "2g" and "10g" data sets under ``--data``, as
``figures.py`` builds them), and every measurement runs A, B and B with ``mapped=True`` (the
zero-copy map instead of the pread default of issue 14) one after the other, the order rotated
round by round, so the machine's drift hits each alike. Reported: medians over rounds, and B/A.

Measured, as figures 4, 5 and 8 of ``figures.py`` define them:

- fig 4: ``stream`` of the 2 GB container under a 128 MB budget, every page touched: VmHWM
  against ``safetensors.numpy.load_file`` of the same checkpoint, measured in the same round;
- fig 5: ``overlap`` per stage, stream / eager: every chunk at T=64 with the workers widening;
  the vision tower as ``wstream run`` does it (T=1024); decoder prefill (T=80);
- fig 8: ``first_chunk``, open to the first chunk in hand, warm and cold, 2 GB and 11 GB.

The old checkout's tasks do not take ``mapped``: that variant is B's only.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _data import Data  # noqa: E402
from _measure import MiB, Sampler, cpu_busy, drop_cache, warm  # noqa: E402


class Side:
    def __init__(self, label: str, tree: Path, extra: dict[str, Any]) -> None:
        self.label = label
        self.tree = tree
        self.python = tree / ".venv" / "bin" / "python"
        self.extra = extra
        if not self.python.exists():
            raise SystemExit(f"{tree}: no .venv/bin/python (make one with pip install -e .)")

    def child(self, task: str, env: dict[str, str] | None = None, **kw: Any) -> dict[str, Any]:
        full = dict(os.environ, **(env or {}))
        cmd = [str(self.python), str(self.tree / "bench" / "_child.py"), task]
        cmd.append(json.dumps({**kw, **self.extra}))
        proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=full
        )
        with Sampler(proc.pid) as sampler:
            out, err = proc.communicate(timeout=3600)
        if proc.returncode != 0:
            raise RuntimeError(f"{self.label} {task}: exit {proc.returncode}\n{err[-3000:]}")
        res: dict[str, Any] = json.loads([ln for ln in out.splitlines() if ln.startswith("{")][-1])
        res["sampled"] = dict(sampler.peak)
        return res


def rotate(items: list[Side], r: int) -> list[Side]:
    k = r % len(items)
    return items[k:] + items[:k]


def med(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--a", type=Path, required=True, help="the baseline checkout")
    ap.add_argument("--b", type=Path, default=HERE.parent, help="the checkout under test")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--data", type=Path, default=Path("/work/bench-data/figures"))
    ap.add_argument("--first-chunk-runs", type=int, default=3, help="per side, round and case")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "AB.md")
    args = ap.parse_args()

    def log(msg: str) -> None:
        print(msg, flush=True)

    data = Data(args.data, quick=False, log=log)
    src2, c2, c10 = data.checkpoint("2g"), data.container("2g"), data.container("10g")
    sides = [
        Side("A", args.a.resolve(), {}),
        Side("B", args.b.resolve(), {}),
        Side("B mapped", args.b.resolve(), {"mapped": True}),
    ]
    # results[key][side label] -> list of values over rounds
    res: dict[str, dict[str, list[float]]] = {}
    busy: list[float] = []

    def put(key: str, side: Side, value: float) -> None:
        res.setdefault(key, {}).setdefault(side.label, []).append(value)

    overlap_cases: list[tuple[str, Path, dict[str, Any]]] = [
        ("fig 5: T=64, all chunks, workers widen, BLAS 2", c2, {"tokens": 64}),
        (
            "fig 5: vision tower as `wstream run` (T=1024), 11 GB",
            c10,
            {"tokens": 1024, "forward_widens": True, "group_prefix": "vision."},
        ),
        (
            "fig 5: decoder prefill as `wstream run` (T=80), 11 GB",
            c10,
            {"tokens": 80, "forward_widens": True, "group_prefix": "llm.layer."},
        ),
    ]
    env2 = {"OPENBLAS_NUM_THREADS": "2", "OMP_NUM_THREADS": "2"}
    for r in range(args.rounds):
        busy.append(cpu_busy())
        log(f"round {r + 1}/{args.rounds} (CPUs {busy[-1]:.0%} busy before it)")
        # fig 4: the baseline once per round, then each side
        warm(src2, c2)
        base = Side("A", args.a.resolve(), {}).child("safetensors_load_file", src=str(src2))
        for side in rotate(sides, r):
            warm(src2, c2)
            got = side.child("stream", path=str(c2), budget=128 * 10**6)
            put(
                "fig 4: VmHWM, 128 MB budget / load_file",
                side,
                got["peak"]["VmHWM"] / base["peak"]["VmHWM"],
            )
            put("fig 4: VmHWM, 128 MB budget (MiB)", side, got["peak"]["VmHWM"] / MiB)
            put("fig 4: wall, 128 MB budget (s)", side, got["seconds"])
            log(
                f"  fig 4 {side.label}: {got['peak']['VmHWM'] / MiB:.0f} MiB, {got['seconds']:.2f} s"
            )
        # fig 5: stream / eager per stage, each side's own eager and stream back to back
        for label, path, kw in overlap_cases:
            for side in rotate(sides, r):
                t: dict[str, float] = {}
                for mode in ("eager", "stream") if r % 2 == 0 else ("stream", "eager"):
                    warm(path)
                    t[mode] = side.child(
                        "overlap", env=env2, path=str(path), mode=mode, verify=True, **kw
                    )["seconds"]
                put(label + ": stream / eager", side, t["stream"] / t["eager"])
                put(label + ": stream (s)", side, t["stream"])
                log(f"  {label} {side.label}: eager {t['eager']:.2f} s, stream {t['stream']:.2f} s")
        # fig 8: open -> first chunk in hand (imports not counted), as `wstream run` asks
        for name, path in (("2 GB", c2), ("11 GB", c10)):
            for cache in ("warm", "cold"):
                for side in rotate(sides, r):
                    hand: list[float] = []
                    for _ in range(args.first_chunk_runs):
                        if cache == "cold":
                            drop_cache(path)
                        else:
                            warm(path)
                        got = side.child(
                            "first_chunk",
                            path=str(path),
                            widen="dequantize",
                            verify=True,
                            expect_cold=cache == "cold",
                        )
                        hand.append(got["in_hand"] * 1e3)
                    put(f"fig 8: {name} {cache}, first chunk in hand (ms)", side, med(hand))
                    log(f"  fig 8 {name} {cache} {side.label}: {med(hand):.1f} ms")

    lines = [
        "# Loader figures, two checkouts in one run (`bench/ab.py`)",
        "",
        f"Command: `python bench/ab.py --a {args.a} --b {args.b} --rounds {args.rounds}`; "
        f"{dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC; {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPUs; CPUs busy with other work before each round: "
        + ", ".join(f"{b:.0%}" for b in busy)
        + ".",
        "",
        f"A = `{_head(args.a)}`, B = `{_head(args.b)}`; B mapped = B with `open_container(path, "
        "mapped=True)`. Medians over rounds; in brackets every round's value.",
        "",
        "| measure | A | B | B mapped | B / A | B mapped / A |",
        "|---|---|---|---|---|---|",
    ]
    for key, by in res.items():
        a, b, m = (med(by.get(s, [])) for s in ("A", "B", "B mapped"))
        cells = [_cell(by.get(s, [])) for s in ("A", "B", "B mapped")]
        lines.append(f"| {key} | {' | '.join(cells)} | {b / a:.2f} | {m / a:.2f} |")
    args.out.write_text("\n".join(lines) + "\n")
    (args.out.with_suffix(".json")).write_text(json.dumps({"busy": busy, "results": res}, indent=1))
    print("\n".join(lines))
    return 0


def _cell(values: list[float]) -> str:
    return f"{med(values):.3g} [{', '.join(f'{v:.3g}' for v in values)}]"


def _head(tree: Path) -> str:
    out = subprocess.run(
        ["git", "-C", str(tree), "log", "-1", "--format=%h %s"],
        check=False,
        capture_output=True,
        text=True,
    )
    return out.stdout.strip()[:72]


if __name__ == "__main__":
    raise SystemExit(main())
