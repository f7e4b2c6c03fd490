"""A derandomized mutation fuzz: every mutant container is a named error or bit-identical data.

Seven container kinds (raw; zstd; zstd with byte grouping; INT8 and uint4 quantized; a tensor
split into row blocks over several chunks, raw and zstd), holding every dtype family, a 0-d and
an empty tensor.
Each gets ``WSTREAM_FUZZ_MUTANTS`` mutants (default 2000; seeded, so every run tries the same
ones) of four kinds:

- ``bytes``: 1 to 4 bytes anywhere set to random values, every checksum left as it was;
- ``cut``: the file truncated, or extended with random bytes;
- ``manifest``: one value of the manifest JSON replaced (numbers nudged, scaled, made huge,
  negative or fractional; strings, lists and objects replaced, emptied or dropped), the manifest
  CRC and preamble recomputed, so the parser and everything after it are what is tested;
- ``payload``: bytes of a compressed chunk changed and its CRC recomputed, so the decoders meet
  corrupt input that no checksum catches.

Outcome rules. For ``bytes`` and ``cut`` (checksums intact) reading every tensor (verify on) is
a :class:`~wstream.errors.WStreamError` or gives exactly the original bytes. For ``manifest`` and
``payload`` (checksums made to agree) the data may legitimately differ; the rule is a
WStreamError or every tensor read with exactly its declared dtype and shape, never another
exception, a hang or a crash (reads with verify off too).
"""

from __future__ import annotations

import json
import mmap
import os
import random
import struct
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from wst_testing import write_checkpoint

from wstream import errors as E
from wstream.container.reader import Container
from wstream.container.source import check_range
from wstream.format import spec
from wstream.pack import pack

MUTANTS = int(os.environ.get("WSTREAM_FUZZ_MUTANTS", "2000"))

KINDS: dict[str, dict[str, Any]] = {
    "raw": {"codec": "raw"},
    "zstd": {"codec": "zstd"},
    "zstd-bytegroup": {"codec": "zstd", "shuffle": True},
    "int8": {"codec": "raw", "quantize": "int8"},
    "uint4": {"codec": "raw", "quantize": "uint4"},  # packed values, scales, zero points
    "rowblocks-raw": {"codec": "raw", "max_chunk": 64 * 1024},  # 160 KiB tensor: 3 row blocks
    "rowblocks-zstd": {"codec": "zstd", "max_chunk": 64 * 1024},
}


class BytesSource:
    """An in-memory container (a ByteSource without a map): mutants never touch the disk."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    @property
    def name(self) -> str:
        return "<mutant>"

    @property
    def size(self) -> int:
        return len(self.data)

    @property
    def version(self) -> str:
        return str(zlib.crc32(self.data))

    def read_into(self, offset: int, out: memoryview) -> None:
        check_range(self, offset, len(out))
        out.cast("B")[:] = self.data[offset : offset + len(out)]

    def mapping(self) -> mmap.mmap | None:
        return None

    def close(self) -> None:
        pass


def _checkpoint(directory: Path) -> Path:
    rng = np.random.default_rng(14)
    import ml_dtypes

    tensors = {
        "layers.0.mlp.up.weight": rng.standard_normal((256, 160)).astype(np.float32),  # 160 KiB
        "layers.0.attn.q.weight": rng.standard_normal((64, 64)).astype(ml_dtypes.bfloat16),
        "layers.0.attn.k.weight": rng.standard_normal((40, 72)).astype(np.float16),
        "layers.0.norm.weight": rng.standard_normal((64,)).astype(np.float64),
        "layers.1.ids": rng.integers(-(1 << 40), 1 << 40, (33,), dtype=np.int64),
        "layers.1.mask": rng.integers(0, 2, (7, 3)).astype(np.bool_),
        "layers.1.bytes": rng.integers(0, 255, (13,), dtype=np.uint8),
        "layers.1.scale": np.array(0.25, np.float32),
        "layers.1.empty": np.zeros((0, 5), np.int16),
    }
    return write_checkpoint(directory, tensors, config={"model_type": "toy", "depth": [1, [2]]})


@pytest.fixture(scope="module")
def originals(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    tmp = tmp_path_factory.mktemp("fuzz")
    src = _checkpoint(tmp / "ckpt")
    out = {}
    for kind, options in KINDS.items():
        path = tmp / f"{kind}.wst"
        pack(src, path, **options)
        out[kind] = path.read_bytes()
    return out


def read_all(data: bytes, *, verify: bool = True) -> dict[str, tuple[str, tuple[int, ...], bytes]]:
    """Every tensor of the container in ``data``: (dtype, shape, bytes). Checks that each has
    exactly its declared dtype and shape."""
    out = {}
    with Container(BytesSource(data)) as c:
        infos = c.manifest.tensors
        for name, array in c.tensors(verify=verify):
            info = infos[name]
            assert array.dtype == info.dtype.numpy and array.shape == info.shape, name
            out[name] = (array.dtype.str, array.shape, array.tobytes())
        assert set(out) == set(infos)
    return out


# --- mutations ------------------------------------------------------------------------------------


def _with_manifest(data: bytes, body: bytes) -> bytes:
    """``data`` with its manifest replaced by ``body`` (CRC and preamble recomputed)."""
    m_off = struct.unpack_from("<Q", data, 16)[0]
    head = bytearray(data[: spec.PREAMBLE_NBYTES])
    struct.pack_into("<QQI", head, 16, m_off, len(body), zlib.crc32(body))
    struct.pack_into("<I", head, 60, zlib.crc32(bytes(head[:60])))
    return bytes(head) + data[spec.PREAMBLE_NBYTES : m_off] + body


def _manifest(data: bytes) -> Any:
    m_off, m_len = struct.unpack_from("<QQ", data, 16)
    return json.loads(data[m_off : m_off + m_len])


def _replacement(rng: random.Random, value: Any) -> Any:
    if isinstance(value, bool) or value is None:
        return rng.choice([not value, 0, 1, "true", None, []])
    if isinstance(value, int):
        return rng.choice(
            [
                value + rng.choice([-1, 1, -64, 64, 4096]),
                value * 2,
                value // 2,
                0,
                -1,
                -value,
                2**40,
                2**63,
                2**64,
                2**80,
                float(value) + 0.5,
                str(value),
                None,
            ]
        )
    if isinstance(value, float):
        return rng.choice([0.0, -value, 1e308, int(value), "x"])
    if isinstance(value, str):
        return rng.choice(["", value + value, value[:-1], "x" * 2000, "\x1b[2J", 7, "\ud800"])
    if isinstance(value, list):
        variants: list[Any] = [[], value[:-1], value + value[-1:], value[::-1], {}, 0]
        return rng.choice(variants)
    return rng.choice([{}, [], 0, {**value, "extra": 1}, dict(list(value.items())[:-1])])


def _paths(doc: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix] if prefix else []
    if isinstance(doc, dict):
        for k, v in doc.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            out += _paths(v, (*prefix, i))
    return out


def mutate_manifest(rng: random.Random, data: bytes) -> bytes:
    doc = _manifest(data)
    path = rng.choice(_paths(doc))
    parent = doc
    for key in path[:-1]:
        parent = parent[key]
    if isinstance(parent, dict) and rng.random() < 0.1:
        del parent[path[-1]]
    else:
        parent[path[-1]] = _replacement(rng, parent[path[-1]])
    try:
        body = json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate: write it as the escape a file would hold
        body = json.dumps(doc, separators=(",", ":")).encode("ascii")
    return _with_manifest(data, body)


def mutate_payload(rng: random.Random, data: bytes) -> bytes | None:
    doc = _manifest(data)
    chunks = [c for c in doc["chunks"] if c["codec"] and c["nbytes"]]
    if not chunks:
        return None
    chunk = rng.choice(chunks)
    out = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        out[chunk["offset"] + rng.randrange(chunk["nbytes"])] = rng.randrange(256)
    chunk["crc32"] = zlib.crc32(out[chunk["offset"] : chunk["offset"] + chunk["nbytes"]])
    return _with_manifest(bytes(out), json.dumps(doc, separators=(",", ":")).encode())


def mutate_bytes(rng: random.Random, data: bytes) -> bytes:
    out = bytearray(data)
    m_off = struct.unpack_from("<Q", data, 16)[0]
    for _ in range(rng.randint(1, 4)):
        if rng.random() < 0.5:  # the preamble and manifest: small, so aimed at on purpose
            at = rng.choice([rng.randrange(spec.PREAMBLE_NBYTES), rng.randrange(m_off, len(out))])
        else:
            at = rng.randrange(len(out))
        out[at] = rng.randrange(256)
    return bytes(out)


def mutate_cut(rng: random.Random, data: bytes) -> bytes:
    if rng.random() < 0.7:
        return data[: rng.randrange(len(data))]
    return data + bytes(rng.randrange(256) for _ in range(rng.randint(1, 64)))


# --- the fuzz -------------------------------------------------------------------------------------


def _outcome(fn: Callable[[], Any]) -> BaseException | Any:
    try:
        return fn()
    except E.WStreamError as exc:
        return exc


@pytest.mark.parametrize("kind", list(KINDS))
def test_every_mutant_is_a_named_error_or_identical_data(
    originals: dict[str, bytes], kind: str
) -> None:
    data = originals[kind]
    want = read_all(data)
    rng = random.Random(f"wstream-fuzz-{kind}")
    counts = {"bytes": 0, "cut": 0, "manifest": 0, "payload": 0}
    identical = named = 0
    for i in range(MUTANTS):
        how = ("bytes", "cut", "manifest", "payload")[i % 4]
        mutant: bytes | None
        if how == "bytes":
            mutant = mutate_bytes(rng, data)
        elif how == "cut":
            mutant = mutate_cut(rng, data)
        elif how == "manifest":
            mutant = mutate_manifest(rng, data)
        else:
            mutant = mutate_payload(rng, data)
        if mutant is None or mutant == data:
            continue
        counts[how] += 1
        try:
            got = _outcome(lambda m=mutant: read_all(m))
            if how in ("manifest", "payload"):
                _outcome(lambda m=mutant: read_all(m, verify=False))
        except Exception as exc:  # anything but a WStreamError: the bug this test is for
            raise AssertionError(f"{kind} mutant {i} ({how}): {exc!r}") from exc
        if how in ("bytes", "cut"):
            assert isinstance(got, E.WStreamError) or got == want, (
                f"{kind} mutant {i} ({how}): read without error, but the data differs"
            )
        if isinstance(got, E.WStreamError):
            named += 1
        elif got == want:
            identical += 1
    assert sum(counts.values()) >= MUTANTS * 0.7, counts
    assert named > 0
    if kind.startswith("rowblocks"):  # the layout under test is really there
        with Container(BytesSource(data)) as c:
            assert any(t.rows for ch in c.manifest.chunks for t in ch.tensors)
    if kind in ("int8", "uint4"):
        with Container(BytesSource(data)) as c:
            assert any(
                t.quant and t.quant.scheme == kind for ch in c.manifest.chunks for t in ch.tensors
            )
