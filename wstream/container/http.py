"""``https://`` / ``http://`` URLs that serve byte ranges (a web server, a CDN, a presigned S3
URL) as a byte source, through urllib3 (already beneath botocore, so no new dependency).

Same contract as :class:`~wstream.container.s3.S3Source`: the open is one ranged GET (size from
Content-Range, version from the ETag, or Last-Modified when the server sends no ETag), every later
GET carries ``If-Match`` (or ``If-Unmodified-Since``) and its answer must show the same version and
size. A server that answers a range with the whole body (200) does not serve ranges: a named
RangeError, not a download of everything.
"""

from __future__ import annotations

import urllib3
from urllib3.exceptions import (
    ConnectTimeoutError,
    HTTPError,
    ProtocolError,
    ReadTimeoutError,
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


def is_http_url(url: str) -> bool:
    return url.startswith(("https://", "http://"))


def _transport_error(exc: HTTPError) -> Retryable:
    if isinstance(exc, ReadTimeoutError | ConnectTimeoutError):
        return Retryable(E.RemoteTimeout, f"timed out ({exc})")
    if isinstance(exc, ProtocolError):  # reset mid-response, or fewer bytes than Content-Length
        return Retryable(E.ShortBody, f"response broke off ({exc})")
    return Retryable(E.RemoteUnavailable, f"connection failed ({exc})")


class HttpSource(RemoteSource):
    """A read-only resource behind an HTTP(S) URL that honours ``Range``."""

    def __init__(self, url: str, options: RemoteOptions | None = None) -> None:
        if not is_http_url(url):
            raise E.InvalidURL(f"url {url!r}: must start with https:// or http://")
        super().__init__(url.split("?", 1)[0], options or RemoteOptions())  # no query in messages
        self._url = url
        self._pin: dict[str, str] = {}
        self._http = urllib3.PoolManager(
            maxsize=self.options.concurrency + 1,
            timeout=urllib3.Timeout(
                connect=self.options.connect_timeout, read=self.options.read_timeout
            ),
            retries=False,  # RemoteSource retries whole ranges
        )
        try:
            self._retry(f"{self._name}: open", self._open)
        except BaseException:
            self._release()
            raise

    def _request(self, start: int, end: int, what: str) -> urllib3.BaseHTTPResponse:
        headers = {"Range": f"bytes={start}-{end - 1}", "Accept-Encoding": "identity", **self._pin}
        try:
            resp = self._http.request(
                "GET", self._url, headers=headers, preload_content=False, redirect=True
            )
        except HTTPError as exc:
            raise _transport_error(exc) from None
        if resp.status != 206:
            if resp.status == 200:
                resp.close()  # the whole resource is coming: do not read it
                raise E.RangeError(f"{what}: server answered 200, it does not serve byte ranges")
            resp.drain_conn()  # error bodies are small; the connection stays usable
            raise status_error(resp.status, what, f"HTTP {resp.status}")
        return resp

    def _open(self) -> None:
        what = f"{self._name}: open"
        head = max(1, self.options.head_bytes)
        resp = self._request(0, head, what)
        try:
            _, end, total = parse_content_range(resp.headers.get("Content-Range"), what)
            if total is None:
                raise E.RangeError(f"{what}: Content-Range gives no size")
            data = resp.read(end)
        except HTTPError as exc:
            raise _transport_error(exc) from None
        finally:
            resp.release_conn()
        if len(data) != min(head, total):
            raise Retryable(E.ShortBody, f"head of {len(data)} bytes, expected {min(head, total)}")
        etag = resp.headers.get("ETag")
        modified = resp.headers.get("Last-Modified")
        if etag and not etag.startswith("W/"):  # a weak ETag does not promise the same bytes
            self._pin, self._version = {"If-Match": etag}, etag
        elif modified:
            self._pin, self._version = {"If-Unmodified-Since": modified}, modified
        else:
            raise E.RemoteError(
                f"{what}: the server sends neither a strong ETag nor Last-Modified, so a "
                "replaced resource could not be detected"
            )
        self._size, self._head = total, data[: self.options.head_bytes]

    def _get(self, request: Request) -> None:
        what = f"{self._name}: bytes {request.start}-{request.end - 1}"
        resp = self._request(request.start, request.end, what)
        complete = False
        try:
            start, end, total = parse_content_range(resp.headers.get("Content-Range"), what)
            version = resp.headers.get("ETag") if "If-Match" in self._pin else None
            self._check_open(what, total, version)
            if (start, end) != (request.start, request.end):
                raise E.RangeError(f"{what}: server answered bytes {start}-{end - 1}")
            scatter(request, body_reader(resp), self._closed, what)
            complete = True
        except HTTPError as exc:
            raise _transport_error(exc) from None
        finally:
            if complete:
                resp.release_conn()
            else:
                resp.close()  # a half-read body: the connection cannot be reused

    def _release(self) -> None:
        self._http.clear()
