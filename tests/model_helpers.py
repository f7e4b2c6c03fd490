"""Helpers for the forward-pass tests: build packed synthetic models, read golden cases.

Plain functions (no fixtures), so test modules can share them.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from wstream.format import spec
from wstream.pack import pack
from wstream.stream.loader import EagerWeights
from wstream.synthetic import WrittenCheckpoint, write_checkpoint

GOLDEN = Path(__file__).parent / "golden"
REGENERATE = "/tmp/venv-golden/bin/python tools/make_golden.py (setup: see that file's docstring)"
SMALL_CHUNK = spec.MIN_MAX_CHUNK  # 64 KiB: splits every sizeable tensor of the tiny models


@dataclass(frozen=True)
class GoldenCase:
    name: str
    meta: dict[str, Any]  # golden.json's entry: preset, seed, shards, weights_sha256, ...
    input_ids: np.ndarray  # [T] int64
    pixels: np.ndarray | None  # [3, H, W] float32
    image_bound: tuple[int, int] | None
    logits: np.ndarray  # prefill logits [T, vocab] float32
    step_logits: np.ndarray  # decode-step logits [N-1, vocab] float32
    tokens: list[int]  # greedy tokens [N]


def golden_cases() -> dict[str, GoldenCase]:
    meta = json.loads((GOLDEN / "golden.json").read_text())
    cases = {}
    for name, entry in meta["cases"].items():
        with np.load(GOLDEN / f"{name}.npz") as z:
            bound = tuple(int(v) for v in z["image_bound"]) if "image_bound" in z else None
            cases[name] = GoldenCase(
                name,
                entry,
                z["input_ids"],
                z.get("pixels"),
                bound,
                z["logits"],
                z["step_logits"],
                z["tokens"].tolist(),  # type: ignore[arg-type]
            )
    return cases


def write_case_checkpoint(directory: Path, case: GoldenCase) -> WrittenCheckpoint:
    m = case.meta
    return write_checkpoint(directory, m["preset"], seed=m["seed"], shards=m["shards"])


def pack_to(
    checkpoint: Path, out: Path, *, codec: str = "raw", max_chunk: int = spec.DEFAULT_MAX_CHUNK
) -> Path:
    """Pack with ``codec`` raw, zstd, or zstd-shuffle (zstd after byte grouping)."""
    shuffle = codec == "zstd-shuffle"
    pack(checkpoint, out, codec="zstd" if shuffle else codec, shuffle=shuffle, max_chunk=max_chunk)
    return out


class RecordingSource:
    """A weight source that records every walk (each ``stream`` call) it serves."""

    def __init__(self, inner: EagerWeights) -> None:
        self.inner = inner
        self.walks: list[tuple[list[str], bool]] = []  # (chunks asked for, repeat)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    @property
    def config(self) -> Any:
        return self.inner.config

    @property
    def tensor_names(self) -> Any:
        return self.inner.tensor_names

    def stream(self, chunks: Sequence[str], *, repeat: bool = False) -> Any:
        self.walks.append((list(chunks), repeat))
        return self.inner.stream(chunks, repeat=repeat)
