"""The systemd notify protocol (`sd_notify`) over a raw AF_UNIX datagram socket.

Stdlib only: one datagram of `KEY=value` lines per message, sent without blocking. Every send
reports success as a bool and never raises, because a notification that cannot be delivered
must never take the service down with it.
"""

from __future__ import annotations

import os
import socket
import threading
import time

_ENV_KEYS = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")


def _one_line(text: str) -> str:
    # A newline would start a new KEY=value assignment inside the datagram.
    return " ".join(text.splitlines()).strip()


class Notifier:
    """Sends READY/STATUS/WATCHDOG/STOPPING/RELOADING to systemd; a no-op outside systemd."""

    def __init__(self, address: str | None, watchdog_usec: int | None = None) -> None:
        """`address` is NOTIFY_SOCKET (a path, or `@name` for the abstract namespace)."""
        self.address = address or None
        self.enabled = self.address is not None
        # Pinging with nowhere to send to is meaningless, so no socket means no watchdog.
        self.watchdog_usec = watchdog_usec if self.enabled else None
        self.watchdog_pings = 0
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()  # guards only the lazy creation and close of the socket

    @classmethod
    def from_environ(cls, environ=os.environ) -> Notifier:
        """Read NOTIFY_SOCKET, WATCHDOG_USEC and WATCHDOG_PID, then remove them from environ.

        Removing them keeps children (ffmpeg) from inheriting them and notifying on our behalf.
        """
        values = {key: environ.pop(key, None) for key in _ENV_KEYS}
        return cls(values["NOTIFY_SOCKET"],
                   _watchdog_usec(values["WATCHDOG_USEC"], values["WATCHDOG_PID"]))

    def watchdog_interval(self) -> float | None:
        """Seconds between watchdog pings: a third of WATCHDOG_USEC, or None when off."""
        if self.watchdog_usec is None:
            return None
        return self.watchdog_usec / 3 / 1_000_000

    def send(self, *lines: str) -> bool:
        """Send the lines as one datagram; False when disabled or on any OSError."""
        if not self.enabled or not lines:
            return False
        payload = "\n".join(lines).encode("utf-8", "replace")
        try:
            sock = self._socket()
            # MSG_DONTWAIT: a receiver whose queue is full gives EAGAIN instead of blocking.
            sock.sendto(payload, socket.MSG_DONTWAIT, self._sockaddr())
        except OSError:
            return False
        return True

    def ready(self, status: str | None = None) -> bool:
        """READY=1, with STATUS= when given."""
        if status is None:
            return self.send("READY=1")
        return self.send("READY=1", "STATUS=" + _one_line(status))

    def stopping(self) -> bool:
        """STOPPING=1: shutdown has begun."""
        return self.send("STOPPING=1")

    def reloading(self) -> bool:
        """RELOADING=1 + MONOTONIC_USEC (for `Type=notify-reload`); follow with ready()."""
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self.send("RELOADING=1", f"MONOTONIC_USEC={usec}")

    def status(self, text: str) -> bool:
        """STATUS=<text>, folded onto one line."""
        return self.send("STATUS=" + _one_line(text))

    def watchdog(self) -> bool:
        """WATCHDOG=1; counts delivered pings in `watchdog_pings`."""
        sent = self.send("WATCHDOG=1")
        if sent:
            self.watchdog_pings += 1
        return sent

    def close(self) -> None:
        """Close the socket; a later send opens a new one."""
        with self._lock:
            sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()

    def _socket(self) -> socket.socket:
        sock = self._sock
        if sock is None:
            with self._lock:
                if self._sock is None:
                    self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                sock = self._sock
        return sock

    def _sockaddr(self) -> str | bytes:
        assert self.address is not None
        if self.address.startswith("@"):
            # Linux abstract namespace: the name is the address with the '@' as a NUL byte.
            return b"\0" + self.address[1:].encode()
        return self.address


def _watchdog_usec(usec: str | None, pid: str | None) -> int | None:
    """WATCHDOG_USEC as a positive int, or None when absent, invalid or meant for another pid."""
    if pid is not None:
        # systemd sets WATCHDOG_PID so a forked child that inherited the variables stays quiet.
        try:
            if int(pid) != os.getpid():
                return None
        except ValueError:
            return None
    try:
        value = int(usec) if usec is not None else 0
    except ValueError:
        return None
    return value if value > 0 else None
