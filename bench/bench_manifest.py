"""Manifest parsing and open_container on a manifest of several hundred chunks."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from wstream import open_container
from wstream.format import spec
from wstream.format.manifest import parse_manifest, parse_preamble


def _manifest_bytes(path: Path) -> tuple[bytes, int]:
    size = path.stat().st_size
    fd = os.open(path, os.O_RDONLY)
    try:
        pre = parse_preamble(os.pread(fd, spec.PREAMBLE_NBYTES, 0), size)
        return os.pread(fd, pre.manifest_nbytes, pre.manifest_offset), pre.manifest_offset
    finally:
        os.close(fd)


def test_parse_manifest(benchmark: Any, throughput: Any, many_chunks: Path) -> None:
    body, data_end = _manifest_bytes(many_chunks)
    throughput(len(body))
    m = benchmark(parse_manifest, body, data_end=data_end)
    benchmark.extra_info["chunks"] = len(m.chunks)
    benchmark.extra_info["tensors"] = len(m.tensors)
    assert len(m.chunks) > 100


def test_open_container(benchmark: Any, many_chunks: Path) -> None:
    """open + preamble + manifest pread + CRC + parse + close: what `wstream info` pays."""
    benchmark(lambda: open_container(many_chunks).close())
