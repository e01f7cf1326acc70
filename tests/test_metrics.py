"""GET /metrics: Prometheus text format 0.0.4, checked by a strict parser written here."""

import dataclasses
import math
import re
import socket

import pytest
from conftest import Client, gif_bytes, make_config, png_bytes, wait_for

from loop.display.headless import HeadlessDriver
from loop.http import metrics
from loop.service.app import App

NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
LABEL = r"[a-zA-Z_][a-zA-Z0-9_]*"
TYPES = ("counter", "gauge", "histogram", "summary", "untyped")


class ParseError(AssertionError):
    pass


def parse_value(text: str) -> float:
    if text in ("NaN", "+Inf", "-Inf"):
        return float(text.replace("Inf", "inf").replace("NaN", "nan"))
    if not re.fullmatch(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?", text):
        raise ParseError(f"bad value {text!r}")
    return float(text)


def parse_labels(text: str, pos: int) -> tuple[dict, int]:
    """Labels starting after '{' at `pos`; returns (labels, position after '}')."""
    labels = {}
    while True:
        if text[pos] == "}" and not labels:
            return labels, pos + 1
        match = re.compile(LABEL).match(text, pos)
        if not match or text[match.end():match.end() + 2] != '="':
            raise ParseError(f"bad label at {text[pos:]!r}")
        name, pos = match.group(), match.end() + 2
        if name in labels:
            raise ParseError(f"label {name} repeated")
        value = []
        while text[pos] != '"':
            if text[pos] == "\\":
                escaped = {"\\": "\\", '"': '"', "n": "\n"}.get(text[pos + 1])
                if escaped is None:
                    raise ParseError(f"bad escape in {text!r}")
                value.append(escaped)
                pos += 2
            elif text[pos] == "\n":
                raise ParseError("raw newline in a label value")
            else:
                value.append(text[pos])
                pos += 1
        labels[name] = "".join(value)
        pos += 1
        if text[pos] == "}":
            return labels, pos + 1
        if text[pos] != ",":
            raise ParseError(f"expected , or }} in {text!r}")
        pos += 1


def parse(text: str) -> dict:
    """{family: {"type", "help", "samples": {frozenset(labels.items()): value}}}.

    Strict: text ends with a newline, no blank lines or free comments, HELP and TYPE at most
    once and before the family's samples, a family's samples contiguous, sample names equal to
    the family name (no histograms here), no duplicate series, no timestamps."""
    if not text.endswith("\n"):
        raise ParseError("the exposition must end with a newline")
    families: dict = {}
    finished: set = set()
    current = None
    for line in text[:-1].split("\n"):
        if not line:
            raise ParseError("blank line")
        if line.startswith("#"):
            match = re.fullmatch(rf"# (HELP|TYPE) ({NAME}) (.*)", line)
            if not match:
                raise ParseError(f"stray comment {line!r}")
            kind, name, rest = match.groups()
            if name in finished or (name in families and families[name]["samples"]):
                raise ParseError(f"{kind} for {name} after its samples")
            family = families.setdefault(name, {"type": "untyped", "help": None,
                                                "samples": {}, "seen": set()})
            if kind in family["seen"]:
                raise ParseError(f"second {kind} for {name}")
            family["seen"].add(kind)
            if kind == "TYPE":
                if rest not in TYPES:
                    raise ParseError(f"unknown type {rest!r}")
                family["type"] = rest
            else:
                if re.search(r"\\[^\\n]", rest.replace("\\\\", "")):
                    raise ParseError(f"bad escape in HELP {rest!r}")
                family["help"] = rest.replace("\\n", "\n").replace("\\\\", "\\")
            if current is not None and current != name:
                finished.add(current)
            current = name
            continue
        match = re.compile(NAME).match(line)
        if not match:
            raise ParseError(f"bad sample line {line!r}")
        name, pos = match.group(), match.end()
        labels = {}
        if line[pos:pos + 1] == "{":
            try:
                labels, pos = parse_labels(line, pos + 1)
            except IndexError:
                raise ParseError(f"unterminated labels in {line!r}") from None
        if line[pos:pos + 1] != " ":
            raise ParseError(f"expected a space in {line!r}")
        parts = line[pos + 1:].split(" ")
        if len(parts) != 1:
            raise ParseError(f"timestamps or extra fields in {line!r}")
        if name in finished or name not in families:
            raise ParseError(f"sample {name} outside its family block")
        if current != name:
            finished.add(current)
            current = name
        key = frozenset(labels.items())
        if key in families[name]["samples"]:
            raise ParseError(f"duplicate series {line!r}")
        families[name]["samples"][key] = parse_value(parts[0])
    return families


def value(families, name, **labels):
    return families[name]["samples"][frozenset(labels.items())]


def check_conventions(families) -> None:
    for name, family in families.items():
        assert name.startswith("loop_"), name
        assert family["help"], name
        assert family["type"] in ("counter", "gauge"), name
        if family["type"] == "counter":
            assert name.endswith("_total"), name
            assert all(v >= 0 for v in family["samples"].values()), name
        else:
            assert not name.endswith("_total"), name
        assert not re.search(r"_(mb|kb|ms|percent|celsius_c|minutes)(_|$)", name), name


# ---- the parser and the renderer ---------------------------------------------------------
def test_the_parser_rejects_what_prometheus_rejects():
    good = "# HELP loop_x_total things\n# TYPE loop_x_total counter\nloop_x_total 1\n"
    assert value(parse(good), "loop_x_total") == 1
    for bad in [good[:-1],  # no final newline
                good + "\n",  # blank line
                good + "loop_x_total 2\n",  # duplicate series
                good + "# TYPE loop_x_total counter\n",  # TYPE after samples
                "loop_y 1\n",  # a sample without a family
                good.replace(" 1\n", " one\n"),
                good.replace("loop_x_total 1", 'loop_x_total{a="1} 1'),
                good.replace("loop_x_total 1", 'loop_x_total{a="\\q"} 1'),
                good.replace("loop_x_total 1", "loop_x_total 1 1700000000"),
                "# a comment\n" + good]:
        with pytest.raises(ParseError):
            parse(bad)


def test_rendering_escapes_and_special_values_round_trip():
    out = metrics.Exposition()
    out.gauge("loop_odd", 'help with \\ and\nnewline', 1.5, label='a "quoted" \\ \n value')
    out.gauge("loop_odd", "ignored: the first help wins", math.inf, label="inf")
    out.gauge("loop_odd", "", -math.inf, label="-inf")
    out.gauge("loop_odd", "", None, label="none")
    out.counter("loop_things_total", "things", 3)
    families = parse(out.render())
    assert families["loop_odd"]["help"] == 'help with \\ and\nnewline'
    assert value(families, "loop_odd", label='a "quoted" \\ \n value') == 1.5
    assert value(families, "loop_odd", label="inf") == math.inf
    assert value(families, "loop_odd", label="-inf") == -math.inf
    assert math.isnan(value(families, "loop_odd", label="none"))
    assert families["loop_things_total"]["type"] == "counter"
    with pytest.raises(ValueError):
        out.counter("loop_things", "a counter without _total", 1)
    with pytest.raises(ValueError):
        out.gauge("loop_things_total", "a counter cannot become a gauge", 1)
    with pytest.raises(ValueError):
        out.gauge("loop-bad", "bad name", 1)


# ---- /metrics of a running service -------------------------------------------------------
@pytest.fixture
def notify_path(tmp_path):
    path = str(tmp_path / "notify")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    yield path
    sock.close()


def scrape(client) -> dict:
    reply = client.get("/metrics")
    assert reply.status == 200
    assert reply.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
    families = parse(reply.body.decode("utf-8"))
    check_conventions(families)
    return families


def test_metrics_carry_the_services_numbers(make_app, notify_path):
    app = make_app(environ={"NOTIFY_SOCKET": notify_path, "WATCHDOG_USEC": "300000"},
                   **{"system.monitor_interval_sec": 0.05})
    client = Client(app.server.port)
    for _ in range(3):
        client.get("/api/poll/status")
    assert client.get("/nope/nope").status == 404
    assert client.post("/api/media?name=a.gif", body=gif_bytes(delays=(20, 20, 20))).status \
        == 201
    assert client.post("/api/media?name=bad", body=b"not an image").status == 415
    wait_for(lambda: app.player.frames_shown > 5 and app.notifier.watchdog_pings > 1)

    first = scrape(client)
    assert value(first, "loop_http_requests_total", **{"class": "poll", "status": "200"}) >= 3
    assert value(first, "loop_http_requests_total", **{"class": "none", "status": "404"}) == 1
    assert value(first, "loop_http_requests_total", **{"class": "upload", "status": "201"}) \
        == 1
    assert value(first, "loop_upload_jobs_total", outcome="done") == 1
    assert value(first, "loop_upload_jobs_total", outcome="failed") == 1
    assert value(first, "loop_frames_shown_total") > 5
    assert value(first, "loop_late_frames_total") >= 0
    assert value(first, "loop_display_breaker_state", state="closed") == 1
    assert value(first, "loop_display_breaker_state", state="open") == 0
    assert value(first, "loop_display_breaker_openings_total") == 0
    assert value(first, "loop_watchdog_pings_total") >= 1
    assert value(first, "loop_watchdog_enabled") == 1
    assert value(first, "loop_resident_memory_bytes", process="service") > 5 * 2**20
    assert value(first, "loop_memory_limit_bytes") == app.cfg.system.memory_limit_mb * 2**20
    assert value(first, "loop_uptime_seconds") > 0
    assert value(first, "loop_cpu_seconds_total") > 0
    assert 0 <= value(first, "loop_disk_free_ratio") <= 1
    assert value(first, "loop_library_items") == 1
    assert value(first, "loop_healthy") == 1
    assert value(first, "loop_health_check_status", check="memory") == 0
    for reason in ("connection_limit", "admission", "load_shedding", "rate_limit"):
        assert value(first, "loop_http_rejected_total", reason=reason) == 0
    assert value(first, "loop_heartbeat_age_seconds", thread="display") < 5

    client.get("/api/poll/status")
    second = scrape(client)
    for name, family in first.items():  # counters never go down
        if family["type"] == "counter":
            for labels, before in family["samples"].items():
                assert second[name]["samples"][labels] >= before, (name, labels)
    # the scrape itself is counted, in the poll class
    assert value(second, "loop_http_requests_total", **{"class": "poll", "status": "200"}) \
        > value(first, "loop_http_requests_total", **{"class": "poll", "status": "200"})
    head = client.request("HEAD", "/metrics")
    assert head.status == 200 and head.body == b""


def test_503_and_429_are_counted(make_app):
    app = make_app(**{"system.monitor_interval_sec": 0.05, "web.rate_control_burst": 2,
                      "web.rate_control_per_sec": 0.01})
    client = Client(app.server.port)
    real = app.monitor.measure
    app.monitor.source = lambda: dataclasses.replace(real(), rss_mb=1e6)
    wait_for(lambda: app.monitor.shedding)
    assert client.post("/api/media?name=a.png", body=png_bytes()).status == 503
    refused = [client.post("/api/playback/next").status for _ in range(6)]
    assert refused.count(429) == 4  # a burst of 2, then the limiter says no
    families = scrape(client)
    assert value(families, "loop_http_rejected_total", reason="load_shedding") == 1
    assert value(families, "loop_http_rejected_total", reason="rate_limit") == 4
    assert value(families, "loop_http_requests_total",
                 **{"class": "control", "status": "429"}) == 4
    assert value(families, "loop_http_requests_total",
                 **{"class": "upload", "status": "503"}) == 1
    assert value(families, "loop_memory_shedding") == 1
    assert value(families, "loop_healthy") == 1  # degraded is not a failure
    assert value(families, "loop_health_check_status", check="memory") == 1
    assert value(families, "loop_gc_runs_total") >= 1


class BrokenPanel(HeadlessDriver):
    name = "broken"

    def __init__(self):
        super().__init__(width=64, height=32)

    def show(self, frame):
        raise OSError("panel unplugged")


def test_breaker_openings_and_sensors(tmp_path):
    app = App(make_config(tmp_path, **{"system.monitor_interval_sec": 0.05}), environ={},
              driver=BrokenPanel())
    app.start()
    try:
        root = tmp_path / "root"
        zone = root / "sys/class/thermal/thermal_zone0"
        zone.mkdir(parents=True)
        (zone / "temp").write_text("61500\n")
        throttled = root / "sys/devices/platform/soc/soc:firmware/get_throttled"
        throttled.parent.mkdir(parents=True)
        throttled.write_text("50000\n")
        app.monitor.sys_root = str(root)
        client = Client(app.server.port)
        client.post("/api/media?name=a.gif", body=gif_bytes(delays=(20, 20, 20)))
        wait_for(lambda: app.breaker.state == "open")
        wait_for(lambda: app.monitor.latest.throttled is not None)
        families = scrape(client)
        assert value(families, "loop_display_breaker_state", state="open") == 1
        assert value(families, "loop_display_breaker_openings_total") >= 1
        assert value(families, "loop_health_check_status", check="display") == 1
        assert value(families, "loop_soc_temperature_celsius") == 61.5
        assert value(families, "loop_firmware_throttled", flag="under_voltage",
                     when="since_boot") == 1
        assert value(families, "loop_firmware_throttled", flag="under_voltage",
                     when="now") == 0
    finally:
        app.stop()
