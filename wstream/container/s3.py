"""``s3://bucket/key`` as a byte source, through boto3/botocore (chosen by measurement and
simplicity: bench/results/S3_CLIENT.md).

Endpoint, region and credentials come only from where every AWS tool looks: the environment
(``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``, ``AWS_REGION`` /
``AWS_DEFAULT_REGION``, ``AWS_PROFILE``), the shared config and credentials files, profiles.
botocore resolves and signs; wstream adds nothing of its own.

Opening makes one ranged GET of the first ``head_bytes``: its Content-Range gives the size, its
ETag pins the version, its body serves the preamble (and a small first chunk). A second GET, in
parallel, takes the last ``tail_bytes`` (a suffix range needs no size), kept only if its ETag
and size are the head's: the manifest, at the end, then costs no request of its own. Every
later GET carries ``If-Match: ETag``, and its answer must show the same ETag and total size,
so a replaced object is :class:`~wstream.errors.ObjectChanged`, never a mix of two versions.
botocore's own retries are off: :class:`~wstream.container.remote.RemoteSource` retries whole
ranges, body included, within one bound. Closed sources leave their botocore client to the next
source opened with the same environment and settings (a new client is a third of an open).
"""

from __future__ import annotations

import os
import threading
from typing import Any, NamedTuple

import botocore.session
from botocore.config import Config
from botocore.exceptions import (
    ClientError,
    ConnectTimeoutError,
    HTTPClientError,
    IncompleteReadError,
    ReadTimeoutError,
    ResponseStreamingError,
)

from wstream import errors as E
from wstream.container.remote import (
    RemoteOptions,
    RemoteSource,
    Request,
    Retryable,
    body_reader,
    parse_content_range,
    scatter,
    status_error,
)

SCHEME = "s3://"


class S3Url(NamedTuple):
    bucket: str
    key: str

    def __str__(self) -> str:
        return f"{SCHEME}{self.bucket}/{self.key}"


def parse_s3_url(url: str) -> S3Url:
    """``s3://bucket/key`` -> S3Url; InvalidURL names what is wrong."""
    if not url.startswith(SCHEME):
        raise E.InvalidURL(f"url {url!r}: must start with {SCHEME}")
    bucket, _, key = url[len(SCHEME) :].partition("/")
    if not 3 <= len(bucket) <= 63 or not all(c.isalnum() or c in ".-_" for c in bucket):
        raise E.InvalidURL(
            f"url {url!r}: bucket {bucket!r} must be 3..63 characters of letters, digits, '.-_'"
        )
    if not key or len(key.encode("utf-8")) > 1024:
        raise E.InvalidURL(f"url {url!r}: key must be 1..1024 bytes after 's3://{bucket}/'")
    return S3Url(bucket, key)


def is_s3_url(url: str) -> bool:
    return url.startswith(SCHEME)


# One botocore session per distinct AWS environment: creating the first client of a session loads
# the service model (~0.2 s), later ones take ~15 ms. Keyed by the AWS_* variables so a changed
# profile or config file is honoured; botocore reads AWS_ENDPOINT_URL again for every client.
_sessions: dict[tuple[tuple[str, str], ...], botocore.session.Session] = {}
_sessions_lock = threading.Lock()
# Clients that sources have closed, kept for the next source with the same environment and
# settings: a new client costs 15-40 ms (endpoint resolution, event handlers), a third of an
# open. A closed client has dropped its connections (so no socket outlives its source) and
# opens new ones on its next request. Never shared: each source has its own while open.
_idle: dict[tuple[Any, ...], list[Any]] = {}
MAX_IDLE = 4  # per key


def _environment() -> tuple[tuple[str, str], ...]:
    return tuple(sorted((k, v) for k, v in os.environ.items() if k.startswith("AWS_")))


def make_client(options: RemoteOptions, pool_connections: int | None = None) -> Any:
    """A botocore S3 client configured only from the standard AWS places, with our timeouts,
    botocore's retries off (we retry whole ranges), and one pooled connection per worker."""
    env = _environment()
    with _sessions_lock:
        session = _sessions.get(env)
        if session is None:
            session = _sessions[env] = botocore.session.get_session()
        return session.create_client(
            "s3",
            config=Config(
                connect_timeout=options.connect_timeout,
                read_timeout=options.read_timeout,
                retries={"total_max_attempts": 1, "mode": "standard"},
                max_pool_connections=pool_connections or options.concurrency + 1,
                tcp_keepalive=True,
            ),
        )


def _client_key(options: RemoteOptions) -> tuple[Any, ...]:
    return (_environment(), options.connect_timeout, options.read_timeout, options.concurrency)


def acquire_client(options: RemoteOptions) -> tuple[tuple[Any, ...], Any]:
    """(key, client): an idle client made for the same environment and settings, or a new one."""
    key = _client_key(options)
    with _sessions_lock:
        idle = _idle.get(key)
        if idle:
            return key, idle.pop()
    return key, make_client(options)


def release_client(key: tuple[Any, ...], client: Any) -> None:
    """Close the client's connections and keep it for reuse (a few per key at most)."""
    client.close()
    with _sessions_lock:
        idle = _idle.setdefault(key, [])
        if len(idle) < MAX_IDLE:
            idle.append(client)


def classify(exc: Exception, what: str) -> Exception:
    """A botocore failure -> Retryable (worth another try) or a named RemoteError."""
    if isinstance(exc, ClientError):
        meta = exc.response.get("ResponseMetadata", {})
        status = int(meta.get("HTTPStatusCode", 0))
        code = exc.response.get("Error", {}).get("Code", "?")
        transient = code in ("SlowDown", "RequestTimeout")
        return status_error(status, what, f"HTTP {status} {code}", retry=transient)
    if isinstance(exc, ReadTimeoutError | ConnectTimeoutError):
        return Retryable(E.RemoteTimeout, f"timed out ({exc})")
    if isinstance(exc, ResponseStreamingError | IncompleteReadError):
        return Retryable(E.ShortBody, f"body broke off ({exc})")
    if isinstance(exc, HTTPClientError):  # connection refused, reset, closed
        return Retryable(E.RemoteUnavailable, f"connection failed ({exc})")
    raise exc


class S3Source(RemoteSource):
    """A read-only object in an S3-compatible store, pinned to the version seen at open."""

    def __init__(self, url: str, options: RemoteOptions | None = None) -> None:
        self.url = parse_s3_url(url)
        super().__init__(str(self.url), options or RemoteOptions())
        self._etag = ""
        self._client_key, self._client = acquire_client(self.options)
        try:
            tail = self._executor().submit(self._get_tail) if self.options.tail_bytes else None
            self._retry(f"{self._name}: open", self._open)
            if tail is not None:
                self._adopt_tail(tail.result())
        except BaseException:
            self.close()
            raise

    def _get_tail(self) -> tuple[int, int, str, bytes] | None:
        """The last ``tail_bytes`` (a suffix range, which needs no size), fetched while the head
        is: (start, total, etag, data), or None on any failure (the end is then read later,
        like any range, by requests that are retried)."""
        n = self.options.tail_bytes
        try:
            resp = self._client.get_object(
                Bucket=self.url.bucket, Key=self.url.key, Range=f"bytes=-{n}"
            )
        except Exception:
            return None
        body = resp["Body"]
        try:
            length = int(resp["ContentLength"])
            if length > n or "ContentRange" not in resp:
                return None  # the range was ignored: never read a whole object here
            start, end, total = parse_content_range(resp["ContentRange"], self._name)
            data = body.read(length)
            if total is None or end != total or len(data) != end - start:
                return None
            return start, total, str(resp["ETag"]), data
        except Exception:
            return None
        finally:
            body.close()

    def _adopt_tail(self, tail: tuple[int, int, str, bytes] | None) -> None:
        """Keep the tail only if it is of the version and size the head pinned."""
        if tail is not None and tail[1] == self._size and tail[2] == self._etag:
            self._tail = tail[3]

    def _open(self) -> None:
        what = f"{self._name}: open"
        head = self.options.head_bytes
        try:
            if head == 0:
                raise _EmptyRange
            try:
                resp = self._client.get_object(
                    Bucket=self.url.bucket, Key=self.url.key, Range=f"bytes=0-{head - 1}"
                )
            except ClientError as exc:
                if exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") == 416:
                    raise _EmptyRange from None  # an empty object has no byte 0
                raise
        except _EmptyRange:
            try:
                meta = self._client.head_object(Bucket=self.url.bucket, Key=self.url.key)
            except Exception as exc:
                raise classify(exc, what) from None
            self._size, self._etag = int(meta["ContentLength"]), str(meta["ETag"])
            self._version = self._etag
            return
        except Exception as exc:
            raise classify(exc, what) from None
        body = resp["Body"]
        try:
            if "ContentRange" in resp:
                _, end, total = parse_content_range(resp["ContentRange"], what)
            else:  # a 200 for the whole object (servers may ignore Range on small objects)
                end, total = int(resp["ContentLength"]), int(resp["ContentLength"])
            if total is None:
                raise E.RangeError(f"{what}: Content-Range {resp['ContentRange']!r} has no size")
            data = body.read(min(head, end))
        except E.WStreamError:
            raise
        except Exception as exc:
            raise classify(exc, what) from None
        finally:
            body.close()
        if len(data) != min(head, total):
            raise Retryable(
                E.ShortBody, f"head body of {len(data)} bytes, expected {min(head, total)}"
            )
        self._size, self._etag, self._head = total, str(resp["ETag"]), data
        self._version = self._etag

    def _get(self, request: Request) -> None:
        what = f"{self._name}: bytes {request.start}-{request.end - 1}"
        try:
            resp = self._client.get_object(
                Bucket=self.url.bucket,
                Key=self.url.key,
                Range=f"bytes={request.start}-{request.end - 1}",
                IfMatch=self._etag,
            )
        except Exception as exc:
            raise classify(exc, what) from None
        body = resp["Body"]
        complete = False
        try:
            start, end, total = parse_content_range(resp.get("ContentRange"), what)
            etag = resp.get("ETag")  # a server that sends none still honoured If-Match
            self._check_open(what, total, None if etag is None else str(etag))
            if (start, end) != (request.start, request.end):
                raise E.RangeError(f"{what}: server answered bytes {start}-{end - 1}")
            if int(resp["ContentLength"]) != end - start:
                raise Retryable(E.ShortBody, f"Content-Length {resp['ContentLength']}")
            raw = getattr(body, "_raw_stream", None)  # urllib3's, under botocore's body
            scatter(request, body.readinto if raw is None else body_reader(raw), self._closed, what)
            complete = True
            if raw is not None:
                raw.release_conn()  # read to its end: the connection goes back to the pool
        except (E.WStreamError, Retryable):
            raise
        except Exception as exc:
            raise classify(exc, what) from None
        finally:
            if not complete:
                body.close()  # drop the connection: its body is not fully read

    def _release(self) -> None:
        client, self._client = self._client, None  # once: a client is never kept twice
        if client is not None:
            release_client(self._client_key, client)


class _EmptyRange(Exception):
    """Internal: the open must use HEAD (no head bytes wanted, or an empty object)."""
