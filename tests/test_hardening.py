"""Issue 14: each defect the red-team pass found, as a test that failed before its fix.

Outputs that alias an input or are not regular files, temp files left by a killed pack, a
checkpoint rewritten while it is packed, dimensions no array library can hold, FIFOs that
blocked every command, unbounded command-line values, reads after close(), terminal escapes in
``info``, an unbounded default stream, and the spec's check order.
"""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from wst_testing import build_file, chunk_doc, manifest_bytes, manifest_doc, write_checkpoint

from wstream import errors as E
from wstream.cli import main
from wstream.container.atomic import AtomicFile, remove_stale_temps
from wstream.container.checkpoint import open_checkpoint
from wstream.container.reader import Container
from wstream.container.writer import ContainerWriter
from wstream.format import spec
from wstream.format.manifest import TensorEntry, parse_manifest
from wstream.format.spec import DType
from wstream.pack import pack
from wstream.stream import loader as loader_module
from wstream.stream.loader import StreamingLoader, open_container
from wstream.unpack import unpack

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def sharded(tmp_path: Path) -> tuple[Path, dict[str, np.ndarray]]:
    rng = np.random.default_rng(1)
    tensors = {f"layers.{i}.w": rng.standard_normal((64, 32)).astype(np.float32) for i in range(4)}
    src = write_checkpoint(tmp_path / "ckpt", tensors, shards=2, config={"model_type": "toy"})
    return src, tensors


def snapshot_dir(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir()) if p.is_file()}


# --- outputs: aliasing an input, or not a regular file --------------------------------------------


def test_unpack_onto_its_own_input_is_refused(
    tiny_checkpoint: tuple[Path, dict], tmp_path: Path
) -> None:
    src, _ = tiny_checkpoint
    wst = tmp_path / "m.wst"
    pack(src, wst)
    before = wst.read_bytes()
    os.link(wst, tmp_path / "hard.wst")
    (tmp_path / "soft.wst").symlink_to(wst)
    for out in (wst, tmp_path / "hard.wst", tmp_path / "soft.wst", tmp_path / "." / "m.wst"):
        with pytest.raises(E.OutputAliasesInput, match="is the input"):
            unpack(wst, out)
    assert wst.read_bytes() == before
    assert main(["unpack", str(wst), "-o", str(wst)]) == 1
    assert wst.read_bytes() == before
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_pack_onto_any_file_of_its_checkpoint_is_refused(
    sharded: tuple[Path, dict[str, np.ndarray]],
) -> None:
    src, _ = sharded
    before = snapshot_dir(src)
    targets = [src / "config.json", src / "model.safetensors.index.json"]
    targets += sorted(src.glob("*.safetensors"))
    for out in targets:
        with pytest.raises(E.OutputAliasesInput):
            pack(src, out)
        assert main(["pack", str(src), "-o", str(out)]) == 1
    assert snapshot_dir(src) == before
    assert sorted(os.listdir(src)) == sorted(before)  # no temporary file either


def test_outputs_that_are_not_regular_files_are_refused(
    tiny_checkpoint: tuple[Path, dict], tmp_path: Path
) -> None:
    src, _ = tiny_checkpoint
    wst = tmp_path / "m.wst"
    pack(src, wst)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    directory = tmp_path / "dir"
    directory.mkdir()
    outputs: list[Path] = [fifo, directory]
    if os.geteuid() == 0:  # a device node of our own (the red team destroyed /dev/null)
        node = tmp_path / "null"
        os.mknod(node, stat.S_IFCHR | 0o666, os.makedev(1, 3))
        outputs.append(node)
    for out in outputs:
        mode = os.lstat(out).st_mode
        with pytest.raises(E.NotRegularFile):
            pack(src, out)
        with pytest.raises(E.NotRegularFile):
            unpack(wst, out)
        assert os.lstat(out).st_mode == mode  # still the FIFO, directory or device
    assert main(["pack", str(src), "-o", "/dev/null"]) == 1
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)


# --- temporary files a later run recognises -------------------------------------------------------

_KILLED_PACK = """
import os, sys, time
from wstream.pack import pack

def progress(n):
    print("writing", flush=True)
    time.sleep(60)  # killed here, mid-write

pack(sys.argv[1], sys.argv[2], max_chunk=64 * 1024, progress=progress)
"""


def test_a_killed_pack_leaves_a_temp_file_the_next_pack_removes(
    sharded: tuple[Path, dict[str, np.ndarray]], tmp_path: Path
) -> None:
    src, tensors = sharded
    out = tmp_path / "out" / "m.wst"
    out.parent.mkdir()
    child = subprocess.Popen(
        [sys.executable, "-c", _KILLED_PACK, str(src), str(out)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None and child.stdout.readline() == "writing\n"
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(30)
    left = os.listdir(out.parent)
    assert len(left) == 1 and left[0].startswith(".m.wst.wstream-") and left[0].endswith(".tmp")
    assert f"-{child.pid}-" in left[0]  # the writer's pid, for a person reading the directory
    pack(src, out)
    assert os.listdir(out.parent) == ["m.wst"]
    with Container(out) as c:
        for name, want in tensors.items():
            assert c.tensor(name).tobytes() == want.tobytes()


def test_a_live_writers_temp_file_is_left_alone(tmp_path: Path) -> None:
    target = tmp_path / "m.wst"
    with AtomicFile(target) as live:
        live.pwrite_all(b"partial", 0)
        assert remove_stale_temps(target) == []
        with AtomicFile(target) as other:  # a second writer to the same target
            assert live.tmp.exists() and other.tmp != live.tmp
            other.commit()
        assert live.tmp.exists()
    assert not live.tmp.exists()  # discarded on leaving the block
    stale = tmp_path / ".m.wst.wstream-999999999-00000000.tmp"  # a pid that cannot be alive
    stale.write_bytes(b"x")
    other_target = tmp_path / ".n.wst.wstream-999999999-00000000.tmp"
    other_target.write_bytes(b"x")
    assert remove_stale_temps(target) == [stale]
    assert other_target.exists()  # another target's temp file is not this write's business


# --- the checkpoint changing while it is packed ---------------------------------------------------


@pytest.mark.parametrize("change", ["overwrite", "truncate", "replace", "config"])
def test_a_checkpoint_changed_while_packing_is_a_named_error(
    sharded: tuple[Path, dict[str, np.ndarray]], tmp_path: Path, change: str
) -> None:
    src, _ = sharded
    shard = sorted(src.glob("*.safetensors"))[0]
    out = tmp_path / "m.wst"
    done: list[bool] = []

    def progress(n: int) -> None:
        if done:
            return
        done.append(True)
        if change == "overwrite":  # same size, same place: only the times tell
            with open(shard, "r+b") as f:
                f.seek(-8, os.SEEK_END)
                f.write(b"\x00" * 8)
        elif change == "truncate":
            os.truncate(shard, shard.stat().st_size - 8)
        elif change == "replace":
            copy = shard.with_suffix(".new")
            copy.write_bytes(shard.read_bytes())
            os.replace(copy, shard)
        else:
            (src / "config.json").write_text('{"model_type": "other"}')

    with pytest.raises((E.SourceModified, E.SourceError)) as info:
        pack(src, out, max_chunk=64 * 1024, progress=progress)
    if change != "truncate":  # a truncation may also be caught by the read itself
        assert isinstance(info.value, E.SourceModified)
    assert not out.exists() and os.listdir(tmp_path) == ["ckpt"]


def test_mtime_reset_does_not_hide_a_write(sharded: tuple[Path, dict[str, np.ndarray]]) -> None:
    src, _ = sharded
    shard = sorted(src.glob("*.safetensors"))[0]
    ckpt = open_checkpoint(src)
    st = shard.stat()
    with open(shard, "r+b") as f:
        f.seek(-4, os.SEEK_END)
        f.write(b"\x01\x02\x03\x04")
    os.utime(shard, ns=(st.st_atime_ns, st.st_mtime_ns))  # the mtime put back; ctime moves
    from wstream.container.snapshot import check_unchanged

    with pytest.raises(E.SourceModified, match="ctime"):
        check_unchanged(ckpt.stamps)


# --- a bound on every dimension -------------------------------------------------------------------


def _safetensors_with_shape(path: Path, shape: list[int]) -> Path:
    header = json.dumps({"t": {"dtype": "F32", "shape": shape, "data_offsets": [0, 0]}}).encode()
    header += b" " * (-len(header) % 8)
    path.write_bytes(len(header).to_bytes(8, "little") + header)
    return path


def test_empty_tensors_with_huge_dimensions_are_refused(tmp_path: Path) -> None:
    huge = [0, 2**40, 2**40]
    with pytest.raises(E.SourceError, match="bound on dimensions"):
        open_checkpoint(_safetensors_with_shape(tmp_path / "huge.safetensors", huge))
    assert main(["pack", str(tmp_path / "huge.safetensors"), "-o", str(tmp_path / "m.wst")]) == 1

    def doc(shape: list[int]) -> bytes:
        piece = {"name": "t", "dtype": "F32", "shape": shape, "offset": 0}
        return manifest_bytes(manifest_doc([chunk_doc("c", 4096, b"", [piece])]))

    with pytest.raises(E.LimitExceeded, match=r"shape: \[0, 1099511627776, 1099511627776\]"):
        parse_manifest(doc(huge), data_end=4096)
    # At the bound, an empty tensor is still fine, and numpy can hold it.
    m = parse_manifest(doc([0, spec.MAX_TENSOR_NBYTES // 4]), data_end=4096)
    assert np.empty(m.tensors["t"].shape, np.float32).size == 0
    # The writer checks its own manifest with the same parser: it cannot publish one either.
    with pytest.raises(E.LimitExceeded), ContainerWriter(tmp_path / "w.wst") as w:
        w.add_chunk(
            "c", "c", [TensorEntry("t", DType.F32, (0, 2**40, 2**40), 0)], b"", raw_nbytes=0
        )
        w.close()
    assert os.listdir(tmp_path) == ["huge.safetensors"]


# --- FIFOs and other non-regular inputs never block -----------------------------------------------


def no_block(fn: Callable[[], Any], fifo: Path, seconds: float = 10.0) -> BaseException | None:
    """Run ``fn``; if it is still running after ``seconds`` (blocked opening the FIFO), open
    the FIFO's other end to free it, and fail. Returns what ``fn`` raised."""
    result: list[BaseException | None] = []

    def run() -> None:
        try:
            fn()
            result.append(None)
        except BaseException as exc:
            result.append(exc)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(seconds)
    if t.is_alive():
        for _ in range(2):  # a reader and a writer end, whichever it waits for
            try:
                fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
                os.close(fd)
            except OSError:
                os.close(os.open(fifo, os.O_RDONLY | os.O_NONBLOCK))
        t.join(5)
        pytest.fail(f"{fn} blocked on the FIFO {fifo}")
    return result[0]


def test_commands_on_a_fifo_fail_at_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fifo = tmp_path / "m.wst"
    os.mkfifo(fifo)
    for argv in (
        ["info", str(fifo)],
        ["verify", str(fifo)],
        ["unpack", str(fifo), "-o", str(tmp_path / "o.safetensors")],
        ["run", str(fifo), "--input-ids", "1,2"],
        ["pack", str(fifo), "-o", str(tmp_path / "o.wst")],
    ):
        codes: list[int] = []
        assert no_block(lambda a=argv, c=codes: c.append(main(a)), fifo) is None
        err = capsys.readouterr().err
        assert codes == [1] and "NotRegularFile" in err and "a FIFO" in err, (argv, err)
    assert sorted(os.listdir(tmp_path)) == ["m.wst"]


@pytest.mark.parametrize("which", ["config.json", "model.safetensors.index.json", "shard"])
@pytest.mark.parametrize("kind", ["fifo", "directory"])
def test_checkpoint_files_that_are_not_regular_are_named(
    sharded: tuple[Path, dict[str, np.ndarray]], which: str, kind: str
) -> None:
    src, _ = sharded
    path = sorted(src.glob("*.safetensors"))[0] if which == "shard" else src / which
    path.unlink()
    os.mkfifo(path) if kind == "fifo" else path.mkdir()
    error = no_block(lambda: open_checkpoint(src), path)
    assert isinstance(error, E.NotRegularFile), error
    assert path.name in str(error) and ("FIFO" in str(error) or "directory" in str(error))


# --- command-line values with bounds --------------------------------------------------------------


@pytest.mark.parametrize(
    "flags",
    [
        ["--budget", "9" * 400],
        ["--budget", "2E"],
        ["--prefetch", "-1"],
        ["--prefetch", "9" * 30],
    ],
)
def test_run_flags_out_of_range_are_usage_errors(
    tiny_checkpoint: tuple[Path, dict],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    flags: list[str],
) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["run", str(tmp_path / "m.wst"), "--input-ids", "1", *flags])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "Traceback" not in err and flags[0] in err, err


def test_pack_max_chunk_and_threads_bounded(
    tiny_checkpoint: tuple[Path, dict], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src, _ = tiny_checkpoint
    for flags in (["--max-chunk", "9" * 400], ["--max-chunk", "1e308"], ["--threads", "0"]):
        with pytest.raises(SystemExit) as exit_:
            main(["pack", str(src), "-o", str(tmp_path / "m.wst"), *flags])
        assert exit_.value.code == 2 and "Traceback" not in capsys.readouterr().err


def test_library_loader_arguments_are_bounded(
    tiny_checkpoint: tuple[Path, dict], tmp_path: Path
) -> None:
    src, _ = tiny_checkpoint
    pack(src, tmp_path / "m.wst")
    with open_container(tmp_path / "m.wst") as c:
        for kwargs in ({"prefetch": -1}, {"workers": 0}, {"budget": 1 << 70}, {"budget": -5}):
            with pytest.raises(E.InputError):
                StreamingLoader(c, **kwargs)  # type: ignore[arg-type]
            with pytest.raises(E.InputError):
                next(iter(c.stream(**kwargs)))  # type: ignore[arg-type]


def test_an_input_id_of_2_to_the_70_is_a_named_error(
    tiny_checkpoint: tuple[Path, dict], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src, _ = tiny_checkpoint
    pack(src, tmp_path / "m.wst")
    assert main(["run", str(tmp_path / "m.wst"), "--input-ids", f"1,{2**70}"]) == 1
    err = capsys.readouterr().err
    assert "InputError" in err and str(2**70) in err and "Traceback" not in err


@pytest.mark.parametrize("depth", [70, 100_000])
def test_deeply_nested_config_is_a_source_error(
    tiny_checkpoint: tuple[Path, dict],
    tmp_path: Path,
    depth: int,
    capsys: pytest.CaptureFixture[str],
) -> None:
    src, _ = tiny_checkpoint
    (src.parent / "config.json").write_text('{"a": ' * depth + "1" + "}" * depth)  # an object
    with pytest.raises(E.SourceError, match=r"config\.json"):
        open_checkpoint(src)
    assert main(["pack", str(src), "-o", str(tmp_path / "m.wst")]) == 1
    assert "SourceError" in capsys.readouterr().err


_FULL_DISK = """
import resource, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of death: a full disk's ENOSPC path
resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000))
from wstream.cli import main
sys.exit(main(["pack", sys.argv[1], "-o", sys.argv[2]]))
"""


def test_a_full_disk_names_the_file(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    big = write_checkpoint(
        tmp_path / "big", {"w": rng.standard_normal((256, 1024)).astype(np.float32)}
    )
    out = tmp_path / "out" / "m.wst"
    out.parent.mkdir()
    done = subprocess.run(
        [sys.executable, "-c", _FULL_DISK, str(big), str(out)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 1, done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and "WriteFailed" in lines[0] and str(out) in lines[0], done.stderr
    assert os.listdir(out.parent) == []  # the partial temporary file is removed


# --- one named error after close() ----------------------------------------------------------------


@pytest.mark.parametrize("mapped", [False, True])
def test_reads_after_close_raise_container_closed(
    sharded: tuple[Path, dict[str, np.ndarray]], tmp_path: Path, mapped: bool
) -> None:
    src, tensors = sharded
    wst = tmp_path / "m.wst"
    pack(src, wst, max_chunk=64 * 1024)
    c = open_container(wst, mapped=mapped)
    name = next(iter(tensors))
    stream = c.stream(prefetch=0, workers=1)
    first = next(stream)
    first.release()
    c.close()
    with pytest.raises(E.ContainerClosed, match="closed"):
        for chunk in stream:
            chunk.release()
    with pytest.raises(E.ContainerClosed):
        c.tensor(name)
    with pytest.raises(E.ContainerClosed):
        c.verify()


# --- info escapes what it prints ------------------------------------------------------------------


def test_info_escapes_control_characters(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    evil = "x\x1b]0;pwned\x07\x1b[2J\u202e\x9b31m"
    doc = manifest_doc(
        [chunk_doc(evil, 4096, b"", [], group=evil)],
        writer=evil,
        metadata={evil: evil},
        config={"model_type": evil},
    )
    path = tmp_path / "evil.wst"
    path.write_bytes(build_file([], doc))
    for argv in (["info", str(path)], ["info", "--json", str(path)]):
        assert main(argv) == 0
        out = capsys.readouterr().out
        assert not any(not (ch.isprintable() or ch in " \n") for ch in out), repr(out)
        assert "\\x1b" in out or "\\u001b" in out
    main(["info", "--json", str(path)])
    assert json.loads(capsys.readouterr().out)["writer"] == evil  # escaped, not changed


# --- a safe default budget for Container.stream() -------------------------------------------------


def test_stream_without_a_budget_holds_a_bounded_window(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    zeros = {f"w.{i}": np.zeros((256, 1024), np.float32) for i in range(12)}  # 12 MiB, compresses
    src = write_checkpoint(tmp_path / "ckpt", zeros)
    wst = tmp_path / "m.wst"
    pack(src, wst, codec="zstd", max_chunk=1 << 20)
    loaders: list[StreamingLoader] = []

    class Recording(StreamingLoader):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            loaders.append(self)

    monkeypatch.setattr(loader_module, "StreamingLoader", Recording)
    with open_container(wst) as c:
        largest = max(ch.raw_nbytes for ch in c.manifest.chunks)
        total = sum(ch.raw_nbytes for ch in c.manifest.chunks)
        held = []
        for chunk in c.stream(prefetch=2):
            held.append(chunk)  # a careless consumer keeps references: still bounded
            chunk.release()
    (w,) = loaders
    assert w.budget is not None and w.pool.peak <= w.budget <= 4 * (largest + (1 << 17))
    assert w.pool.peak < total / 2


# --- imports and the spec's check order -----------------------------------------------------------


def test_from_wstream_import_pack_and_unpack_gives_the_functions() -> None:
    code = (
        "import wstream.pack, wstream.unpack\n"  # the submodules imported first
        "from wstream import pack, unpack\n"
        "import inspect; assert inspect.isfunction(pack) and inspect.isfunction(unpack)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_depth_is_checked_before_surrogates() -> None:
    deep: Any = []
    for _ in range(64):
        deep = [deep]  # the config nests 65 levels: manifest depth 66
    doc = manifest_doc([chunk_doc("\ud800", 4096, b"", [])], config={"x": deep})
    text = json.dumps(doc)  # ensure_ascii: the lone surrogate as a \\ud800 escape
    with pytest.raises(E.LimitExceeded, match="depth"):
        parse_manifest(text.encode("ascii"), data_end=1 << 20)


# --- manifests that are slow to open --------------------------------------------------------------


def test_the_chunk_count_limit_is_tight_enough(
    tiny_checkpoint: tuple[Path, dict], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The red team's 560k empty chunks (59 MiB) were valid and took 12 s to open. The limits now
    # bound an open to about a second (~20 us a chunk); such a file is refused before the parse.
    assert spec.MAX_CHUNKS == 1 << 16 and spec.MAX_MANIFEST_NBYTES == 16 << 20
    empty = {"name": "c", "group": "g", "offset": 4096, "nbytes": 0, "raw_nbytes": 0}
    chunks = [{**empty, "name": f"c{i}", "crc32": 0, "codec": [], "tensors": []} for i in range(2)]
    body = manifest_bytes(manifest_doc(chunks * ((spec.MAX_CHUNKS + 2) // 2)))
    with pytest.raises(E.LimitExceeded, match="entries exceed 65536"):
        parse_manifest(body, data_end=4096)
    # pack refuses a layout with too many chunks before it writes any.
    src, _ = tiny_checkpoint
    monkeypatch.setattr(spec, "MAX_CHUNKS", 2)
    with pytest.raises(E.InputError, match="raise --max-chunk"):
        pack(src, tmp_path / "m.wst")
    assert not (tmp_path / "m.wst").exists()
