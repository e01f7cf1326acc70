"""The MQTT front: one connection to the broker, Home Assistant discovery, state out, commands in.

Two threads, neither of them the display thread:

- paho's network thread (`loop_start()`): connects, reconnects with doubling back-off
  (`mqtt.reconnect_min_sec` .. `reconnect_max_sec`), reads packets and calls back. Callbacks
  only note the connection state and queue what arrived; they never call the player.
- the `mqtt` thread (this module): applies queued commands through the same calls as the HTTP
  API, answers refused ones on `<base>/error`, and publishes state. It looks at the app's
  lock-free snapshots (player status, library view, monitor sample) four times a second while
  connected and publishes a retained message only when a value changed (loop/mqtt/outbox.py
  debounces bursts).

A broker that is down, refuses, is slow or accepts TCP and never answers costs LOOP a log line
and the `mqtt` health check: nothing here is waited for by the display or the API.
"""

from __future__ import annotations

import datetime
import json
import logging
import queue
import socket
import threading
import time

from loop.media.errors import MediaError
from loop.mqtt.commands import MAX_COMMAND_BYTES, Commands, MqttError
from loop.mqtt.outbox import Outbox
from loop.mqtt.topics import NONE, Device, Topics, discovery, hostname_label, option_labels

log = logging.getLogger("loop.mqtt")

MAX_PACKET_BYTES = 64 * 1024  # MQTT 5: the broker drops anything larger meant for LOOP
CHANGE_POLL_SEC = 0.25  # how often the snapshots are compared while connected
IDLE_POLL_SEC = 1.0
INBOX_SIZE = 32  # commands waiting for the worker; more are dropped and counted
ERROR_ANSWERS_PER_SEC = 5  # refused commands answered (and logged) per second, at most
CLOCK_JUMP_SEC = 30.0  # the start time is republished when the wall clock moved this much
REFUSED = "the broker refused the connection"


def load_paho():
    """paho-mqtt's client module, 2.x only (Debian Bookworm's python3-paho-mqtt is 1.6,
    whose callbacks differ); raises MqttError saying what to install."""
    try:
        import paho.mqtt
        import paho.mqtt.client as client
    except ImportError as exc:
        raise MqttError("unavailable", f"paho-mqtt is not installed ({exc}); `make install` "
                        "installs it, or: pip install 'paho-mqtt>=2.1,<3'") from None
    if not hasattr(client, "CallbackAPIVersion"):
        raise MqttError("unavailable", f"paho-mqtt {getattr(paho.mqtt, '__version__', '?')} "
                        "is too old; LOOP needs 2.x: pip install 'paho-mqtt>=2.1,<3'")
    return client


def _client_class(paho):
    class LoopClient(paho.Client):
        """paho's client, keeping the reason of the last failed connection attempt
        (paho's on_connect_fail does not say why)."""

        connect_error: OSError | None = None

        def reconnect(self):
            try:
                return super().reconnect()
            except OSError as exc:
                self.connect_error = exc
                raise

    return LoopClient


def _describe(exc: BaseException | None) -> str:
    if exc is None:
        return "cannot connect"
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve the host name ({exc.strerror or exc})"
    if isinstance(exc, TimeoutError | socket.timeout):
        return "connection timed out"
    return (getattr(exc, "strerror", None) or str(exc) or type(exc).__name__).lower()


def local_iso(seconds: float) -> str:
    return datetime.datetime.fromtimestamp(seconds).astimezone().isoformat(timespec="seconds")


class Counters:
    """Each counter is written by one thread only (received and dropped by paho's thread,
    the rest by the worker)."""

    def __init__(self) -> None:
        self.connects = 0
        self.sent = 0
        self.publish_failed = 0
        self.received = 0
        self.commands_done = 0
        self.commands_refused = 0
        self.commands_dropped = 0

    def as_dict(self) -> dict:
        return dict(vars(self))


class MqttFront:
    """LOOP's MQTT client and Home Assistant device; `start()` never blocks on the broker."""

    def __init__(self, app, *, clock=time.monotonic, wall=time.time):
        self.app = app
        self.cfg = cfg = app.cfg.mqtt
        self.clock, self.wall = clock, wall
        host = hostname_label(socket.gethostname())
        self.hostname = host
        self.topics = Topics(cfg.base_topic or f"loop/{host}", cfg.discovery_prefix)
        self.client_id = cfg.client_id or f"loop-{host}"
        self.counters = Counters()
        self.connected = False
        self.since = wall()  # when the connection last came up or went down
        self.last_error = "connecting"
        self.problem: str | None = None  # why the front cannot run at all
        self.outbox = Outbox(cfg.state_debounce_ms / 1000, clock)
        self.commands = Commands(app)
        self.client = None
        self._inbox: queue.Queue = queue.Queue(INBOX_SIZE)
        self._republish = threading.Event()
        self._stopping = threading.Event()
        self._worker: threading.Thread | None = None
        self._configs: tuple[tuple, dict] | None = None  # (options, discovery messages)
        self._sample = None  # the monitor sample the slow states were made from
        self._seen: tuple | None = None  # the snapshots the last offers were made from
        self._labels_of: tuple | None = None  # (library version, current item) of the labels
        self._slow: dict[str, tuple[str, float | None]] = {}
        self._started_wall = wall() - (clock() - app.started)
        self._answers: list[float] = []  # times of recent error answers (rate limit)
        self._dropped_reported = 0
        self._logged_error = None

    # ---- start / stop ------------------------------------------------------------------
    def start(self) -> None:
        """Start paho's network thread and the worker; a missing library or an unreadable
        password file is logged and shown in health, and LOOP runs on without MQTT."""
        try:
            paho = load_paho()
            password = self._password()
            self.client = self._make_client(paho, password)
        except MqttError as exc:
            self.problem = exc.message
            log.error("mqtt: %s", exc.message)
            return
        properties = None
        if self.cfg.protocol == "5":
            from paho.mqtt.packettypes import PacketTypes
            from paho.mqtt.properties import Properties
            properties = Properties(PacketTypes.CONNECT)
            properties.MaximumPacketSize = MAX_PACKET_BYTES
        self.client.connect_async(self.cfg.host, self.cfg.port, self.cfg.keepalive_sec,
                                  properties=properties)
        self.client.loop_start()
        self._worker = threading.Thread(target=self._run, name="mqtt", daemon=True)
        self._worker.start()
        log.info("mqtt: connecting to %s:%d as %s, topics under %s", self.cfg.host,
                 self.cfg.port, self.client_id, self.topics.base)

    def _password(self) -> str | None:
        if not self.cfg.password_file:
            return self.cfg.password or None
        try:
            with open(self.cfg.password_file, encoding="utf-8") as fh:
                return fh.readline().rstrip("\r\n")
        except (OSError, UnicodeDecodeError) as exc:
            raise MqttError("unavailable", f"cannot read mqtt.password_file "
                            f"{self.cfg.password_file}: {getattr(exc, 'strerror', None) or exc}"
                            ) from None

    def _make_client(self, paho, password):
        cfg = self.cfg
        protocol = paho.MQTTv5 if cfg.protocol == "5" else paho.MQTTv311
        client = _client_class(paho)(paho.CallbackAPIVersion.VERSION2,
                                     client_id=self.client_id, protocol=protocol)
        if cfg.username:
            client.username_pw_set(cfg.username, password)
        if cfg.tls:
            try:
                client.tls_set(ca_certs=cfg.ca_file or None)
            except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
                raise MqttError("unavailable", f"cannot use mqtt.ca_file "
                                f"{cfg.ca_file or '(the system CAs)'}: "
                                f"{getattr(exc, 'strerror', None) or exc}") from None
        client.connect_timeout = min(5.0, float(cfg.keepalive_sec))
        client.will_set(self.topics.availability, "offline", qos=1, retain=True)
        client.reconnect_delay_set(cfg.reconnect_min_sec, cfg.reconnect_max_sec)
        client.suppress_exceptions = True  # a bug in a callback must not end paho's thread
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        return client

    def stop(self, timeout: float = 2.0) -> None:
        """Say `offline` (a clean disconnect sends no last will), disconnect, stop both
        threads; gives up waiting after `timeout`."""
        deadline = time.monotonic() + timeout
        self._stopping.set()
        self._wake()
        if self._worker is not None:
            self._worker.join(max(0.1, (deadline - time.monotonic()) / 2))
        client = self.client
        if client is None:
            return
        was_connected = self.connected
        if was_connected:
            try:
                client.publish(self.topics.availability, "offline", qos=1,
                               retain=True).wait_for_publish(
                    max(0.1, (deadline - time.monotonic()) / 2))
            except (RuntimeError, ValueError) as exc:  # the connection went meanwhile
                log.info("mqtt: offline not delivered at shutdown: %s", exc)
        client.disconnect()
        # loop_stop joins paho's thread without a timeout, and that thread may sit in a
        # connect attempt or a back-off sleep: it is told to end, and waited for only while
        # the DISCONNECT it sends matters
        stopper = threading.Thread(target=client.loop_stop, name="mqtt-stop", daemon=True)
        stopper.start()
        if was_connected:
            stopper.join(max(0.1, deadline - time.monotonic()))

    # ---- health and metrics ------------------------------------------------------------
    def check(self) -> dict:
        """The `mqtt` health check: degraded (never failing) while not connected."""
        if self.problem:
            status, reason = "degraded", self.problem
        elif self.connected:
            status, reason = "ok", None
        elif self.last_error == "connecting":  # the first attempt is under way
            status, reason = "degraded", f"connecting since {local_iso(self.since)}"
        else:
            status = "degraded"
            reason = (f"disconnected since {local_iso(self.since)} "
                      f"({max(0, round(self.wall() - self.since))} s): {self.last_error}; "
                      f"retrying at most every {self.cfg.reconnect_max_sec} s")
        return dict({"status": status, "reason": reason, "connected": self.connected,
                     "broker": f"{self.cfg.host}:{self.cfg.port}",
                     "base_topic": self.topics.base, "since": local_iso(self.since)},
                    **self.counters.as_dict())

    # ---- paho's network thread ---------------------------------------------------------
    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            self._down(f"{REFUSED}: {reason_code}")
            return
        # retain handling 2 (MQTT 5): a retained command is never replayed at a reconnect
        if self.cfg.protocol == "5":
            from paho.mqtt.subscribeoptions import SubscribeOptions
            options = SubscribeOptions(qos=1, retainHandling=SubscribeOptions.RETAIN_DO_NOT_SEND)
            client.subscribe([(self.topics.commands, options),
                              (self.topics.ha_status, SubscribeOptions(qos=0))])
        else:
            client.subscribe([(self.topics.commands, 1), (self.topics.ha_status, 0)])
        self.connected = True
        self.since = self.wall()
        self.last_error = None
        self._logged_error = None
        self.counters.connects += 1
        log.info("mqtt: connected to %s:%d", self.cfg.host, self.cfg.port)
        self._republish.set()
        self._wake()

    def _on_connect_fail(self, client, userdata) -> None:
        self._down(_describe(getattr(client, "connect_error", None)))

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        if self._stopping.is_set():
            self.connected = False
            return
        name = str(reason_code)
        if not self.connected and (self.last_error or "").startswith(REFUSED):
            return  # the socket closing after a refusal: the refusal says more
        if name == "Keep alive timeout":
            reason = f"no answer from the broker within {self.cfg.keepalive_sec} s"
        elif name == "Unspecified error":
            reason = "the connection closed"
        else:
            reason = f"the broker disconnected: {name}"
        self._down(f"connection lost: {reason}" if self.connected else reason)

    def _down(self, reason: str) -> None:
        if self.connected:
            self.since = self.wall()
        self.connected = False
        self.last_error = reason
        if reason != self._logged_error:  # one line per kind of failure, not per attempt
            self._logged_error = reason
            log.warning("mqtt: %s:%d: %s (retrying with back-off)", self.cfg.host,
                        self.cfg.port, reason)

    def _on_message(self, client, userdata, message) -> None:
        self.counters.received += 1
        topic = message.topic
        if topic == self.topics.ha_status:
            if message.payload == b"online":  # Home Assistant (re)started: rediscover
                self._republish.set()
                self._wake()
            return
        if message.retain:
            item = ("refused", topic, "retained", "retained commands are ignored; publish "
                    "commands without the retain flag")
        elif len(message.payload) > MAX_COMMAND_BYTES:  # not copied into the queue
            item = ("refused", topic, "payload_too_large",
                    f"commands are limited to {MAX_COMMAND_BYTES} bytes")
        else:
            item = ("command", topic, message.payload)
        try:
            self._inbox.put_nowait(item)
        except queue.Full:
            self.counters.commands_dropped += 1

    def _wake(self) -> None:
        try:
            self._inbox.put_nowait(("wake",))
        except queue.Full:
            pass  # the worker has work queued: it wakes anyway

    # ---- the worker thread -------------------------------------------------------------
    def _run(self) -> None:
        while not self._stopping.is_set():
            timeout = CHANGE_POLL_SEC if self.connected else IDLE_POLL_SEC
            due = self.outbox.next_due()
            if due is not None:
                timeout = min(timeout, due)
            try:
                item = self._inbox.get(timeout=timeout)
            except queue.Empty:
                item = None
            if self._stopping.is_set():
                break
            try:
                if item is not None:
                    self._handle(item)
                if self.connected:
                    self._report_dropped()
                    if self._republish.is_set():
                        self._republish.clear()
                        self.outbox.forget()
                        self._seen = None
                        self._publish(self.topics.availability, "online", retain=True, qos=1)
                    self._collect()
                    for topic, payload in self.outbox.due():
                        self._publish(topic, payload, retain=True)
            except Exception:  # a bug here must not end MQTT for the life of the process
                log.exception("mqtt: worker step failed")
                self._stopping.wait(IDLE_POLL_SEC)

    def _handle(self, item: tuple) -> None:
        kind = item[0]
        if kind == "refused":
            self.counters.commands_refused += 1
            self._answer(item[1], item[2], item[3])
        elif kind == "command":
            topic, payload = item[1], item[2]
            try:
                entity = self.topics.entity_of(topic) or ""
                self.commands.run(entity, payload)
            except (MqttError, MediaError) as exc:
                self.counters.commands_refused += 1
                self._answer(topic, exc.code, exc.message)
            except Exception:
                self.counters.commands_refused += 1
                log.exception("mqtt: bug while applying %s", topic[:200])
                self._answer(topic, "internal", "internal error")
            else:
                self.counters.commands_done += 1

    def _answer(self, topic: str, code: str, message: str) -> None:
        """Log a refused command and answer it on `<base>/error`, a few per second at most
        (a flood of bad commands must not become a flood of log lines and answers)."""
        now = self.clock()
        self._answers = [t for t in self._answers if now - t < 1.0]
        if len(self._answers) >= ERROR_ANSWERS_PER_SEC:
            return
        self._answers.append(now)
        log.warning("mqtt: refused %s: %s", topic[:200], message)
        self._publish(self.topics.error, json.dumps(
            {"topic": topic[:200], "error": code, "message": message}), retain=False)

    def _report_dropped(self) -> None:
        dropped = self.counters.commands_dropped
        if dropped != self._dropped_reported:
            self._answer(self.topics.commands, "busy", f"{dropped - self._dropped_reported} "
                         "command(s) dropped: they came faster than LOOP applies them")
            self._dropped_reported = dropped

    def _publish(self, topic: str, payload: str, retain: bool, qos: int = 0) -> None:
        info = self.client.publish(topic, payload, qos=qos, retain=retain)
        if info.rc == 0:
            self.counters.sent += 1
        else:  # not connected any more: everything is republished at the next connect
            self.counters.publish_failed += 1

    # ---- state -------------------------------------------------------------------------
    def _collect(self) -> None:
        """Offer every retained message's current payload to the outbox, when one of the
        snapshots it is made from was replaced (most polls find none)."""
        app, topics, want = self.app, self.topics, self.outbox.want
        status = app.player.status
        view = app.store.view
        monitor = app.monitor
        seen = (status, view, app.breaker.state, app.display_reason,
                monitor.latest if monitor is not None else None, self._uptime())
        if self._seen is not None and all(a is b or a == b for a, b in zip(seen, self._seen,
                                                                            strict=True)):
            return
        self._seen = seen
        labels = self._labels(view, status.item)
        self._collect_slow()
        if self.cfg.discovery:
            self._offer_discovery(tuple(labels), "temperature" in self._slow)
        brightness = status.brightness
        self.commands.seen_brightness(brightness)
        want(topics.state("light"), json.dumps(
            {"state": "ON", "brightness": brightness, "color_mode": "brightness"}
            if brightness > 0 else {"state": "OFF"}))
        current = next((label for label, i in labels.items() if i == status.item), NONE)
        want(topics.state("item"), current)
        want(topics.state("mode"), status.mode)
        want(topics.state("playback"), status.state)
        working = app.breaker.state == "closed" and not app.display_reason
        want(topics.state("panel"), "ON" if working else "OFF")
        want(topics.state("uptime"), seen[-1])
        for entity, (payload, hold) in self._slow.items():
            want(topics.state(entity), payload, hold)

    def _labels(self, view, current: str | None) -> dict[str, str]:
        """The item select's options: the loop's items, plus the one showing if it is not in
        the loop (a select's state must be one of its options)."""
        if self._labels_of == (view.version, current):
            return self.commands.labels
        metas = {meta["id"]: meta for meta in view.items}
        ids = list(view.loop)
        if current and current not in ids:
            ids.append(current)
        labels = option_labels([(i, metas[i].get("name") or i) for i in ids if i in metas])
        self.commands.labels = labels
        self._labels_of = (view.version, current)
        return labels

    def _offer_discovery(self, options: tuple, temperature: bool) -> None:
        """The discovery messages, rebuilt when the item options change; an entity that went
        away (no temperature sensor any more) gets an empty retained config, which removes
        it from Home Assistant."""
        key = (options, temperature)
        if self._configs is None or self._configs[0] != key:
            driver = self.app.driver
            device = Device(name=f"LOOP {self.hostname}",
                            model=f"{driver.width}x{driver.height} {driver.name}",
                            configuration_url=f"http://{self.app.url_lines()[0]}/")
            fresh = discovery(self.topics, device, list(options), temperature=temperature)
            old = self._configs[1] if self._configs is not None else {}
            for topic in old.keys() - fresh.keys():
                self.outbox.want(topic, "")
            self._configs = (key, fresh)
        for topic, payload in self._configs[1].items():
            self.outbox.want(topic, payload)

    def _uptime(self) -> str:
        """The start time as an ISO timestamp, corrected when the wall clock jumps (a Pi
        without a clock sets it by NTP after booting)."""
        started = self.wall() - (self.clock() - self.app.started)
        if abs(started - self._started_wall) > CLOCK_JUMP_SEC:
            self._started_wall = started
        return datetime.datetime.fromtimestamp(
            round(self._started_wall), datetime.UTC).isoformat()

    def _collect_slow(self) -> None:
        """Health, memory, temperature: recomputed when the monitor has a new sample (the
        temperature entity exists only where the SoC has a sensor)."""
        monitor = self.app.monitor
        sample = monitor.latest if monitor is not None else None
        if sample is not None and sample is not self._sample:
            self._sample = sample
            telemetry = float(self.cfg.telemetry_interval_sec)
            self._slow = {"status": (self.app.health()["status"], None),
                          "memory": (str(round(sample.rss_mb)), telemetry)}
            if sample.temp_c is not None:
                self._slow["temperature"] = (f"{sample.temp_c:.1f}", telemetry)
