"""The ``wstream`` command: pack, unpack, info, verify.

Through ``wstream.cli.main(argv)`` for the details (exit codes, one-line errors, ``--json``
fields), and once through a real subprocess of the installed module.
"""

from __future__ import annotations

import argparse
import importlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import safetensors
from wst_testing import assert_same_tensors, write_checkpoint

from wstream import cli
from wstream.cli import main, parse_size
from wstream.container.reader import Container
from wstream.format import spec
from wstream.format.spec import DType


def run(capsys: pytest.CaptureFixture[str], *argv: str | Path) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def read_safetensors(path: Path) -> dict[str, np.ndarray]:
    return {
        name: np.frombuffer(bytes(t["data"]), DType(t["dtype"]).numpy).reshape(t["shape"])
        for name, t in safetensors.deserialize(path.read_bytes())
    }


@pytest.fixture
def packed(
    tiny_checkpoint: tuple[Path, dict], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> tuple[Path, dict]:
    src, tensors = tiny_checkpoint
    out = tmp_path / "m.wst"
    code, _, err = run(capsys, "pack", src, "-o", out, "--codec", "zstd", "--max-chunk", "64K")
    assert code == 0, err
    return out, tensors


def one_error_line(err: str, command: str, error: str) -> str:
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"wstream {command}: error: {error}: "), lines[0]
    assert "Traceback" not in err
    return lines[0]


# --- success paths -------------------------------------------------------------------------------


def test_pack_prints_a_summary(
    tiny_checkpoint: tuple[Path, dict], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src, tensors = tiny_checkpoint
    code, out, err = run(capsys, "pack", src, "-o", tmp_path / "m.wst")
    assert code == 0 and err == ""
    assert out.startswith(f"packed {len(tensors)} tensors into ") and str(tmp_path / "m.wst") in out
    code, out, _ = run(
        capsys,
        "pack",
        src,
        "-o",
        tmp_path / "n.wst",
        "--json",
        "--codec",
        "zstd",
        "--level",
        "5",
        "--threads",
        "2",
    )
    assert code == 0
    summary = json.loads(out)
    assert set(summary) >= {
        "output",
        "tensors",
        "chunks",
        "bytes_in",
        "bytes_out",
        "ratio",
        "seconds",
    }
    assert summary.get("lossy", False) is False
    assert summary["tensors"] == len(tensors)
    assert summary["bytes_in"] == sum(a.nbytes for a in tensors.values())
    assert summary["bytes_out"] == (tmp_path / "n.wst").stat().st_size
    with Container(tmp_path / "n.wst") as c:
        assert summary["chunks"] == len(c.manifest.chunks)
        assert all(ch.codec[0].level == 5 for ch in c.manifest.chunks)


def test_pack_sharded_directory(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    tensors = {f"layers.{i}.w": np.full((3, 3), i, np.float32) for i in range(5)}
    src = write_checkpoint(tmp_path / "ck", tensors, shards=2, config={"model_type": "toy"})
    code, _, err = run(capsys, "pack", src, "-o", tmp_path / "m.wst")
    assert code == 0, err
    with Container(tmp_path / "m.wst") as c:
        assert_same_tensors(dict(c.tensors()), tensors)
        assert c.manifest.config == {"model_type": "toy"}


def test_unpack_round_trip(
    packed: tuple[Path, dict], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    wst, tensors = packed
    code, out, err = run(capsys, "unpack", wst, "-o", tmp_path / "back.safetensors")
    assert code == 0 and err == ""
    assert out.strip() == f"unpacked {len(tensors)} tensors -> {tmp_path / 'back.safetensors'}"
    assert_same_tensors(read_safetensors(tmp_path / "back.safetensors"), tensors)


def test_info_json_fields(packed: tuple[Path, dict], capsys: pytest.CaptureFixture[str]) -> None:
    wst, tensors = packed
    code, out, err = run(capsys, "info", wst, "--json")
    assert code == 0 and err == ""
    d = json.loads(out)
    assert set(d) >= {
        "path",
        "file_size",
        "version",
        "writer",
        "lossy",
        "tensors",
        "raw_nbytes",
        "stored_nbytes",
        "largest_chunk_raw_nbytes",
        "groups",
        "config",
        "metadata",
        "chunks",
    }
    with Container(wst) as c:
        m = c.manifest
        assert d["path"] == str(wst)
        assert d["file_size"] == wst.stat().st_size
        assert d["version"] == spec.VERSION
        assert d["writer"].startswith("wstream ")
        assert d["lossy"] is False
        assert d["tensors"] == len(tensors)
        assert d["raw_nbytes"] == sum(ch.raw_nbytes for ch in m.chunks)
        assert d["stored_nbytes"] == sum(ch.nbytes for ch in m.chunks)
        assert d["largest_chunk_raw_nbytes"] == max(ch.raw_nbytes for ch in m.chunks)
        assert d["groups"] == m.groups()
        assert d["config"] == {"model_type": "toy", "hidden_size": 8}
        assert d["metadata"] == {"format": "np"}
        assert d["chunks"] == [ch.to_json() for ch in m.chunks]
    for ch in d["chunks"]:
        assert set(ch) == {
            "name",
            "group",
            "offset",
            "nbytes",
            "raw_nbytes",
            "crc32",
            "codec",
            "tensors",
        }
        assert [(s["id"], s.get("level")) for s in ch["codec"]] == [("zstd", None)]  # default level


def test_info_text(packed: tuple[Path, dict], capsys: pytest.CaptureFixture[str]) -> None:
    wst, tensors = packed
    code, out, err = run(capsys, "info", wst)
    assert code == 0 and err == ""
    assert f"tensors   {len(tensors)}," in out
    assert "lossless" in out and "zstd" in out and "model.layers.1" in out


def test_verify_ok(packed: tuple[Path, dict], capsys: pytest.CaptureFixture[str]) -> None:
    wst, _ = packed
    code, out, err = run(capsys, "verify", wst)
    with Container(wst) as c:
        n = len(c.manifest.chunks)
    assert (code, err) == (0, "")
    assert out.strip() == f"{wst}: OK ({n} chunks verified)"


def test_version_and_usage(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out.strip().startswith("wstream ")


# --- failures: exit 1 with one line; usage errors exit 2 ----------------------------------------


def _corrupt_chunk(wst: Path, index: int) -> str:
    """Flip one stored byte of chunk ``index``; return its name."""
    with Container(wst) as c:
        ch = c.manifest.chunks[index]
    data = bytearray(wst.read_bytes())
    data[ch.offset + ch.nbytes // 2] ^= 0x40
    wst.write_bytes(bytes(data))
    return ch.name


def test_verify_names_the_corrupt_chunk_and_the_reason(
    packed: tuple[Path, dict], capsys: pytest.CaptureFixture[str]
) -> None:
    wst, _ = packed
    name = _corrupt_chunk(wst, 1)
    code, out, err = run(capsys, "verify", wst)
    assert code == 1 and out == ""
    line = one_error_line(err, "verify", "ChunkChecksumMismatch")
    assert f"chunk {name!r}" in line and "crc32" in line


def test_verify_names_a_zstd_chunk_that_decodes_wrong(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Valid CRC over a zstd frame that decodes to the wrong size: only decoding finds it.
    import zstandard
    from wst_testing import build_file, chunk_doc, manifest_doc

    stored = zstandard.ZstdCompressor().compress(bytes(100))
    doc = manifest_doc(
        [
            chunk_doc(
                "llm.layer.7",
                4096,
                stored,
                [{"name": "w", "dtype": "U8", "shape": [64], "offset": 0}],
                raw_nbytes=64,
                codec=[{"id": "zstd", "level": 3}],
            )
        ]
    )
    (tmp_path / "x.wst").write_bytes(build_file([(4096, stored)], doc))
    code, _, err = run(capsys, "verify", tmp_path / "x.wst")
    assert code == 1
    line = one_error_line(err, "verify", "DecodedSizeMismatch")
    assert "chunk 'llm.layer.7'" in line and "100" in line and "64" in line


@pytest.mark.parametrize(
    "damage, error",
    [
        (lambda b: b[:-1], "TruncatedFile"),
        (lambda b: b"\0" + b[1:], "BadMagic"),
        (lambda b: b + b"\n", "TrailingBytes"),
        (lambda b: b[:-2] + bytes([b[-2] ^ 1]) + b[-1:], "ManifestChecksumMismatch"),
    ],
    ids=["truncated", "magic", "trailing", "manifest-crc"],
)
@pytest.mark.parametrize("command", ["verify", "info", "unpack"])
def test_damaged_file_is_one_line_and_exit_1(
    packed: tuple[Path, dict],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    damage,
    error: str,
    command: str,
) -> None:
    wst, _ = packed
    wst.write_bytes(damage(wst.read_bytes()))
    extra = ["-o", str(tmp_path / "out.safetensors")] if command == "unpack" else []
    code, out, err = run(capsys, command, wst, *extra)
    assert code == 1 and out == ""
    one_error_line(err, command, error)
    assert not (tmp_path / "out.safetensors").exists()


def test_unpack_of_a_corrupt_chunk_leaves_no_output(
    packed: tuple[Path, dict], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    wst, _ = packed
    _corrupt_chunk(wst, 0)
    out_dir = tmp_path / "o"
    out_dir.mkdir()
    code, _, err = run(capsys, "unpack", wst, "-o", out_dir / "x.safetensors")
    assert code == 1
    one_error_line(err, "unpack", "ChunkChecksumMismatch")
    assert list(out_dir.iterdir()) == []


def test_unpack_of_a_lossy_container_needs_dequantize(
    tiny_checkpoint: tuple[Path, dict], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src, tensors = tiny_checkpoint
    code, _, err = run(capsys, "pack", src, "-o", tmp_path / "q.wst", "--quantize", "int8")
    assert code == 0, err
    code, out, _ = run(capsys, "info", tmp_path / "q.wst")
    assert code == 0 and "LOSSY" in out
    code, _, err = run(capsys, "unpack", tmp_path / "q.wst", "-o", tmp_path / "q.safetensors")
    assert code == 1
    one_error_line(err, "unpack", "LossyUnpack")
    assert not (tmp_path / "q.safetensors").exists()
    code, _, err = run(
        capsys, "unpack", tmp_path / "q.wst", "-o", tmp_path / "q.safetensors", "--dequantize"
    )
    assert code == 0, err
    back = read_safetensors(tmp_path / "q.safetensors")
    assert set(back) == set(tensors)
    for name, a in tensors.items():  # dtype and shape kept; values approximately
        assert (back[name].dtype, back[name].shape) == (a.dtype, a.shape)
        if name != "layers.0.w":  # the only 2-d float matrix, so the only tensor quantized
            assert back[name].tobytes() == a.tobytes(), name
            continue
        # INT8, one scale per row (8 columns < the group of 128): each value within half its
        # row's scale, plus half an f16 ulp for rounding the dequantized value back to f16.
        w, got = a.astype(np.float64), back[name].astype(np.float64)
        scale = np.abs(w).max(axis=1, keepdims=True) / 127
        assert np.all(np.abs(got - w) <= scale / 2 + np.abs(w) * 2.0**-11 + 1e-12)
        assert not np.array_equal(got, w)  # it really went through INT8


def test_uint4_pack_info_verify_unpack(
    tiny_checkpoint: tuple[Path, dict], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``pack --quantize uint4 --quant-group 4``: info names the layout, verify passes, unpack
    --dequantize writes values within half a step of the source; an odd group is refused."""
    src, tensors = tiny_checkpoint
    wst = tmp_path / "q4.wst"
    code, _, err = run(
        capsys, "pack", src, "-o", tmp_path / "odd.wst", "--quantize", "uint4", "--quant-group", "3"
    )
    assert code == 1
    one_error_line(err, "pack", "InputError")
    code, _, err = run(capsys, "pack", src, "-o", wst, "--quantize", "uint4", "--quant-group", "4")
    assert code == 0, err
    code, out, _ = run(capsys, "info", wst)
    assert code == 0 and "LOSSY" in out and "uint4 g4" in out
    code, out, _ = run(capsys, "verify", wst)
    assert code == 0 and "OK" in out
    out_path = tmp_path / "q4.safetensors"
    code, _, err = run(capsys, "unpack", wst, "-o", out_path, "--dequantize")
    assert code == 0, err
    back = read_safetensors(out_path)
    a = tensors["layers.0.w"]  # the only 2-d float matrix
    w, got = a.astype(np.float64), back["layers.0.w"].astype(np.float64)
    g = w.reshape(w.shape[0], -1, 4)
    step = (np.maximum(g.max(axis=2), 0) - np.minimum(g.min(axis=2), 0)) / 15  # [rows, groups]
    bound = np.repeat(step, 4, axis=1) * (0.5 + 1e-6) + np.abs(w) * 2.0**-11 + 1e-12
    assert np.all(np.abs(got - w) <= bound)
    assert not np.array_equal(got, w)  # it really went through uint4


def test_missing_input_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "verify", tmp_path / "nope.wst")
    assert code == 1
    line = one_error_line(err, "verify", "FileNotFoundError")
    assert "nope.wst" in line


def test_pack_source_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "bad.safetensors").write_bytes(b"\x05\0\0\0\0\0\0\0{nope")
    code, _, err = run(capsys, "pack", tmp_path / "bad.safetensors", "-o", tmp_path / "m.wst")
    assert code == 1
    one_error_line(err, "pack", "SourceError")
    assert not (tmp_path / "m.wst").exists()


def test_pack_missing_shard(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = write_checkpoint(tmp_path / "ck", {"a.0.w": np.ones(2), "a.1.w": np.ones(2)}, shards=2)
    (src / "model-00001-of-00002.safetensors").unlink()
    code, _, err = run(capsys, "pack", src, "-o", tmp_path / "m.wst")
    assert code == 1
    assert "is missing" in one_error_line(err, "pack", "SourceError")


def test_pack_input_error(
    tiny_checkpoint: tuple[Path, dict], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src, _ = tiny_checkpoint
    # Out-of-range flags are usage errors now, refused by the parser (exit 2) with the range.
    for flags, want in (
        (["--max-chunk", "1K"], "outside [65536, 1073741824]"),
        (["--level", "99", "--codec", "zstd"], "[-131072, 22]"),
    ):
        with pytest.raises(SystemExit) as exit_:
            main(["pack", str(src), "-o", str(tmp_path / "m.wst"), *flags])
        err = capsys.readouterr().err
        assert exit_.value.code == 2 and flags[0] in err and want in err, err
    assert not (tmp_path / "m.wst").exists()


def test_pack_into_a_missing_directory(
    tiny_checkpoint: tuple[Path, dict], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src, _ = tiny_checkpoint
    code, _, err = run(capsys, "pack", src, "-o", tmp_path / "no" / "such" / "m.wst")
    assert code == 1
    assert "does not exist" in one_error_line(err, "pack", "InputError")


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["frobnicate"],
        ["pack"],
        ["pack", "x"],
        ["pack", "x", "-o", "y", "--codec", "lz4"],
        ["pack", "x", "-o", "y", "--max-chunk", "lots"],
        ["pack", "x", "-o", "y", "--level", "three"],
        ["unpack", "x"],
        ["info"],
        ["verify"],
        ["verify", "a", "b"],
    ],
    ids=lambda a: " ".join(a) or "nothing",
)
def test_usage_errors_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    assert "usage: wstream" in capsys.readouterr().err


def test_keyboard_interrupt_exits_130(
    tiny_checkpoint: tuple[Path, dict],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    src, _ = tiny_checkpoint
    pack_module = importlib.import_module("wstream.pack")  # wstream.pack is the function

    def interrupted(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise KeyboardInterrupt

    monkeypatch.setattr(pack_module, "pack", interrupted)
    code, _, err = run(capsys, "pack", src, "-o", tmp_path / "m.wst")
    assert code == 130
    assert err.strip() == "wstream pack: interrupted"
    assert not (tmp_path / "m.wst").exists()


@pytest.mark.parametrize(
    "text, value",
    [
        ("512", 512),
        ("64K", 64 << 10),
        ("64k", 64 << 10),
        ("32M", 32 << 20),
        ("1G", 1 << 30),
        ("1.5GiB", 3 << 29),
        ("2 MB", 2 << 20),
        ("1T", 1 << 40),
        (" 7 ", 7),
    ],
)
def test_parse_size(text: str, value: int) -> None:
    assert parse_size(text) == value


@pytest.mark.parametrize("text", ["", "K", "-1", "1X", "1e3", "one", "1.2.3M"])
def test_parse_size_rejects(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        parse_size(text)


def test_human() -> None:
    assert cli.human(5) == "5 B"
    assert cli.human(1536) == "1.50 KiB"
    assert cli.human(3 << 30) == "3.00 GiB"


# --- one real process ----------------------------------------------------------------------------


def test_subprocess_smoke(tiny_checkpoint: tuple[Path, dict], tmp_path: Path) -> None:
    src, tensors = tiny_checkpoint
    wst, back = tmp_path / "m.wst", tmp_path / "back.safetensors"

    def wstream(*argv: str | Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "wstream.cli", *map(str, argv)],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
            stdin=subprocess.DEVNULL,
        )

    p = wstream("pack", src, "-o", wst, "--codec", "zstd")
    assert p.returncode == 0, p.stderr
    p = wstream("info", wst, "--json")
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["tensors"] == len(tensors)
    p = wstream("verify", wst)
    assert p.returncode == 0 and "OK" in p.stdout, p.stderr
    p = wstream("unpack", wst, "-o", back)
    assert p.returncode == 0, p.stderr
    assert_same_tensors(read_safetensors(back), tensors)

    data = bytearray(wst.read_bytes())
    data[spec.DATA_START + 3] ^= 0xFF  # inside the first chunk
    wst.write_bytes(bytes(data))
    p = wstream("verify", wst)
    assert p.returncode == 1 and p.stdout == ""
    one_error_line(p.stderr, "verify", "ChunkChecksumMismatch")
