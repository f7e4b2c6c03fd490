"""The committed vectors in formats/vectors: every valid one reads to its expected content, every
invalid one raises its named FormatError. Vectors are only read here; tools/make_vectors.py
(re)generates them deliberately.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
import safetensors

from wstream import errors as E
from wstream.container.reader import Container
from wstream.errors import FoldedUnpack, LossyUnpack
from wstream.format.spec import DType
from wstream.unpack import unpack

ROOT = Path(__file__).resolve().parent.parent / "formats" / "vectors"
VALID = sorted(p.stem for p in (ROOT / "valid").glob("*.wst"))
INVALID = sorted(p.stem for p in (ROOT / "invalid").glob("*.wst"))

REQUIRED_VALID = {
    "raw_basic",
    "zstd_basic",
    "empty_tensor",
    "scalar_0d",
    "bf16",
    "row_blocked",
    "unicode_names",
    "zero_chunks",
    "config_metadata",
}


def load(kind: str, name: str) -> tuple[Path, dict[str, Any]]:
    wst = ROOT / kind / f"{name}.wst"
    exp = json.loads(wst.with_suffix(".json").read_text(encoding="utf-8"))
    assert hashlib.sha256(wst.read_bytes()).hexdigest() == exp["sha256"], f"{wst} was modified"
    return wst, exp


def as_expected(name: str, array: Any) -> dict[str, Any]:
    return {
        "dtype": str(DType.from_numpy(array.dtype)),
        "shape": list(array.shape),
        "data_hex": array.tobytes().hex(),
    }


def test_the_vector_set_is_complete() -> None:
    assert REQUIRED_VALID <= set(VALID)
    for kind, names in (("valid", VALID), ("invalid", INVALID)):
        stems = {p.stem for p in (ROOT / kind).iterdir()}
        assert stems == set(names), f"{kind}: every .wst needs a .json and vice versa"
        assert {p.suffix for p in (ROOT / kind).iterdir()} == {".wst", ".json"}
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    for name in VALID + INVALID:
        assert f"`{name}`" in readme, f"README.md does not describe {name}"


def test_every_format_error_has_an_invalid_vector() -> None:
    named = {json.loads((ROOT / "invalid" / f"{n}.json").read_text())["error"] for n in INVALID}
    every = {
        c.__name__
        for c in vars(E).values()
        if isinstance(c, type) and issubclass(c, E.FormatError) and c is not E.FormatError
    }
    assert every <= named, sorted(every - named)
    assert named <= every, sorted(named - every)  # no vector names an error that does not exist


@pytest.mark.parametrize("name", VALID)
def test_valid_vector(name: str, tmp_path: Path) -> None:
    wst, exp = load("valid", name)
    with Container(wst) as c:
        m = c.manifest
        assert m.writer == exp["writer"]
        assert m.lossy == exp["lossy"]
        assert m.config == exp["config"]
        assert dict(m.metadata) == exp["metadata"]
        assert m.groups() == exp["groups"]
        assert [
            {"name": ch.name, "group": ch.group, "codec": "+".join(s.id for s in ch.codec) or "raw"}
            for ch in m.chunks
        ] == exp["chunks"]
        assert c.keys() == list(exp["tensors"])  # file order
        c.verify()
        for tname, want in exp["tensors"].items():
            assert as_expected(tname, c.tensor(tname)) == want, tname
        streamed = dict(c.tensors())
        assert {k: as_expected(k, v) for k, v in streamed.items()} == exp["tensors"]
        files = [
            {"name": f.name, "nbytes": f.nbytes, "raw_nbytes": f.raw_nbytes,
             "codec": "+".join(s.id for s in f.codec) or "raw",
             "data_hex": c.read_file(f.name).hex()}
            for f in c.files
        ]  # fmt: skip
        assert files == exp.get("files", [])
        assert list(m.folds) == exp.get("folds", [])

    out = tmp_path / "out.safetensors"
    if exp["lossy"]:
        with pytest.raises(LossyUnpack):
            unpack(wst, out)
        return
    if "folds" in exp:  # the tensors the folds replaced are gone (SPEC.md section 14.3)
        with pytest.raises(FoldedUnpack, match="folded"):
            unpack(wst, out)
    # Unpacked, the safetensors package reads the same bytes back.
    unpack(wst, out, allow_folded=True)
    for f in exp.get("files", []):  # written back beside the safetensors file
        assert (tmp_path / f["name"]).read_bytes().hex() == f["data_hex"]
    back = {
        n: {"dtype": t["dtype"], "shape": list(t["shape"]), "data_hex": bytes(t["data"]).hex()}
        for n, t in safetensors.deserialize(out.read_bytes())
    }
    assert back == exp["tensors"]


@pytest.mark.parametrize("name", INVALID)
def test_invalid_vector(name: str) -> None:
    wst, exp = load("invalid", name)
    error = getattr(E, exp["error"])
    assert issubclass(error, E.FormatError)
    if exp["stage"] == "open":
        with pytest.raises(error) as info:
            Container(wst)
        assert type(info.value) is error, info.value
        return
    assert exp["stage"] == "read"
    if "file" in exp:  # an embedded file's data: the metadata and every chunk are valid
        with Container(wst) as c:
            dict(c.tensors())
            for read in (c.verify, lambda: c.read_file(exp["file"])):
                with pytest.raises(error) as info:
                    read()
                assert type(info.value) is error, info.value
                assert f"file {exp['file']!r}" in str(info.value)
        return
    with Container(wst) as c:
        for read in (c.verify, lambda: dict(c.tensors()), lambda: c.decode(c.chunk(exp["chunk"]))):
            with pytest.raises(error) as info:
                read()
            assert type(info.value) is error, info.value
            assert f"chunk {exp['chunk']!r}" in str(info.value)
