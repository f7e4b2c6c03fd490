"""How far INT8 weights move the logits: cosine and top-1 agreement against the stored floats.

For each synthetic preset: pack raw (bf16) and INT8, decode ``--steps`` greedy tokens from the
float container, then score both containers on the prompt plus those tokens in one prefill (the
causal forward makes that the teacher-forced decode): per position the cosine of the logits and
whether the top-1 token agrees, over the last ``--steps`` + 1 positions. INT8 runs as ``wstream
run`` does (``Widen.QUANTIZED``: scales applied in the matmul)::

    python bench/quant_quality.py [--presets tiny tiny-gqa] [--steps 64]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np

from wstream.container.reader import Container
from wstream.model.vlm import generate
from wstream.pack import pack
from wstream.stream.loader import StreamingLoader
from wstream.synthetic import preset, write_checkpoint


def logits_of(path: Path, ids: np.ndarray, new: int) -> tuple[np.ndarray, list[int]]:
    with Container(path) as c, StreamingLoader(c, widen="quantized") as source:
        out = generate(source, ids, max_new_tokens=new)
    return out.logits, out.tokens


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--presets", nargs="+", default=["tiny", "tiny-gqa"])
    ap.add_argument("--steps", type=int, default=64)
    ap.add_argument("--prompt", type=int, default=16)
    args = ap.parse_args()
    print(f"{'preset':9} {'layout':5} {'cosine min':>10} {'cosine mean':>11} {'top-1 agree':>11}")
    for name in args.presets:
        with tempfile.TemporaryDirectory() as tmp:
            d = Path(tmp)
            write_checkpoint(d / "ckpt", name, seed=0)
            pack(d / "ckpt", d / "raw.wst", codec="raw")
            pack(d / "ckpt", d / "int8.wst", codec="raw", quantize="int8")
            vocab = preset(name).decoder.vocab
            ids = np.random.default_rng(0).integers(0, vocab, args.prompt)
            _, tokens = logits_of(d / "raw.wst", ids, args.steps)
            full = np.concatenate([ids, np.array(tokens[:-1], dtype=ids.dtype)])
            ref, _ = logits_of(d / "raw.wst", full, 0)
            got, _ = logits_of(d / "int8.wst", full, 0)
        tail = slice(len(ids) - 1, None)  # the positions that predict each generated token
        a, b = ref[tail].astype(np.float64), got[tail].astype(np.float64)
        cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
        agree = float(np.mean(a.argmax(1) == b.argmax(1)))
        print(f"{name:9} {'int8':5} {cos.min():10.5f} {cos.mean():11.5f} {agree:11.3f}")


if __name__ == "__main__":
    main()
