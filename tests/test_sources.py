"""The safetensors source reader: single files, sharded directories, and every way they break.

A malformed or incomplete checkpoint must fail with one clear :class:`SourceError` naming the
file (and tensor), never with a crash, a KeyError, or a silently partial pack.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import strategies as S
from hypothesis import given, settings
from wst_testing import assert_same_tensors, write_checkpoint

from wstream.container.checkpoint import INDEX_NAME, CheckpointReader, open_checkpoint
from wstream.errors import SourceError
from wstream.format.spec import DType
from wstream.pack import pack


def raw_safetensors(
    header: dict[str, Any] | bytes, data: bytes = b"", *, length: int | None = None
) -> bytes:
    """A safetensors file from a header (dict or exact bytes) and a data buffer."""
    h = header if isinstance(header, bytes) else json.dumps(header).encode("utf-8")
    return struct.pack("<Q", len(h) if length is None else length) + h + data


def t(dtype: str, shape: list[int], begin: int, end: int) -> dict[str, Any]:
    return {"dtype": dtype, "shape": shape, "data_offsets": [begin, end]}


def read_all(src: Path) -> dict[str, np.ndarray]:
    ckpt = open_checkpoint(src)
    out = {}
    with CheckpointReader(ckpt) as r:
        for name, st in ckpt.tensors.items():
            buf = np.empty(st.nbytes, np.uint8)
            r.read_into(st, 0, memoryview(buf))
            out[name] = buf.view(st.dtype.numpy).reshape(st.shape)
    return out


# --- what works ------------------------------------------------------------------------------


def test_single_file_with_config_and_metadata(tiny_checkpoint: tuple[Path, dict]) -> None:
    src, tensors = tiny_checkpoint
    ckpt = open_checkpoint(src)
    assert ckpt.config == {"model_type": "toy", "hidden_size": 8}
    assert dict(ckpt.metadata) == {"format": "np"}
    assert ckpt.files == (src,)
    assert ckpt.nbytes == sum(a.nbytes for a in tensors.values())
    assert_same_tensors(read_all(src), tensors)


@pytest.mark.parametrize("shards", [2, 3])
def test_sharded_directory_with_index(tmp_path: Path, shards: int) -> None:
    rng = np.random.default_rng(shards)
    tensors = {
        f"layers.{i}.w": rng.standard_normal((3, i + 1)).astype(np.float32) for i in range(7)
    }
    tensors["bf"] = np.arange(5, dtype=np.uint16).view(DType.BF16.numpy)
    src = write_checkpoint(
        tmp_path / "ck", tensors, shards=shards, config={"a": [1, 2]}, metadata={"format": "pt"}
    )
    ckpt = open_checkpoint(src)
    assert len(ckpt.files) == shards
    assert ckpt.config == {"a": [1, 2]}
    assert dict(ckpt.metadata) == {"format": "pt"}
    assert_same_tensors(read_all(src), tensors)


def test_directory_without_index_reads_every_shard(tmp_path: Path) -> None:
    d = tmp_path / "ck"
    write_checkpoint(d / "a", {"x": np.ones(3, np.int32)})
    write_checkpoint(d / "b", {"y": np.zeros((2, 2), np.float16)})
    d.mkdir(exist_ok=True)
    (d / "a" / "model.safetensors").rename(d / "1.safetensors")
    (d / "b" / "model.safetensors").rename(d / "2.safetensors")
    assert_same_tensors(read_all(d), {"x": np.ones(3, np.int32), "y": np.zeros((2, 2), np.float16)})


def test_read_into_a_byte_range(tmp_path: Path) -> None:
    a = np.arange(40, dtype=np.int16).reshape(8, 5)
    src = write_checkpoint(tmp_path, {"a": a})
    ckpt = open_checkpoint(src)
    out = bytearray(20)
    with CheckpointReader(ckpt) as r:
        r.read_into(ckpt.tensors["a"], 10, memoryview(out))
    assert bytes(out) == a.tobytes()[10:30]


@given(
    tensors=S.tensor_dicts(
        max_size=5, name_strategy=S.names().filter(lambda n: n != "__metadata__")
    )
)
@settings(deadline=None, max_examples=S.examples(0.8))
def test_our_reader_agrees_with_the_safetensors_writer(
    tmp_path_factory: pytest.TempPathFactory, tensors: dict[str, np.ndarray]
) -> None:
    d = tmp_path_factory.mktemp("src")
    src = write_checkpoint(d, tensors)
    assert_same_tensors(read_all(src), tensors)


# --- sharded checkpoints that are wrong -----------------------------------------------------------


@pytest.fixture
def sharded(tmp_path: Path) -> Path:
    tensors = {f"layers.{i}.w": np.full((2, 2), i, np.float32) for i in range(4)}
    return write_checkpoint(tmp_path / "ck", tensors, shards=2, config={"model_type": "toy"})


def _index(d: Path) -> dict[str, Any]:
    return json.loads((d / INDEX_NAME).read_text())


def _set_index(d: Path, index: Any) -> None:
    (d / INDEX_NAME).write_text(json.dumps(index))


def test_missing_shard(sharded: Path) -> None:
    (sharded / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(SourceError, match=r"shard 'model-00002-of-00002.safetensors' is missing"):
        open_checkpoint(sharded)


def test_tensor_listed_but_absent(sharded: Path) -> None:
    index = _index(sharded)
    index["weight_map"]["ghost.weight"] = "model-00001-of-00002.safetensors"
    _set_index(sharded, index)
    with pytest.raises(SourceError, match=r"'ghost.weight' is listed in .* but absent"):
        open_checkpoint(sharded)


def test_tensor_present_but_not_listed(sharded: Path) -> None:
    index = _index(sharded)
    del index["weight_map"]["layers.0.w"]
    _set_index(sharded, index)
    with pytest.raises(SourceError, match=r"not listed, e.g. 'layers.0.w'"):
        open_checkpoint(sharded)


def test_tensor_listed_in_the_wrong_shard(sharded: Path) -> None:
    index = _index(sharded)
    index["weight_map"]["layers.0.w"] = "model-00002-of-00002.safetensors"
    _set_index(sharded, index)
    with pytest.raises(SourceError, match=r"'layers.0.w' is listed in .* but found in"):
        open_checkpoint(sharded)


def test_duplicate_tensor_names_across_shards(tmp_path: Path) -> None:
    d = tmp_path / "ck"
    write_checkpoint(d, {"a": np.zeros(2, np.float32), "b": np.ones(2, np.float32)}, shards=2)
    # Shard 2 gets a second copy of "a".
    shard2 = d / "model-00002-of-00002.safetensors"
    write_checkpoint(tmp_path / "tmp", {"a": np.ones(1, np.int8), "b": np.ones(2, np.float32)})
    (tmp_path / "tmp" / "model.safetensors").replace(shard2)
    with pytest.raises(SourceError, match=r"tensor 'a' is in both model-00001.* and model-00002"):
        open_checkpoint(d)


@pytest.mark.parametrize(
    "index",
    [
        "not json at all {",
        json.dumps([1, 2]),
        json.dumps({"metadata": {}}),
        json.dumps({"weight_map": {"a": 3}}),
        json.dumps({"weight_map": ["a"]}),
        '{"weight_map": {"a": "x.safetensors", "a": "y.safetensors"}}',
    ],
    ids=[
        "not-json",
        "not-object",
        "no-weight-map",
        "non-string-file",
        "weight-map-list",
        "duplicate-name",
    ],
)
def test_malformed_index(sharded: Path, index: str) -> None:
    (sharded / INDEX_NAME).write_text(index)
    with pytest.raises(SourceError, match=INDEX_NAME.replace(".", r"\.")):
        open_checkpoint(sharded)


@pytest.mark.parametrize("shard", ["../outside.safetensors", "sub/x.safetensors", "/etc/passwd"])
def test_shard_names_must_be_plain_file_names(sharded: Path, shard: str) -> None:
    index = _index(sharded)
    index["weight_map"]["layers.0.w"] = shard
    _set_index(sharded, index)
    with pytest.raises(SourceError, match="must be a plain file name"):
        open_checkpoint(sharded)


def test_empty_directory_and_missing_path(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match=r"no \*\.safetensors file"):
        open_checkpoint(tmp_path)
    with pytest.raises(SourceError, match="no such file or directory"):
        open_checkpoint(tmp_path / "nope.safetensors")


@pytest.mark.parametrize(
    "config, message",
    [
        ("[1, 2]", "expected a JSON object"),
        ("{oops", "cannot read JSON"),
        ('{"a": "\\ud800"}', "lone surrogate"),
        (b"\xff\xfe{}", "cannot read JSON"),
        ('{"rope_scaling": NaN}', "config.json: NaN is not valid JSON"),
        ('{"a": -Infinity}', "config.json: -Infinity is not valid JSON"),
    ],
    ids=["list", "bad-json", "surrogate", "not-utf8", "nan", "minus-infinity"],
)
def test_bad_config_json(sharded: Path, config: str | bytes, message: str) -> None:
    path = sharded / "config.json"
    path.write_bytes(config if isinstance(config, bytes) else config.encode())
    with pytest.raises(SourceError, match=message):
        open_checkpoint(sharded)


# --- malformed safetensors headers ----------------------------------------------------------------

U8x4 = {"a": t("U8", [4], 0, 4)}

MALFORMED: dict[str, tuple[bytes, str]] = {
    "empty-file": (b"", "too short"),
    "short-length": (b"\x01\x00\x00", "too short"),
    "length-past-eof": (raw_safetensors(b"{}", length=1000), "header length 1000 exceeds"),
    "length-over-100MB": (raw_safetensors(b"{}", length=200_000_000), "header length 200000000"),
    "not-utf8": (raw_safetensors(b'{"\xff": 1}'), "not valid JSON"),
    "not-json": (raw_safetensors(b"{nope"), "not valid JSON"),
    "deeply-nested": (raw_safetensors(b"[" * 100_000 + b"]" * 100_000), "not valid JSON"),
    "not-object": (raw_safetensors(b"[1]"), "must be a JSON object"),
    "metadata-not-strings": (raw_safetensors({"__metadata__": {"a": 1}}), "__metadata__ must map"),
    "metadata-surrogate": (
        raw_safetensors(b'{"__metadata__": {"a": "\\udc00"}}'),
        "lone surrogate",
    ),
    "tensor-not-object": (raw_safetensors({"a": [1]}), "expected fields dtype, shape"),
    "extra-field": (
        raw_safetensors({"a": {**t("U8", [4], 0, 4), "x": 1}}, bytes(4)),
        "expected fields",
    ),
    "unknown-dtype": (
        raw_safetensors({"a": t("F128", [1], 0, 16)}, bytes(16)),
        "'F128' is not supported",
    ),
    "negative-dim": (
        raw_safetensors({"a": t("U8", [-4], 0, 4)}, bytes(4)),
        "not a list of non-negative",
    ),
    "bool-dim": (
        raw_safetensors({"a": t("U8", [True], 0, 1)}, bytes(1)),
        "not a list of non-negative",
    ),
    "float-dim": (
        raw_safetensors({"a": t("U8", [4.0], 0, 4)}, bytes(4)),
        "not a list of non-negative",
    ),
    "too-many-dims": (raw_safetensors({"a": t("U8", [1] * 9, 0, 1)}, bytes(1)), "9 dimensions"),
    "offsets-not-pair": (
        raw_safetensors({"a": {"dtype": "U8", "shape": [4], "data_offsets": [0]}}, bytes(4)),
        "is not \\[begin, end\\]",
    ),
    "offsets-reversed": (raw_safetensors({"a": t("U8", [0], 4, 0)}, bytes(4)), "outside the"),
    "offsets-past-buffer": (
        raw_safetensors({"a": t("U8", [8], 0, 8)}, bytes(4)),
        "outside the 4-byte",
    ),
    "size-mismatch": (raw_safetensors({"a": t("F32", [2], 0, 4)}, bytes(4)), "needs 8"),
    "overlap": (
        raw_safetensors({"a": t("U8", [4], 0, 4), "b": t("U8", [2], 2, 4)}, bytes(4)),
        "overlaps the previous tensor",
    ),
    "hole": (
        raw_safetensors({"a": t("U8", [2], 0, 2), "b": t("U8", [2], 3, 5)}, bytes(5)),
        "leaves a hole",
    ),
    "trailing-bytes": (raw_safetensors(U8x4, bytes(6)), "tensors end at byte"),
    "surrogate-name": (
        raw_safetensors(b'{"\\ud800": ' + json.dumps(t("U8", [4], 0, 4)).encode() + b"}", bytes(4)),
        "lone surrogate",
    ),
    "empty-name": (raw_safetensors({"": t("U8", [4], 0, 4)}, bytes(4)), "name of 0 bytes"),
    # The same name twice (json.loads alone would keep the last one silently).
    "duplicate-name": (
        raw_safetensors(
            b'{"a": '
            + json.dumps(t("U8", [2], 0, 2)).encode()
            + b', "a": '
            + json.dumps(t("U8", [2], 2, 4)).encode()
            + b"}",
            bytes(4),
        ),
        "header: duplicate name 'a'",
    ),
    "name-too-long": (
        raw_safetensors({"x" * 1025: t("U8", [4], 0, 4)}, bytes(4)),
        "name of 1025 bytes",
    ),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_safetensors_header(tmp_path: Path, case: str) -> None:
    data, message = MALFORMED[case]
    path = tmp_path / "model.safetensors"
    path.write_bytes(data)
    with pytest.raises(SourceError, match=message) as info:
        open_checkpoint(path)
    assert str(path) in str(info.value)  # the message names the file
    # pack reports the same error, and leaves nothing behind.
    with pytest.raises(SourceError):
        pack(path, tmp_path / "out.wst")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.safetensors"]


def test_malformed_shard_in_a_sharded_checkpoint(sharded: Path) -> None:
    (sharded / "model-00002-of-00002.safetensors").write_bytes(raw_safetensors(b"{nope"))
    with pytest.raises(
        SourceError, match=r"model-00002-of-00002\.safetensors: header is not valid JSON"
    ):
        open_checkpoint(sharded)


def test_shard_truncated_after_open(tmp_path: Path) -> None:
    src = write_checkpoint(tmp_path, {"a": np.arange(100, dtype=np.float32)})
    ckpt = open_checkpoint(src)
    os.truncate(src, src.stat().st_size - 100)
    with CheckpointReader(ckpt) as r, pytest.raises(SourceError, match="truncated"):
        r.read_into(ckpt.tensors["a"], 0, memoryview(bytearray(400)))
