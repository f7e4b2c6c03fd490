"""The data the figures run on: MiniCPM-V 2.6-shaped checkpoints and the containers packed from
them, made once under ``--data DIR`` and reused while their recipe is unchanged.

Checkpoints have the real 2.6 widths (vision 1152/4304, decoder 3584/18944, vocabulary 151,666,
bf16, sharded safetensors + index + config.json) and fewer layers. They are written by the
team's generator, ``write_checkpoint`` of ``tools/make_checkpoint.py`` (which is
``wstream.synthetic``'s), called with the ``full`` preset's config and the layer counts below: the
tool's command line offers whole presets only, and ``full`` (16.2 GB) is more than needed. It
writes in bounded memory. Generation and packing run in subprocesses, so the driver never holds
weights.

Each product has a ``.recipe.json`` stamp beside it; a product whose stamp differs from the
current recipe (or is missing) is rebuilt.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class CheckpointRecipe:
    name: str
    vision_layers: int | None  # None: a preset's own counts
    decoder_layers: int | None
    preset: str = "full"  # widths (and, with layer counts None, depth) of this preset
    shards: int = 2
    seed: int = 0


@dataclass(frozen=True)
class ContainerRecipe:
    checkpoint: str
    codec: str = "raw"
    level: int | None = None
    shuffle: bool = False

    @property
    def name(self) -> str:
        tail = (
            self.codec
            + (f"{self.level}" if self.level is not None else "")
            + ("-shuffle" if self.shuffle else "")
        )
        return f"{self.checkpoint}-{tail}"


# ~2.9 GB: 4 vision layers, 1 decoder layer, and the full-size embed_tokens and lm_head (1.09 GB
# each), which is as small as a checkpoint at the real widths gets while keeping every stage.
# ~11.1 GB: all 27 vision layers and 17 of the 28 decoder layers.
FULL = {
    "2g": CheckpointRecipe("2g", vision_layers=4, decoder_layers=1),
    "10g": CheckpointRecipe("10g", vision_layers=27, decoder_layers=17),
}
# --quick: the 350 MB "small" preset (narrower) stands in for both; numbers are not figures.
QUICK = {
    "2g": CheckpointRecipe("2g", vision_layers=None, decoder_layers=None, preset="small"),
    "10g": CheckpointRecipe("10g", vision_layers=None, decoder_layers=None, preset="small", seed=1),
}


# Bump when ``pack`` lays chunks out differently, so containers made by an older one are rebuilt
# (2: a stage's first item gets a chunk of its own).
PACK_LAYOUT = 2


def _stamp_ok(path: Path, recipe: dict[str, Any]) -> bool:
    stamp = path.with_name(path.name + ".recipe.json")
    if not path.exists() or not stamp.exists():
        return False
    try:
        return json.loads(stamp.read_text()) == recipe
    except ValueError:
        return False


def _write_stamp(path: Path, recipe: dict[str, Any]) -> None:
    path.with_name(path.name + ".recipe.json").write_text(json.dumps(recipe, indent=1) + "\n")


def _run(code: str, *args: str, pythonpath: str | None = None) -> dict[str, Any]:
    import os

    env = dict(os.environ)
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    proc = subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=str(REPO),
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"subprocess failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    return json.loads(lines[-1]) if lines else {}


_GENERATE = r"""
import dataclasses, json, sys
repo, recipe, out = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3]
sys.path[:0] = [repo + "/tools", repo]
try:  # the team's generator: tools/make_checkpoint.py re-exports wstream.synthetic's functions
    from make_checkpoint import PRESETS, write_checkpoint
    generator = "tools/make_checkpoint.py (write_checkpoint)"
except ImportError:
    from wstream.synthetic import PRESETS, write_checkpoint
    generator = "wstream.synthetic.write_checkpoint"
cfg = PRESETS[recipe["preset"]]
replace = dataclasses.replace
if recipe["vision_layers"] is not None:
    cfg = replace(cfg, vision=replace(cfg.vision, layers=recipe["vision_layers"]))
if recipe["decoder_layers"] is not None:
    cfg = replace(cfg, decoder=replace(cfg.decoder, layers=recipe["decoder_layers"]))
w = write_checkpoint(out, cfg, seed=recipe["seed"], shards=recipe["shards"])
print(json.dumps({"total_size": w.total_size, "files": [str(f) for f in w.files],
                  "sha256": w.sha256, "generator": generator, "config": str(cfg)}))
"""


def make_checkpoint(
    directory: Path, recipe: CheckpointRecipe, log: Callable[[str], None]
) -> dict[str, Any]:
    """tools/make_checkpoint.py offers presets only (tiny, tiny-gqa, small, full), so layer
    counts are applied to a preset's config and its ``write_checkpoint`` called directly."""
    if directory.exists():
        shutil.rmtree(directory)
    log(f"  generating {directory.name}: {asdict(recipe)}")
    info = _run(_GENERATE, str(REPO), json.dumps(asdict(recipe)), str(directory))
    log(f"  generated {info['total_size'] / 1e9:.2f} GB with {info['generator']}")
    return info


_PACK = r"""
import json, sys
from wstream.pack import pack
r = json.loads(sys.argv[3])
rep = pack(sys.argv[1], sys.argv[2], codec=r["codec"], level=r["level"], shuffle=r["shuffle"])
print(json.dumps({"bytes_in": rep.bytes_in, "bytes_out": rep.bytes_out, "chunks": rep.chunks,
                  "seconds": rep.seconds}))
"""


class Data:
    """Builds and finds the data sets under ``root``."""

    def __init__(
        self,
        root: Path,
        quick: bool,
        log: Callable[[str], None],
        pythonpath: str | None = None,
        keep_big_checkpoint: bool = False,
    ) -> None:
        self.root = (root / "quick") if quick else root
        self.root.mkdir(parents=True, exist_ok=True)
        self.recipes = QUICK if quick else FULL
        self.log = log
        self.pythonpath = pythonpath
        self.keep_big_checkpoint = keep_big_checkpoint
        self.made: dict[str, dict[str, Any]] = {}

    @property
    def scratch(self) -> Path:
        p = self.root / "scratch"
        p.mkdir(exist_ok=True)
        return p

    def checkpoint(self, name: str) -> Path:
        recipe = self.recipes[name]
        path = self.root / f"ckpt-{name}"
        want = asdict(recipe)
        if not _stamp_ok(path, want):
            info = make_checkpoint(path, recipe, self.log)
            _write_stamp(path, want)
            self.made[path.name] = info
        return path

    def container(
        self, checkpoint: str, codec: str = "raw", level: int | None = None, shuffle: bool = False
    ) -> Path:
        recipe = ContainerRecipe(checkpoint, codec, level, shuffle)
        path = self.root / f"{recipe.name}.wst"
        want = {
            **asdict(recipe),
            "checkpoint_recipe": asdict(self.recipes[checkpoint]),
            "layout": PACK_LAYOUT,
        }
        if not _stamp_ok(path, want):
            src = self.checkpoint(checkpoint)
            self.log(
                f"  packing {path.name} from {src.name} ({codec}, level {level}, shuffle {shuffle})"
            )
            info = _run(
                _PACK, str(src), str(path), json.dumps(asdict(recipe)), pythonpath=self.pythonpath
            )
            _write_stamp(path, want)
            self.made[path.name] = info
            if checkpoint == "10g" and not self.keep_big_checkpoint:
                # Only the container is needed from here on; free its ~11 GB source.
                self.drop_checkpoint(checkpoint)
        return path

    def drop_checkpoint(self, name: str) -> None:
        path = self.root / f"ckpt-{name}"
        if path.exists():
            self.log(f"  deleting {path} (no longer needed)")
            shutil.rmtree(path)
            path.with_name(path.name + ".recipe.json").unlink(missing_ok=True)
