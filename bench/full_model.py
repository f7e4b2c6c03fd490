"""MiniCPM-V 2.6 at its real dimensions (16.2 GB of bf16), streamed under a 1 GiB budget.

    python bench/full_model.py [--data DIR] [--only raw zstd-shuffle int8] [--new-tokens 8]

Generates the synthetic full-size checkpoint once (random weights, the real 789 tensors; about
2 minutes), packs it several ways (raw; zstd after byte grouping; INT8 linear layers; float16; uint4
linear layers), then for
each container and for a warm and a cold page cache runs one request in a fresh process:
``wstream run --image <448x448 card> --input-ids <16 ids> --max-new-tokens 8 --budget 1G --json``
while the parent samples the child's RSS every 2 ms (total and anonymous). Beside it: what the
load-everything path would need (every weight widened to float32, as the forward computes), and
the vision tower's achieved GFLOP/s against this machine's numpy matmul peak, measured in the
same child process.

Writes bench/results/full_model.json and bench/results/FULL_MODEL.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _measure import MiB, Sampler, drop_cache, resident, wait_quiet, warm

RESULTS = Path(__file__).resolve().parent / "results"
BUDGET = "1G"
PACKINGS: dict[str, dict[str, Any]] = {
    "raw": {"codec": "raw"},
    "zstd-shuffle": {"codec": "zstd", "shuffle": True, "threads": 2},
    "int8": {"codec": "raw", "quantize": "int8"},
    "fp16": {"codec": "raw", "dtype": "float16"},
    "uint4": {"codec": "raw", "quantize": "uint4"},
}
GiB = 1 << 30

_VISION_CHILD = r"""
import json, sys, time
import os
os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "1")  # as the `wstream` command does, before numpy loads
import numpy as np
from wstream.stream.loader import StreamingLoader
from wstream.stream.plan import Widen
from wstream.model import vision
from wstream.model.config import from_hf
from wstream.model.schedule import execution_order
from wstream.model.weights import walk
from wstream.container.reader import Container
from wstream.run import load_image

c = Container(sys.argv[1])
cfg = from_hf(c.manifest.config).vision
loader = StreamingLoader(c, budget=None, widen=Widen.FLOAT32)  # no budget: every vision chunk stays once loaded
plans = {p.name: p for p in execution_order(loader.tensor_names)}
groups = ["vision.embed"] + [f"vision.layer.{i}" for i in range(cfg.layers)] + ["vision.post_norm"]
pixels = load_image(sys.argv[2])
def tower():
    cursors = walk(loader, [(g, plans[g].prefix, None) for g in groups])
    out = vision.encode([pixels], cursors, cfg)[0]
    cursors.close()
    return out
t0 = time.perf_counter(); tower(); first = time.perf_counter() - t0  # streams, then keeps
runs = []
for _ in range(3):
    t0 = time.perf_counter(); tower(); runs.append(time.perf_counter() - t0)
a = np.random.default_rng(0).standard_normal((1024, 4096)).astype(np.float32)
b = np.random.default_rng(1).standard_normal((4096, 4096)).astype(np.float32)
a @ b
peaks = []
for _ in range(3):
    t0 = time.perf_counter(); a @ b; peaks.append(2 * 1024 * 4096 * 4096 / (time.perf_counter() - t0))
L = (pixels.shape[1] // cfg.patch) * (pixels.shape[2] // cfg.patch)
D, I = cfg.hidden, cfg.intermediate
per_layer = 2 * L * (4 * D * D + 2 * D * I) + 2 * 2 * L * L * D  # projections, MLP, QK^T and PV
flops = cfg.layers * per_layer + 2 * L * (3 * cfg.patch**2) * D
best = min(runs)
print(json.dumps({"tokens": L, "layers": cfg.layers, "flops": flops, "first_pass_s": first,
                  "compute_s": runs, "gflops": flops / best / 1e9,
                  "matmul_peak_gflops": max(peaks) / 1e9,
                  "fraction_of_peak": flops / best / max(peaks)}))
"""


def log(msg: str) -> None:
    print(msg, flush=True)


def stamp_ok(path: Path, recipe: dict[str, Any]) -> bool:
    stamp = path.with_name(path.name + ".recipe.json")
    return path.exists() and stamp.exists() and json.loads(stamp.read_text()) == recipe


def write_stamp(path: Path, recipe: dict[str, Any]) -> None:
    path.with_name(path.name + ".recipe.json").write_text(json.dumps(recipe))


def ensure_checkpoint(data: Path) -> Path:
    from wstream.synthetic import preset, write_checkpoint

    ckpt = data / "ckpt"
    recipe = {"preset": "full", "seed": 0}
    if stamp_ok(ckpt, recipe):
        return ckpt
    log("generating the full-size MiniCPM-V 2.6 checkpoint (16.2 GB of bf16) ...")
    t0 = time.perf_counter()
    write_checkpoint(ckpt, preset("full"), seed=0)
    write_stamp(ckpt, recipe)
    log(f"  done in {time.perf_counter() - t0:.0f} s")
    return ckpt


def ensure_container(data: Path, ckpt: Path, name: str) -> Path:
    from wstream.pack import pack

    out = data / f"{name}.wst"
    recipe = dict(PACKINGS[name])
    if stamp_ok(out, recipe):
        return out
    log(f"packing {name} ...")
    report = pack(ckpt, out, **recipe)
    write_stamp(out, recipe)
    log(
        f"  {report.chunks} chunks, {report.bytes_out / 1e9:.2f} GB, ratio {report.ratio:.3f}, "
        f"{report.seconds:.0f} s"
    )
    return out


def test_card(path: Path) -> Path:
    """A 448 x 448 RGB card: one full MiniCPM-V slice (32 x 32 patches)."""
    import numpy as np
    from PIL import Image

    y, x = np.mgrid[0:448, 0:448]
    rgb = np.stack([x * 255 // 448, y * 255 // 448, ((x // 28 + y // 28) % 2) * 255], axis=-1)
    Image.fromarray(rgb.astype(np.uint8), "RGB").save(path)
    return path


def widened_nbytes(container: Path) -> int:
    """Bytes every weight takes once widened to float32: what load-everything must hold."""
    from wstream.container.reader import Container

    with Container(container) as c:
        total = 0
        for info in c.manifest.tensors.values():
            n = info.nbytes // info.dtype.itemsize
            total += n * 4 if info.dtype.name in ("BF16", "F16", "F32") else info.nbytes
        return total


def run_request(container: Path, image: Path, ids: str, new_tokens: int) -> dict[str, Any]:
    cmd = ["run", str(container), "--image", str(image), "--input-ids", ids]
    return run_measured(cmd + ["--max-new-tokens", str(new_tokens), "--budget", BUDGET, "--json"])


def run_measured(args: list[str]) -> dict[str, Any]:
    """``wstream ARGS`` (ending in ``--json``) in a fresh process, its RSS sampled every 2 ms:
    the JSON it printed, plus ``process_wall_s`` and the ``sampled`` peaks."""
    cmd = [sys.executable, "-m", "wstream.cli", *args]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    with Sampler(proc.pid) as sampler:
        out, err = proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"wstream run failed: {err.strip()[-2000:]}")
    result: dict[str, Any] = json.loads(out)
    result["process_wall_s"] = time.perf_counter() - t0
    result["sampled"] = dict(sampler.peak)
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=Path("/work/bench-data/full"))
    ap.add_argument("--only", nargs="*", default=list(PACKINGS), choices=list(PACKINGS))
    ap.add_argument("--new-tokens", type=int, default=8)
    ap.add_argument("--skip-cold", action="store_true")
    args = ap.parse_args(argv)
    args.data.mkdir(parents=True, exist_ok=True)
    ready = {
        n: args.data / f"{n}.wst"
        for n in args.only
        if stamp_ok(args.data / f"{n}.wst", dict(PACKINGS[n]))
    }
    if len(ready) < len(args.only):  # the checkpoint is only needed to pack what is missing
        ckpt = ensure_checkpoint(args.data)
        ready.update({n: ensure_container(args.data, ckpt, n) for n in args.only if n not in ready})
    containers = {n: ready[n] for n in args.only}
    image = test_card(args.data / "card.png")
    import numpy as np

    ids = ",".join(str(int(i)) for i in np.random.default_rng(0).integers(0, 151666, 16))
    results: dict[str, Any] = {"budget": BUDGET, "new_tokens": args.new_tokens, "runs": {}}

    first = next(iter(containers.values()))
    need = widened_nbytes(first)
    mem_total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    results["load_everything"] = {
        "float32_weights_bytes": need,
        "mem_total_bytes": mem_total,
        "runs_here": need < mem_total,
    }
    log(
        f"load-everything would hold {need / GiB:.1f} GiB of float32 weights; this machine has "
        f"{mem_total / GiB:.1f} GiB: {'it fits' if need < mem_total else 'it cannot run here'}"
    )

    wait_quiet(log=log)
    log("vision tower at 2.6 dimensions (weights in RAM after a first pass) ...")
    proc = subprocess.run(
        [sys.executable, "-c", _VISION_CHILD, str(containers.get("raw", first)), str(image)],
        capture_output=True,
        text=True,
        check=True,
    )
    results["vision"] = json.loads(proc.stdout.strip().splitlines()[-1])
    v = results["vision"]
    log(
        f"  {v['gflops']:.0f} GFLOP/s = {v['fraction_of_peak']:.2f} of the matmul peak "
        f"({v['matmul_peak_gflops']:.0f} GFLOP/s); {min(v['compute_s']):.2f} s per slice"
    )

    for name, path in containers.items():
        for cache in ("cold", "warm") if not args.skip_cold else ("warm",):
            if cache == "cold":
                drop_cache(path)
                state = resident(path)
            else:
                warm(path)
                state = resident(path)
            wait_quiet(log=log)
            log(f"{name}, {cache} cache ({state:.0%} resident) ...")
            r = run_request(path, image, ids, args.new_tokens)
            r["resident_before"] = state
            results["runs"][f"{name}/{cache}"] = r
            t = r["timings"]
            ld = r["loader"]
            log(
                f"  peak RSS {r['peak_rss_bytes'] / MiB:.0f} MiB (anon {r['sampled'].get('RssAnon', 0) / MiB:.0f}); "
                + "  ".join(f"{k} {v:.1f}s" for k, v in t.items())
                + f"; {ld['bytes_read_per_decode_step'] / 1e9:.2f} GB read per decode step"
            )

    cpu = next(
        (
            ln.split(":", 1)[1].strip()
            for ln in open("/proc/cpuinfo")
            if ln.startswith("model name")
        ),
        "?",
    )
    results["machine"] = (
        f"{cpu}, {os.cpu_count()} vCPU, {mem_total / GiB:.1f} GiB, {platform.platform()}"
    )
    results["command"] = "python bench/full_model.py " + " ".join(
        argv if argv is not None else sys.argv[1:]
    )
    results["date"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "full_model.json").write_text(json.dumps(results, indent=1))
    (RESULTS / "FULL_MODEL.md").write_text(report(results))
    log(f"wrote {RESULTS / 'FULL_MODEL.md'}")
    return 0


def report(r: dict[str, Any]) -> str:
    v = r["vision"]
    le = r["load_everything"]
    lines = [
        "# MiniCPM-V 2.6 at its real dimensions, streamed",
        "",
        f"Machine: {r['machine']}. Command: `{r['command']}`; {r['date']}.",
        "",
        "Synthetic checkpoint with the real 789 tensors (8.1 B parameters, 16.2 GB of bf16, random "
        f"values). One 448x448 slice, a 16-token prompt (80 positions with the 64 image tokens), "
        f"{r['new_tokens']} new tokens, `--budget {r['budget']}`, prefetch 2. Each run is a fresh "
        "process; peak RSS is the kernel's VmHWM (total, file pages included) and the parent's "
        "2 ms samples of RssAnon.",
        "",
        "| container | cache | peak RSS (VmHWM) | peak anon | open | vision | resampler | prefill | decode | per decode step | read per decode step | stalled |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for key, run in r["runs"].items():
        name, cache = key.split("/")
        t = run["timings"]
        ld = run["loader"]
        steps = max(r["new_tokens"] - 1, 1)
        lines.append(
            f"| {name} | {cache} | {run['peak_rss_bytes'] / MiB:,.0f} MiB | "
            f"{run['sampled'].get('RssAnon', 0) / MiB:,.0f} MiB | {t['open']:.2f} s | "
            f"{t['vision']:.1f} s | {t['resampler']:.1f} s | {t['prefill']:.1f} s | "
            f"{t['decode']:.1f} s | {t['decode'] / steps:.1f} s | "
            f"{ld['bytes_read_per_decode_step'] / 1e9:.2f} GB | {ld['stall_seconds']:.1f} s |"
        )
    lines += [
        "",
        f"Load everything: the forward computes in float32, so holding every weight takes "
        f"{le['float32_weights_bytes'] / GiB:.1f} GiB (the bf16 file alone is 15.1 GiB) against "
        f"{le['mem_total_bytes'] / GiB:.1f} GiB of RAM here: "
        + ("it fits." if le["runs_here"] else "it cannot run on this machine, so it was not run."),
        "",
        f"Vision tower at 2.6 dimensions ({v['tokens']} patches, {v['layers']} layers, "
        f"{v['flops'] / 1e12:.2f} TFLOP per slice), weights already in RAM: best of 3 "
        f"{min(v['compute_s']):.2f} s = {v['gflops']:.0f} GFLOP/s, "
        f"{v['fraction_of_peak']:.2f} of numpy's float32 matmul peak measured in the same process "
        f"({v['matmul_peak_gflops']:.0f} GFLOP/s, (1024x4096)@(4096x4096)).",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
