"""A write sink for ``s3://bucket/key``: a multipart upload that becomes an object only when
:meth:`S3Upload.complete` succeeds, and is aborted on any failure or interruption.

Bytes are written in order; every ``part_size`` bytes become one part, uploaded by a small pool
of threads (at most ``concurrency`` parts in flight, so memory stays within
``(concurrency + 2) * part_size``). The first part is held back until :meth:`complete`, so bytes
inside it can still be overwritten with :meth:`patch`: a ``.wst`` writer writes its preamble
last, at offset 0 (formats/SPEC.md, "Preamble last"), and that works here unchanged.

Leaving the ``with`` block normally completes the upload; leaving it by an exception (including
KeyboardInterrupt) aborts it, which deletes every uploaded part: no object and no dangling
upload. (A process killed outright cannot abort; a bucket lifecycle rule for incomplete
multipart uploads cleans those up.)
"""

from __future__ import annotations

import random
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from types import TracebackType
from typing import Any

from wstream import errors as E
from wstream.container.remote import RemoteOptions, Retryable, retrying
from wstream.container.s3 import classify, make_client, parse_s3_url

MiB = 1 << 20
MIN_PART = 5 * MiB  # S3's smallest part (all but the last)
MAX_PARTS = 10_000  # S3's part count limit


class S3Upload:
    """``with S3Upload("s3://b/k") as up: up.write(data) ...`` -> the object exists after."""

    def __init__(
        self,
        url: str,
        *,
        part_size: int = 16 * MiB,
        concurrency: int = 4,
        options: RemoteOptions | None = None,
    ) -> None:
        if not MIN_PART <= part_size <= 5 * 1024 * MiB:
            raise E.InputError(f"upload part_size: {part_size} is outside [{MIN_PART}, 5 GiB]")
        if not 1 <= concurrency <= 64:
            raise E.InputError(f"upload concurrency: {concurrency} is outside [1, 64]")
        self.url = parse_s3_url(url)
        self.name = str(self.url)
        self.part_size = part_size
        self.options = options or RemoteOptions()
        self._client = make_client(self.options, pool_connections=concurrency + 1)
        self._closed = threading.Event()  # set on abort: stops retries of parts in flight
        self._rng = random.Random()
        self._first = bytearray()  # part 1, held until complete() so patch() can reach it
        self._buf = bytearray()  # the part being filled (part 2 on)
        self._size = 0
        self._next_part = 2
        self._inflight: list[Future[dict[str, Any]]] = []
        self._parts: list[dict[str, Any]] = []
        self._pool = ThreadPoolExecutor(concurrency, thread_name_prefix="wstream-upload")
        self._slots = threading.Semaphore(concurrency)
        self._state = "open"  # open -> complete | aborted
        self._upload_id = ""
        try:
            resp = self._call(
                "create upload",
                lambda: self._client.create_multipart_upload(
                    Bucket=self.url.bucket, Key=self.url.key
                ),
            )
            self._upload_id = str(resp["UploadId"])
        except BaseException:
            self._shutdown()
            raise

    @property
    def size(self) -> int:
        """Bytes written so far."""
        return self._size

    def write(self, data: bytes | bytearray | memoryview) -> int:
        """Append ``data``; full parts are uploaded in the background."""
        self._check_open()
        view = memoryview(data).cast("B")
        n = len(view)
        if len(self._first) < self.part_size:
            take = min(len(view), self.part_size - len(self._first))
            self._first += view[:take]
            view = view[take:]
        while len(view):
            take = min(len(view), self.part_size - len(self._buf))
            self._buf += view[:take]
            view = view[take:]
            if len(self._buf) == self.part_size:
                self._submit(bytes(self._buf))
                self._buf = bytearray()
        self._size += n
        return n

    def patch(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        """Overwrite written bytes [offset, offset + len(data)); only within the first part."""
        self._check_open()
        end = offset + len(data)
        if offset < 0 or end > len(self._first):
            raise E.InputError(
                f"{self.name}: patch of bytes [{offset}, {end}) must lie within the first "
                f"{len(self._first)} bytes (the part still held)"
            )
        self._first[offset:end] = data

    def complete(self) -> str:
        """Upload what is left and assemble the object; returns its ETag. Aborts on failure."""
        self._check_open()
        try:
            if self._buf:
                self._submit(bytes(self._buf))
                self._buf = bytearray()
            # part 1 may be the only (and so the smallest) part; S3 allows a small last part only
            first = self._upload_part(1, bytes(self._first))
            for f in self._inflight:
                self._parts.append(f.result())
            parts = sorted([first, *self._parts], key=lambda p: int(p["PartNumber"]))
            resp = self._call(
                "complete upload",
                lambda: self._client.complete_multipart_upload(
                    Bucket=self.url.bucket,
                    Key=self.url.key,
                    UploadId=self._upload_id,
                    MultipartUpload={"Parts": parts},
                ),
            )
        except BaseException as exc:
            self.abort()
            if isinstance(exc, E.WStreamError) or not isinstance(exc, Exception):
                raise  # named errors, and KeyboardInterrupt / SystemExit (SIGTERM) as they are
            raise E.UploadError(f"{self.name}: upload failed and was aborted ({exc})") from exc
        self._state = "complete"
        self._shutdown()
        return str(resp["ETag"])

    def abort(self) -> None:
        """Stop part uploads, delete the upload and its parts; idempotent."""
        if self._state != "open":
            return
        self._state = "aborted"
        self._closed.set()
        self._pool.shutdown(wait=True, cancel_futures=True)
        try:
            # its own short retry loop: the source's "closed" flag is set, on purpose
            retrying(
                self.options.retry,
                f"{self.name}: abort upload",
                self._abort_once,
                threading.Event(),
                self._rng,
            )
        finally:
            self._shutdown()

    def __enter__(self) -> S3Upload:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            if self._state == "open":
                self.complete()
        else:
            self.abort()

    # --- machinery ------------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._state != "open":
            raise E.UploadError(f"{self.name}: upload is {self._state}")
        for f in self._inflight:  # surface a failed part early, not only at complete()
            if f.done() and f.exception() is not None:
                self.abort()
                raise E.UploadError(f"{self.name}: a part failed: {f.exception()}")

    def _submit(self, data: bytes) -> None:
        if self._next_part > MAX_PARTS:
            raise E.InputError(
                f"{self.name}: more than {MAX_PARTS} parts of {self.part_size} bytes; "
                "use a larger part_size"
            )
        number = self._next_part
        self._next_part += 1
        self._slots.acquire()  # backpressure: at most `concurrency` parts held in flight
        try:
            future = self._pool.submit(self._upload_part, number, data)
        except BaseException:
            self._slots.release()
            raise
        future.add_done_callback(lambda _: self._slots.release())
        self._inflight.append(future)

    def _upload_part(self, number: int, data: bytes) -> dict[str, Any]:
        resp = self._call(
            f"part {number}",
            lambda: self._client.upload_part(
                Bucket=self.url.bucket,
                Key=self.url.key,
                UploadId=self._upload_id,
                PartNumber=number,
                Body=data,
            ),
        )
        return {"PartNumber": number, "ETag": resp["ETag"]}

    def _abort_once(self) -> None:
        try:
            self._client.abort_multipart_upload(
                Bucket=self.url.bucket, Key=self.url.key, UploadId=self._upload_id
            )
        except Exception as exc:
            failure = classify(exc, f"{self.name}: abort upload")
            if isinstance(failure, E.ObjectNotFound):
                return  # already gone
            raise failure from None

    def _call(self, what: str, request: Any) -> Any:
        out: list[Any] = []

        def once() -> None:
            try:
                out.append(request())
            except Retryable:
                raise
            except Exception as exc:
                raise classify(exc, f"{self.name}: {what}") from None

        retrying(self.options.retry, f"{self.name}: {what}", once, self._closed, self._rng)
        return out[0]

    def _shutdown(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._client.close()


class UploadFile:
    """The writer's sink (:class:`~wstream.container.writer.Sink`) over an :class:`S3Upload`.

    The writer writes forward only, except its preamble, which it writes last at offset 0:
    a write at the current end appends, a write past it appends zeros first (the alignment
    padding between chunks), and a write below it is a :meth:`S3Upload.patch` (the first part
    is held back until complete, so offset 0 is always reachable)."""

    def __init__(self, url: str, *, part_size: int = 16 * MiB, concurrency: int = 4) -> None:
        self.upload = S3Upload(url, part_size=part_size, concurrency=concurrency)
        self.name = self.upload.name

    def pwrite_all(self, data: bytes | bytearray | memoryview, offset: int) -> None:
        view = memoryview(data).cast("B")
        end = self.upload.size
        if offset < end:
            if offset + len(view) > end:
                raise E.UploadError(
                    f"{self.name}: write of bytes [{offset}, {offset + len(view)}) overlaps the "
                    f"end ({end}): only whole rewrites of bytes already written can be patched"
                )
            self.upload.patch(offset, view)
            return
        gap = offset - end
        while gap:
            n = min(gap, MiB)
            self.upload.write(bytes(n))
            gap -= n
        self.upload.write(view)

    def truncate(self, size: int) -> None:
        if size != self.upload.size:
            raise E.UploadError(
                f"{self.name}: cannot truncate an upload of {self.upload.size} bytes to {size}"
            )

    def commit(self) -> None:
        self.upload.complete()

    def discard(self) -> None:
        self.upload.abort()
