"""The multipart upload sink against SeaweedFS: the object appears only on complete, and any
failure or interruption aborts the upload, leaving neither an object nor a dangling upload."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest
from fault_proxy import FaultProxy
from s3_server import BUCKET, S3Server

from wstream import errors as E
from wstream.container.remote import RemoteOptions, RetryPolicy
from wstream.container.s3 import S3Source
from wstream.container.upload import MIN_PART, S3Upload

FAST = RemoteOptions(retry=RetryPolicy(attempts=3, base_delay=0.01, max_delay=0.05))


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


def fetch(s3_admin: Any, key: str) -> bytes:
    return bytes(s3_admin.get_object(Bucket=BUCKET, Key=key)["Body"].read())


@pytest.fixture
def proxy(s3: S3Server, monkeypatch: pytest.MonkeyPatch) -> Iterator[FaultProxy]:
    with FaultProxy(s3.endpoint) as p:
        monkeypatch.setenv("AWS_ENDPOINT_URL", p.endpoint)
        yield p


def test_round_trip_with_a_patched_first_part(s3_admin: Any) -> None:
    data = bytearray(os.urandom(2 * MIN_PART + 777))
    with S3Upload(f"s3://{BUCKET}/up/round.bin", part_size=MIN_PART, concurrency=2) as up:
        pos = 0
        for n in [1, 4096, MIN_PART - 4097, 3 * 1000 * 1000, 10, len(data)]:  # odd pieces
            pos += up.write(data[pos : pos + n])
        assert up.size == len(data)
        up.patch(0, b"HEADER")  # like the .wst preamble, written last at offset 0
        data[:6] = b"HEADER"
        with pytest.raises(E.InputError, match="within the first"):
            up.patch(MIN_PART - 2, b"xyz")
    assert fetch(s3_admin, "up/round.bin") == bytes(data)
    with S3Source(f"s3://{BUCKET}/up/round.bin") as src:
        out = memoryview(bytearray(len(data)))
        src.read_into(0, out)
        assert out == data
    assert pending_uploads(s3_admin, "up/round.bin") == []


def test_a_small_object_is_one_part(s3_admin: Any) -> None:
    with S3Upload(f"s3://{BUCKET}/up/small.bin") as up:
        up.write(b"tiny")
        etag = up.complete()
    assert etag and fetch(s3_admin, "up/small.bin") == b"tiny"
    with pytest.raises(E.UploadError, match="upload is complete"):
        up.write(b"more")


def test_an_interrupted_upload_leaves_no_object_and_no_upload(s3_admin: Any) -> None:
    key = "up/interrupted.bin"
    with pytest.raises(KeyboardInterrupt):
        with S3Upload(f"s3://{BUCKET}/{key}", part_size=MIN_PART) as up:
            up.write(os.urandom(3 * MIN_PART))  # two parts uploaded, the first one held
            assert pending_uploads(s3_admin, key)
            raise KeyboardInterrupt
    assert not exists(s3_admin, key)
    assert pending_uploads(s3_admin, key) == []
    with pytest.raises(E.UploadError, match="aborted"):
        up.write(b"x")


def test_a_failing_part_aborts_with_a_named_error(s3_admin: Any, proxy: FaultProxy) -> None:
    key = "up/failing.bin"
    proxy.match = lambda seen: seen.method == "PUT" and "partNumber=3" in seen.target
    proxy.fail(100)
    with pytest.raises(E.RemoteUnavailable, match=r"part 3: HTTP 503 SlowDown; gave up after 3"):
        with S3Upload(f"s3://{BUCKET}/{key}", part_size=MIN_PART, options=FAST) as up:
            up.write(os.urandom(3 * MIN_PART))
    assert not exists(s3_admin, key)
    assert pending_uploads(s3_admin, key) == []
    assert any(s.method == "DELETE" and "uploadId=" in s.target for s in proxy.seen)


def test_a_transient_part_failure_is_retried(s3_admin: Any, proxy: FaultProxy) -> None:
    key = "up/flaky.bin"
    proxy.match = lambda seen: seen.method == "PUT" and "partNumber=" in seen.target
    proxy.fail(2)
    data = os.urandom(2 * MIN_PART)
    with S3Upload(f"s3://{BUCKET}/{key}", part_size=MIN_PART, options=FAST) as up:
        up.write(data)
    assert fetch(s3_admin, key) == data
