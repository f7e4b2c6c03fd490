"""One loader, two sources: containers streamed from a real S3 server (SeaweedFS) are the same as
the local file, for every container kind, through faults, with a chunk cache, and written by
``wstream pack -o s3://``.

Faults come from a loopback :class:`FaultProxy` that ``AWS_ENDPOINT_URL`` points at, the way a
user would point wstream at any endpoint. Containers are the synthetic ``tiny`` model (a few MB),
packed once per module.
"""

from __future__ import annotations

import gc
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fault_proxy import FaultProxy
from s3_server import BUCKET, S3Server

from wstream import errors as E
from wstream import open_container
from wstream.cli import main
from wstream.container.cache import ChunkCache
from wstream.container.reader import Container
from wstream.container.remote import RemoteOptions, RetryPolicy
from wstream.pack import pack
from wstream.stream.loader import StreamingLoader
from wstream.synthetic import PRESETS, write_checkpoint

KiB = 1 << 10
FAST_RETRY = RetryPolicy(attempts=4, base_delay=0.01, max_delay=0.05, deadline=5.0)
FAST = RemoteOptions(part_size=256 * KiB, read_timeout=0.5, connect_timeout=1.0, retry=FAST_RETRY)
KINDS: dict[str, dict[str, Any]] = {
    "raw": {},
    "zstd": {"codec": "zstd"},
    "zstd-grouped": {"codec": "zstd", "shuffle": True},
    "int8": {"quantize": "int8"},
    "uint4": {"quantize": "uint4"},
    "row-blocks": {"max_chunk": 96 * KiB},  # large tensors split into row blocks
}
Q = PRESETS["tiny"].resampler.queries
IDS = "5,6,7,8,9,10,11,12"


def exists(s3_admin: Any, key: str) -> bool:
    try:
        s3_admin.head_object(Bucket=BUCKET, Key=key)
    except s3_admin.exceptions.ClientError as exc:
        assert exc.response["ResponseMetadata"]["HTTPStatusCode"] == 404
        return False
    return True


def pending_uploads(s3_admin: Any, key: str) -> list[str]:
    resp = s3_admin.list_multipart_uploads(Bucket=BUCKET, Prefix=key)
    return [u["UploadId"] for u in resp.get("Uploads", []) if u["Key"] == key]


def packed_on_s3(
    ckpt: Path,
    root: Path,
    s3_admin: Any,
    prefix: str,
    kinds: dict[str, dict[str, Any]],
    **common: Any,
) -> dict[str, tuple[Path, str]]:
    """kind -> (local path, s3 url): ``ckpt`` packed each way (``kinds[kind]`` and ``common`` as
    pack's arguments) under ``root`` and uploaded as ``prefix/kind.wst``."""
    out = {}
    for kind, kw in kinds.items():
        path = root / f"{kind}.wst"
        pack(ckpt, path, **kw, **common)
        s3_admin.put_object(Bucket=BUCKET, Key=f"{prefix}/{kind}.wst", Body=path.read_bytes())
        out[kind] = (path, f"s3://{BUCKET}/{prefix}/{kind}.wst")
    return out


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny", "tiny", seed=5).directory


@pytest.fixture(scope="module")
def stored(ckpt: Path, s3_admin: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """kind -> (local path, s3 url) of the same container."""
    return packed_on_s3(ckpt, tmp_path_factory.mktemp("kinds"), s3_admin, "kinds", KINDS)


@pytest.fixture
def proxy(s3: S3Server, monkeypatch: pytest.MonkeyPatch) -> Iterator[FaultProxy]:
    with FaultProxy(s3.endpoint) as p:
        monkeypatch.setenv("AWS_ENDPOINT_URL", p.endpoint)
        yield p


def streamed(container: Any, **kw: Any) -> list[tuple[str, list[np.ndarray]]]:
    out = []
    for chunk in container.stream(**kw):
        with chunk:
            out.append((chunk.name, [np.array(a, copy=True) for a in chunk.arrays()]))
    return out


def same(a: list[tuple[str, list[np.ndarray]]], b: list[tuple[str, list[np.ndarray]]]) -> bool:
    return [n for n, _ in a] == [n for n, _ in b] and all(
        x.dtype == y.dtype and x.shape == y.shape and x.tobytes() == y.tobytes()
        for (_, xs), (_, ys) in zip(a, b)
        for x, y in zip(xs, ys, strict=True)
    )


def sockets(port: int) -> int:
    """Open sockets of this process connected to ``port`` on loopback (the proxy: clients
    reach the server only through it, so these are exactly the sources' connections)."""
    gc.collect()  # a client dropped by an earlier test closes its sockets when collected
    inodes = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            link = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if link.startswith("socket:["):
            inodes.add(link[8:-1])
    n = 0
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        remote_port = int(fields[2].split(":")[1], 16)
        n += remote_port == port and fields[9] in inodes
    return n


def wstream_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("wstream-")]


def port_of(proxy: FaultProxy) -> int:
    return int(proxy.endpoint.rsplit(":", 1)[1])


# --- every kind, bit for bit ------------------------------------------------------------------


@pytest.mark.parametrize("kind", list(KINDS))
def test_every_kind_streams_from_s3_bit_identical_to_the_local_file(
    stored: dict[str, Any], kind: str
) -> None:
    path, url = stored[kind]
    with open_container(path) as local, open_container(url) as remote:
        assert remote.mapping() is None and remote.manifest == local.manifest
        for widen in ("stored", "dequantize"):
            want = streamed(local, widen=widen, budget=8 << 20)
            got = streamed(remote, widen=widen, budget=8 << 20, prefetch=3)
            assert same(got, want)
        name = local.keys()[-1]
        assert np.array_equal(remote.tensor(name), local.tensor(name))


def test_opening_costs_at_most_two_gets(stored: dict[str, Any], proxy: FaultProxy) -> None:
    _, url = stored["row-blocks"]
    with open_container(url) as c:
        assert len(proxy.seen) <= 2 and all(s.method == "GET" for s in proxy.seen)
        first = c.manifest.chunks[0]
        assert len(c.decode(first)) == first.raw_nbytes


def test_cli_reads_urls(
    stored: dict[str, Any], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path, url = stored["zstd-grouped"]
    assert main(["info", url, "--json"]) == 0
    remote = json.loads(capsys.readouterr().out)
    assert main(["info", str(path), "--json"]) == 0
    local = json.loads(capsys.readouterr().out)
    assert remote.pop("path") == url and local.pop("path") == str(path)
    assert remote == local
    assert main(["verify", url]) == 0
    assert "OK" in capsys.readouterr().out
    assert main(["unpack", url, "-o", str(tmp_path / "r.safetensors")]) == 0
    assert main(["unpack", str(path), "-o", str(tmp_path / "l.safetensors")]) == 0
    assert (tmp_path / "r.safetensors").read_bytes() == (tmp_path / "l.safetensors").read_bytes()
    assert main(["info", f"s3://{BUCKET}/kinds/missing.wst"]) == 1
    assert "ObjectNotFound" in capsys.readouterr().err


@pytest.mark.parametrize("kind", ["raw", "zstd-grouped"])
def test_run_over_s3_gives_the_same_logits_and_tokens_as_local(
    stored: dict[str, Any], kind: str, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path, url = stored[kind]
    reports = []
    for src, out in [(str(path), "local.npy"), (url, "remote.npy")]:
        argv = ["run", src, "--input-ids", IDS, "--max-new-tokens", "3", "--budget", "16M"]
        assert main([*argv, "--logits-out", str(tmp_path / out), "--json"]) == 0
        reports.append(json.loads(capsys.readouterr().out))
    assert reports[0]["generated"] == reports[1]["generated"]
    local, remote = np.load(tmp_path / "local.npy"), np.load(tmp_path / "remote.npy")
    assert local.tobytes() == remote.tobytes()


# --- faults -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "inject",
    [
        lambda p: p.fail(3),
        lambda p: p.refuse(2),
        lambda p: p.truncate(2, after=3000),
        lambda p: p.stall(1, after=3000),
    ],
    ids=["503-slowdown", "dropped-connection", "short-body", "stall"],
)
def test_transient_faults_mid_stream_give_identical_chunks_and_leave_nothing(
    stored: dict[str, Any], proxy: FaultProxy, inject: Any
) -> None:
    path, url = stored["zstd"]
    with open_container(path) as local:
        want = streamed(local)
    threads = wstream_threads()
    with Container(url, options=FAST) as remote:
        loader = StreamingLoader(remote, budget=8 << 20, prefetch=3)
        proxy.match = lambda seen: "if-match" in seen.headers  # the chunk reads, not the open
        inject(proxy)
        got = []
        for chunk in loader.stream([c.name for c in remote.manifest.chunks]):
            with chunk:
                got.append((chunk.name, [np.array(a, copy=True) for a in chunk.arrays()]))
        loader.close()
        assert loader.pool.leased == 0 and loader.pool.committed == 0
    assert same(got, want)
    assert any(s.fault for s in proxy.seen)
    assert wstream_threads() == threads
    assert sockets(port_of(proxy)) == 0


def test_a_fault_that_never_heals_is_a_named_error_and_leaves_nothing(
    stored: dict[str, Any], proxy: FaultProxy
) -> None:
    _, url = stored["raw"]
    threads = wstream_threads()
    remote = Container(url, options=FAST)
    loader = StreamingLoader(remote, budget=8 << 20, prefetch=3)
    proxy.match = lambda seen: "if-match" in seen.headers
    proxy.fail(10_000)
    t0 = time.monotonic()
    with pytest.raises(E.RemoteUnavailable, match="gave up after 4 attempts"):
        for chunk in loader.stream([c.name for c in remote.manifest.chunks]):
            chunk.release()
    assert time.monotonic() - t0 < FAST_RETRY.deadline + 2
    loader.close()
    assert loader.pool.leased == 0 and loader.pool.committed == 0
    remote.close()
    assert wstream_threads() == threads
    assert sockets(port_of(proxy)) == 0


def test_an_object_replaced_mid_stream_is_object_changed_never_a_mix(
    stored: dict[str, Any], s3_admin: Any
) -> None:
    path, _ = stored["row-blocks"]
    key = "replaced/model.wst"
    s3_admin.put_object(Bucket=BUCKET, Key=key, Body=path.read_bytes())
    with open_container(f"s3://{BUCKET}/{key}", options=FAST) as remote:
        stream = remote.stream(prefetch=0, budget=8 << 20)
        first = next(stream)
        first.release()
        # same size, other bytes: only the version tells them apart
        s3_admin.put_object(Bucket=BUCKET, Key=key, Body=stored["raw"][0].read_bytes())
        with pytest.raises(E.ObjectChanged):
            for chunk in stream:
                chunk.release()


# --- the chunk cache --------------------------------------------------------------------------


def test_cache_miss_then_hit_without_chunk_requests(
    stored: dict[str, Any], proxy: FaultProxy, tmp_path: Path
) -> None:
    path, url = stored["zstd-grouped"]
    with open_container(path) as local:
        want = streamed(local)
    n = len(want)
    cache = ChunkCache(tmp_path / "cache", 1 << 30)
    with open_container(url, cache=cache) as remote:
        assert same(streamed(remote), want)
    assert cache.stats.misses == n and cache.stats.hits == 0
    proxy.seen.clear()
    cache = ChunkCache(tmp_path / "cache", 1 << 30)
    with open_container(url, cache=cache) as remote:
        assert same(streamed(remote), want)
    assert cache.stats.hits == n and cache.stats.misses == 0
    assert len(proxy.seen) <= 2  # the open; no chunk fetched


def test_cache_is_never_stale_and_refetches_a_corrupted_file(
    stored: dict[str, Any], s3_admin: Any, tmp_path: Path
) -> None:
    key = "cached/model.wst"
    url = f"s3://{BUCKET}/{key}"
    s3_admin.put_object(Bucket=BUCKET, Key=key, Body=stored["raw"][0].read_bytes())
    root = tmp_path / "cache"
    with open_container(url, cache=ChunkCache(root, 1 << 30)) as c:
        c.verify()
    # corrupt one cached chunk: detected, fetched again, the verify still passes
    victim = sorted(root.glob("*.chunk"))[0]
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF
    victim.write_bytes(bytes(data))
    cache = ChunkCache(root, 1 << 30)
    with open_container(url, cache=cache) as c:
        c.verify()
    assert cache.stats.corrupt == 1 and cache.stats.misses == 1
    # the object replaced by another container: its chunks are other keys, never the old bytes
    other = stored["zstd"][0]
    s3_admin.put_object(Bucket=BUCKET, Key=key, Body=other.read_bytes())
    cache = ChunkCache(root, 1 << 30)
    with open_container(url, cache=cache) as c, open_container(other) as local:
        assert same(streamed(c), streamed(local))
    assert cache.stats.hits == 0


def test_two_processes_share_one_cache(
    stored: dict[str, Any], s3: S3Server, tmp_path: Path
) -> None:
    _, url = stored["zstd"]
    env = {**os.environ, **s3.environ()}
    cmd = [sys.executable, "-m", "wstream.cli", "verify", url, "--cache", str(tmp_path / "c")]
    procs = [subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE) for _ in range(2)]
    for p in procs:
        out, _ = p.communicate(timeout=60)
        assert p.returncode == 0 and b"OK" in out
    again = subprocess.run(cmd, env=env, capture_output=True, timeout=60, check=False)
    assert again.returncode == 0  # the cache the two left behind is whole


# --- pack -o s3:// ------------------------------------------------------------------------------


def test_pack_to_s3_uploads_the_same_bytes_as_a_local_pack(
    ckpt: Path, stored: dict[str, Any], s3_admin: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    path, _ = stored["zstd-grouped"]
    url = f"s3://{BUCKET}/packed/model.wst"
    assert main(["pack", str(ckpt), "-o", url, "--codec", "zstd", "--shuffle", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["bytes_out"] == path.stat().st_size
    body = s3_admin.get_object(Bucket=BUCKET, Key="packed/model.wst")["Body"].read()
    assert body == path.read_bytes()


def test_an_interrupted_pack_leaves_no_object(ckpt: Path, s3_admin: Any) -> None:
    key = "packed/interrupted.wst"

    def interrupt(n: int) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        pack(ckpt, f"s3://{BUCKET}/{key}", progress=interrupt)
    assert not exists(s3_admin, key) and pending_uploads(s3_admin, key) == []


def test_a_pack_stopped_by_sigterm_aborts_its_upload(
    ckpt: Path, s3: S3Server, s3_admin: Any, proxy: FaultProxy
) -> None:
    key = "packed/terminated.wst"
    proxy.delay = 0.3  # every request slow, so the signal lands while the pack is running
    env = {**os.environ, **s3.environ(proxy.endpoint)}
    code = "from wstream.cli import entry; entry()"
    argv = [sys.executable, "-c", code, "pack", str(ckpt), "-o", f"s3://{BUCKET}/{key}"]
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 30
    # once a part is on its way (the upload exists and its id is known; a signal during the
    # create itself would leave an upload whose id the client never learnt)
    while not any("partNumber=" in s.target for s in proxy.seen) and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=30)
    assert proc.returncode == 128 + signal.SIGTERM
    assert not exists(s3_admin, key) and pending_uploads(s3_admin, key) == []
