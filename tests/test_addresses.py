"""The addresses LOOP shows people (boot screen, "no media" screen, start-up line) work."""

import re
import socket
from collections import namedtuple

from conftest import Client, wait_for, write_config

from loop.system.addresses import lan_addresses, reachable

Addr = namedtuple("Addr", "family address netmask broadcast ptp")
Stats = namedtuple("Stats", "isup")


def v4(address):
    return Addr(socket.AF_INET, address, "255.255.255.0", None, None)


INTERFACES = {"lo": [v4("127.0.0.1")], "eth0": [v4("192.168.1.20")],
              "wlan0": [v4("10.0.0.7"), Addr(socket.AF_INET6, "fe80::1", None, None, None)],
              "usb0": [v4("169.254.3.3")], "down0": [v4("172.16.0.9")]}
STATS = {"lo": Stats(True), "eth0": Stats(True), "wlan0": Stats(True), "usb0": Stats(True),
         "down0": Stats(False)}


def test_lan_addresses_leave_out_loopback_link_local_ipv6_and_interfaces_that_are_down():
    assert lan_addresses(INTERFACES, STATS) == ["192.168.1.20", "10.0.0.7"]


def test_without_netlink_the_default_routes_address_is_shown(monkeypatch):
    def refused():  # the systemd unit allows no AF_NETLINK, so getifaddrs() fails
        raise PermissionError(97, "Address family not supported by protocol")

    monkeypatch.setattr("loop.system.addresses.psutil.net_if_addrs", refused)
    assert lan_addresses(fallback=lambda: "192.168.1.20") == ["192.168.1.20"]
    assert lan_addresses(fallback=lambda: None) == []


def test_a_server_bound_to_one_address_shows_that_address_only():
    assert reachable("127.0.0.1", 8080, INTERFACES, STATS) == ["127.0.0.1:8080"]
    assert reachable("::1", 8080, INTERFACES, STATS) == ["[::1]:8080"]


def test_a_server_bound_to_all_interfaces_shows_every_lan_address_and_no_port_80():
    assert reachable("0.0.0.0", 80, INTERFACES, STATS) == ["192.168.1.20", "10.0.0.7"]
    assert reachable("::", 8080, INTERFACES, STATS) == ["192.168.1.20:8080", "10.0.0.7:8080"]
    assert reachable("0.0.0.0", 8080, {"lo": [v4("127.0.0.1")]}, {},
                     fallback=lambda: None) == ["127.0.0.1:8080"]


def test_make_run_shows_the_address_it_really_serves(app):
    # make run binds 127.0.0.1: the screens must not show a LAN address nobody can reach
    assert app.url_lines() == [f"127.0.0.1:{app.server.port}"]


def test_every_address_printed_at_start_up_answers(tmp_path, services):
    service = services(write_config(tmp_path / "config.json", tmp_path / "data",
                                    web={"host": "0.0.0.0", "port": 0}))
    # printed just after the "listening" line spawn() waits for
    printed = wait_for(lambda: re.findall(r"open http://([0-9.]+):(\d+)/ on the LAN",
                                          service.stderr()))
    for host, port in printed:
        assert int(port) == service.port
        assert Client(service.port, host=host).get("/api/poll/health").status == 200, host
