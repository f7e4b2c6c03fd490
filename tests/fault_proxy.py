"""A loopback TCP proxy in front of the S3 server that counts HTTP requests and injects faults.

It understands just enough HTTP/1.1 to see request boundaries (a request line, headers, a body
of Content-Length bytes; clients here do not pipeline, so a new request means the previous
response was read): that lets it count requests, answer some itself, and apply a fault to one
response. Responses are otherwise piped through byte for byte.

Faults, each for the next ``n`` requests that match ``proxy.match`` (default: every request):

- ``refuse(n)``: reset the connection instead of forwarding the request (a dropped connection);
- ``fail(n, status=503, code="SlowDown")``: answer with that S3 error, upstream never sees it;
- ``truncate(n, after)``: close the connection after ``after`` bytes of the response (a short
  body, or cut headers if ``after`` is small);
- ``stall(n, after)``: stop forwarding after ``after`` bytes of the response, keep the socket
  open (the client's read timeout must fire);

and, for every response while set: ``delay`` seconds before forwarding each request, and a
``bandwidth`` cap in bytes/s shared by all connections (a link). ``burst`` seconds of unused link
time may be made up later (a link's buffers): without it, every oversleep of the pacing thread
is lost, and at high rates (1 GB/s: 16 us per 16 KiB piece) the link would run far below its cap.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Seen:
    method: str
    target: str
    headers: dict[str, str]  # lower-case names
    fault: str  # "" when forwarded untouched


@dataclass
class _Fault:
    kind: str  # refuse | fail | truncate | stall
    count: int
    after: int = 0
    status: int = 503
    code: str = "SlowDown"


@dataclass
class _Conn:
    client: socket.socket
    upstream: socket.socket | None = None
    cut_after: int | None = None  # response bytes still to forward before the fault
    cut_kind: str = ""
    closed: threading.Event = field(default_factory=threading.Event)


class FaultProxy:
    def __init__(self, upstream: str) -> None:
        host, _, port = upstream.removeprefix("http://").partition(":")
        self.upstream = (host, int(port))
        self.match: Callable[[Seen], bool] = lambda seen: True
        self.delay = 0.0
        self.bandwidth: float | None = None
        self.burst = 0.0
        self.seen: list[Seen] = []
        self.connections = 0
        self._faults: list[_Fault] = []
        self._lock = threading.Lock()
        self._link_free_at = 0.0  # token bucket of the shared bandwidth cap
        self._conns: list[_Conn] = []
        self._threads: list[threading.Thread] = []
        self._stopping = threading.Event()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.endpoint = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        self._spawn(self._accept)

    # --- faults --------------------------------------------------------------------------------

    def refuse(self, n: int) -> None:
        self._add(_Fault("refuse", n))

    def fail(self, n: int, status: int = 503, code: str = "SlowDown") -> None:
        self._add(_Fault("fail", n, status=status, code=code))

    def truncate(self, n: int, after: int) -> None:
        self._add(_Fault("truncate", n, after=after))

    def stall(self, n: int, after: int) -> None:
        self._add(_Fault("stall", n, after=after))

    def clear(self) -> None:
        with self._lock:
            self._faults.clear()
            self.seen.clear()
        self.delay, self.bandwidth, self.burst = 0.0, None, 0.0

    def active(self) -> int:
        """Client connections still open."""
        with self._lock:
            return sum(not c.closed.is_set() for c in self._conns)

    def close(self) -> None:
        self._stopping.set()
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)  # wakes accept(); close() alone does not
        self._listener.close()
        with self._lock:
            conns = list(self._conns)
        for c in conns:
            self._close(c)
        for t in self._threads:
            t.join(5)

    def __enter__(self) -> FaultProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- machinery -----------------------------------------------------------------------------

    def _add(self, fault: _Fault) -> None:
        with self._lock:
            self._faults.append(fault)

    def _take(self, seen_match: bool) -> _Fault | None:
        with self._lock:
            if not seen_match:
                return None
            for f in self._faults:
                if f.count > 0:
                    f.count -= 1
                    return f
        return None

    def _spawn(self, target: Callable[..., None], *args: object) -> None:
        t = threading.Thread(target=target, args=args, daemon=True, name="fault-proxy")
        t.start()
        self._threads.append(t)

    def _accept(self) -> None:
        while not self._stopping.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            conn = _Conn(client)
            with self._lock:
                self.connections += 1
                self._conns.append(conn)
            self._spawn(self._requests, conn)

    def _close(self, conn: _Conn, reset: bool = False) -> None:
        conn.closed.set()
        for s in (conn.client, conn.upstream):
            if s is None:
                continue
            with contextlib.suppress(OSError):
                if reset:  # RST instead of FIN: the client sees "connection reset by peer"
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                s.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                s.close()

    def _requests(self, conn: _Conn) -> None:
        """Read requests from the client; forward, answer or fault each."""
        buf = b""
        try:
            while not conn.closed.is_set():
                while b"\r\n\r\n" not in buf:
                    data = conn.client.recv(65536)
                    if not data:
                        return
                    buf += data
                head, _, buf = buf.partition(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                method, target, _ = lines[0].split(" ", 2)
                headers = {}
                for line in lines[1:]:
                    name, _, value = line.partition(":")
                    headers[name.strip().lower()] = value.strip()
                length = int(headers.get("content-length", "0"))
                while len(buf) < length:
                    data = conn.client.recv(65536)
                    if not data:
                        return
                    buf += data
                body, buf = buf[:length], buf[length:]
                probe = Seen(method, target, headers, "")
                fault = self._take(self.match(probe))
                with self._lock:
                    self.seen.append(Seen(method, target, headers, fault.kind if fault else ""))
                if self.delay:
                    time.sleep(self.delay)
                if fault is not None and fault.kind == "refuse":
                    self._close(conn, reset=True)
                    return
                if fault is not None and fault.kind == "fail":
                    xml = (
                        f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{fault.code}</Code>'
                        f"<Message>injected by the fault proxy</Message></Error>"
                    ).encode()
                    conn.client.sendall(
                        f"HTTP/1.1 {fault.status} {fault.code}\r\nContent-Type: application/xml"
                        f"\r\nContent-Length: {len(xml)}\r\n\r\n".encode()
                        + xml
                    )
                    continue
                if conn.upstream is None:
                    conn.upstream = socket.create_connection(self.upstream)
                    self._spawn(self._responses, conn)
                if fault is not None:  # truncate / stall: counted from this response's start
                    conn.cut_after, conn.cut_kind = fault.after, fault.kind
                else:
                    conn.cut_after, conn.cut_kind = None, ""
                conn.upstream.sendall(head + b"\r\n\r\n" + body)
        except OSError:
            return
        finally:
            self._close(conn)  # also ends a stall: the client gave up on this connection

    def _responses(self, conn: _Conn) -> None:
        """Pipe upstream -> client, with the bandwidth cap and this response's fault."""
        assert conn.upstream is not None
        try:
            while not conn.closed.is_set():
                data = conn.upstream.recv(65536)
                if not data:
                    break
                if conn.cut_after is not None:
                    keep = data[: conn.cut_after]
                    conn.cut_after -= len(keep)
                    self._send(conn, keep)
                    if conn.cut_after == 0:
                        if conn.cut_kind == "truncate":
                            break
                        conn.closed.wait()  # stall: hold the socket until someone closes it
                        break
                    continue
                self._send(conn, data)
        except OSError:
            pass
        finally:
            self._close(conn)

    def _send(self, conn: _Conn, data: bytes) -> None:
        for i in range(0, len(data), 16384):
            piece = data[i : i + 16384]
            if self.bandwidth:
                with self._lock:
                    now = time.monotonic()
                    start = max(now - self.burst, self._link_free_at)
                    self._link_free_at = start + len(piece) / self.bandwidth
                    wait = self._link_free_at - now
                if wait > 0:
                    time.sleep(wait)
            conn.client.sendall(piece)
