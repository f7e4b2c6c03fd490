"""Which quantized layout makes a matmul faster, not only the file smaller (issue 13, step 1).

Times y = x @ W.T for W [out, in] stored each way, the weight walked in the row blocks the
forward's cursor uses (``SUB_ELEMENTS`` per block, widened in cache just before use), and reports
each variant's median as a ratio to the bf16 path measured in the same run, interleaved round by
round, since the machine is shared and absolute times drift::

    python bench/quant_kernels.py [--repeats 7] [--tokens 1 448] [--out 18944] [--in 3584]

Variants:
  bf16      today's raw path: bf16 -> f32 widen per block + matmul
  f32       the matmul alone on float32 weights (what reading 4 bytes/element costs)
  f16-np    float16 widened per block into the scratch by numpy (copyto) + matmul
  f16-astype float16 widened per block by ``astype`` (a fresh array) + matmul
  int8-g    today's INT8: group-of-128 scales dequantized to a float32 copy of W (as the
            loader's workers do, out to memory) + matmul
  int8-gc   group-of-128 scales, dequantized per block in cache (cast + multiply) + matmul
  int8-gp   group-of-128 scales applied to per-group partial products (cast per block, one
            batched matmul per group, scales on the [T, rows, groups] partials)
  int8-ch   one scale per output row: cast per block + matmul, the scale applied to y's columns
  int4-lut  4-bit, two per byte, group-of-128 scales and zero points: a 256-entry table gives
            both nibbles as float32 in one gather, then (q - z) * s in cache + matmul
  int4-split 4-bit with the group's first half in the low nibbles and second half in the high
            ones: two masked casts, no interleave, then (q - z) * s in cache + matmul
  int4-gp   the split layout, unpacked the same way, with the zero points folded into per-group
            sums of x and the scales applied to per-group partial products

uint4 as built (``wstream.format.uint4``, ``wstream.model.quant_kernel``; ``--uint4`` runs only
these and bf16, the attempts at going below int4-gp):
  u4        the shipped kernel: the packed block unpacked in pieces of DECODE_ELEMENTS (decode) /
            PREFILL_ELEMENTS (prefill) values, each nibble cast straight into float32 (ufunc
            with a float32 out, no uint8 temporary), zero points via group sums of x in one
            small matmul, scales on the partials
  u4-4M     the same, unpacked in pieces of 4M values (what the cursor widens per block)
  u4-256K   ... pieces of 256K values; u4-32K pieces of 32K values
  u4-512K   partial products in 512K-value pieces; u4-sc128K, u4-sc512K: (q - z) * s then one
            matmul per piece of 128K / 512K values, at every T
  u4-pp     the decode path (partial products) at every T; u4-pp256K, u4-pp1M with pieces of
            256K and 1M values
  u4-tmp    the same pieces, unpacked through uint8 temporaries (p & 15, then a cast copy)
  u4-i8     unpacked into an int8 scratch, then INT8's path (cast to float32, partial products)
  u4-vecdot the partials by np.vecdot over each group's 128 values (one gufunc call a piece,
            no batched matmul), scales applied by a sum over groups
  u4-mulsum the piece multiplied by x in place of a product, then summed per group
  u4-byte   no mask: the whole byte b = lo + 16 hi is cast, and x_lo.lo + x_hi.hi is computed as
            x_lo.b + (x_hi - 16 x_lo).hi, so only the shift remains
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable

import ml_dtypes
import numpy as np

SUB_ELEMENTS = 1 << 22  # as wstream.model.weights: elements widened per block
GROUP = 128


def blocks(rows: int, cols: int) -> list[tuple[int, int]]:
    step = max(1, SUB_ELEMENTS // cols)
    return [(r, min(r + step, rows)) for r in range(0, rows, step)]


def make(out: int, inp: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((out, inp), dtype=np.float32) * np.float32(0.02)
    g = inp // GROUP
    wg = w.reshape(out, g, GROUP)
    s = np.abs(wg).max(axis=2) / 127  # [out, g]
    q8 = np.rint(wg / s[:, :, None]).astype(np.int8).reshape(out, inp)
    sch = np.abs(w).max(axis=1) / 127  # [out]
    q8ch = np.rint(w / sch[:, None]).astype(np.int8)
    lo, hi = wg.min(axis=2), wg.max(axis=2)
    s4 = (hi - lo) / 15
    z4 = np.clip(np.rint(-lo / s4), 0, 15)
    q4 = np.clip(np.rint(wg / s4[:, :, None]) + z4[:, :, None], 0, 15).astype(np.uint8)
    inter = (q4[:, :, 0::2] | (q4[:, :, 1::2] << 4)).reshape(out, inp // 2)
    split = (q4[:, :, : GROUP // 2] | (q4[:, :, GROUP // 2 :] << 4)).reshape(out, inp // 2)
    return {
        "bf16": w.astype(ml_dtypes.bfloat16),
        "f32": w,
        "f16": w.astype(np.float16),
        "q8": q8,
        "s8": s.astype(np.float32),
        "q8ch": q8ch,
        "s8ch": sch.astype(np.float32),
        "p4": inter,
        "p4s": split,
        "s4": s4.astype(np.float32),
        "z4": z4.astype(np.float32),
    }


LUT = np.stack(np.divmod(np.arange(256), 16)[::-1], axis=1).astype(np.float32)  # [256, 2]


def run_all(x: np.ndarray, m: dict[str, np.ndarray]) -> dict[str, Callable[[], np.ndarray]]:
    out, inp = m["f32"].shape
    t = x.shape[0]
    g = inp // GROUP
    bl = blocks(out, inp)
    step = bl[0][1]
    scratch = np.empty((step, inp), np.float32)
    full = np.empty((out, inp), np.float32)
    xg = np.ascontiguousarray(x.reshape(t, g, GROUP).transpose(1, 0, 2))  # [g, T, 128]
    xsum = x.reshape(t, g, GROUP).sum(axis=2)  # [T, g]

    def widen(key: str) -> np.ndarray:
        y = np.empty((t, out), np.float32)
        src = m[key]
        for r0, r1 in bl:
            w = scratch[: r1 - r0]
            np.copyto(w, src[r0:r1], casting="unsafe")
            np.matmul(x, w.T, out=y[:, r0:r1])
        return y

    def f32() -> np.ndarray:
        y = np.empty((t, out), np.float32)
        for r0, r1 in bl:
            np.matmul(x, m["f32"][r0:r1].T, out=y[:, r0:r1])
        return y

    def f16_astype() -> np.ndarray:
        y = np.empty((t, out), np.float32)
        for r0, r1 in bl:
            w = m["f16"][r0:r1].astype(np.float32)
            np.matmul(x, w.T, out=y[:, r0:r1])
        return y

    def int8_full() -> np.ndarray:
        from wstream.format.quant import dequantize_int8

        dequantize_int8(m["q8"], m["s8"], GROUP, full)
        y = np.empty((t, out), np.float32)
        for r0, r1 in bl:
            np.matmul(x, full[r0:r1].T, out=y[:, r0:r1])
        return y

    def int8_cache() -> np.ndarray:
        y = np.empty((t, out), np.float32)
        for r0, r1 in bl:
            w = scratch[: r1 - r0]
            np.copyto(w, m["q8"][r0:r1], casting="unsafe")
            wg = w.reshape(r1 - r0, g, GROUP)
            np.multiply(wg, m["s8"][r0:r1, :, None], out=wg)
            np.matmul(x, w.T, out=y[:, r0:r1])
        return y

    def int8_partial() -> np.ndarray:
        y = np.empty((t, out), np.float32)
        for r0, r1 in bl:
            w = scratch[: r1 - r0]
            np.copyto(w, m["q8"][r0:r1], casting="unsafe")
            wg = w.reshape(r1 - r0, g, GROUP).transpose(1, 2, 0)  # [g, 128, rows]
            part = np.matmul(xg, wg)  # [g, T, rows]
            part *= m["s8"][r0:r1].T[:, None, :]
            part.sum(axis=0, out=y[:, r0:r1])
        return y

    def int8_channel() -> np.ndarray:
        y = np.empty((t, out), np.float32)
        for r0, r1 in bl:
            w = scratch[: r1 - r0]
            np.copyto(w, m["q8ch"][r0:r1], casting="unsafe")
            o = y[:, r0:r1]
            np.matmul(x, w.T, out=o)
            np.multiply(o, m["s8ch"][r0:r1], out=o)
        return y

    def int4(split: bool) -> Callable[[], np.ndarray]:
        def go() -> np.ndarray:
            y = np.empty((t, out), np.float32)
            src = m["p4s" if split else "p4"]
            for r0, r1 in bl:
                n = r1 - r0
                w = scratch[:n]
                if split:
                    wg = w.reshape(n, g, 2, GROUP // 2)
                    p = src[r0:r1].reshape(n, g, GROUP // 2)
                    np.copyto(wg[:, :, 0], p & 15, casting="unsafe")
                    np.copyto(wg[:, :, 1], p >> 4, casting="unsafe")
                else:
                    np.take(LUT, src[r0:r1], axis=0, out=w.reshape(n, inp // 2, 2))
                wg3 = w.reshape(n, g, GROUP)
                np.subtract(wg3, m["z4"][r0:r1, :, None], out=wg3)
                np.multiply(wg3, m["s4"][r0:r1, :, None], out=wg3)
                np.matmul(x, w.T, out=y[:, r0:r1])
            return y

        return go

    def int4_partial() -> np.ndarray:
        # (q - z) * s: the zero point folds into per-group sums of x, the scale onto partials
        y = np.empty((t, out), np.float32)
        src = m["p4s"]
        for r0, r1 in bl:
            n = r1 - r0
            w = scratch[:n]
            wg = w.reshape(n, g, 2, GROUP // 2)
            p = src[r0:r1].reshape(n, g, GROUP // 2)
            np.copyto(wg[:, :, 0], p & 15, casting="unsafe")
            np.copyto(wg[:, :, 1], p >> 4, casting="unsafe")
            part = np.matmul(xg, w.reshape(n, g, GROUP).transpose(1, 2, 0))  # [g, T, n]
            part -= m["z4"][r0:r1].T[:, None, :] * xsum.T[:, :, None]
            part *= m["s4"][r0:r1].T[:, None, :]
            part.sum(axis=0, out=y[:, r0:r1])
        return y

    return {
        "bf16": lambda: widen("bf16"),
        "f32": f32,
        "f16-np": lambda: widen("f16"),
        "f16-astype": f16_astype,
        "int8-g": int8_full,
        "int8-gc": int8_cache,
        "int8-gp": int8_partial,
        "int8-ch": int8_channel,
        "int4-lut": int4(False),
        "int4-split": int4(True),
        "int4-gp": int4_partial,
    }


def uint4_all(x: np.ndarray, m: dict[str, np.ndarray]) -> dict[str, Callable[[], np.ndarray]]:
    from wstream.format.quant import QuantPiece
    from wstream.format.uint4 import unpack_uint4
    from wstream.model import quant_kernel as k

    out, inp = m["f32"].shape
    t = x.shape[0]
    g = inp // GROUP
    half = GROUP // 2
    piece = QuantPiece(m["p4s"], m["s4"], GROUP, m["z4"].astype(np.uint8), inp)
    xg = np.ascontiguousarray(x.reshape(t, g, GROUP).transpose(1, 0, 2))  # [g, T, 128]
    xsum = x.reshape(t, g, GROUP).sum(axis=2)  # [T, g]
    xlo = np.ascontiguousarray(xg[:, :, :half])  # [g, T, 64]
    xhi16 = np.ascontiguousarray(xg[:, :, half:] - 16 * xg[:, :, :half])

    def shipped(decode: int, prefill: int, partial: int | None = None) -> Callable[[], np.ndarray]:
        def go() -> np.ndarray:
            saved = k.DECODE_ELEMENTS, k.PREFILL_ELEMENTS, k.PARTIAL_MAX_ROWS
            k.DECODE_ELEMENTS, k.PREFILL_ELEMENTS = decode, prefill
            if partial is not None:
                k.PARTIAL_MAX_ROWS = partial
            try:
                y = np.empty((t, out), np.float32)
                for r0, r1 in blocks(out, inp // 2):  # the cursor's blocks of packed rows
                    k.quant_matmul_t(x, piece.row_slice(r0, r1), y[:, r0:r1])
                return y
            finally:
                k.DECODE_ELEMENTS, k.PREFILL_ELEMENTS, k.PARTIAL_MAX_ROWS = saved

        return go

    def pieces(step_elems: int, unpack: Callable[..., None]) -> Callable[[], np.ndarray]:
        def go() -> np.ndarray:
            y = np.empty((t, out), np.float32)
            step = max(1, step_elems // inp)
            scratch = np.empty(step * inp, np.float32)
            for r0 in range(0, out, step):
                r1 = min(r0 + step, out)
                o = y[:, r0:r1]
                unpack(r0, r1, scratch, o)
                o -= xsum @ (m["s4"][r0:r1] * m["z4"][r0:r1]).T
            return y

        return go

    def tmp_unpack(r0: int, r1: int, scratch: np.ndarray, o: np.ndarray) -> None:
        n = r1 - r0
        q = scratch[: n * inp].reshape(n, g, 2, half)
        p = m["p4s"][r0:r1].reshape(n, g, half)
        np.copyto(q[:, :, 0], p & 15, casting="unsafe")
        np.copyto(q[:, :, 1], p >> 4, casting="unsafe")
        part = np.matmul(xg, q.reshape(n, g, GROUP).transpose(1, 2, 0))
        part *= m["s4"][r0:r1].T[:, None, :]
        np.sum(part, axis=0, out=o)

    def i8_unpack(r0: int, r1: int, scratch: np.ndarray, o: np.ndarray) -> None:
        n = r1 - r0
        i8 = np.empty((n, g, 2, half), np.int8)
        p = m["p4s"][r0:r1].reshape(n, g, half)
        np.bitwise_and(p, 15, out=i8[:, :, 0], casting="unsafe")
        np.right_shift(p, 4, out=i8[:, :, 1], casting="unsafe")
        q = scratch[: n * inp].reshape(n, inp)
        np.copyto(q, i8.reshape(n, inp), casting="unsafe")
        part = np.matmul(xg, q.reshape(n, g, GROUP).transpose(1, 2, 0))
        part *= m["s4"][r0:r1].T[:, None, :]
        np.sum(part, axis=0, out=o)

    def byte_unpack(r0: int, r1: int, scratch: np.ndarray, o: np.ndarray) -> None:
        n = r1 - r0
        b = scratch[: n * inp // 2].reshape(n, g, half)
        hi = scratch[n * inp // 2 : n * inp].reshape(n, g, half)
        p = m["p4s"][r0:r1].reshape(n, g, half)
        np.copyto(b, p, casting="unsafe")
        np.right_shift(p, 4, out=hi, casting="unsafe")
        part = np.matmul(xlo, b.transpose(1, 2, 0))  # [g, T, n]
        part += np.matmul(xhi16, hi.transpose(1, 2, 0))
        part *= m["s4"][r0:r1].T[:, None, :]
        np.sum(part, axis=0, out=o)

    def vecdot_unpack(r0: int, r1: int, scratch: np.ndarray, o: np.ndarray) -> None:
        n = r1 - r0
        q = scratch[: n * inp].reshape(n, inp)
        unpack_uint4(m["p4s"][r0:r1], inp, GROUP, q)
        part = np.vecdot(q.reshape(1, n, g, GROUP), xg.transpose(1, 0, 2)[:, None])  # [T, n, g]
        np.sum(part * m["s4"][r0:r1], axis=2, out=o)

    def mulsum_unpack(r0: int, r1: int, scratch: np.ndarray, o: np.ndarray) -> None:
        n = r1 - r0
        q = scratch[: n * inp].reshape(n, inp)
        unpack_uint4(m["p4s"][r0:r1], inp, GROUP, q)
        for i in range(t):
            prod = q * x[i]
            part = prod.reshape(n, g, GROUP).sum(axis=2)  # [n, g]
            np.vecdot(part, m["s4"][r0:r1], out=o[i])

    return {
        "u4": shipped(k.DECODE_ELEMENTS, k.PREFILL_ELEMENTS),
        "u4-4M": shipped(SUB_ELEMENTS, SUB_ELEMENTS),
        "u4-256K": shipped(1 << 18, 1 << 18),
        "u4-32K": shipped(1 << 15, 1 << 15),
        "u4-pp": shipped(k.DECODE_ELEMENTS, k.PREFILL_ELEMENTS, 1 << 30),  # partials at any T
        "u4-pp256K": shipped(1 << 18, 1 << 18, 1 << 30),
        "u4-pp1M": shipped(1 << 20, 1 << 20, 1 << 30),
        "u4-512K": shipped(1 << 19, 1 << 19),
        "u4-sc128K": shipped(1 << 17, 1 << 17, 0),  # (q - z) * s then a matvec, at every T
        "u4-sc512K": shipped(1 << 19, 1 << 19, 0),
        "u4-tmp": pieces(k.DECODE_ELEMENTS, tmp_unpack),
        "u4-i8": pieces(k.DECODE_ELEMENTS, i8_unpack),
        "u4-byte": pieces(k.DECODE_ELEMENTS, byte_unpack),
        "u4-vecdot": pieces(k.DECODE_ELEMENTS, vecdot_unpack),
        "u4-mulsum": pieces(k.DECODE_ELEMENTS, mulsum_unpack),
    }


def measure(
    t: int,
    out: int,
    inp: int,
    repeats: int,
    only_uint4: bool = False,
    only: list[str] | None = None,
) -> None:
    m = make(out, inp)
    x = np.random.default_rng(1).standard_normal((t, inp), dtype=np.float32)
    fns = run_all(x, m)
    if only_uint4:
        fns = {k: f for k, f in fns.items() if k in ("bf16", "f32", "int8-gp", "int4-gp")}
    fns.update(uint4_all(x, m))
    if only:
        fns = {k: f for k, f in fns.items() if k in only or k in ("bf16", "f32")}
    ref = fns["f32"]()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for k, f in fns.items():  # warm up, and check each variant computes the same product
        y = f()
        err = float(np.abs(y - ref).max() / np.abs(ref).max())
        assert err < (0.25 if k.startswith(("int4", "u4")) else 0.02), (k, err)  # 4 bits: ~0.1
    for _ in range(repeats):
        for k, f in fns.items():
            t0 = time.perf_counter()
            f()
            times[k].append(time.perf_counter() - t0)
    base = statistics.median(times["bf16"])
    print(f"\n[{t}, {inp}] @ [{inp}, {out}]  (bf16 median {base * 1e3:.1f} ms, {repeats} rounds)")
    print(f"{'variant':12} {'median ms':>10} {'x bf16':>7} {'bytes/elem':>10}")
    per_elem = {
        "bf16": 2,
        "f32": 4,
        "f16-np": 2,
        "f16-astype": 2,
        "int8-g": 1 + 4 / GROUP,
        "int8-gc": 1 + 4 / GROUP,
        "int8-gp": 1 + 4 / GROUP,
        "int8-ch": 1,
        "int4-lut": 0.5 + 8 / GROUP,
        "int4-split": 0.5 + 8 / GROUP,
        "int4-gp": 0.5 + 8 / GROUP,
    }
    per_elem.update({k: 0.5 + 5 / GROUP for k in fns if k.startswith("u4")})
    for k, ts in times.items():
        med = statistics.median(ts)
        print(f"{k:12} {med * 1e3:10.1f} {med / base:7.2f} {per_elem[k]:10.3f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--tokens", type=int, nargs="+", default=[1, 448])
    ap.add_argument("--out", type=int, default=18944)
    ap.add_argument("--in", dest="inp", type=int, default=3584)
    ap.add_argument("--uint4", action="store_true", help="only the uint4 variants (and baselines)")
    ap.add_argument("--only", nargs="+", help="only these variants (and bf16, f32)")
    args = ap.parse_args()
    print(f"load average {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    for t in args.tokens:
        measure(t, args.out, args.inp, args.repeats, args.uint4, args.only)


if __name__ == "__main__":
    main()
