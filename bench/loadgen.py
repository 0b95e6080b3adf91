"""A minimal keep-alive HTTP/1.1 client over raw sockets, so the client adds as little as possible
to what the benchmarks measure (httpx alone costs more than the server path under test)."""

from __future__ import annotations

import socket


def build_request(
    method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None
) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1"]
    for k, v in (headers or {}).items():
        lines.append(f"{k}: {v}")
    if body or method == "POST":
        lines.append("Content-Type: application/json")
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def _complete(buf: bytes) -> int:
    """Length of the first complete response in ``buf``, or 0 if it is not complete yet."""
    head_end = buf.find(b"\r\n\r\n")
    if head_end < 0:
        return 0
    head = buf[:head_end].lower()
    start = head_end + 4
    idx = head.find(b"content-length:")
    if idx >= 0:
        eol = head.find(b"\r\n", idx)
        length = int(head[idx + 15 : eol if eol > 0 else None])
        return start + length if len(buf) >= start + length else 0
    if b"transfer-encoding: chunked" in head:
        if buf.startswith(b"0\r\n\r\n", start):
            return start + 5
        end = buf.find(b"\r\n0\r\n\r\n", start)
        return end + 7 if end >= 0 else 0
    raise AssertionError("response without Content-Length or chunked encoding")


class Conn:
    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def exchange(self, request: bytes) -> tuple[int, bytes, bytes]:
        """One request: (status, lower-cased head, body)."""
        self.sock.sendall(request)
        buf = b""
        while True:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("server closed the connection")
            buf += chunk
            n = _complete(buf)
            if n:
                head, _, body = buf[:n].partition(b"\r\n\r\n")
                return int(head[9:12]), head.lower(), body

    def roundtrip(self, request: bytes) -> bytes:
        """One request that must answer 200; returns the body."""
        status, head, body = self.exchange(request)
        if status != 200:
            raise AssertionError(head[:200] + body[:300])
        return body

    def close(self) -> None:
        self.sock.close()


def percentile(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]
