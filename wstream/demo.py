"""``wstream demo``: the whole job on a built-in model, offline, in seconds.

Generates a small MiniCPM-V 2.6-shaped checkpoint (random bf16 weights, ~350 MB) and a test
image in a temporary directory, packs the checkpoint, runs prefill + greedy decode on it, and
prints what each run measured. Nothing is downloaded.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from wstream.pack import pack
from wstream.run import RunReport, WeightsFactory, load_everything, make_weights, reset_peak_rss, run
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


def _mib(n: int) -> str:
    return f"{n / (1 << 20):.1f} MiB"


def demo(*, model: str = "small", out: Callable[[str], None] = print) -> dict[str, RunReport]:
    """Run the demo on preset ``model``; returns each run's report by label."""
    cfg = preset(model)
    runs: list[tuple[str, WeightsFactory, int | None]] = [
        ("load-everything baseline", load_everything, None),
        (f"streamed, {_mib(DEMO_BUDGET)} budget, prefetch 2", make_weights, DEMO_BUDGET),
    ]
    reports: dict[str, RunReport] = {}
    with tempfile.TemporaryDirectory(prefix="wstream-demo-") as tmp:
        work = Path(tmp)
        started = time.perf_counter()
        written = write_checkpoint(work / "checkpoint", cfg, seed=0)
        out(f"checkpoint  {model}: {_mib(written.total_size)} of bf16 in {len(written.files)} "
            f"shards, generated in {time.perf_counter() - started:.2f} s")
        packed = pack(written.directory, work / "model.wst", codec="zstd", shuffle=True,
                      max_chunk=DEMO_MAX_CHUNK)
        out(f"pack        {packed.tensors} tensors -> {packed.chunks} chunks, "
            f"{_mib(packed.bytes_out)} (zstd + bytegroup, ratio {packed.ratio:.3f}) in "
            f"{packed.seconds:.2f} s")
        _write_image(work / "image.png")
        ids = np.random.default_rng(0).integers(0, cfg.decoder.vocab, TEXT_TOKENS)
        for label, factory, budget in runs:
            reset_peak_rss()  # so each run's peak is its own
            report = run(work / "model.wst", input_ids=ids, image=work / "image.png",
                         max_new_tokens=NEW_TOKENS, budget=budget, weights_factory=factory)
            reports[label] = report
            t = report.timings
            stages = "  ".join(f"{k} {v * 1e3:.0f} ms" for k, v in t.items())
            per_token = t["decode"] / max(NEW_TOKENS - 1, 1) * 1e3
            out(f"\n{label}")
            out(f"  image     {report.image_size[1] if report.image_size else 0} x "
                f"{report.image_size[0] if report.image_size else 0} px -> "
                f"{cfg.resampler.queries} tokens at {report.image_bound}, "
                f"prompt {report.logits.shape[0]} tokens")
            out(f"  stages    {stages}")
            out(f"  decode    {per_token:.0f} ms/token; generated {report.generated}")
            out(f"  memory    peak RSS {_mib(report.peak_rss_bytes)}; read "
                f"{_mib(report.bytes_read)}, decoded {_mib(report.bytes_decoded)}")
    return reports
