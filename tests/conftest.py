"""Shared test configuration: hypothesis profiles and checkpoint-writing fixtures.

Profiles (choose with the environment variable ``HYPOTHESIS_PROFILE``; default ``dev``):

- ``dev``: random examples, enough to find things while editing;
- ``ci``: derandomized (the same examples on every run, so CI is reproducible), fewer examples,
  and failing examples printed as a reproduction blob;
- ``deep``: many examples, for hunting bugs by hand.

Tests that want more or fewer examples than the default scale the profile's number
(``strategies.examples``) rather than fixing their own.

Both disable the per-example deadline: zstd and file I/O timings vary with the machine.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, settings
from s3_server import s3, s3_admin  # noqa: F401  (session fixtures: one SeaweedFS for all tests)
from wst_testing import write_checkpoint

settings.register_profile(
    "dev",
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    "ci",
    max_examples=25,
    derandomize=True,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    "deep",  # bug hunting: HYPOTHESIS_PROFILE=deep pytest tests/test_manifest.py
    max_examples=1000,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))


@pytest.fixture(scope="session")
def checkpoint_writer() -> Callable[..., Path]:
    """:func:`write_checkpoint`, for tests (session-scoped, so usable under @given)."""
    return write_checkpoint


@pytest.fixture
def tiny_checkpoint(tmp_path: Path) -> tuple[Path, dict[str, np.ndarray]]:
    """A small single-file checkpoint in the generic (non-MiniCPM-V) naming."""
    rng = np.random.default_rng(0)
    tensors = {
        "embed.weight": rng.standard_normal((16, 8)).astype(np.float32),
        "layers.0.w": rng.standard_normal((8, 8)).astype(np.float16),
        "layers.0.b": np.arange(8, dtype=np.int64),
        "layers.1.w": rng.integers(0, 1 << 16, (8, 8), dtype=np.uint16),
        "layers.1.scale": np.array(1.5, dtype=np.float64),
        "head.empty": np.zeros((0, 4), dtype=np.int8),
    }
    src = write_checkpoint(
        tmp_path / "ckpt",
        tensors,
        config={"model_type": "toy", "hidden_size": 8},
        metadata={"format": "np"},
    )
    return src, tensors
