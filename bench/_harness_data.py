"""The harness's data: one MiniCPM-V-shaped checkpoint of a chosen size, in each contender's format.

Under ``DIR/<size>/`` (made once, reused while its recipe stamp matches):

- ``checkpoint/``: what Hugging Face ships (2 bf16 safetensors shards, index, config.json), written
  by the team's generator :func:`wstream.synthetic.write_checkpoint` with real tensor names;
- ``raw.wst``, ``zstd.wst`` (zstd after byte grouping), ``int8.wst`` (INT8 linear layers): packed
  by :func:`wstream.pack.pack` with chunks of at most ``max_chunk`` bytes;
- ``ninja/<tensor name>/``: one mmap-ninja array per tensor (bf16, needs ``import ml_dtypes``);
- ``layers/<group>.safetensors``: one file per execution group, as AirLLM re-splits a checkpoint;
- ``card.png``: a 448 x 448 test card, one full MiniCPM-V slice (32 x 32 patches).

Sizes: the widths come from a ladder of four (2.6's own, a 1536-wide decoder over a 768-wide ViT,
the ``small`` preset's, the ``tiny`` preset's); the widest one that reaches the target with at
least four layers is used (else with one; the tiny widths only below ~170 MB), with as many
vision and decoder layers (the same number of each, at most 2.6's 27 and 28) as bring the stored
size closest to the target.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

MiB = 1 << 20

# (vision hidden, intermediate, heads), (decoder hidden, intermediate, heads, kv heads, vocab)
WIDTHS: list[tuple[str, tuple[int, int, int], tuple[int, int, int, int, int]]] = [
    ("2.6", (1152, 4304, 16), (3584, 18944, 28, 4, 151666)),
    ("medium", (768, 3072, 12), (1536, 4096, 12, 2, 32000)),
    ("small", (384, 1536, 6), (1024, 2816, 8, 2, 32000)),
    ("tiny", (64, 128, 4), (256, 512, 4, 2, 1024)),
]
MIN_LAYERS = 4


def _config(widths: tuple[Any, ...], layers: int) -> Any:
    from wstream.synthetic import _vlm

    _, (vh, vi, vheads), (dh, di, dheads, kv, vocab) = widths
    if widths[0] == "2.6":
        return _vlm((vh, vi, vheads, min(layers, 27)), (dh, di, dheads, kv, min(layers, 28), vocab))
    return _vlm((vh, vi, vheads, layers), (dh, di, dheads, kv, layers, vocab))


def stored_bytes(cfg: Any) -> int:
    from wstream.model.config import tensor_shapes

    return sum(2 * math.prod(s) for s in tensor_shapes(cfg).values())


def config_for_size(target: int) -> tuple[Any, str]:
    """A VLMConfig whose bf16 checkpoint is about ``target`` bytes, and a one-line description:
    the widest widths that reach it with at least MIN_LAYERS layers, else with at least one;
    the tiny widths only below what one layer of the small widths takes."""
    fits: list[tuple[int, Any]] = []
    for widths in WIDTHS:
        base, one = stored_bytes(_config(widths, 0)), stored_bytes(_config(widths, 1))
        layers = max(1, round((target - base) / (one - base)))
        fits.append((layers if target > base else 0, widths))
    wide = fits[:-1]  # the tiny widths only when no other reaches the target
    layers, widths = next(
        (f for f in wide if f[0] >= MIN_LAYERS), next((f for f in wide if f[0] >= 1), fits[-1])
    )
    cfg = _config(widths, max(layers, 1))
    v, d = cfg.vision, cfg.decoder
    desc = (
        f"{widths[0]} widths: SigLIP {v.layers} x {v.hidden}/{v.intermediate} "
        f"({v.heads} heads), resampler {cfg.resampler.queries} queries, Qwen2 "
        f"{d.layers} x {d.hidden}/{d.intermediate} ({d.heads} heads, {d.kv_heads} KV), "
        f"vocabulary {d.vocab}; {stored_bytes(cfg) / 1e9:.3f} GB of bf16"
    )
    return cfg, desc


def _stamp(path: Path) -> Path:
    return path.with_name(path.name + ".recipe.json")


def _fresh(path: Path, recipe: dict[str, Any]) -> bool:
    stamp = _stamp(path)
    try:
        return path.exists() and json.loads(stamp.read_text()) == recipe
    except (OSError, ValueError):
        return False


def _remove(path: Path) -> None:
    import shutil

    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()


PACKINGS: dict[str, dict[str, Any]] = {
    "raw.wst": {"codec": "raw"},
    "zstd.wst": {"codec": "zstd", "shuffle": True},
    "int8.wst": {"codec": "raw", "quantize": "int8"},
}


def _code(*modules: str) -> str:
    """Digest of wstream modules' source: a product is rebuilt when the code making it changes."""
    import hashlib

    import wstream

    root = Path(wstream.__file__).parent
    h = hashlib.sha256()
    for m in modules:
        h.update((root / m).read_bytes())
    return h.hexdigest()[:16]


def prepare(root: Path, size: int, max_chunk: int, log: Callable[[str], None]) -> dict[str, Any]:
    """Make (or reuse) every product for ``size``; returns what was made and how long it took."""
    from wstream.synthetic import write_checkpoint

    cfg, desc = config_for_size(size)
    data = root / f"{size // MiB}M"
    data.mkdir(parents=True, exist_ok=True)
    base = {
        "config": dataclasses.asdict(cfg),
        "seed": 0,
        "shards": 2,
        "generator": _code("synthetic.py"),
    }
    packer = _code(
        "pack.py", "container/writer.py", "format/codecs.py", "format/quant.py", "format/spec.py"
    )
    made: dict[str, float] = {}

    def build(name: str, recipe: dict[str, Any], make: Callable[[Path], None]) -> None:
        path = data / name
        if _fresh(path, recipe):
            return
        _remove(path)
        log(f"  preparing {name} ...")
        t0 = time.perf_counter()
        make(path)
        made[name] = time.perf_counter() - t0
        _stamp(path).write_text(json.dumps(recipe, indent=1) + "\n")
        log(f"  prepared {name} in {made[name]:.1f} s")

    def write(path: Path) -> None:
        write_checkpoint(path, cfg, seed=0, shards=2)

    build("checkpoint", base, write)
    ckpt = data / "checkpoint"
    for name, how in PACKINGS.items():
        recipe = {**base, **how, "max_chunk": max_chunk, "packer": packer}
        build(name, recipe, _packer(ckpt, how, max_chunk))
    build("ninja", {**base, "format": "mmap-ninja per tensor"}, lambda p: _write_ninja(ckpt, p))
    build(
        "layers",
        {**base, "format": "one safetensors file per group"},
        lambda p: _write_layers(ckpt, p),
    )
    build("card.png", {"side": 448}, _write_card)
    return {
        "dir": str(data),
        "config": dataclasses.asdict(cfg),
        "description": desc,
        "stored_bytes": stored_bytes(cfg),
        "prepared_s": made,
    }


def _packer(ckpt: Path, how: dict[str, Any], max_chunk: int) -> Callable[[Path], None]:
    def make(path: Path) -> None:
        from wstream.pack import pack

        pack(ckpt, path, max_chunk=max_chunk, threads=2, **how)

    return make


def _tensors(ckpt: Path) -> Any:
    """(name, bf16 array) for every tensor of the checkpoint, one at a time."""
    from safetensors import safe_open

    for shard in sorted(ckpt.glob("*.safetensors")):
        with safe_open(str(shard), framework="np") as f:
            for name in f.keys():
                yield name, f.get_tensor(name)


def _write_ninja(ckpt: Path, out: Path) -> None:
    import ml_dtypes  # noqa: F401  (mmap-ninja stores bf16 only with it imported)
    from mmap_ninja import np_from_ndarray

    out.mkdir(parents=True)
    for name, array in _tensors(ckpt):
        mapped = np_from_ndarray(out / name, array)
        mapped.flush()
        del mapped


def _write_layers(ckpt: Path, out: Path) -> None:
    """One file per group, written group by group (memory: one group's bf16 tensors)."""
    from safetensors import safe_open
    from safetensors.numpy import save_file

    from wstream.model.schedule import execution_order

    out.mkdir(parents=True)
    index = json.loads((ckpt / "model.safetensors.index.json").read_text())
    files = {f: safe_open(str(ckpt / f), framework="np") for f in set(index["weight_map"].values())}
    for plan in execution_order(index["weight_map"]):
        tensors = {n: files[index["weight_map"][n]].get_tensor(n) for n in plan.tensor_names}
        save_file(tensors, str(out / f"{plan.name}.safetensors"))
        del tensors


def _write_card(path: Path) -> None:
    import numpy as np
    from PIL import Image

    y, x = np.mgrid[0:448, 0:448]
    rgb = np.stack([x * 255 // 448, y * 255 // 448, ((x // 28 + y // 28) % 2) * 255], axis=-1)
    Image.fromarray(rgb.astype(np.uint8), "RGB").save(path)


def files_under(path: Path) -> list[Path]:
    """Every regular file under ``path`` (itself, if a file), recursively."""
    if path.is_file():
        return [path]
    return sorted(p for p in path.rglob("*") if p.is_file())
