"""The addresses LOOP answers at, for people: the boot and "no media" screens and the start-up
line show these, so what a person types is what really works."""

from __future__ import annotations

import ipaddress
import socket

import psutil

ALL_INTERFACES = ("", "0.0.0.0", "::")


def route_address() -> str | None:
    """The address the default route leaves from (a UDP connect sends no packet), or None."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.connect(("192.0.2.1", 9))  # TEST-NET-1: a routing lookup only
            address = probe.getsockname()[0]
    except OSError:
        return None
    return None if ipaddress.ip_address(address).is_loopback else address


def lan_addresses(interfaces=None, stats=None, fallback=route_address) -> list[str]:
    """The IPv4 addresses of the interfaces that are up, loopback and link-local left out.

    `interfaces`/`stats` are psutil's `net_if_addrs()`/`net_if_stats()` (tests pass their
    own). Under the systemd unit, which allows no AF_NETLINK, psutil cannot list interfaces:
    then the default route's address (`fallback()`) is the one shown."""
    try:
        interfaces = psutil.net_if_addrs() if interfaces is None else interfaces
        stats = psutil.net_if_stats() if stats is None else stats
    except OSError:
        interfaces, stats = {}, {}
    found = []
    for name, addresses in sorted(interfaces.items()):
        state = stats.get(name)
        if state is not None and not state.isup:
            continue
        for address in addresses:
            if address.family != socket.AF_INET:
                continue
            ip = ipaddress.ip_address(address.address)
            if not (ip.is_loopback or ip.is_link_local) and address.address not in found:
                found.append(address.address)
    if not found and (routed := fallback()):
        found.append(routed)
    return found


def reachable(host: str, port: int, interfaces=None, stats=None,
              fallback=route_address) -> list[str]:
    """`address[:port]` for each address a client can use to reach a server bound to
    `host` (port 80 is left out): the bound address itself, or every LAN address when it is
    bound to all interfaces (loopback when there is no LAN at all)."""
    suffix = "" if port == 80 else f":{port}"
    if host in ALL_INTERFACES:
        hosts = lan_addresses(interfaces, stats, fallback) or ["127.0.0.1"]
    else:
        hosts = [f"[{host}]" if ":" in host else host]
    return [f"{h}{suffix}" for h in hosts]
