"""``wstream demo``: the whole job on built-in models, offline, in about a minute.

1. **A real question about a real image.** The package carries a tiny MiniCPM-V 2.6 trained on
   pictures of coloured shapes (``wstream/data/minicpmv-tiny``, made by ``tools/train_tiny.py``:
   the 2.6 architecture and tensor names, a BPE tokenizer with the 2.6 special tokens and chat
   template) and a picture (``wstream/data/demo.png``). The demo packs the checkpoint directory
   into one self-contained ``.wst`` (weights, tokenizer, template, preprocessor and generation
   configs) and asks the question with ``wstream run --prompt``, streamed under a budget, beside
   a load-everything baseline, each in a fresh process.
2. **Memory at a size where it matters.** It generates a MiniCPM-V 2.6-shaped checkpoint (random
   bf16 weights, ~330 MB), packs it, and runs prefill + greedy decode twice, each in a fresh
   process so each peak RSS is its own: once loading every weight up front (the baseline a plain
   loader gives), once streamed under a memory budget.

Nothing is downloaded.
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
DATA = Path(__file__).parent / "data"
TINY = DATA / "minicpmv-tiny"  # the trained tiny model's HF checkpoint directory
DEMO_IMAGE = DATA / "demo.png"
DEMO_QUESTION = "What color is the shape?"
CHAT_BUDGET = 256 << 10  # a tenth of the tiny model: it streams even here


def _write_image(path: Path) -> None:
    """A deterministic RGB test card: gradients and a checkerboard."""
    from PIL import Image

    w, h = IMAGE_SIZE
    y, x = np.mgrid[0:h, 0:w]
    rgb = np.stack([x * 255 // w, y * 255 // h, ((x // 28 + y // 28) % 2) * 255], axis=-1)
    Image.fromarray(rgb.astype(np.uint8), "RGB").save(path)


def _mib(n: float) -> str:
    return f"{n / (1 << 20):.1f} MiB"


def ask_demo(work: Path, out: Callable[[str], None] = print) -> dict[str, dict[str, Any]]:
    """Part 1: pack the trained tiny model and ask it about the demo picture."""
    packed = pack(TINY, work / "tiny.wst", max_chunk=64 << 10)
    out(
        f"model       trained tiny MiniCPM-V 2.6 ({TINY.name}): {packed.tensors} tensors, "
        f"{_mib(packed.bytes_out)} in one .wst with "
        f"{', '.join(f.name for f in packed.manifest.files)}"
    )
    from PIL import Image

    with Image.open(DEMO_IMAGE) as img:
        size = img.size
    out(f"question    {DEMO_QUESTION!r} about {DEMO_IMAGE.name} ({size[0]} x {size[1]} px)")
    common = [str(work / "tiny.wst"), "--image", str(DEMO_IMAGE), "--prompt", DEMO_QUESTION]
    runs = {
        "load-everything": common + ["--eager"],
        f"streamed, budget {CHAT_BUDGET >> 10} KiB": common + ["--budget", str(CHAT_BUDGET)],
    }
    reports = {}
    for label, args in runs.items():
        r = _run_in_fresh_process(args)
        reports[label] = r
        t = r["timings"]
        out(
            f"  {label:<26} answer {r['text']!r} ({r['finish_reason']}); {r['slices']} slices "
            f"-> {r['image_tokens']} image tokens of {r['prompt_tokens']}; first token "
            f"{r['first_token_seconds'] * 1e3:.0f} ms (preprocess {t['preprocess'] * 1e3:.0f}, "
            f"vision {t['vision'] * 1e3:.0f}, prefill {t['prefill'] * 1e3:.0f}); "
            f"peak RSS {_mib(r['peak_rss_bytes'])}"
        )
    return reports


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
        out("1. a question about a picture, asked as MiniCPM-V's chat() asks it\n")
        reports.update(ask_demo(work, out))
        out("\n2. streaming memory on a generated 2.6-shaped model\n")
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
