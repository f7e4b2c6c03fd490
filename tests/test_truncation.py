"""A container truncated or rewritten by another process while this one reads it.

The reader ``pread``s chunks into its own memory (``LocalFile`` without ``mapped=True``), so a
truncation is a :class:`~wstream.errors.ShortRead` (or, for bytes already read, nothing at all)
and never SIGBUS; and the bytes a consumer holds are the bytes whose CRC was checked, whatever
happens to the file afterwards. The streaming side runs in a subprocess, so a signal shows as
its return code instead of killing the test run.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from wst_testing import write_checkpoint

from wstream import errors as E
from wstream.pack import pack
from wstream.stream.loader import open_container

_READER = """
import sys
import numpy as np
from wstream import errors as E
from wstream.stream.loader import open_container


def touch(a):
    np.frombuffer(a.tobytes(), np.uint8).sum()  # reads every byte (a mapped page faults here)


def wait_for_the_truncation():
    print("ready", flush=True)
    assert sys.stdin.readline() == "go\\n"


def read(path, api, verify, mapped):
    with open_container(path, mapped=mapped) as c:
        if api == "stream":
            for i, chunk in enumerate(c.stream(verify=verify, prefetch=1)):
                with chunk:
                    for a in chunk.arrays():
                        touch(a)
                if i == 0:
                    wait_for_the_truncation()
        else:
            for i, name in enumerate(c.keys()):
                touch(c.tensor(name, verify=verify))
                if i == 0:
                    wait_for_the_truncation()


for case in sys.argv[1:]:  # path,api,verify,mapped
    path, api, verify, mapped = case.split(",")
    try:
        read(path, api, verify == "1", mapped == "1")
        print("done", flush=True)
    except E.WStreamError as exc:
        print("error", type(exc).__name__, exc, flush=True)
"""


@pytest.fixture(scope="module")
def containers(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("trunc")
    rng = np.random.default_rng(5)
    # 24 chunks of ~256 KiB (incompressible, so zstd chunks are as large): far more than the
    # prefetch window, so most are read after the truncation.
    tensors = {f"w.{i}": rng.standard_normal((256, 256)).astype(np.float32) for i in range(24)}
    src = write_checkpoint(tmp / "ckpt", tensors)
    out = {}
    for codec in ("raw", "zstd"):
        out[codec] = tmp / f"{codec}.wst"
        pack(src, out[codec], codec=codec, max_chunk=256 * 1024 + 4096)
    return out


def truncate_while_reading(
    tmp: Path, cases: list[tuple[Path, str, bool, bool]]
) -> tuple[int, list[str]]:
    """One reader subprocess reads each case's copy of its container; once it has used the
    first chunk (or tensor), the copy is truncated to its first quarter and it goes on. Returns
    the reader's return code and one outcome line per case it finished."""
    args = []
    for i, (path, api, verify, mapped) in enumerate(cases):
        copy = tmp / f"case{i}-{path.name}"
        copy.write_bytes(path.read_bytes())
        args.append(f"{copy},{api},{int(verify)},{int(mapped)}")
    child = subprocess.Popen(
        [sys.executable, "-c", _READER, *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    outcomes = []
    try:
        assert child.stdout is not None and child.stdin is not None
        for arg in args:
            if child.stdout.readline() != "ready\n":
                break
            copy = Path(arg.split(",")[0])
            os.truncate(copy, copy.stat().st_size // 4)  # in place: the reader's fd sees it
            child.stdin.write("go\n")
            child.stdin.flush()
            line = child.stdout.readline()
            if not line:
                break
            outcomes.append(line.strip())
        child.stdin.close()
        child.wait(timeout=120)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    return child.returncode, outcomes


def test_truncation_while_streaming_is_a_named_error_not_a_signal(
    containers: dict[str, Path], tmp_path: Path
) -> None:
    cases = [
        (containers[codec], api, verify, False)
        for codec in ("raw", "zstd")
        for verify in (True, False)
        for api in ("stream", "tensor")
    ]
    code, outcomes = truncate_while_reading(tmp_path, cases)
    assert code >= 0, f"killed by {signal.Signals(-code).name} after {outcomes}"
    assert code == 0 and len(outcomes) == len(cases), outcomes
    for case, outcome in zip(cases, outcomes):
        # Bytes past the new end are a short read: a named error, in every combination.
        assert outcome.startswith("error ShortRead"), (case, outcome)


@pytest.mark.skipif(sys.platform != "linux", reason="SIGBUS on a truncated map: Linux behaviour")
def test_the_mapped_opt_in_is_what_dies_of_sigbus(
    containers: dict[str, Path], tmp_path: Path
) -> None:
    # Why pread is the default: the same reader with the zero-copy map is killed by SIGBUS.
    code, outcomes = truncate_while_reading(tmp_path, [(containers["raw"], "stream", False, True)])
    assert code == -signal.SIGBUS, (code, outcomes)


def test_bytes_in_hand_are_the_bytes_checked(containers: dict[str, Path], tmp_path: Path) -> None:
    # Rewriting the file in place after a raw chunk's CRC check: the consumer's arrays keep the
    # checked bytes; a chunk not yet read fails its check (verify on).
    path = tmp_path / "m.wst"
    path.write_bytes(containers["raw"].read_bytes())
    with open_container(path) as c:
        chunks = c.manifest.chunks
        stream = c.stream(verify=True, prefetch=0, workers=1)
        first = next(stream)
        before = [a.copy() for a in first.arrays()]
        fd = os.open(path, os.O_WRONLY)
        try:
            for ch in chunks:  # every chunk's bytes overwritten, in place
                os.pwrite(fd, b"\x7f" * ch.nbytes, ch.offset)
        finally:
            os.close(fd)
        assert all(np.array_equal(a, b) for a, b in zip(first.arrays(), before))
        first.release()
        with pytest.raises(E.ChunkChecksumMismatch):
            for chunk in stream:
                chunk.release()
        with pytest.raises(E.ChunkChecksumMismatch):
            c.tensor(c.keys()[0])
