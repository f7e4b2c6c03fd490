"""How far quantized weights move the logits: cosine and top-1 agreement against the stored floats.

For each synthetic preset, and the trained tiny model of the end-to-end issue
(``wstream/data/minicpmv-tiny``, ``--trained``; prompted with a held-out question and its image):
pack raw and each layout (INT8, uint4), decode ``--steps`` greedy tokens from the float
container, then score every container on the prompt plus those tokens in one prefill (the causal
forward makes that the teacher-forced decode): per position the cosine of the logits and whether
the top-1 token agrees, over the last ``--steps`` + 1 positions. The quantized containers run as
``wstream run`` does (``Widen.QUANTIZED``: scales and zero points applied in the matmul)::

    python bench/quant_quality.py [--presets tiny tiny-gqa] [--steps 64] [--trained]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from wstream.container.reader import Container
from wstream.model.vlm import generate
from wstream.pack import pack
from wstream.stream.loader import StreamingLoader
from wstream.synthetic import preset, write_checkpoint

LAYOUTS = ("int8", "uint4")
TRAINED = Path(__file__).resolve().parents[1] / "wstream" / "data" / "minicpmv-tiny"
GOLDEN = Path(__file__).resolve().parents[1] / "tests" / "golden" / "minicpmv-tiny"


def logits_of(
    path: Path, ids: np.ndarray, new: int, image: dict[str, Any]
) -> tuple[np.ndarray, list[int]]:
    with Container(path) as c, StreamingLoader(c, widen="quantized") as source:
        out = generate(source, ids, max_new_tokens=new, **image)
    return out.logits, out.tokens


def score(d: Path, ids: np.ndarray, steps: int, image: dict[str, Any]) -> dict[str, str]:
    _, tokens = logits_of(d / "raw.wst", ids, steps, image)
    full = np.concatenate([ids, np.array(tokens[:-1], dtype=ids.dtype)])
    ref, _ = logits_of(d / "raw.wst", full, 0, image)
    tail = slice(len(ids) - 1, None)  # the positions that predict each generated token
    a = ref[tail].astype(np.float64)
    out = {}
    for layout in LAYOUTS:
        got, _ = logits_of(d / f"{layout}.wst", full, 0, image)
        b = got[tail].astype(np.float64)
        cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
        agree = float(np.mean(a.argmax(1) == b.argmax(1)))
        out[layout] = f"{cos.min():10.5f} {cos.mean():11.5f} {agree:11.3f}"
    return out


def pack_all(src: Path, d: Path) -> None:
    pack(src, d / "raw.wst", codec="raw")
    for layout in LAYOUTS:
        pack(src, d / f"{layout}.wst", codec="raw", quantize=layout)


def trained_prompt(path: Path) -> tuple[np.ndarray, dict[str, Any]]:
    """A held-out question of the tiny model's golden cases, with its image, as the chat
    pipeline prepares it."""
    from wstream.pipeline.chat import Model

    cases = json.loads((GOLDEN / "cases.json").read_text())["cases"]
    c = cases[0]
    with Model.open(path) as model:
        req = model.prepare(c["question"], [GOLDEN / c["image"]])
    return req.input_ids, {"slices": req.slices, "image_bounds": req.image_bounds}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--presets", nargs="+", default=["tiny", "tiny-gqa"])
    ap.add_argument("--steps", type=int, default=64)
    ap.add_argument("--prompt", type=int, default=16)
    ap.add_argument("--trained", action="store_true", help="also the trained tiny model")
    args = ap.parse_args()
    print(f"{'model':14} {'layout':6} {'cosine min':>10} {'cosine mean':>11} {'top-1 agree':>11}")
    for name in args.presets:
        with tempfile.TemporaryDirectory() as tmp:
            d = Path(tmp)
            write_checkpoint(d / "ckpt", name, seed=0)
            pack_all(d / "ckpt", d)
            vocab = preset(name).decoder.vocab
            ids = np.random.default_rng(0).integers(0, vocab, args.prompt)
            for layout, line in score(d, ids, args.steps, {}).items():
                print(f"{name:14} {layout:6} {line}")
    if args.trained:
        with tempfile.TemporaryDirectory() as tmp:
            d = Path(tmp)
            pack_all(TRAINED, d)
            ids, image = trained_prompt(d / "raw.wst")
            for layout, line in score(d, ids, args.steps, image).items():
                print(f"{'minicpmv-tiny':14} {layout:6} {line}")


if __name__ == "__main__":
    main()
