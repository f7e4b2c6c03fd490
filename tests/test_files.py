"""Embedded model files (SPEC.md section 13): the manifest's ``files``, written, read and refused.

- Round trips: writer -> reader for raw and zstd files, empty, binary and JSON ones; the manifest
  builder -> parser; pack picks the checkpoint's files (directory or single file) and unpack
  writes them back; every path through the CLI (pack, info, verify, unpack).
- Hostile manifests: every rule of phase H raises its class, and the schema agrees where it can.
- Hostile data: a flipped bit, a frame that decodes past raw_nbytes (no allocation from it).
- Compatibility: a container without files has no ``files`` member, and a reader that predates
  the member rejects a container that has it (ManifestSchemaError), never misreads it.
- Strict JSON: pack refuses a model file that is not RFC 8259 JSON, naming it; read_json too.
The committed vectors are read in tests/test_vectors.py.
"""

from __future__ import annotations

import copy
import json
import os
import re
import zlib
from pathlib import Path
from typing import Any

import jsonschema
import numpy as np
import pytest
import zstandard
from hypothesis import given
from hypothesis import strategies as st
from safetensors.numpy import save_file

from wstream import errors as E
from wstream.cli import main
from wstream.container.model_files import MODEL_FILES, find_model_files
from wstream.container.reader import Container
from wstream.container.writer import ContainerWriter
from wstream.format import manifest as M
from wstream.format import spec
from wstream.format.files import parse_json
from wstream.format.manifest import parse_manifest
from wstream.format.spec import DType
from wstream.pack import pack
from wstream.unpack import unpack, unpack_report

FORMATS = Path(__file__).resolve().parents[1] / "formats"
SCHEMA: dict[str, Any] = json.loads((FORMATS / "manifest.schema.json").read_text("utf-8"))
VALIDATOR = jsonschema.Draft202012Validator(SCHEMA)

TOKENIZER = json.dumps({"model": {"type": "BPE", "vocab": {f"t{i}": i for i in range(3000)}}})
TEMPLATE = {"chat_template": "{% for m in messages %}{{ m['content'] }}\n{% endfor %}", "x": "é"}


def run(capsys: pytest.CaptureFixture[str], *argv: str | Path) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def checkpoint(directory: Path, **files: str | bytes) -> Path:
    """A one-tensor checkpoint directory with ``files`` beside its weights."""
    directory.mkdir(parents=True, exist_ok=True)
    save_file({"w": np.arange(12, dtype=np.float32).reshape(3, 4)}, directory / "m.safetensors")
    for name, data in files.items():
        path = directory / name.replace("__", ".")
        path.write_bytes(data.encode() if isinstance(data, str) else data)
    return directory


def model_checkpoint(directory: Path) -> Path:
    return checkpoint(
        directory,
        tokenizer__json=TOKENIZER,
        tokenizer_config__json=json.dumps(TEMPLATE, ensure_ascii=False),
        generation_config__json='{"eos_token_id": [1, 2]}',
    )


def write(path: Path, files: list[tuple[str, bytes, bool]], *, chunk: bool = True) -> Path:
    """A container with one raw chunk (optional) and ``files`` as (name, data, zstd)."""
    with ContainerWriter(path) as w:
        if chunk:
            entry = M.TensorEntry("w", DType.U8, (5,), 0)
            w.add_chunk("c", "g", [entry], b"abcde", raw_nbytes=5)
        for name, data, zstd in files:
            w.add_file(name, data, zstd=zstd)
        w.close()
    return path


def header(path: Path) -> tuple[dict[str, Any], int]:
    data = path.read_bytes()
    m_off = int.from_bytes(data[16:24], "little")
    return json.loads(data[m_off:]), m_off


# --- round trips ---------------------------------------------------------------------------------


@pytest.mark.parametrize("zstd", [False, True], ids=["raw", "zstd"])
def test_writer_reader_round_trip(tmp_path: Path, zstd: bool) -> None:
    files = [
        ("tokenizer.json", TOKENIZER.encode(), zstd),
        ("blob.bin", bytes(range(256)) * 9000, zstd),  # > 2 MiB: several zstd frames
        ("empty", b"", zstd),
        ("incompressible.bin", np.random.default_rng(0).bytes(3000), zstd),
    ]
    path = write(tmp_path / "f.wst", files)
    with Container(path) as c:
        c.verify()
        assert [(f.name, f.raw_nbytes) for f in c.files] == [(n, len(d)) for n, d, _ in files]
        for name, data, _ in files:
            assert c.read_file(name) == data
        assert c.read_json("tokenizer.json") == json.loads(TOKENIZER)
        assert c.tensor("w").tobytes() == b"abcde"
        by_name = {f.name: f for f in c.files}
        # Payloads follow the last chunk, each on its own page; zstd only where it pays.
        assert min(f.offset for f in c.files) > c.manifest.chunks[-1].offset
        assert all(f.offset % spec.CHUNK_ALIGNMENT == 0 for f in c.files)
        assert by_name["incompressible.bin"].codec == ()
        assert bool(by_name["tokenizer.json"].codec) is zstd
        if zstd:
            frames = by_name["blob.bin"].codec[0].frames
            assert frames is not None and len(frames) == 3
    doc, _ = header(path)
    VALIDATOR.validate(doc)


def test_read_through_a_source_without_a_map(tmp_path: Path) -> None:
    """An object-store source (ranges only): the files are read, checked and named the same."""
    from test_source import Unmapped

    path = write(tmp_path / "f.wst", [("a.json", b'{"a": 1}', False), ("b", b"x" * 5000, True)])
    with Container(Unmapped(path)) as c:
        c.verify()
        assert c.read_json("a.json") == {"a": 1} and c.read_file("b") == b"x" * 5000
        with pytest.raises(E.MissingModelFile, match=r"^unmapped:.*no embedded 'c'"):
            c.read_file("c")


def test_files_without_chunks(tmp_path: Path) -> None:
    path = write(tmp_path / "f.wst", [("a.txt", b"hello", False)], chunk=False)
    with Container(path) as c:
        assert c.files[0].offset == spec.DATA_START
        assert c.read_file("a.txt") == b"hello"


def test_no_files_no_member(tmp_path: Path) -> None:
    """Without files the manifest has no ``files`` member: older readers read such files."""
    path = write(tmp_path / "f.wst", [])
    doc, _ = header(path)
    assert "files" not in doc
    with Container(path) as c:
        assert c.files == ()


def test_an_older_reader_rejects_files_loudly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reader without the member (simulated: no optional top-level member) rejects it."""
    with_files = write(tmp_path / "f.wst", [("a.txt", b"x", False)])
    without = write(tmp_path / "g.wst", [])
    monkeypatch.setattr(M, "_TOP_OPTIONAL", frozenset())
    with pytest.raises(E.ManifestSchemaError, match=r"unknown field\(s\) \['files'\]"):
        Container(with_files)
    Container(without).close()


@given(
    st.lists(
        st.tuples(st.from_regex(spec.FILE_NAME_PATTERN, fullmatch=True), st.binary(max_size=300)),
        max_size=6,
        unique_by=lambda t: t[0].lower(),
    ),
    st.booleans(),
)
def test_manifest_round_trip(files: list[tuple[str, bytes]], zstd: bool) -> None:
    """build -> to_json -> parse gives the same entries; the payload region rules hold."""
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        path = write(Path(d) / "f.wst", [(n, b, zstd) for n, b in files])
        with Container(path) as c:
            assert [(f.name, c.read_file(f.name)) for f in c.files] == files
            again = parse_manifest(c.manifest.to_json(), data_end=c.preamble.manifest_offset)
            assert again.files == c.manifest.files


# --- the writer refuses what readers would ------------------------------------------------------


def test_writer_checks(tmp_path: Path) -> None:
    with ContainerWriter(tmp_path / "f.wst") as w:
        with pytest.raises(E.ManifestSchemaError, match="plain file name"):
            w.add_file("../x", b"")
        w.add_file("Tok.json", b"{}")
        with pytest.raises(E.DuplicateName):
            w.add_file("tok.JSON", b"{}")
        with pytest.raises(E.LimitExceeded, match=str(spec.MAX_FILE_NBYTES)):
            w.add_file("big", bytes(spec.MAX_FILE_NBYTES + 1))
        with pytest.raises(E.WStreamError, match="after a file"):
            w.add_chunk("c", "g", [], b"", raw_nbytes=0)
        for i in range(spec.MAX_FILES - 1):
            w.add_file(f"f{i}", b"")
        with pytest.raises(E.LimitExceeded, match=str(spec.MAX_FILES)):
            w.add_file("one-too-many", b"")
    assert not (tmp_path / "f.wst").exists()


# --- hostile manifests ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], int]:
    path = tmp_path_factory.mktemp("files") / "f.wst"
    write(path, [("a.json", b"{}" * 100, False), ("b.bin", b"\x00" * 50, True)])
    return header(path)


def _entry(i: int, **values: Any) -> Any:
    return lambda doc: doc["files"][i].update(values)


U64 = 1 << 64
# case -> (mutation of the manifest, error); the schema must reject each too unless marked.
HOSTILE: dict[str, tuple[Any, type[E.FormatError], bool]] = {
    "files not a list": (lambda d: d.update(files={}), E.ManifestSchemaError, True),
    "too many files": (
        lambda d: d.update(files=[dict(d["files"][0], name=f"f{i}") for i in range(33)]),
        E.LimitExceeded,
        True,
    ),
    "entry not an object": (lambda d: d["files"].append([]), E.ManifestSchemaError, True),
    "missing crc32": (lambda d: d["files"][0].pop("crc32"), E.ManifestSchemaError, True),
    "unknown member": (_entry(0, mode=420), E.ManifestSchemaError, True),
    "name a number": (_entry(0, name=7), E.ManifestSchemaError, True),
    "name empty": (_entry(0, name=""), E.ManifestSchemaError, True),
    "name a path": (_entry(0, name="a/b.json"), E.ManifestSchemaError, True),
    "name backslash": (_entry(0, name="a\\b.json"), E.ManifestSchemaError, True),
    "name dot dot": (_entry(0, name=".."), E.ManifestSchemaError, True),
    "name hidden": (_entry(0, name=".bashrc"), E.ManifestSchemaError, True),
    "name space": (_entry(0, name="a b"), E.ManifestSchemaError, True),
    "name newline": (_entry(0, name="a\n"), E.ManifestSchemaError, False),  # see below
    "name non-ascii": (_entry(0, name="é.json"), E.ManifestSchemaError, True),
    "name too long": (_entry(0, name="n" * 129), E.ManifestSchemaError, True),
    "duplicate name": (_entry(1, name="a.json"), E.DuplicateName, False),
    "duplicate ignoring case": (_entry(1, name="A.JSON"), E.DuplicateName, False),
    "offset below data start": (_entry(0, offset=0), E.OutOfBounds, True),
    "offset beyond u64": (_entry(0, offset=U64), E.LimitExceeded, True),
    "offset a float": (_entry(0, offset=8192.0), E.ManifestSchemaError, False),
    "offset misaligned": (_entry(0, offset=8192 + 64), E.MisalignedOffset, True),
    "offset past the data area": (_entry(1, offset=1 << 40), E.OutOfBounds, False),
    "nbytes past the data area": (_entry(1, nbytes=1 << 40), E.OutOfBounds, False),
    "raw_nbytes too large": (
        _entry(1, raw_nbytes=spec.MAX_FILE_NBYTES + 1),
        E.LimitExceeded,
        True,
    ),
    "crc32 too large": (_entry(0, crc32=1 << 32), E.LimitExceeded, True),
    "raw size mismatch": (_entry(0, raw_nbytes=1), E.DecodedSizeMismatch, False),
    "bytegroup codec": (
        _entry(0, codec=[{"id": "bytegroup", "size": 2}]),
        E.ManifestSchemaError,
        True,
    ),
    "unknown codec": (_entry(0, codec=[{"id": "lz4"}]), E.UnknownCodec, True),
    "two steps": (_entry(1, codec=[{"id": "zstd"}, {"id": "zstd"}]), E.ManifestSchemaError, True),
    "frames sum wrong": (
        lambda d: d["files"][1]["codec"][0].update(frames=[[1, 50]]),
        E.OutOfBounds,
        False,
    ),
    "overlaps the chunk": (_entry(0, offset=4096), E.OverlappingRegions, False),
    "overlaps a file": (
        lambda d: d["files"][1].update(offset=d["files"][0]["offset"]),
        E.OverlappingRegions,
        False,
    ),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_files_member(base: tuple[dict[str, Any], int], case: str) -> None:
    mutate, error, schema_rejects = HOSTILE[case]
    doc = copy.deepcopy(base[0])
    mutate(doc)
    with pytest.raises(error) as info:
        parse_manifest(json.dumps(doc).encode(), data_end=base[1])
    assert type(info.value) is error
    if schema_rejects:
        assert not VALIDATOR.is_valid(doc)


def test_newline_in_a_name_is_rejected_by_the_parser_not_the_schema() -> None:
    """JSON Schema's ECMA-262 ``$`` matches before a final newline in some validators; the
    reference matches the whole string (a documented gap, like integers written as 1.0)."""
    assert M._FILE_NAME.fullmatch("a\n") is None
    assert re.fullmatch(spec.FILE_NAME_PATTERN, "a") is not None


def test_allowed_layouts(base: tuple[dict[str, Any], int]) -> None:
    """Files listed out of file order, empty files sharing an offset (with a chunk's, too)."""
    doc = copy.deepcopy(base[0])
    doc["files"].reverse()
    doc["files"] += [
        {"name": "e1", "offset": 4096, "nbytes": 0, "raw_nbytes": 0, "crc32": 0, "codec": []},
        {"name": "e2", "offset": 4096, "nbytes": 0, "raw_nbytes": 0, "crc32": 0, "codec": []},
    ]
    m = parse_manifest(json.dumps(doc).encode(), data_end=base[1])
    assert [f.name for f in m.files] == ["b.bin", "a.json", "e1", "e2"]
    VALIDATOR.validate(doc)


def test_schema_limits_match_spec_py() -> None:
    files = SCHEMA["properties"]["files"]
    entry = SCHEMA["$defs"]["file"]["properties"]
    assert files["maxItems"] == spec.MAX_FILES
    assert entry["raw_nbytes"]["maximum"] == spec.MAX_FILE_NBYTES
    assert entry["name"]["pattern"] == spec.FILE_NAME_PATTERN
    assert entry["offset"]["minimum"] == spec.DATA_START
    assert entry["offset"]["multipleOf"] == spec.CHUNK_ALIGNMENT
    spec_md = (FORMATS / "SPEC.md").read_text("utf-8")
    assert f"| `FILE_NAME_PATTERN` | `{spec.FILE_NAME_PATTERN}` |" in spec_md


# --- hostile data --------------------------------------------------------------------------------


def _patch_file(path: Path, name: str, stored: bytes, **fields: Any) -> None:
    """Rewrite file ``name``'s payload and entry in place (manifest and preamble CRCs fixed)."""
    from wstream.format.manifest import pack_preamble

    doc, m_off = header(path)
    data = bytearray(path.read_bytes()[:m_off])
    entry = next(f for f in doc["files"] if f["name"] == name)
    data[entry["offset"] : entry["offset"] + len(stored)] = stored  # may grow the data area
    entry.update(nbytes=len(stored), crc32=zlib.crc32(stored), **fields)
    body = json.dumps(doc, separators=(",", ":")).encode()
    data[:64] = pack_preamble(len(data), len(body), zlib.crc32(body))
    path.write_bytes(bytes(data) + body)


def test_bit_flip_is_caught(tmp_path: Path) -> None:
    path = write(tmp_path / "f.wst", [("a.json", b'{"k": 1}', False)])
    with Container(path) as c:
        offset = c.files[0].offset
    data = bytearray(path.read_bytes())
    data[offset] ^= 1
    path.write_bytes(bytes(data))
    with Container(path) as c:
        c.tensor("w")  # the chunks are intact
        for read in (c.verify, lambda: c.read_file("a.json"), lambda: c.read_json("a.json")):
            with pytest.raises(E.ChunkChecksumMismatch, match=r"file 'a.json'"):
                read()


def test_decode_is_bounded_by_raw_nbytes(tmp_path: Path) -> None:
    """A frame that would expand to 64 MiB, in a file declaring 10 bytes: refused after at
    most 10 bytes of output (no content size in the frame to trust or not)."""
    path = write(tmp_path / "f.wst", [("a.bin", b"\x01" * 10, False)])
    bomb = zstandard.ZstdCompressor(write_content_size=False).compress(bytes(64 << 20))
    _patch_file(path, "a.bin", bomb, raw_nbytes=10, codec=[{"id": "zstd"}])
    with Container(path) as c, pytest.raises(E.DecodedSizeMismatch, match=r"file 'a.bin'"):
        c.read_file("a.bin")


def test_missing_and_bad_json_files(tmp_path: Path) -> None:
    path = write(tmp_path / "f.wst", [("tokenizer_config.json", b'{"a": NaN}', False)])
    with Container(path) as c:
        with pytest.raises(E.MissingModelFile) as info:
            c.read_json("tokenizer.json")
        message = str(info.value)
        assert "'tokenizer.json'" in message and "tokenizer_config.json" in message
        assert "pack the checkpoint again" in message
        assert isinstance(info.value, E.InputError)
        with pytest.raises(E.BadModelFile, match=r"tokenizer_config.json: NaN"):
            c.read_json("tokenizer_config.json")


@pytest.mark.parametrize(
    "text,why",
    [
        (b'{"a": 1, "a": 2}', "appears twice"),
        (b'{"a": NaN}', "NaN"),
        (b'{"a": -Infinity}', "Infinity"),
        (b'{"a": 1e999}', "overflows"),
        (b"\xef\xbb\xbf{}", "not valid JSON"),
        (b"\xff{}", "not UTF-8"),
        (b"{} x", "not valid JSON"),
        (b'"\\ud800"', "unpaired surrogate"),
        (b"[" * 100000 + b"]" * 100000, "nested too deeply"),
    ],
)
def test_parse_json_is_strict(text: bytes, why: str) -> None:
    with pytest.raises(E.SourceError, match=f"^where: .*{why}"):
        parse_json(text, "where", E.SourceError)


def test_parse_json_accepts_json() -> None:
    assert parse_json(b' {"a": [1, 2.5, "\\ud83d\\ude00"]} ', "w", E.SourceError) == {
        "a": [1, 2.5, "\U0001f600"]
    }


# --- pack ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("codec", ["raw", "zstd"])
def test_pack_embeds_the_model_files(tmp_path: Path, codec: str) -> None:
    src = model_checkpoint(tmp_path / "ck")
    (src / "notes.md").write_text("not a model file")
    report = pack(src, tmp_path / "m.wst", codec=codec)
    names = [f.name for f in report.manifest.files]
    assert names == ["tokenizer.json", "tokenizer_config.json", "generation_config.json"]
    with Container(tmp_path / "m.wst") as c:
        c.verify()
        assert c.read_file("tokenizer.json") == TOKENIZER.encode()
        assert c.read_json("tokenizer_config.json") == TEMPLATE
        assert (c.files[0].codec != ()) is (codec == "zstd")  # 3000 tokens compress


def test_pack_single_file_takes_the_files_beside_it(tmp_path: Path) -> None:
    src = model_checkpoint(tmp_path / "ck")
    report = pack(src / "m.safetensors", tmp_path / "m.wst")
    assert len(report.manifest.files) == 3


def test_pack_without_files(tmp_path: Path) -> None:
    src = model_checkpoint(tmp_path / "ck")
    report = pack(src, tmp_path / "a.wst", files=False)
    assert report.manifest.files == ()
    assert "files" not in header(tmp_path / "a.wst")[0]
    bare = checkpoint(tmp_path / "bare")  # no model file at all: packs as before
    assert pack(bare, tmp_path / "b.wst").manifest.files == ()


def test_pack_follows_links_and_skips_non_files(tmp_path: Path) -> None:
    src = checkpoint(tmp_path / "ck")
    (tmp_path / "blob").write_text('{"eos_token_id": 2}')
    os.symlink(tmp_path / "blob", src / "generation_config.json")  # as a Hugging Face cache
    (src / "tokenizer.json").mkdir()
    assert [p.name for p in find_model_files(src)] == ["generation_config.json"]
    report = pack(src, tmp_path / "m.wst")
    assert [f.name for f in report.manifest.files] == ["generation_config.json"]


@pytest.mark.parametrize(
    "data,why",
    [(b'{"a": 1, "a": 2}', "appears twice"), (b"{'a': 1}", "not valid JSON"), (b"\xff", "UTF-8")],
)
def test_pack_refuses_a_bad_json_file_before_packing(tmp_path: Path, data: bytes, why: str) -> None:
    src = checkpoint(tmp_path / "ck", tokenizer__json=data)
    with pytest.raises(E.SourceError, match=f"tokenizer.json: .*{why}"):
        pack(src, tmp_path / "m.wst")
    assert not (tmp_path / "m.wst").exists()


def test_pack_refuses_a_too_large_file(tmp_path: Path) -> None:
    src = checkpoint(tmp_path / "ck")
    with open(src / "tokenizer.json", "wb") as f:
        f.truncate(spec.MAX_FILE_NBYTES + 1)  # sparse: no disk used
    with pytest.raises(E.SourceError, match=r"tokenizer.json: larger than 67108864 bytes"):
        pack(src, tmp_path / "m.wst")


def test_pack_refuses_to_overwrite_a_model_file(tmp_path: Path) -> None:
    src = model_checkpoint(tmp_path / "ck")
    with pytest.raises(E.OutputAliasesInput, match=r"tokenizer\.json"):
        pack(src, src / "tokenizer.json")
    assert (src / "tokenizer.json").read_text() == TOKENIZER


# --- unpack --------------------------------------------------------------------------------------


def test_unpack_writes_the_files_back(tmp_path: Path) -> None:
    src = model_checkpoint(tmp_path / "ck")
    pack(src, tmp_path / "m.wst", codec="zstd")
    out = tmp_path / "out"
    out.mkdir()
    report = unpack_report(tmp_path / "m.wst", out / "m.safetensors")
    assert [a.action for a in report.files] == ["write"] * 3
    for name in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        assert (out / name).read_bytes() == (src / name).read_bytes()
    again = unpack_report(tmp_path / "m.wst", out / "m.safetensors")
    assert [a.action for a in again.files] == ["same"] * 3
    (out / "tokenizer.json").write_text("{}")
    with pytest.raises(E.OutputExists, match=r"tokenizer.json: exists with other content"):
        unpack(tmp_path / "m.wst", out / "other.safetensors")
    assert not (out / "other.safetensors").exists()  # refused before anything was written
    forced = unpack_report(tmp_path / "m.wst", out / "m.safetensors", force=True)
    assert [a.action for a in forced.files] == ["replace", "same", "same"]
    assert (out / "tokenizer.json").read_text() == TOKENIZER
    assert unpack(tmp_path / "m.wst", tmp_path / "solo.safetensors", files=False) == 1
    assert not (tmp_path / "tokenizer.json").exists()


@pytest.mark.parametrize("kind", ["directory", "fifo", "dangling link"])
def test_unpack_never_replaces_a_non_file(tmp_path: Path, kind: str) -> None:
    src = model_checkpoint(tmp_path / "ck")
    pack(src, tmp_path / "m.wst")
    target = tmp_path / "out" / "tokenizer.json"
    target.parent.mkdir()
    if kind == "directory":
        target.mkdir()
    elif kind == "fifo":
        os.mkfifo(target)  # reading it would block: it must not be opened
    else:
        os.symlink(tmp_path / "nowhere", target)
    with pytest.raises(E.OutputExists, match="not a regular file"):
        unpack(tmp_path / "m.wst", target.parent / "m.safetensors", force=True)


def test_unpack_output_named_like_a_file(tmp_path: Path) -> None:
    src = model_checkpoint(tmp_path / "ck")
    pack(src, tmp_path / "m.wst")
    with pytest.raises(E.OutputExists, match="has the name of the embedded file"):
        unpack(tmp_path / "m.wst", tmp_path / "tokenizer.json")


# --- the command line ----------------------------------------------------------------------------


def test_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = model_checkpoint(tmp_path / "ck")
    wst = tmp_path / "m.wst"
    code, out, err = run(capsys, "pack", src, "-o", wst, "--codec", "zstd")
    assert (code, err) == (0, "")
    assert "embedded 3 model files: tokenizer.json, tokenizer_config.json" in out
    code, out, _ = run(capsys, "pack", src, "-o", tmp_path / "n.wst", "--no-files", "--json")
    assert json.loads(out)["files"] == []
    code, out, _ = run(capsys, "pack", src, "-o", wst, "--json")
    listed = json.loads(out)["files"]
    assert [f["name"] for f in listed] == list(MODEL_FILES[:2]) + ["generation_config.json"]
    assert listed[0]["raw_nbytes"] == len(TOKENIZER) == listed[0]["nbytes"]  # raw pack

    code, out, _ = run(capsys, "info", wst)
    assert code == 0 and "files     3 embedded:" in out
    assert re.search(r"^ +tokenizer\.json +\d+\.\d\d KiB \(", out, re.MULTILINE)
    code, out, _ = run(capsys, "info", wst, "--json")
    assert json.loads(out)["files"] == listed
    code, out, _ = run(capsys, "info", tmp_path / "n.wst")
    assert "files     0 embedded (none)" in out
    code, out, _ = run(capsys, "verify", wst)
    assert out.strip() == f"{wst}: OK (1 chunks, 3 embedded files verified)"

    dst = tmp_path / "out" / "m.safetensors"
    dst.parent.mkdir()
    code, out, _ = run(capsys, "unpack", wst, "-o", dst)
    assert code == 0 and f"wrote     {dst.parent / 'tokenizer.json'}" in out
    (dst.parent / "generation_config.json").write_text("{}")
    code, out, err = run(capsys, "unpack", wst, "-o", dst)
    assert code == 1 and err.startswith("wstream unpack: error: OutputExists: ")
    assert len(err.splitlines()) == 1 and "--force" in err
    code, out, _ = run(capsys, "unpack", wst, "-o", dst, "--force")
    assert code == 0 and f"replaced  {dst.parent / 'generation_config.json'}" in out
    assert "unchanged" in out
    code, out, _ = run(capsys, "unpack", wst, "-o", tmp_path / "x.safetensors", "--no-files")
    assert code == 0 and "wrote" not in out and not (tmp_path / "tokenizer.json").exists()
