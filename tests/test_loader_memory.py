"""Peak RSS of streaming, measured in a fresh subprocess (VmHWM: total RSS, file pages included)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from wstream.pack import pack

MiB = 1 << 20
BUDGET = 64 * MiB

_CHILD = r"""
import json, sys
from wstream.stream.loader import StreamingLoader
from wstream.container.reader import Container

def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(key)

c = Container(sys.argv[1])
names = [ch.name for ch in c.manifest.chunks]
loader = StreamingLoader(c, budget=int(sys.argv[2]), prefetch=2, widen="stored")
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # reset VmHWM to the current RSS: the baseline
base = status("VmHWM")
total = 0
for chunk in loader.stream(names):
    with chunk:
        for a in chunk.arrays():
            total += int(a.view("u1")[::4096].sum())  # touch every page the consumer gets
peak = status("VmHWM")
loader.close()
print(json.dumps({"base": base, "peak": peak, "pool_peak": loader.pool.peak,
                  "bytes_read": loader.stats.bytes_read}))
"""


@pytest.fixture(scope="module")
def big_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("big")
    rng = np.random.default_rng(7)
    tensors = {
        f"layers.{i}.w": np.frombuffer(rng.bytes(24 * MiB), np.uint8).reshape(-1, 4096)
        for i in range(22)
    }
    path = d / "big.safetensors"
    save_file(tensors, str(path))
    return path


@pytest.mark.parametrize("codec", ["raw", "zstd"])
def test_streaming_512mb_under_64mb_budget(
    big_checkpoint: Path, codec: str, tmp_path: Path
) -> None:
    out = tmp_path / f"big-{codec}.wst"
    pack(big_checkpoint, out, codec=codec, level=1)
    assert out.stat().st_size >= 512 * 10**6
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD, str(out), str(BUDGET)],
        capture_output=True,
        text=True,
        check=True,
    )
    r = json.loads(proc.stdout)
    assert r["bytes_read"] >= 512 * 10**6
    assert r["pool_peak"] <= BUDGET
    # The bound: baseline + budget + 64 MB of fixed overhead.
    assert r["peak"] - r["base"] <= BUDGET + 64 * MiB, r
