"""``wstream demo``: the whole job on a built-in model, offline, in under a minute.

Generates a small MiniCPM-V 2.6-shaped checkpoint (random bf16 weights, ~330 MB) and a test
image in a temporary directory, packs it, and runs prefill + greedy decode twice, each in a
fresh process so each peak RSS is its own: once loading every weight up front (the baseline a
plain loader gives), once streamed under a memory budget. Nothing is downloaded.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from wstream.errors import WStreamError
from wstream.pack import pack
from wstream.synthetic import preset, write_checkpoint

IMAGE_SIZE = (448, 336)  # W x H of the demo image: a 24 x 32 patch grid (non-square on purpose)
TEXT_TOKENS = 16
NEW_TOKENS = 8
DEMO_MAX_CHUNK = 8 << 20  # smaller chunks than pack's default: a small budget holds several
DEMO_BUDGET = 64 << 20  # a fifth of the bf16 model, a tenth of its float32 working size


def _write_image(path: Path) -> None:
    """A deterministic RGB test card: gradients and a checkerboard."""
    from PIL import Image

    w, h = IMAGE_SIZE
    y, x = np.mgrid[0:h, 0:w]
    rgb = np.stack([x * 255 // w, y * 255 // h, ((x // 28 + y // 28) % 2) * 255], axis=-1)
    Image.fromarray(rgb.astype(np.uint8), "RGB").save(path)


def _mib(n: float) -> str:
    return f"{n / (1 << 20):.1f} MiB"


def _run_in_fresh_process(args: list[str]) -> dict[str, Any]:
    """``wstream run ... --json`` in a new interpreter: its VmHWM is this run's alone."""
    proc = subprocess.run(
        [sys.executable, "-m", "wstream.cli", "run", *args, "--json"],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise WStreamError(f"demo run failed: {proc.stderr.strip() or proc.stdout.strip()}")
    return json.loads(proc.stdout)  # type: ignore[no-any-return]


def demo(*, model: str = "small", out: Callable[[str], None] = print) -> dict[str, dict[str, Any]]:
    """Run the demo on preset ``model``; returns each run's ``wstream run --json`` report."""
    cfg = preset(model)
    reports: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="wstream-demo-") as tmp:
        work = Path(tmp)
        started = time.perf_counter()
        written = write_checkpoint(work / "checkpoint", cfg, seed=0)
        out(
            f"checkpoint  {model}: {_mib(written.total_size)} of bf16 in {len(written.files)} "
            f"shards, generated in {time.perf_counter() - started:.2f} s"
        )
        packed = pack(
            written.directory,
            work / "model.wst",
            codec="zstd",
            shuffle=True,
            max_chunk=DEMO_MAX_CHUNK,
        )
        out(
            f"pack        {packed.tensors} tensors -> {packed.chunks} chunks, "
            f"{_mib(packed.bytes_out)} (zstd + bytegroup, ratio {packed.ratio:.3f}) in "
            f"{packed.seconds:.2f} s"
        )
        _write_image(work / "image.png")
        ids = np.random.default_rng(0).integers(0, cfg.decoder.vocab, TEXT_TOKENS)
        common = [
            str(work / "model.wst"),
            "--image",
            str(work / "image.png"),
            "--input-ids",
            ",".join(str(int(i)) for i in ids),
            "--max-new-tokens",
            str(NEW_TOKENS),
        ]
        runs = [
            ("load-everything baseline", ["--eager"]),
            (
                f"streamed, budget {_mib(DEMO_BUDGET)}, prefetch 2",
                ["--budget", str(DEMO_BUDGET), "--prefetch", "2"],
            ),
        ]
        for label, extra in runs:
            r = _run_in_fresh_process(common + extra)
            reports[label] = r
            t = r["timings"]
            stages = "  ".join(f"{k} {v * 1e3:.0f} ms" for k, v in t.items())
            out(f"\n{label}")
            out(
                f"  prompt    {r['prompt_tokens']} tokens, image {r['image_size'][1]} x "
                f"{r['image_size'][0]} px -> {cfg.resampler.queries} tokens at {r['image_bound']}"
            )
            out(f"  stages    {stages}")
            out(
                f"  decode    {t['decode'] / max(NEW_TOKENS - 1, 1) * 1e3:.0f} ms/token; "
                f"generated {r['generated']}"
            )
            out(
                f"  memory    peak RSS {_mib(r['peak_rss_bytes'])}; read {_mib(r['bytes_read'])}, "
                f"decoded {_mib(r['bytes_decoded'])}"
            )
            if r["loader"]:
                ld = r["loader"]
                out(
                    f"  loader    peak held {_mib(ld['peak_pool_bytes'])} of the budget; stalled "
                    f"{ld['stall_seconds'] * 1e3:.0f} ms; {_mib(ld['bytes_read_per_decode_step'])}"
                    f" re-read per decode step ({_mib(ld['resident_bytes'])} resident)"
                )
        base, streamed = (reports[label] for label, _ in runs)
        rss = streamed["peak_rss_bytes"] / base["peak_rss_bytes"]
        wall = sum(streamed["timings"].values()) / sum(base["timings"].values())
        out(
            f"\nstreamed vs baseline: peak RSS {rss:.2f}x, wall time {wall:.2f}x, same tokens: "
            f"{streamed['generated'] == base['generated']}"
        )
    return reports
