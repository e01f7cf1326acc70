"""Raw-socket HTTP for tests that need what http.client will not do: broken framing, slow
heads and bodies, interim responses, watching the server close the connection."""

from __future__ import annotations

import json
import socket
import time


def connect(port: int, source: str | None = None, timeout: float = 10) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    if source:
        sock.bind((source, 0))
    sock.connect(("127.0.0.1", port))
    return sock


class RawReply:
    def __init__(self, status: int, headers: dict, body: bytes, interim: list[int]):
        self.status, self.headers, self.body, self.interim = status, headers, body, interim

    @property
    def json(self):
        return json.loads(self.body)

    def __repr__(self):
        return f"<RawReply {self.status} {self.body[:200]!r}>"


class _Reader:
    def __init__(self, sock):
        self.sock, self.buf = sock, b""

    def fill(self) -> bool:
        chunk = self.sock.recv(65536)
        self.buf += chunk
        return bool(chunk)

    def head(self) -> bytes:
        while b"\r\n\r\n" not in self.buf:
            if not self.fill():
                raise ConnectionError(f"closed before a full head: {self.buf[:200]!r}")
        head, _, self.buf = self.buf.partition(b"\r\n\r\n")
        return head

    def exactly(self, n: int) -> bytes:
        while len(self.buf) < n:
            if not self.fill():
                raise ConnectionError("closed inside a body")
        out, self.buf = self.buf[:n], self.buf[n:]
        return out


def read_response(sock: socket.socket, head_request: bool = False) -> RawReply:
    """One response (after any 1xx interim ones, which are listed in `interim`)."""
    reader = _Reader(sock)
    interim = []
    while True:
        lines = reader.head().decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {}
        for line in lines[1:]:
            key, _, value = line.partition(":")
            headers[key.strip().lower()] = value.strip()
        if 100 <= status < 200:
            interim.append(status)
            continue
        length = 0 if head_request else int(headers.get("content-length", "0"))
        return RawReply(status, headers, reader.exactly(length), interim)


def closed_by_server(sock: socket.socket, within: float) -> bool:
    """True when the server closes (EOF or reset) within `within` seconds; data is ignored."""
    deadline = time.monotonic() + within
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        sock.settimeout(left)
        try:
            if not sock.recv(65536):
                return True
        except TimeoutError:
            return False
        except OSError:
            return True


def exchange(port: int, data: bytes, source: str | None = None, timeout: float = 10,
             close_wait: float = 3.0):
    """Send `data`, read one response; returns (reply, closed) where `closed` says whether the
    server closed the connection within `close_wait` seconds of answering."""
    with connect(port, source, timeout) as sock:
        sock.sendall(data)
        reply = read_response(sock)
        return reply, close_wait > 0 and closed_by_server(sock, close_wait)


def request_bytes(method: str, path: str, headers: dict | list | None = None,
                  body: bytes = b"", host: str | None = "127.0.0.1",
                  version: str = "HTTP/1.1") -> bytes:
    lines = [f"{method} {path} {version}"]
    if host is not None:
        lines.append(f"Host: {host}")
    items = headers.items() if isinstance(headers, dict) else (headers or [])
    lines += [f"{k}: {v}" for k, v in items]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8") + body
