"""What every remote byte source shares: options, retries, range planning and parallel reads.

A remote source (:class:`~wstream.container.s3.S3Source`,
:class:`~wstream.container.http.HttpSource`) only knows how to make one ranged GET and scatter
its body into a list of buffers; :class:`RemoteSource` turns that into the ByteSource protocol:

- ``read_into(offset, out)``: a range larger than ``part_size`` is split into sub-ranges fetched
  in parallel (at most ``concurrency`` in flight) straight into slices of ``out``;
- ``read_ranges_into([(offset, out), ...])``: neighbouring small ranges (gap at most ``max_gap``,
  merged request at most ``part_size``) are coalesced into one request whose body is scattered
  into the caller's buffers, the gap bytes read into a scratch buffer and dropped;
- every request is retried on transient failures (5xx, 503 SlowDown, timeouts, dropped
  connections, short bodies) with exponential backoff and full jitter, bounded both in attempts
  and in total seconds; past the bound, a named :class:`~wstream.errors.RemoteError`;
- the first ``head_bytes`` are fetched when the source opens (that one GET also tells the size
  and the version), so reading the preamble costs no request: open + manifest = two GETs; a
  source may also fetch the last ``tail_bytes`` at open, in parallel (S3: a suffix range), so
  the manifest at the end costs no request either.

Closing stops retries, fails queued work, and joins every thread.
"""

from __future__ import annotations

import http.client
import itertools
import mmap
import random
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from wstream import errors as E
from wstream.format.crc import crc32, crc32_combine

MiB = 1 << 20
BLOCK = 1 * MiB  # largest single socket read; closing is noticed between blocks


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Retries of one request: ``attempts`` tries at most (the first included), the delay
    before try k uniform in [0, min(max_delay, base_delay * 2**k)] (full jitter), and no new
    try once ``deadline`` seconds have passed since the first."""

    attempts: int = 6
    base_delay: float = 0.05
    max_delay: float = 2.0
    deadline: float = 60.0

    def __post_init__(self) -> None:
        if not 1 <= self.attempts <= 100:
            raise E.InputError(f"retry attempts: {self.attempts} is outside [1, 100]")
        for name in ("base_delay", "max_delay", "deadline"):
            value = getattr(self, name)
            if not 0 <= value <= 3600:
                raise E.InputError(f"retry {name}: {value} s is outside [0, 3600]")

    def delay(self, attempt: int, rng: random.Random) -> float:
        return rng.uniform(0.0, min(self.max_delay, self.base_delay * 2.0**attempt))


@dataclass(frozen=True, slots=True)
class RemoteOptions:
    """How a remote source reads: parallelism, request sizes, timeouts, retries."""

    concurrency: int = 8  # requests in flight for one read
    # A larger range is split (at the object's multiples of it); a coalesced request stays
    # within it. 16 MiB, pack's upload part size: streaming the 2.6's 31.5 MiB chunks from
    # SeaweedFS took 0.82x the time it did with 8 MiB (one 6-round run), 3 requests a chunk,
    # not 5.
    part_size: int = 16 * MiB
    max_gap: int = 64 * 1024  # neighbours this close are fetched in one request
    small_chunk: int = 1 * MiB  # the loader fetches chunks up to this size with their neighbours
    # Fetched at open, in parallel: the first bytes (preamble, and a small first chunk: the
    # 2.6's is 1.36 MB) and the last (the manifest, which a container keeps at its end), so
    # opening and the first chunk cost one round trip. Open to the 2.6's first chunk in hand
    # from SeaweedFS: 25-41 ms with this head against 32-60 ms with 256 KiB (S3_STREAM.md).
    head_bytes: int = 2 * MiB
    tail_bytes: int = 256 * 1024  # 0: no speculative read of the end (S3 only)
    connect_timeout: float = 5.0  # seconds to connect
    read_timeout: float = 20.0  # seconds any one socket read may wait: a stalled body times out
    retry: RetryPolicy = field(default_factory=RetryPolicy)

    def __post_init__(self) -> None:
        limits = {
            "concurrency": (1, 256),
            "part_size": (64 * 1024, 1 << 30),
            "max_gap": (0, 64 * MiB),
            "small_chunk": (0, 1 << 30),
            "head_bytes": (0, 64 * MiB),
            "tail_bytes": (0, 64 * MiB),
        }
        for name, (lo, hi) in limits.items():
            value = getattr(self, name)
            if not lo <= value <= hi:
                raise E.InputError(f"remote {name}: {value} is outside [{lo}, {hi}]")
        for name in ("connect_timeout", "read_timeout"):
            value = getattr(self, name)
            if not 0 < value <= 3600:
                raise E.InputError(f"remote {name}: {value} s is outside (0, 3600]")


class Retryable(Exception):
    """Raised by a request for a failure worth another try; ``kind`` picks the final error."""

    def __init__(self, kind: type[E.RemoteError], detail: str) -> None:
        super().__init__(detail)
        self.kind = kind
        self.detail = detail


class Target(NamedTuple):
    offset: int
    out: memoryview


class Digest:
    """The CRC-32 of a request's target bytes, computed by :func:`scatter` as the body arrives,
    a block at a time while it is still in cache (no second pass over memory)."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0


class Request(NamedTuple):
    """One ranged GET of bytes [start, end) whose body fills ``targets`` (sorted, in range);
    with a ``digest``, the CRC of the targets' bytes (gaps excluded) is left in it."""

    start: int
    end: int
    targets: tuple[Target, ...]
    digest: Digest | None = None


def status_error(status: int, what: str, detail: str, retry: bool = False) -> Exception:
    """An HTTP error status -> Retryable (worth another try) or a named RemoteError; one
    mapping for every client. ``retry`` marks what the client knows to be transient beyond the
    status (S3's SlowDown and RequestTimeout codes)."""
    if status == 412:
        return E.ObjectChanged(f"{what}: object changed since it was opened ({detail})")
    if status == 404:
        return E.ObjectNotFound(f"{what}: not found ({detail})")
    if status in (401, 403):
        return E.AccessDenied(f"{what}: access denied ({detail})")
    if status == 416:
        return E.RangeError(f"{what}: range not satisfiable ({detail})")
    if status >= 500 or status in (408, 429) or retry:
        return Retryable(E.RemoteUnavailable, detail)
    return E.RemoteError(f"{what}: {detail}")


def split(offset: int, out: memoryview, part: int, digests: bool = False) -> list[Request]:
    """Sub-ranges filling their own slices of ``out``, cut where the object's offset is a
    multiple of ``part`` (so each is at most ``part`` bytes). Stores keep an object in parts
    (S3: its multipart parts, 16 MiB as pack uploads them) and a range inside one part is
    cheaper to serve: 8 MiB GETs cut 3 MiB off those boundaries took 1.13x as long from
    SeaweedFS here (S3_STREAM.md). A range of at most ``part`` bytes stays one
    request wherever it lies. ``digests``: each request computes its CRC."""
    if len(out) <= part:
        bounds = [0, len(out)]
    else:
        first = -offset % part or part  # bytes up to the object's next multiple of part
        bounds = [0, *range(first, len(out), part), len(out)]
    return [
        Request(
            offset + a, offset + b, (Target(offset + a, out[a:b]),), Digest() if digests else None
        )
        for a, b in itertools.pairwise(bounds)
        if b > a
    ]


def coalesce(targets: Sequence[Target], max_gap: int, max_request: int) -> list[Request]:
    """Requests covering ``targets``: neighbours (gap <= max_gap) merge while the merged range
    stays within ``max_request``; a target larger than ``max_request`` is split on its own."""
    out: list[Request] = []
    group: list[Target] = []
    start = end = 0
    for t in sorted((t for t in targets if len(t.out)), key=lambda t: t.offset):
        t_end = t.offset + len(t.out)
        if group and t.offset >= end and t.offset - end <= max_gap and t_end - start <= max_request:
            group.append(t)
            end = t_end
            continue
        if group:
            out.append(Request(start, end, tuple(group)))
            group = []
        if len(t.out) > max_request:
            out.extend(split(t.offset, t.out, max_request))
        else:
            group, start, end = [t], t.offset, t_end
    if group:
        out.append(Request(start, end, tuple(group)))
    return out


def scatter(
    request: Request, readinto: Callable[[memoryview], int], closed: threading.Event, what: str
) -> None:
    """Read a response body for ``request`` into its targets, discarding gap bytes; a body that
    ends early is :class:`Retryable` (ShortBody). Reads at most BLOCK bytes per call, so a close
    is noticed within one block."""
    scratch: memoryview | None = None
    pos = request.start
    digest = request.digest
    crc = 0  # a retried request starts again from its first byte, so does its CRC
    for t in request.targets:
        while pos < t.offset:  # the gap between coalesced neighbours
            if scratch is None:
                scratch = memoryview(bytearray(min(BLOCK, t.offset - pos)))
            pos += _read_some(readinto, scratch[: t.offset - pos], pos, request, closed, what)
        got = summed = 0
        while got < len(t.out):
            got += _read_some(readinto, t.out[got : got + BLOCK], pos + got, request, closed, what)
            # Socket reads return a few KiB each: sum once a block has come in (it is still in
            # cache: L2 is 2 MiB here), not per read, which would cost a call per few KiB.
            if digest is not None and (got - summed >= BLOCK or got == len(t.out)):
                crc = crc32(t.out[summed:got], crc)
                summed = got
        pos += got
    if digest is not None:
        digest.value = crc


def body_reader(response: Any) -> Callable[[memoryview], int]:
    """``readinto`` for a urllib3 response's body (botocore's is under its StreamingBody) that
    lands the bytes straight in the caller's buffer.

    urllib3 2's own ``readinto`` reads into a new bytes object and copies that: every byte
    copied twice and an allocation per read. Reading from the http.client response under it,
    the socket fills the buffer. Measured from SeaweedFS here (S3_STREAM.md): a download took
    3.22 s against 3.68 s, the stream 3.91 s against 4.64 s. The reader's failures become
    Retryable, as the client's own would. Where the layout is not the known one, or the body is
    content-encoded (urllib3 would decode it), the response's own ``readinto`` is used. The
    caller returns the connection (``release_conn``) once the body is read."""
    fp = getattr(response, "_fp", None)
    if not isinstance(fp, http.client.HTTPResponse) or response.headers.get("Content-Encoding"):
        return response.readinto  # type: ignore[no-any-return]

    def readinto(view: memoryview) -> int:
        try:
            return fp.readinto(view)
        except TimeoutError as exc:  # the socket's read timeout: a stalled body
            raise Retryable(E.RemoteTimeout, f"timed out ({exc})") from None
        except http.client.IncompleteRead as exc:
            raise Retryable(E.ShortBody, f"body broke off ({exc!r})") from None
        except (OSError, ValueError, http.client.HTTPException) as exc:  # reset, or closed
            raise Retryable(E.RemoteUnavailable, f"connection failed ({exc})") from None

    return readinto


def _read_some(
    readinto: Callable[[memoryview], int],
    view: memoryview,
    pos: int,
    request: Request,
    closed: threading.Event,
    what: str,
) -> int:
    if closed.is_set():
        raise E.RemoteError(f"{what}: source closed while reading bytes {pos}-{request.end - 1}")
    n = readinto(view)
    if not n:
        raise Retryable(
            E.ShortBody,
            f"body ended after {pos - request.start} of {request.end - request.start} bytes",
        )
    return n


def retrying(
    policy: RetryPolicy,
    what: str,
    call: Callable[[], None],
    closed: threading.Event,
    rng: random.Random,
) -> None:
    """Run ``call`` until it succeeds, raises a named error, or the retry bound is spent (then
    the :class:`Retryable`'s kind, naming the attempts and seconds). A set ``closed`` stops it."""
    t0 = time.monotonic()
    attempt = 0
    while True:
        if closed.is_set():
            raise E.RemoteError(f"{what}: source closed")
        try:
            call()
            return
        except Retryable as exc:
            attempt += 1
            elapsed = time.monotonic() - t0
            delay = policy.delay(attempt, rng)
            if attempt >= policy.attempts or elapsed + delay > policy.deadline:
                raise exc.kind(
                    f"{what}: {exc.detail}; gave up after {attempt} attempts in "
                    f"{elapsed:.1f} s (limits: {policy.attempts} attempts, {policy.deadline:g} s)"
                ) from None
            if closed.wait(delay):
                raise E.RemoteError(f"{what}: source closed") from None


class RemoteSource(ABC):
    """Base of remote ByteSources. Subclasses set ``_name``, ``_size``, ``_version`` and
    ``_head`` in their constructor (via :meth:`_open`) and implement :meth:`_get`."""

    def __init__(self, name: str, options: RemoteOptions) -> None:
        self._name = name
        self.options = options
        self._size = 0
        self._version = ""
        self._head = b""  # bytes [0, len(_head)) fetched at open
        self._tail = b""  # bytes [_size - len(_tail), _size) fetched at open (same version)
        self._closed = threading.Event()
        self._lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None
        self._rng = random.Random()

    # --- the one thing a subclass does -------------------------------------------------------

    @abstractmethod
    def _get(self, request: Request) -> None:
        """One ranged GET of [request.start, request.end) pinned to ``self._version``, body
        scattered with :func:`scatter`. Raises :class:`Retryable` for transient failures and a
        named RemoteError for the rest."""

    # --- ByteSource ---------------------------------------------------------------------------

    @property
    def name(self) -> str:
        return self._name

    @property
    def size(self) -> int:
        return self._size

    @property
    def version(self) -> str:
        return self._version

    def mapping(self) -> mmap.mmap | None:
        return None

    def read_into(self, offset: int, out: memoryview) -> None:
        self.read_ranges_into([(offset, out)])

    def read_ranges_into(self, ranges: Sequence[tuple[int, memoryview]]) -> None:
        """Fill every ``out`` from bytes [offset, offset + len(out)); neighbours share requests,
        large ranges are split, up to ``concurrency`` requests run at once. All or an error."""
        targets = []
        for offset, given in ranges:
            out = memoryview(given).cast("B")
            head, end = self._serve_fetched(offset, out)
            if head < end:
                targets.append(Target(offset + head, out[head:end]))
        self._run(coalesce(targets, self.options.max_gap, self.options.part_size))

    def read_crc_into(self, offset: int, given: memoryview) -> int:
        """:meth:`read_into`, returning the CRC-32 of the bytes: each sub-range is summed as its
        body arrives and the sums combined in order, so checking costs no second pass over
        ``out`` (S3_STREAM.md: the pass after the read cost the stream 13-18 % of its time at
        ~900 MB/s on 2 cores shared with the server)."""
        out = memoryview(given).cast("B")
        head, end = self._serve_fetched(offset, out)
        requests = split(offset + head, out[head:end], self.options.part_size, digests=True)
        self._run(requests)
        crc = crc32(out[:head])
        for r in requests:
            assert r.digest is not None
            crc = crc32_combine(crc, r.digest.value, r.end - r.start)
        return crc32(out[max(head, end) :], crc)

    def _serve_fetched(self, offset: int, out: memoryview) -> tuple[int, int]:
        """Copy what of [offset, offset + len(out)) was fetched at open (the head, the tail)
        into ``out``; the rest, ``out[head:end]``, is to be read. Range-checked."""
        if offset < 0 or offset + len(out) > self._size:
            raise E.RangeError(
                f"{self._name}: bytes [{offset}, {offset + len(out)}) are outside the "
                f"{self._size}-byte object"
            )
        head = max(0, min(len(out), len(self._head) - offset))
        if head:  # served from the bytes fetched at open
            out[:head] = self._head[offset : offset + head]
        end = len(out)
        tail_start = self._size - len(self._tail)
        if self._tail and offset + end > tail_start:  # the end, also fetched at open
            cut = max(head, tail_start - offset)
            out[cut:] = self._tail[offset + cut - tail_start : offset + end - tail_start]
            end = cut
        return head, end

    def _run(self, requests: Sequence[Request]) -> None:
        """Fetch every request, up to ``concurrency`` at once. All or the first error."""
        if len(requests) == 1:
            self._fetch(requests[0])
        elif requests:
            futures: list[Future[None]] = [
                self._executor().submit(self._fetch, r) for r in requests
            ]
            try:
                for f in futures:
                    f.result()
            finally:
                for f in futures:  # on error, drop what has not started; wait for the rest
                    f.cancel()
                for f in futures:
                    if not f.cancelled():
                        f.exception()

    def close(self) -> None:
        """Stop retries and reads in progress, join the worker threads, release connections."""
        self._closed.set()
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
        self._release()

    @abstractmethod
    def _release(self) -> None:
        """Close the client's connections."""

    def __enter__(self) -> RemoteSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- machinery ----------------------------------------------------------------------------

    def _executor(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._closed.is_set():
                raise E.RemoteError(f"{self._name}: source is closed")
            if self._pool is None:
                self._pool = ThreadPoolExecutor(
                    self.options.concurrency, thread_name_prefix="wstream-remote"
                )
            return self._pool

    def _fetch(self, request: Request) -> None:
        self._retry(
            f"{self._name}: bytes {request.start}-{request.end - 1}", lambda: self._get(request)
        )

    def _retry(self, what: str, call: Callable[[], None]) -> None:
        retrying(self.options.retry, what, call, self._closed, self._rng)

    def _check_open(self, what: str, total: int | None, version: str | None) -> None:
        """A response's total size and version must be the ones pinned at open."""
        if version is not None and version != self._version:
            raise E.ObjectChanged(
                f"{what}: object changed since it was opened (version {self._version} -> {version})"
            )
        if total is not None and total != self._size:
            raise E.ObjectChanged(
                f"{what}: object changed since it was opened (size {self._size} -> {total})"
            )


def parse_content_range(value: str | None, what: str) -> tuple[int, int, int | None]:
    """``bytes START-END/TOTAL`` -> (start, end exclusive, total or None for ``*``)."""
    try:
        assert value is not None
        unit, _, rest = value.partition(" ")
        span, _, total = rest.partition("/")
        first, _, last = span.partition("-")
        if unit != "bytes":
            raise ValueError
        return int(first), int(last) + 1, None if total == "*" else int(total)
    except (AssertionError, ValueError):
        raise E.RangeError(
            f"{what}: Content-Range {value!r} is not 'bytes START-END/TOTAL'"
        ) from None
