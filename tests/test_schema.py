"""formats/manifest.schema.json and formats/SPEC.md, checked against the code so they cannot drift.

- Every manifest the packer writes (raw; zstd at a set, a negative and the default level; byte
  grouping; row blocks; INT8; dtype conversion; config and metadata; no chunks at all), and every
  committed valid vector's manifest, validates against the schema.
- The schema's limits and enums, and the constant, limit, dtype and preamble tables of SPEC.md,
  state exactly the values of ``wstream/format/spec.py``; SPEC.md names every FormatError class.
- The schema rejects what ``parse_manifest`` rejects, for the rules a schema can express.
- SPEC.md's worked example (manifest and preamble hex dump) is a real, valid pair.
"""

from __future__ import annotations

import copy
import json
import re
import struct
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jsonschema
import ml_dtypes
import numpy as np
import pytest
from safetensors.numpy import save_file

from wstream import errors as E
from wstream.format import spec
from wstream.format.manifest import parse_manifest, parse_preamble
from wstream.format.quant import FLOATS
from wstream.format.spec import CodecId, DType, QuantScheme
from wstream.pack import pack

FORMATS = Path(__file__).resolve().parents[1] / "formats"
SCHEMA: dict[str, Any] = json.loads((FORMATS / "manifest.schema.json").read_text("utf-8"))
SPEC_MD = (FORMATS / "SPEC.md").read_text("utf-8")
VALIDATOR = jsonschema.Draft202012Validator(SCHEMA)
DEFS = SCHEMA["$defs"]


# --- fixtures: small real containers ---------------------------------------------------------


def _read_manifest(path: Path) -> tuple[dict[str, Any], int]:
    """The manifest JSON and manifest_offset, read with struct alone (not through wstream)."""
    data = path.read_bytes()
    _, _, _, m_off, m_len, _, _, _ = struct.unpack("<8sIIQQI24sI", data[:64])
    assert m_off + m_len == len(data)
    return json.loads(data[m_off : m_off + m_len].decode("utf-8")), m_off


def _every_dtype() -> dict[str, np.ndarray]:
    arrays = {f"x.{d.value}": np.arange(6).astype(d.numpy).reshape(2, 3) for d in DType}
    arrays["scalar"] = np.array(1.5, np.float32)  # 0-d
    arrays["empty"] = np.zeros((0, 3), np.float32)  # zero-size
    for i in (0, 1, 10):  # generic order: natural sort of layer groups
        arrays[f"blocks.{i}.w"] = np.full((4, 4), i, np.float32)
    return arrays


def _minicpmv_llm(vocab: int = 1200, d: int = 64, ff: int = 256) -> dict[str, np.ndarray]:
    """A one-layer MiniCPM-V-2.6-named LLM whose embedding, head and MLP exceed 64 KiB (the head
    even as INT8)."""
    rng = np.random.default_rng(0)

    def w(*shape: int) -> np.ndarray:
        return rng.standard_normal(shape).astype(ml_dtypes.bfloat16)

    p = "llm.model.layers.0."
    return {
        "llm.model.embed_tokens.weight": rng.standard_normal((vocab, d)).astype(np.float32),
        p + "input_layernorm.weight": w(d),
        p + "self_attn.q_proj.weight": w(d, d),
        p + "self_attn.q_proj.bias": w(d),
        p + "self_attn.k_proj.weight": w(d // 2, d),
        p + "self_attn.k_proj.bias": w(d // 2),
        p + "self_attn.v_proj.weight": w(d // 2, d),
        p + "self_attn.v_proj.bias": w(d // 2),
        p + "self_attn.o_proj.weight": w(d, d),
        p + "post_attention_layernorm.weight": w(d),
        p + "mlp.gate_proj.weight": rng.standard_normal((ff, d)).astype(np.float32),
        p + "mlp.up_proj.weight": rng.standard_normal((ff, d)).astype(np.float32),
        p + "mlp.down_proj.weight": w(d, ff),
        "llm.model.norm.weight": w(d),
        "llm.lm_head.weight": rng.standard_normal((vocab, d)).astype(np.float32),
    }


@pytest.fixture(scope="module")
def packed(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[dict[str, Any], int]]:
    """name -> (manifest JSON, manifest_offset) of a few containers packed by wstream.pack."""
    root = tmp_path_factory.mktemp("schema")
    save_file(_every_dtype(), str(root / "dtypes.safetensors"), metadata={"format": "np"})
    save_file({}, str(root / "empty.safetensors"))
    llm = root / "llm"
    llm.mkdir()
    save_file(_minicpmv_llm(), str(llm / "model.safetensors"), metadata={"format": "pt", "k": "v"})
    (llm / "config.json").write_text(
        json.dumps({"model_type": "minicpmv", "hidden_size": 64, "nested": {"a": [1, 2.5, None]}})
    )
    small = {"max_chunk": spec.MIN_MAX_CHUNK}
    jobs: dict[str, tuple[Path, dict[str, Any]]] = {
        "raw": (root / "dtypes.safetensors", {"codec": "raw"}),
        "zstd": (root / "dtypes.safetensors", {"codec": "zstd", "level": 3}),
        "zstd_negative_level": (root / "dtypes.safetensors", {"codec": "zstd", "level": -7}),
        "zstd_shuffle": (root / "dtypes.safetensors", {"codec": "zstd", "shuffle": True}),
        "row_blocks_raw": (llm, {"codec": "raw", **small}),
        "row_blocks_zstd": (llm, {"codec": "zstd", "level": 1, **small}),
        "quantized": (llm, {"codec": "zstd", "shuffle": True, "quantize": "int8", **small}),
        "converted": (llm, {"codec": "raw", "dtype": "bfloat16", **small}),
        "empty": (root / "empty.safetensors", {}),
    }
    out = {}
    for name, (src, kwargs) in jobs.items():
        dst = root / f"{name}.wst"
        pack(src, dst, **kwargs)
        out[name] = _read_manifest(dst)
    return out


# --- the schema accepts what the writer writes --------------------------------------------------


def test_schema_is_valid_draft_2020_12() -> None:
    jsonschema.Draft202012Validator.check_schema(SCHEMA)


PACKED = [
    "raw", "zstd", "zstd_negative_level", "zstd_shuffle", "row_blocks_raw", "row_blocks_zstd",
    "quantized", "converted", "empty",
]  # fmt: skip


@pytest.mark.parametrize("name", PACKED)
def test_packed_manifest_validates(
    packed: dict[str, tuple[dict[str, Any], int]], name: str
) -> None:
    doc, _ = packed[name]
    VALIDATOR.validate(doc)


VECTORS = sorted((FORMATS / "vectors" / "valid").glob("*.wst"))


@pytest.mark.parametrize("path", VECTORS, ids=[p.stem for p in VECTORS])
def test_valid_vector_manifest_validates(path: Path) -> None:
    doc, _ = _read_manifest(path)
    VALIDATOR.validate(doc)


def _pieces(doc: dict[str, Any]) -> list[dict[str, Any]]:
    return [t for c in doc["chunks"] for t in c["tensors"]]


def _steps(doc: dict[str, Any]) -> list[dict[str, Any]]:
    return [s for c in doc["chunks"] for s in c["codec"]]


def test_fixtures_exercise_the_features(packed: dict[str, tuple[dict[str, Any], int]]) -> None:
    """Guard against the fixtures silently losing the feature they are there to cover."""
    raw, _ = packed["raw"]
    assert {t["dtype"] for t in _pieces(raw)} == {d.value for d in DType}
    assert all(c["codec"] == [] for c in raw["chunks"])
    assert raw["config"] is None and raw["metadata"] == {"format": "np"}
    assert {s.get("level") for s in _steps(packed["zstd_negative_level"][0])} == {-7}
    assert any(s["id"] == "bytegroup" for s in _steps(packed["zstd_shuffle"][0]))
    assert all("frames" in s for s in _steps(packed["zstd"][0]) if s["id"] == "zstd")
    blocks, _ = packed["row_blocks_zstd"]
    assert blocks["config"]["model_type"] == "minicpmv" and blocks["metadata"]["k"] == "v"
    assert "rows" in blocks["chunks"][0]["tensors"][0]  # the mutations below rely on it
    assert any("#" in c["name"] for c in blocks["chunks"])
    assert blocks["chunks"][0]["group"] == "llm.embed"
    quantized, _ = packed["quantized"]
    assert quantized["lossy"] and any("quant" in t and "rows" in t for t in _pieces(quantized))
    converted, _ = packed["converted"]
    assert converted["lossy"] and {t["dtype"] for t in _pieces(converted)} == {"BF16"}
    assert packed["empty"][0]["chunks"] == []


# --- the schema states the values of spec.py ---------------------------------------------------


def test_schema_limits_match_spec_py() -> None:
    props = SCHEMA["properties"]
    chunk = DEFS["chunk"]["properties"]
    tensor = DEFS["tensor"]["properties"]
    zstd = DEFS["zstd_step"]["properties"]
    quant = DEFS["quant"]["properties"]
    u64 = (1 << 64) - 1
    assert SCHEMA["x-wstream-limits"]["MAX_MANIFEST_NBYTES"] == spec.MAX_MANIFEST_NBYTES
    assert SCHEMA["x-wstream-limits"]["MAX_JSON_DEPTH"] == spec.MAX_JSON_DEPTH
    assert props["chunks"]["maxItems"] == spec.MAX_CHUNKS
    assert props["metadata"]["maxProperties"] == spec.MAX_METADATA_ENTRIES
    assert DEFS["name"]["maxLength"] == spec.MAX_NAME_BYTES
    assert chunk["offset"]["minimum"] == spec.DATA_START
    assert chunk["offset"]["multipleOf"] == spec.CHUNK_ALIGNMENT
    assert chunk["offset"]["maximum"] == chunk["nbytes"]["maximum"] == u64
    assert chunk["raw_nbytes"]["maximum"] == spec.MAX_CHUNK_RAW_NBYTES
    assert chunk["crc32"]["maximum"] == 0xFFFFFFFF
    assert chunk["tensors"]["maxItems"] == spec.MAX_PIECES_PER_CHUNK
    assert DEFS["pipeline"]["maxItems"] == spec.MAX_PIPELINE_STEPS
    assert DEFS["bytegroup_step"]["properties"]["size"]["enum"] == list(spec.BYTEGROUP_SIZES)
    assert (zstd["level"]["minimum"], zstd["level"]["maximum"]) == (
        spec.MIN_ZSTD_LEVEL,
        spec.MAX_ZSTD_LEVEL,
    )
    assert zstd["frames"]["maxItems"] == spec.MAX_FRAMES_PER_CHUNK
    frame = zstd["frames"]["items"]["prefixItems"]
    assert (frame[0]["maximum"], frame[1]["maximum"]) == (u64, spec.MAX_CHUNK_RAW_NBYTES)
    assert (quant["group"]["minimum"], quant["group"]["maximum"]) == (1, spec.MAX_QUANT_GROUP)
    assert quant["scales"]["maximum"] == spec.MAX_CHUNK_RAW_NBYTES
    assert quant["scales"]["multipleOf"] == spec.TENSOR_ALIGNMENT
    assert tensor["shape"]["maxItems"] == spec.MAX_NDIM
    assert tensor["shape"]["items"]["maximum"] == spec.MAX_TENSOR_NBYTES
    assert tensor["offset"]["maximum"] == spec.MAX_CHUNK_RAW_NBYTES
    assert tensor["offset"]["multipleOf"] == spec.TENSOR_ALIGNMENT
    assert [r["maximum"] for r in tensor["rows"]["prefixItems"]] == [spec.MAX_TENSOR_NBYTES] * 2


def test_schema_enums_match_spec_py() -> None:
    assert DEFS["dtype"]["enum"] == [d.value for d in DType]
    step_ids = {DEFS[f"{c.value}_step"]["properties"]["id"]["const"] for c in CodecId}
    assert step_ids == {c.value for c in CodecId}
    assert DEFS["quant"]["properties"]["scheme"]["enum"] == [q.value for q in QuantScheme]
    quantizable = DEFS["tensor"]["dependentSchemas"]["quant"]["properties"]["dtype"]["enum"]
    assert set(quantizable) == {d.value for d in FLOATS}


# --- SPEC.md states the values of spec.py and errors.py ----------------------------------------


def test_spec_md_tables_match_spec_py() -> None:
    rows = dict(re.findall(r"^\| `([A-Z][A-Z0-9_]*)` \| (-?\d+) \|", SPEC_MD, re.MULTILINE))
    dtype_rows = {k: int(v) for k, v in rows.items() if k in DType.__members__}
    const_rows = {k: int(v) for k, v in rows.items() if k not in DType.__members__}
    assert dtype_rows == {d.value: d.itemsize for d in DType}
    expected = {
        "VERSION", "PREAMBLE_NBYTES", "PREAMBLE_CRC_SPAN", "CHUNK_ALIGNMENT", "DATA_START",
        "TENSOR_ALIGNMENT", "MAX_MANIFEST_NBYTES", "MAX_JSON_DEPTH", "MAX_CHUNKS",
        "MAX_PIECES_PER_CHUNK", "MAX_NAME_BYTES", "MAX_NDIM", "MAX_CHUNK_RAW_NBYTES",
        "MAX_TENSOR_NBYTES", "MAX_METADATA_ENTRIES", "MAX_PIPELINE_STEPS", "MAX_FRAMES_PER_CHUNK",
        "MAX_QUANT_GROUP", "MIN_ZSTD_LEVEL", "MAX_ZSTD_LEVEL", "MIN_MAX_CHUNK", "DEFAULT_MAX_CHUNK",
        "MAX_FILES", "MAX_FILE_NBYTES", "MAX_FOLDS",
    }  # fmt: skip
    assert set(const_rows) == expected
    assert const_rows == {name: getattr(spec, name) for name in expected}
    magic = re.search(r"^\| `MAGIC` \| `([0-9A-F ]+)` \|", SPEC_MD, re.MULTILINE)
    assert magic is not None and bytes.fromhex(magic.group(1)) == spec.MAGIC
    sizes = re.search(r"^\| `BYTEGROUP_SIZES` \| `([0-9, ]+)` \|", SPEC_MD, re.MULTILINE)
    assert sizes is not None
    assert tuple(int(v) for v in sizes.group(1).split(",")) == spec.BYTEGROUP_SIZES


def test_spec_md_preamble_table_matches_struct() -> None:
    row = r"^\| (\d+) \| (\d+) \| `(u8\[\d+\]|u32|u64)` \| `(\w+)` \|"
    table = re.findall(row, SPEC_MD, re.MULTILINE)
    layout = []
    offset = 0
    for count, code in re.findall(r"(\d*)([sIQ])", spec.PREAMBLE.format.lstrip("<")):
        size = int(count) if code == "s" else struct.calcsize("<" + code)
        layout.append((offset, size))
        offset += size
    assert [(int(o), int(n)) for o, n, _, _ in table] == layout
    assert offset == spec.PREAMBLE_NBYTES and int(table[-1][0]) == spec.PREAMBLE_CRC_SPAN


def test_spec_md_names_every_format_error() -> None:
    summary = SPEC_MD.split("**Summary of classes.**", 1)[1].split("\n\n", 1)[0]
    named = set(re.findall(r"`([A-Z][A-Za-z]+)`", summary))
    classes = {
        n for n, c in vars(E).items()
        if isinstance(c, type) and issubclass(c, E.FormatError) and c is not E.FormatError
    }  # fmt: skip
    assert named == classes


def test_crc32_check_value() -> None:
    assert "0xCBF43926" in SPEC_MD
    assert zlib.crc32(b"123456789") == 0xCBF43926


# --- the schema rejects what the parser rejects ----------------------------------------------

Mutation = Callable[[dict[str, Any]], None]


def _parent(doc: dict[str, Any], path: str) -> tuple[Any, Any]:
    """The container holding ``path`` ("chunks/0/offset") and the key or index inside it."""
    *parents, last = path.split("/")
    node: Any = doc
    for key in parents:
        node = node[int(key)] if isinstance(node, list) else node[key]
    return node, int(last) if isinstance(node, list) else last


def _set(path: str, value: Any) -> Mutation:
    def apply(doc: dict[str, Any]) -> None:
        node, key = _parent(doc, path)
        node[key] = value

    return apply


def _delete(path: str) -> Mutation:
    def apply(doc: dict[str, Any]) -> None:
        node, key = _parent(doc, path)
        del node[key]

    return apply


def _first_piece(key: str) -> Callable[[dict[str, Any]], dict[str, Any]]:
    return lambda doc: next(t for t in _pieces(doc) if key in t)


def _on(find: Callable[[dict[str, Any]], dict[str, Any]], **values: Any) -> Mutation:
    return lambda doc: find(doc).update(values)


def _quant(**values: Any) -> Mutation:
    return lambda doc: _first_piece("quant")(doc)["quant"].update(values)


def _chunk0(member: str, value: Any) -> Mutation:
    return _set(f"chunks/0/{member}", value)


def _piece0(member: str, value: Any) -> Mutation:
    return _set(f"chunks/0/tensors/0/{member}", value)


def _pop_quant_group(doc: dict[str, Any]) -> None:
    del _first_piece("quant")(doc)["quant"]["group"]


B, Q = "row_blocks_zstd", "quantized"  # chunk 0 of B holds a row block; Q holds INT8 pieces
ZSTD = {"id": "zstd", "level": 1}
GROUP4 = {"id": "bytegroup", "size": 4}
U64 = 1 << 64
# case -> (fixture, mutation, the error parse_manifest raises); the schema must reject each too.
MUTATIONS: dict[str, tuple[str, Mutation, type[E.FormatError]]] = {
    "unknown top-level member": (B, _set("extra", 1), E.ManifestSchemaError),
    "missing metadata": (B, _delete("metadata"), E.ManifestSchemaError),
    "writer too long": (B, _set("writer", "w" * 257), E.ManifestSchemaError),
    "lossy not a boolean": (B, _set("lossy", 0), E.ManifestSchemaError),
    "config a list": (B, _set("config", []), E.ManifestSchemaError),
    "metadata value not a string": (B, _set("metadata/k", 1), E.ManifestSchemaError),
    "unknown chunk member": (B, _chunk0("extra", 1), E.ManifestSchemaError),
    "empty chunk name": (B, _chunk0("name", ""), E.LimitExceeded),
    "chunk name too long": (B, _chunk0("name", "n" * 1025), E.LimitExceeded),
    "chunk offset a boolean": (B, _chunk0("offset", True), E.ManifestSchemaError),
    "chunk offset below data start": (B, _chunk0("offset", 0), E.OutOfBounds),
    "chunk offset beyond u64": (B, _chunk0("offset", U64), E.LimitExceeded),
    "chunk offset misaligned": (B, _chunk0("offset", 4096 + 64), E.MisalignedOffset),
    "negative nbytes": (B, _chunk0("nbytes", -1), E.LimitExceeded),
    "nbytes beyond u64": (B, _chunk0("nbytes", U64), E.LimitExceeded),
    "raw_nbytes too large": (B, _chunk0("raw_nbytes", (1 << 30) + 1), E.LimitExceeded),
    "crc32 too large": (B, _chunk0("crc32", 1 << 32), E.LimitExceeded),
    "unknown codec": (B, _chunk0("codec", [{"id": "lz4"}]), E.UnknownCodec),
    "three codec steps": (B, _chunk0("codec", [GROUP4, ZSTD, ZSTD]), E.LimitExceeded),
    "two zstd steps": (B, _chunk0("codec", [ZSTD, ZSTD]), E.ManifestSchemaError),
    "bytegroup after zstd": (B, _chunk0("codec", [ZSTD, GROUP4]), E.ManifestSchemaError),
    "bytegroup size 3": (B, _chunk0("codec", [{**GROUP4, "size": 3}]), E.ManifestSchemaError),
    "bytegroup without size": (B, _chunk0("codec", [{"id": "bytegroup"}]), E.ManifestSchemaError),
    "zstd step extra member": (B, _chunk0("codec", [{**ZSTD, "dict": 0}]), E.ManifestSchemaError),
    "zstd level too high": (B, _chunk0("codec", [{**ZSTD, "level": 23}]), E.LimitExceeded),
    "zstd frames empty": (B, _chunk0("codec/0/frames", []), E.ManifestSchemaError),
    "zstd frame of three": (B, _chunk0("codec/0/frames/0", [1, 2, 3]), E.ManifestSchemaError),
    "zstd frame stores nothing": (B, _chunk0("codec/0/frames/0", [0, 0]), E.LimitExceeded),
    "unknown tensor member": (B, _piece0("extra", 1), E.ManifestSchemaError),
    "unknown dtype": (B, _piece0("dtype", "F4"), E.UnknownDType),
    "nine dimensions": (B, _piece0("shape", [1] * 9), E.LimitExceeded),
    "negative dimension": (B, _piece0("shape", [-1, 64]), E.LimitExceeded),
    "tensor offset misaligned": (B, _piece0("offset", 32), E.MisalignedOffset),
    "rows of three": (B, _piece0("rows", [0, 1, 2]), E.ManifestSchemaError),
    "rows stop zero": (B, _piece0("rows", [0, 0]), E.TensorLayoutError),
    "rows on a 0-d tensor": (B, _piece0("shape", []), E.TensorLayoutError),
    "quant unknown scheme": (Q, _quant(scheme="int4"), E.UnknownCodec),
    "quant missing group": (Q, _pop_quant_group, E.ManifestSchemaError),
    "quant group zero": (Q, _quant(group=0), E.LimitExceeded),
    "quant group too large": (Q, _quant(group=(1 << 20) + 1), E.LimitExceeded),
    "quant scales misaligned": (Q, _quant(scales=32), E.MisalignedOffset),
    "quant on a 1-d tensor": (Q, _on(_first_piece("quant"), shape=[64]), E.TensorLayoutError),
    "quant on an integer tensor": (Q, _on(_first_piece("quant"), dtype="I32"), E.TensorLayoutError),
    "quant in a lossless file": (Q, _set("lossy", False), E.ManifestSchemaError),
}


@pytest.mark.parametrize("case", sorted(MUTATIONS))
def test_schema_rejects_what_the_parser_rejects(
    packed: dict[str, tuple[dict[str, Any], int]], case: str
) -> None:
    fixture, mutate, error = MUTATIONS[case]
    base, data_end = packed[fixture]
    doc = copy.deepcopy(base)
    mutate(doc)
    assert not VALIDATOR.is_valid(doc)
    with pytest.raises(error):
        parse_manifest(json.dumps(doc).encode("utf-8"), data_end=data_end)


def test_writer_length_boundary(packed: dict[str, tuple[dict[str, Any], int]]) -> None:
    base, data_end = packed["empty"]
    doc = {**base, "writer": "é" * 256}  # the limit counts code points, not bytes
    assert VALIDATOR.is_valid(doc)
    parse_manifest(json.dumps(doc, ensure_ascii=False).encode("utf-8"), data_end=data_end)


def test_fractional_integer_is_a_documented_schema_gap(
    packed: dict[str, tuple[dict[str, Any], int]],
) -> None:
    """SPEC.md appendix D: JSON Schema's integer admits 4096.0; the parser does not."""
    base, data_end = packed["raw"]
    doc = copy.deepcopy(base)
    doc["chunks"][0]["offset"] = float(doc["chunks"][0]["offset"])
    assert VALIDATOR.is_valid(doc)
    with pytest.raises(E.ManifestSchemaError):
        parse_manifest(json.dumps(doc).encode("utf-8"), data_end=data_end)


# --- the worked example in SPEC.md is real -----------------------------------------------------


def _fenced_after(marker: str) -> str:
    block = SPEC_MD.split(marker, 1)[1]
    return block.split("```", 2)[1].split("\n", 1)[1]


def test_spec_example_is_a_valid_preamble_and_manifest() -> None:
    doc = json.loads(_fenced_after("<!-- example-manifest -->"))
    body = json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    hex_rows = [line[10:58] for line in _fenced_after("<!-- example-preamble -->").splitlines()]
    head = bytes.fromhex("".join(hex_rows))
    assert len(head) == spec.PREAMBLE_NBYTES
    _, _, _, m_off, m_len, m_crc, _, _ = spec.PREAMBLE.unpack(head)
    assert (m_len, m_crc) == (len(body), zlib.crc32(body))
    preamble = parse_preamble(head, m_off + m_len)
    manifest = parse_manifest(body, data_end=preamble.manifest_offset)
    VALIDATOR.validate(doc)
    assert manifest.groups() == ["model.embed", "model.layers.0", "model.other"]
