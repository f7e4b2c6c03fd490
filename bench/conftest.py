"""pytest-benchmark micro-benchmarks of wstream's hot paths, on small data made in tmp dirs.

    python -m pytest bench --benchmark-disable   # smoke test: each benchmark runs once (< 30 s)
    python -m pytest bench                       # timings (--benchmark-json=out.json keeps them)

They stay out of the default test run (the root pyproject sets ``testpaths = ["tests"]``); the
hook below collects ``bench_*.py`` when ``bench/`` is named on the command line. Each benchmark
that moves bytes records them in ``extra_info["bytes"]``, and the terminal summary (and the JSON
report) turn its median time into MB/s. The figures the issues ask for are measured by
``bench/figures.py``, in fresh subprocesses on GB-sized data; these are the quick, in-process view.
"""

from __future__ import annotations

import mmap
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np
import pytest
from safetensors.numpy import save_file

MiB = 1 << 20
_THROUGHPUT: list[tuple[str, int, Any]] = []  # (test id, bytes per round, benchmark fixture)


def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> pytest.Module | None:
    if file_path.suffix == ".py" and file_path.name.startswith("bench_"):
        return pytest.Module.from_parent(parent, path=file_path)
    return None


@pytest.fixture
def throughput(request: pytest.FixtureRequest, benchmark: Any) -> Any:
    """``throughput(nbytes)``: this benchmark moves ``nbytes`` per round (reported as MB/s)."""

    def record(nbytes: int) -> None:
        benchmark.extra_info["bytes"] = nbytes
        _THROUGHPUT.append((request.node.nodeid.split("::", 1)[-1], nbytes, benchmark))

    return record


def pytest_terminal_summary(terminalreporter: Any) -> None:
    rows = [
        (name, n, b.stats.stats.median) for name, n, b in _THROUGHPUT if getattr(b, "stats", None)
    ]
    if not rows:
        return
    terminalreporter.section("throughput (median)")
    for name, n, med in rows:
        terminalreporter.write_line(f"{name:60} {n / MiB:8.1f} MiB  {n / med / 1e6:9.0f} MB/s")


def pytest_benchmark_update_json(config: Any, benchmarks: Any, output_json: dict[str, Any]) -> None:
    for b in output_json.get("benchmarks", []):
        n = b.get("extra_info", {}).get("bytes")
        if n and b.get("stats", {}).get("median"):
            b["extra_info"]["MB_per_s_median"] = n / b["stats"]["median"] / 1e6


# --- data ---------------------------------------------------------------------------------------


def slab(nbytes: int) -> np.ndarray:
    """A page-aligned anonymous mapping, faulted in, as the loader's pool hands out."""
    m = mmap.mmap(-1, max(nbytes, 1))
    a = np.frombuffer(m, np.uint8, nbytes)
    a[:] = 0
    return a


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """~24 MiB of bf16 weights, N(0, 0.02) like trained matrices, in eight 'layers'."""
    rng = np.random.default_rng(0)
    tensors = {}
    for i in range(8):
        for name, shape in (
            ("attn.weight", (512, 1024)),
            ("mlp.weight", (1024, 1024)),
            ("norm.weight", (1024,)),
        ):
            values = rng.standard_normal(shape, dtype=np.float32) * np.float32(0.02)
            tensors[f"model.layers.{i}.{name}"] = values.astype(ml_dtypes.bfloat16)
    path = tmp_path_factory.mktemp("ckpt") / "model.safetensors"
    save_file(tensors, str(path))
    return path


def _pack(src: Path, dst: Path, **kw: Any) -> Path:
    from wstream.pack import pack

    pack(src, dst, **kw)
    return dst


CODECS: dict[str, dict[str, Any]] = {
    "raw": {"codec": "raw"},
    "zstd": {"codec": "zstd"},
    "zstd-shuffle": {"codec": "zstd", "shuffle": True},
}


@pytest.fixture(scope="session")
def containers(checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The checkpoint packed with each codec, in chunks of at most 4 MiB."""
    d = tmp_path_factory.mktemp("wst")
    return {
        name: _pack(checkpoint, d / f"{name}.wst", max_chunk=4 * MiB, **kw)
        for name, kw in CODECS.items()
    }


@pytest.fixture(scope="session")
def many_chunks(checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The checkpoint in the smallest chunks pack allows (64 KiB): a manifest of ~400 chunks."""
    from wstream.format import spec

    return _pack(
        checkpoint, tmp_path_factory.mktemp("many") / "many.wst", max_chunk=spec.MIN_MAX_CHUNK
    )
