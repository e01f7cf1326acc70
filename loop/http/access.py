"""Who may ask what: the client allowlist, the `Host` check against DNS rebinding, the API
token and the cross-site guard (docs/http-front.md, "Access control")."""

from __future__ import annotations

import functools
import hmac
import ipaddress
import re
import socket
from urllib.parse import urlsplit

from loop.http.envelope import HttpError
from loop.http.server import Request

BACKUP_PATH = "/api/backup"     # a GET that still needs the token: it hands out the library
_HOST_NAME = re.compile(r"[a-z0-9._%:-]+")
# ---- access rules ------------------------------------------------------------------------
SAFE_METHODS = ("GET", "HEAD")  # everything else changes something: token and Origin rules


@functools.lru_cache(maxsize=64)  # every request has one; a LAN has few
def split_host(value: str) -> tuple[str, int | None] | None:
    """`name[:port]` or `[v6][:port]` as (lower-case name, port); None when malformed."""
    value = value.strip()
    if value.startswith("["):
        name, sep, rest = value[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            return None
        port = rest[1:] if rest else None
    else:
        name, sep, port = value.partition(":")
        port = port if sep else None
    if port is not None and not re.fullmatch(r"[0-9]{1,5}", port):
        return None
    name = name.rstrip(".").lower()
    if not name or not _HOST_NAME.fullmatch(name):
        return None
    return name, int(port) if port else None


@functools.lru_cache(maxsize=64)
def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def machine_names(hostname: str | None = None) -> set[str]:
    """The names this device answers to: localhost, its host name, `<hostname>.local`."""
    name = (hostname or socket.gethostname()).rstrip(".").lower()
    short = name.split(".")[0]
    return {"localhost", name, short, f"{name}.local", f"{short}.local"}


class Access:
    """The access rules of the design's security paragraph, for one `web` config."""

    def __init__(self, web, hostname: str | None = None):
        self.networks = [ipaddress.ip_network(n, strict=False) for n in web.allow_networks]
        self.token = web.api_token.encode("utf-8")
        self.any_host = "*" in web.allowed_hosts
        extra = {parsed[0] for parsed in map(split_host, web.allowed_hosts) if parsed}
        self.hosts = machine_names(hostname) | extra

    def check_network(self, request: Request) -> None:
        """`web.allow_networks`: when set, other client addresses get 403."""
        if not self.networks:
            return
        try:
            ip = ipaddress.ip_address(request.client.split("%", 1)[0])
            ip = getattr(ip, "ipv4_mapped", None) or ip
        except ValueError:
            ip = None
        if ip is None or not any(ip in net for net in self.networks):
            raise HttpError(403, "forbidden", "this client address is not in web.allow_networks")

    def check_host(self, request: Request) -> None:
        """The DNS-rebinding guard: the Host must be an IP literal or a name of this device."""
        values = request.headers.get_all("Host") or []
        if not values:
            if request.version >= "HTTP/1.1":
                raise HttpError(400, "bad_request", "an HTTP/1.1 request needs a Host header")
            return
        parsed = split_host(values[0]) if len(values) == 1 else None
        if parsed is None:
            raise HttpError(400, "bad_request", "malformed or repeated Host header")
        name = parsed[0]
        if not (self.any_host or name in self.hosts or _is_ip(name)):
            raise HttpError(421, "forbidden", f"this device does not answer to the name "
                           f"{name[:100]!r}; an operator can add it to web.allowed_hosts")

    def check_token(self, request: Request) -> None:
        """`web.api_token`: changes (and the backup download) need `Authorization: Bearer`."""
        if not self.token:
            return
        if request.method in SAFE_METHODS and request.path.rstrip("/") != BACKUP_PATH:
            return
        scheme, _, given = request.headers.get("Authorization", "").strip().partition(" ")
        given = given.strip()
        if scheme.lower() != "bearer" or not given:
            raise HttpError(401, "unauthorized", "this request needs the API token: "
                           "Authorization: Bearer <web.api_token>",
                           {"WWW-Authenticate": 'Bearer realm="loop"'})
        # header values arrive as latin-1 text: back to the bytes the client sent
        if not hmac.compare_digest(given.encode("latin-1", "replace"), self.token):
            raise HttpError(401, "unauthorized", "wrong API token",
                           {"WWW-Authenticate": 'Bearer realm="loop", error="invalid_token"'})

    def check_origin(self, request: Request) -> None:
        """The cross-site guard: a browser may not change anything from another site's page.
        Requests without `Origin` (curl, scripts) pass; `Origin: null` does not."""
        if request.method in SAFE_METHODS:
            return
        if request.headers.get("Sec-Fetch-Site", "").strip().lower() == "cross-site":
            raise HttpError(403, "forbidden", "cross-site requests cannot change anything")
        origins = request.headers.get_all("Origin") or []
        if not origins:
            return
        if len(origins) > 1 or not _same_origin(origins[0], request.headers.get("Host")):
            raise HttpError(403, "forbidden", "requests from another site's page cannot "
                           "change anything")


def _same_origin(origin: str, host: str | None) -> bool:
    parts = urlsplit(origin.strip())
    if parts.scheme not in ("http", "https") or host is None:
        return False
    theirs, ours = split_host(parts.netloc), split_host(host)
    if theirs is None or ours is None:
        return False
    default = 443 if parts.scheme == "https" else 80
    return theirs[0] == ours[0] and (theirs[1] or default) == (ours[1] or default)


