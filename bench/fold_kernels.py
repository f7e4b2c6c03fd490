"""Would fusing a layer's projections at pack time pay? (issue 13, the folds, measured first.)

At MiniCPM-V 2.6 widths, float32 weights in RAM (what the forward multiplies once widened), the
separate products against one product with the matrices stacked along the output rows, interleaved
round by round, medians and the ratio fused / separate::

    python bench/fold_kernels.py [--repeats 7]

- decoder q/k/v: [T, 3584] @ [3584, 3584 | 512 | 512] against [T, 3584] @ [3584, 4608]
- decoder gate/up: two [T, 3584] @ [3584, 18944] against one [T, 3584] @ [3584, 37888]
- vision q/k/v: [1024, 1152] @ [1152, 1152] x 3 against [1024, 1152] @ [1152, 3456]
- RMSNorm affine folded into q/k/v: x * g then the product, against the product alone
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import numpy as np


def cases(rng: np.random.Generator) -> dict[str, tuple[Callable[[], object], Callable[[], object]]]:
    def mats(*shapes: tuple[int, int]) -> list[np.ndarray]:
        return [rng.standard_normal(s, dtype=np.float32) * np.float32(0.02) for s in shapes]

    out: dict[str, tuple[Callable[[], object], Callable[[], object]]] = {}
    for t in (1, 80):
        x = rng.standard_normal((t, 3584), dtype=np.float32)
        q, k, v = mats((3584, 3584), (512, 3584), (512, 3584))
        qkv = np.concatenate([q, k, v])
        out[f"decoder qkv T={t}"] = (
            lambda x=x, q=q, k=k, v=v: (x @ q.T, x @ k.T, x @ v.T),
            lambda x=x, w=qkv: x @ w.T,
        )
        g, u = mats((18944, 3584), (18944, 3584))
        gu = np.concatenate([g, u])
        out[f"decoder gate/up T={t}"] = (
            lambda x=x, g=g, u=u: (x @ g.T, x @ u.T),
            lambda x=x, w=gu: x @ w.T,
        )
        gamma = rng.standard_normal(3584, dtype=np.float32)
        out[f"rms affine into qkv T={t}"] = (
            lambda x=x, w=qkv, g=gamma: (x * g) @ w.T,
            lambda x=x, w=qkv: x @ w.T,
        )
    xv = rng.standard_normal((1024, 1152), dtype=np.float32)
    vq, vk, vv = mats((1152, 1152), (1152, 1152), (1152, 1152))
    vqkv = np.concatenate([vq, vk, vv])
    out["vision qkv L=1024"] = (
        lambda: (xv @ vq.T, xv @ vk.T, xv @ vv.T),
        lambda: xv @ vqkv.T,
    )
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args()
    print(f"{'case':26} {'separate ms':>12} {'fused ms':>9} {'fused/sep':>9}")
    for name, (sep, fused) in cases(np.random.default_rng(0)).items():
        ts: dict[str, list[float]] = {"sep": [], "fused": []}
        sep(), fused()
        for _ in range(args.repeats):
            for key, fn in (("sep", sep), ("fused", fused)):
                t0 = time.perf_counter()
                fn()
                ts[key].append(time.perf_counter() - t0)
        a, b = statistics.median(ts["sep"]), statistics.median(ts["fused"])
        print(f"{name:26} {a * 1e3:12.2f} {b * 1e3:9.2f} {b / a:9.2f}", flush=True)


if __name__ == "__main__":
    main()
