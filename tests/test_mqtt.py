"""MQTT and Home Assistant against a real Mosquitto broker (its own process on a free loopback
port, with a password file) and a real MQTT client (paho) in the test. Nothing is mocked
between LOOP and the broker.

The discovery checks below were written from Home Assistant's MQTT integration documentation
(the per-platform pages: light with the JSON schema, select, button, sensor, binary_sensor,
text, notify, and the shared availability/device/origin keys) as the author knows it; they
were not fetched while writing this file.
"""

from __future__ import annotations

import datetime
import io
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
import uuid

import pytest
from conftest import ROOT, Client, gif_bytes, png_bytes, wait_for, write_config
from PIL import Image

from bench.mosquitto import MOSQUITTO, Mosquitto

paho = pytest.importorskip("paho.mqtt.client")  # requirements.txt installs it (CI fails on skip)

LOOP_USER, LOOP_PASSWORD = "loop", "loop-secret"
HA_USER, HA_PASSWORD = "homeassistant", "ha-secret"
BASE = "loop/test"
NODE = "loop_test"


def need_mosquitto():
    if MOSQUITTO is None or shutil.which("mosquitto_passwd") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("mosquitto is missing under CI; .ci/run must install it")
        pytest.skip("mosquitto is not installed (apt-get install mosquitto mosquitto-clients)")


@pytest.fixture
def broker(tmp_path):
    need_mosquitto()
    broker = Mosquitto(str(tmp_path / "broker"), {LOOP_USER: LOOP_PASSWORD,
                                                 HA_USER: HA_PASSWORD}).start()
    yield broker
    broker.stop()


class Listener:
    """A real MQTT client (paho) that records every message it receives."""

    def __init__(self, port: int, user: str = HA_USER, password: str = HA_PASSWORD,
                 topics=("#",)):
        self.messages: list[tuple[str, bytes, bool]] = []
        self.lock = threading.Lock()
        self.subscribed = threading.Event()
        self.client = paho.Client(paho.CallbackAPIVersion.VERSION2,
                                  client_id=f"test-{uuid.uuid4().hex[:8]}")
        self.client.username_pw_set(user, password)
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe([(t, 1) for t in topics])
        self.client.on_subscribe = lambda *a: self.subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port, keepalive=30)
        self.client.loop_start()
        assert self.subscribed.wait(10), "the test client could not subscribe"

    def _on_message(self, client, userdata, message):
        with self.lock:
            self.messages.append((message.topic, message.payload, bool(message.retain)))

    def on(self, topic: str) -> list[bytes]:
        with self.lock:
            return [p for t, p, _ in self.messages if t == topic]

    def last(self, topic: str) -> str | None:
        found = self.on(topic)
        return found[-1].decode() if found else None

    def wait_last(self, topic: str, wanted, timeout: float = 10.0) -> str:
        """Wait until the latest payload on `topic` equals `wanted` (or passes it, a callable)."""
        check = wanted if callable(wanted) else (lambda value: value == wanted)

        def matched():
            value = self.last(topic)
            return (value,) if value is not None and check(value) else None
        try:
            return wait_for(matched, timeout)[0]
        except AssertionError:
            raise AssertionError(f"{topic}: wanted {wanted!r}, last {self.last(topic)!r}, "
                                 f"all {self.on(topic)[-5:]}") from None

    def retained(self) -> dict[str, str]:
        with self.lock:
            return {t: p.decode() for t, p, r in self.messages if r}

    def publish(self, topic: str, payload, retain: bool = False) -> None:
        self.client.publish(topic, payload, qos=1, retain=retain).wait_for_publish(10)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def listeners():
    made = []

    def make(port, **kw):
        listener = Listener(port, **kw)
        made.append(listener)
        return listener

    yield make
    for listener in made:
        listener.close()


def mqtt_settings(broker, **extra) -> dict:
    settings = {"mqtt.enabled": True, "mqtt.host": "127.0.0.1", "mqtt.port": broker.port,
                "mqtt.username": LOOP_USER, "mqtt.password": LOOP_PASSWORD,
                "mqtt.base_topic": BASE, "mqtt.reconnect_min_sec": 1,
                "mqtt.reconnect_max_sec": 2, "mqtt.keepalive_sec": 5,
                "mqtt.state_debounce_ms": 100}
    settings.update(extra)
    return settings


@pytest.fixture
def mqtt_app(broker, make_app):  # the broker outlives the apps
    """An in-process LOOP connected to the broker (connection checked)."""
    def start(**extra):
        app = make_app(**mqtt_settings(broker, **extra))
        wait_for(lambda: app.mqtt.connected, 10)
        return app
    return start


def upload(app, name="cat.gif", data=None) -> str:
    reply = Client(app.server.port).upload([(name, data or gif_bytes())])
    assert reply.status == 201, reply
    return reply.data["results"][0]["item"]["id"]


def status(app) -> dict:
    """The player's status (read in-process: /api/poll/* is rate-limited per client)."""
    return app.player.status.as_dict(0)


def retained_snapshot(port) -> dict[str, str]:
    """What a client connecting now gets: the broker's retained messages under LOOP's topics
    and discovery."""
    late = Listener(port, topics=("homeassistant/#", f"{BASE}/#"))
    try:
        time.sleep(0.5)  # retained messages arrive right after the subscription
        return late.retained()
    finally:
        late.close()


# ---- Home Assistant's documented MQTT discovery schema (from the docs, not fetched) -------
COMMON_KEYS = {"availability", "availability_mode", "availability_template",
               "availability_topic", "payload_available", "payload_not_available", "device",
               "origin", "enabled_by_default", "encoding", "entity_category",
               "entity_picture", "icon", "json_attributes_template", "json_attributes_topic",
               "name", "object_id", "default_entity_id", "qos", "unique_id"}
PLATFORMS = {  # component: (required keys, other allowed keys)
    "light": ({"command_topic", "schema"},
              {"state_topic", "brightness", "brightness_scale", "supported_color_modes",
               "effect", "effect_list", "flash", "flash_time_long", "flash_time_short",
               "max_kelvin", "min_kelvin", "max_mireds", "min_mireds", "optimistic",
               "retain", "transition", "white_scale", "color_temp_kelvin"}),
    "select": ({"command_topic", "options"},
               {"state_topic", "command_template", "value_template", "optimistic",
                "retain"}),
    "button": ({"command_topic"}, {"payload_press", "command_template", "device_class",
                                   "retain"}),
    "sensor": ({"state_topic"}, {"device_class", "unit_of_measurement", "state_class",
                                 "value_template", "expire_after", "force_update",
                                 "last_reset_value_template", "options",
                                 "suggested_display_precision"}),
    "binary_sensor": ({"state_topic"}, {"payload_on", "payload_off", "device_class",
                                        "value_template", "expire_after", "force_update",
                                        "off_delay"}),
    "text": ({"command_topic"}, {"state_topic", "min", "max", "mode", "pattern",
                                 "command_template", "value_template", "retain"}),
    "notify": ({"command_topic"}, {"command_template", "retain"}),
}
DEVICE_KEYS = {"identifiers", "connections", "configuration_url", "hw_version",
               "manufacturer", "model", "model_id", "name", "serial_number", "suggested_area",
               "sw_version", "via_device"}
ORIGIN_KEYS = {"name", "sw_version", "support_url"}
COLOR_MODES = {"onoff", "brightness", "color_temp", "hs", "xy", "rgb", "rgbw", "rgbww",
               "white"}
SENSOR_UNITS = {"data_size": {"bit", "kbit", "Mbit", "Gbit", "B", "kB", "MB", "GB", "TB",
                              "KiB", "MiB", "GiB", "TiB"},
                "temperature": {"°C", "°F", "K"}}
BINARY_CLASSES = {"battery", "battery_charging", "carbon_monoxide", "cold", "connectivity",
                  "door", "garage_door", "gas", "heat", "light", "lock", "moisture", "motion",
                  "moving", "occupancy", "opening", "plug", "power", "presence", "problem",
                  "running", "safety", "smoke", "sound", "tamper", "update", "vibration",
                  "window"}
CONFIG_TOPIC = re.compile(r"\Ahomeassistant/(\w+)/([A-Za-z0-9_-]+)/([A-Za-z0-9_-]+)/config\Z")


def check_entity(component: str, config: dict) -> None:
    required, allowed = PLATFORMS[component]
    missing = required - set(config)
    assert not missing, f"{component}: missing {missing}"
    extra = set(config) - required - allowed - COMMON_KEYS
    assert not extra, f"{component}: keys Home Assistant does not know: {extra}"
    for key in ("state_topic", "command_topic", "availability_topic"):
        if key in config:
            assert config[key].startswith(BASE + "/"), (key, config[key])
            assert not set("+#") & set(config[key])
    assert config.get("entity_category") in (None, "config", "diagnostic")
    assert set(config["device"]) <= DEVICE_KEYS and set(config["origin"]) <= ORIGIN_KEYS
    if component == "light":
        assert config["schema"] == "json" and config["brightness"] is True
        assert config["brightness_scale"] == 100
        assert set(config["supported_color_modes"]) <= COLOR_MODES
    if component == "select":
        assert isinstance(config["options"], list)
        assert all(isinstance(o, str) for o in config["options"])
        assert len(set(config["options"])) == len(config["options"]), "options must be unique"
    if component == "sensor":
        device_class = config.get("device_class")
        if device_class == "enum":
            assert config["options"] and "unit_of_measurement" not in config
            assert "state_class" not in config
        elif device_class == "timestamp":
            assert "unit_of_measurement" not in config and "state_class" not in config
        elif device_class in SENSOR_UNITS:
            assert config["unit_of_measurement"] in SENSOR_UNITS[device_class]
        else:
            assert device_class is None, device_class
        assert config.get("state_class") in (None, "measurement", "total", "total_increasing")
        if "options" in config:
            assert device_class == "enum"
    if component == "binary_sensor":
        assert config.get("device_class") in BINARY_CLASSES | {None}
    if component == "button":
        assert config.get("device_class") in (None, "identify", "restart", "update")


def check_state(component: str, config: dict, state: str) -> None:
    """A retained state payload is one Home Assistant accepts for the entity's config."""
    if component == "light":
        value = json.loads(state)
        assert value["state"] in ("ON", "OFF")
        if "brightness" in value:
            assert 1 <= value["brightness"] <= config["brightness_scale"]
        if "color_mode" in value:
            assert value["color_mode"] in config["supported_color_modes"]
    elif component == "select":
        assert state in config["options"] or state == "None", (state, config["options"])
    elif component == "binary_sensor":
        assert state in (config.get("payload_on", "ON"), config.get("payload_off", "OFF"))
    elif component == "sensor":
        device_class = config.get("device_class")
        if device_class == "enum":
            assert state in config["options"]
        elif device_class == "timestamp":
            assert datetime.datetime.fromisoformat(state).tzinfo is not None
        else:
            float(state)


# ---- discovery ---------------------------------------------------------------------------
def fake_thermal_zone(root, celsius: float) -> str:
    zone = root / "sys" / "class" / "thermal" / "thermal_zone0"
    zone.mkdir(parents=True)
    (zone / "type").write_text("cpu-thermal\n")
    (zone / "temp").write_text(f"{round(celsius * 1000)}\n")
    return str(root)


def test_discovery_messages_follow_home_assistants_schema(mqtt_app, broker, tmp_path,
                                                        listeners):
    app = mqtt_app()
    live = listeners(broker.port)
    app.monitor.sys_root = fake_thermal_zone(tmp_path / "sysfs", 47.5)  # a Pi's sensor
    item = upload(app, "cat.gif")
    wait_for(lambda: status(app)["item"] == item)
    # published after the configs, on one connection: once they arrive, the broker has it all
    live.wait_last(f"{BASE}/item/state", "cat.gif")
    live.wait_last(f"{BASE}/temperature/state", "47.5")
    held = retained_snapshot(broker.port)
    configs = {}
    for topic, payload in held.items():
        match = CONFIG_TOPIC.match(topic)
        if match:
            component, node, entity = match.groups()
            assert node == NODE
            configs[(component, entity)] = json.loads(payload)
    assert set(configs) == {
        ("light", "light"), ("select", "item"), ("select", "mode"), ("button", "next"),
        ("button", "previous"), ("button", "play"), ("button", "pause"),
        ("sensor", "playback"), ("sensor", "status"), ("sensor", "memory"),
        ("sensor", "temperature"), ("sensor", "uptime"), ("binary_sensor", "panel"),
        ("text", "message"), ("notify", "notify")}
    devices = {json.dumps(c["device"], sort_keys=True) for c in configs.values()}
    assert len(devices) == 1, "every entity names the same device"
    device = next(iter(configs.values()))["device"]
    assert device["model"] and device["sw_version"] and device["name"]
    assert re.fullmatch(rf"http://[^/]+:{app.server.port}/", device["configuration_url"])
    unique_ids = [c["unique_id"] for c in configs.values()]
    assert len(set(unique_ids)) == len(unique_ids)
    for (component, entity), config in configs.items():
        check_entity(component, config)
        assert config["availability_topic"] == f"{BASE}/availability"
        if "state_topic" in config:
            assert config["state_topic"] in held, f"no retained state for {entity}"
            check_state(component, config, held[config["state_topic"]])
    assert held[f"{BASE}/availability"] == "online"
    assert configs[("select", "item")]["options"] == ["cat.gif"]
    assert held[f"{BASE}/item/state"] == "cat.gif"
    assert configs[("select", "mode")]["options"] == ["all", "one", "shuffle"]
    assert {c["payload_press"] for (k, _), c in configs.items() if k == "button"} == {
        "next", "previous", "play", "pause"}
    assert {c["command_topic"] for (k, _), c in configs.items() if k == "button"} == {
        f"{BASE}/playback/set"}
    assert configs[("text", "message")]["command_topic"] == f"{BASE}/notify/set"
    assert configs[("notify", "notify")]["command_topic"] == f"{BASE}/notify/set"
    assert json.loads(held[f"{BASE}/light/state"]) == {"state": "ON", "brightness": 80,
                                                       "color_mode": "brightness"}
    assert held[f"{BASE}/panel/state"] == "ON" and held[f"{BASE}/status/state"] == "ok"
    assert held[f"{BASE}/temperature/state"] == "47.5"


def test_without_a_temperature_sensor_there_is_no_temperature_entity(mqtt_app, broker,
                                                                      listeners, tmp_path):
    app = mqtt_app()
    ha = listeners(broker.port)
    topic = f"homeassistant/sensor/{NODE}/temperature/config"
    app.monitor.sys_root = fake_thermal_zone(tmp_path / "sysfs", 51.0)
    ha.wait_last(topic, lambda v: json.loads(v)["device_class"] == "temperature")
    ha.wait_last(f"{BASE}/temperature/state", "51.0")
    app.monitor.sys_root = str(tmp_path / "nothing")  # the sensor went away
    ha.wait_last(topic, "")  # an empty retained config removes the entity
    assert topic not in retained_snapshot(broker.port)


def test_the_item_options_follow_the_loop(mqtt_app, broker, listeners):
    app = mqtt_app()
    listener = listeners(broker.port)
    config_topic = f"homeassistant/select/{NODE}/item/config"
    first = upload(app, "cat.gif")
    listener.wait_last(config_topic, lambda v: json.loads(v)["options"] == ["cat.gif"])
    second = upload(app, "dog.png", png_bytes())
    listener.wait_last(config_topic,
                       lambda v: json.loads(v)["options"] == ["cat.gif", "dog.png"])
    same_name = upload(app, "cat.gif", gif_bytes(colours=((1, 2, 3), (4, 5, 6))))
    options = json.loads(listener.wait_last(
        config_topic, lambda v: len(json.loads(v)["options"]) == 3))["options"]
    assert options == [f"cat.gif ({first[:6]})", "dog.png", f"cat.gif ({same_name[:6]})"]
    assert Client(app.server.port).request("DELETE", f"/api/media/{second}").status == 200
    listener.wait_last(config_topic, lambda v: "dog.png" not in json.loads(v)["options"])


def test_home_assistant_coming_online_gets_discovery_again(mqtt_app, broker, listeners):
    mqtt_app()
    listener = listeners(broker.port)
    topic = f"homeassistant/light/{NODE}/light/config"
    listener.wait_last(topic, lambda v: True)
    time.sleep(0.3)
    before = len(listener.on(topic))
    listener.publish("homeassistant/status", "online")
    wait_for(lambda: len(listener.on(topic)) > before)


# ---- commands ----------------------------------------------------------------------------
def test_commands_change_the_player_and_are_echoed_as_state(mqtt_app, broker, listeners):
    app = mqtt_app()
    cat = upload(app, "cat.gif")
    dog = upload(app, "dog.png", png_bytes())
    ha = listeners(broker.port)
    http = Client(app.server.port)

    ha.publish(f"{BASE}/light/set", json.dumps({"state": "ON", "brightness": 37}))
    ha.wait_last(f"{BASE}/light/state", lambda v: json.loads(v).get("brightness") == 37)
    assert http.get("/api/display").data["brightness"] == 37
    ha.publish(f"{BASE}/light/set", json.dumps({"state": "OFF"}))
    ha.wait_last(f"{BASE}/light/state", '{"state": "OFF"}')
    assert http.get("/api/display").data["status"] == "off"
    ha.publish(f"{BASE}/light/set", json.dumps({"state": "ON"}))  # back to the last one
    ha.wait_last(f"{BASE}/light/state", lambda v: json.loads(v).get("brightness") == 37)

    ha.publish(f"{BASE}/item/set", "dog.png")
    ha.wait_last(f"{BASE}/item/state", "dog.png")
    assert status(app)["item"] == dog
    ha.publish(f"{BASE}/item/set", cat)  # an item id works too
    ha.wait_last(f"{BASE}/item/state", "cat.gif")

    ha.publish(f"{BASE}/mode/set", "one")
    ha.wait_last(f"{BASE}/mode/state", "one")
    assert status(app)["mode"] == "one"

    ha.publish(f"{BASE}/playback/set", "next")
    ha.wait_last(f"{BASE}/item/state", "dog.png")
    ha.publish(f"{BASE}/playback/set", "previous")
    ha.wait_last(f"{BASE}/item/state", "cat.gif")
    ha.publish(f"{BASE}/playback/set", "pause")
    ha.wait_last(f"{BASE}/playback/state", "paused")
    assert status(app)["state"] == "paused"
    ha.publish(f"{BASE}/playback/set", "play")
    ha.wait_last(f"{BASE}/playback/state", "playing")
    assert app.mqtt.counters.commands_done == 10 and app.mqtt.counters.commands_refused == 0


def panel_colours(app) -> set:
    reply = Client(app.server.port).get("/api/display/frame.png?scale=1")
    assert reply.status == 200
    image = Image.open(io.BytesIO(reply.body)).convert("RGB")
    return {c for _, c in image.getcolors(image.width * image.height)}


def test_a_notification_arrives_on_the_panel(mqtt_app, broker, listeners):
    app = mqtt_app()
    red = upload(app, "red.png", png_bytes((255, 0, 0)))
    wait_for(lambda: status(app)["item"] == red)
    assert wait_for(lambda: panel_colours(app) == {(255, 0, 0)})
    ha = listeners(broker.port)
    http = Client(app.server.port)

    ha.publish(f"{BASE}/notify/set", "Someone at the door")  # what HA's text entity sends
    shown = wait_for(lambda: status(app)["notification"])
    [note] = http.get("/api/notify").data["notifications"]
    assert note["id"] == shown and note["state"] == "showing"
    assert note["text"] == "Someone at the door" and note["priority"] == "normal"
    assert wait_for(lambda: panel_colours(app) != {(255, 0, 0)})  # the text is drawn

    ha.publish(f"{BASE}/notify/set", json.dumps(
        {"text": "Doorbell", "priority": "high", "duration_sec": 10, "id": "door"}))
    wait_for(lambda: status(app)["notification"] == "door")  # high interrupts normal
    door = http.get("/api/notify").data["notifications"][0]
    assert (door["id"], door["priority"], door["duration_sec"]) == ("door", "high", 10)

    queued = len(http.get("/api/notify").data["notifications"])
    ha.publish(f"{BASE}/notify/set", json.dumps({"text": "x", "priority": "urgent"}))
    answer = json.loads(ha.wait_last(f"{BASE}/error", lambda v: True))
    assert answer["error"] == "bad_request" and "priority" in answer["message"]
    assert len(http.get("/api/notify").data["notifications"]) == queued
    assert app.mqtt.counters.commands_done == 2


def test_an_http_change_is_published_too(mqtt_app, broker, listeners):
    app = mqtt_app()
    ha = listeners(broker.port)
    Client(app.server.port).put("/api/display", json_body={"brightness": 12})
    ha.wait_last(f"{BASE}/light/state", lambda v: json.loads(v).get("brightness") == 12)
    Client(app.server.port).put("/api/playback/mode", json_body={"mode": "shuffle"})
    ha.wait_last(f"{BASE}/mode/state", "shuffle")


BAD_COMMANDS = [
    ("light", b"{not json", "bad_json"),
    ("light", b"[1, 2]", "bad_json"),
    ("light", b'{"brightness": 101}', "validation_failed"),
    ("light", b'{"brightness": -1}', "validation_failed"),
    ("light", b'{"brightness": 50.5}', "validation_failed"),
    ("light", b'{"brightness": true}', "validation_failed"),
    ("light", b'{"state": "DIM"}', "validation_failed"),
    ("light", b'{"colour": "red"}', "validation_failed"),
    ("light", b"{}", "validation_failed"),
    ("light", b"\xff\xfe", "bad_payload"),
    ("mode", b"bogus", "validation_failed"),
    ("item", b"no such thing", "not_found"),
    ("item", b"0123456789abcdef", "not_found"),
    ("playback", b"rewind", "validation_failed"),
    ("volume", b"11", "not_found"),
    ("light", b'{"state": "ON", "pad": "' + b"x" * 5000 + b'"}', "payload_too_large"),
]


def test_bad_commands_are_answered_on_the_error_topic_and_change_nothing(
        mqtt_app, broker, listeners):
    app = mqtt_app()
    item = upload(app)
    wait_for(lambda: status(app)["item"] == item)
    ha = listeners(broker.port)
    before = (status(app), Client(app.server.port).get("/api/display").data["brightness"])
    for n, (entity, payload, code) in enumerate(BAD_COMMANDS):
        topic = f"{BASE}/{entity}/set"
        ha.publish(topic, payload)
        answers = wait_for(lambda n=n: len(ha.on(f"{BASE}/error")) > n and ha.on(f"{BASE}/error"))
        answer = json.loads(answers[n])
        assert answer["topic"] == topic and answer["error"] == code, (payload[:40], answer)
        assert answer["message"]
        time.sleep(0.25)  # the error answers are rate-limited to 5 a second
    after = (status(app), Client(app.server.port).get("/api/display").data["brightness"])
    assert after == before
    assert app.mqtt.counters.commands_refused == len(BAD_COMMANDS)
    assert app.mqtt.counters.commands_done == 0
    assert Client(app.server.port).get("/api/poll/health").status == 200


def test_a_payload_over_the_broker_limit_never_reaches_loop(mqtt_app, broker, listeners):
    """MQTT 5: LOOP's CONNECT says 64 KiB is its largest packet, so the broker drops a bigger
    message instead of making LOOP read it into memory."""
    app = mqtt_app()
    ha = listeners(broker.port)
    received = app.mqtt.counters.received
    ha.publish(f"{BASE}/light/set", b"{" + b" " * (200 * 1024) + b"}")
    ha.publish(f"{BASE}/mode/set", "one")  # a normal command after it still arrives
    wait_for(lambda: status(app)["mode"] == "one")
    assert app.mqtt.counters.received == received + 1


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
def test_a_retained_command_is_not_replayed_at_connect(broker, make_app, listeners, protocol):
    ha = listeners(broker.port)
    ha.publish(f"{BASE}/light/set", json.dumps({"state": "OFF"}), retain=True)
    app = make_app(**mqtt_settings(broker, **{"mqtt.protocol": protocol}))
    wait_for(lambda: app.mqtt.connected, 10)
    ha.wait_last(f"{BASE}/light/state", lambda v: json.loads(v)["state"] == "ON")
    if protocol == "3.1.1":  # 3.1.1 cannot ask the broker to hold it back: LOOP refuses it
        answer = json.loads(ha.wait_last(f"{BASE}/error", lambda v: True))
        assert answer["error"] == "retained"
    ha.publish(f"{BASE}/mode/set", "shuffle")  # commands work on both versions
    ha.wait_last(f"{BASE}/mode/state", "shuffle")
    assert Client(app.server.port).get("/api/display").data["brightness"] == 80


def test_the_same_values_are_refused_over_http_and_mqtt(mqtt_app, broker, listeners):
    app = mqtt_app()
    ha = listeners(broker.port)
    http = Client(app.server.port)
    values = [55, 101, -1, 50.5, "50", True, None]
    for value in values:
        refused_over_http = http.put("/api/display", json_body={"brightness": value}).status \
            == 422
        errors = len(ha.on(f"{BASE}/error"))
        done = app.mqtt.counters.commands_done
        ha.publish(f"{BASE}/light/set", json.dumps({"brightness": value}))
        wait_for(lambda: len(ha.on(f"{BASE}/error")) > errors  # noqa: B023
                 or app.mqtt.counters.commands_done > done)  # noqa: B023
        assert (len(ha.on(f"{BASE}/error")) > errors) == refused_over_http, value
        time.sleep(0.25)  # error answers: 5 a second at most
    for mode in ["one", "ALL", "", "random"]:
        refused_over_http = http.put("/api/playback/mode", json_body={"mode": mode}).status \
            == 422
        errors = len(ha.on(f"{BASE}/error"))
        done = app.mqtt.counters.commands_done
        ha.publish(f"{BASE}/mode/set", mode)
        wait_for(lambda: len(ha.on(f"{BASE}/error")) > errors  # noqa: B023
                 or app.mqtt.counters.commands_done > done)  # noqa: B023
        assert (len(ha.on(f"{BASE}/error")) > errors) == refused_over_http, mode
        time.sleep(0.25)


def test_a_burst_of_changes_is_debounced(mqtt_app, broker, listeners):
    app = mqtt_app(**{"mqtt.state_debounce_ms": 3000})
    ha = listeners(broker.port)
    topic = f"{BASE}/light/state"
    ha.wait_last(topic, lambda v: True)
    before = len(ha.on(topic))
    http = Client(app.server.port)
    for value in range(10, 30):
        assert http.put("/api/display", json_body={"brightness": value}).status == 200
    ha.wait_last(topic, lambda v: json.loads(v)["brightness"] == 29)
    # 20 changes well inside a few debounce periods: the first at once, then the latest
    # once per period (generous: the machine may be slow)
    assert len(ha.on(topic)) - before <= 4


# ---- availability, health, reconnection -----------------------------------------------------
def test_health_and_metrics_show_the_connection(mqtt_app, broker):
    app = mqtt_app()
    http = Client(app.server.port)
    check = http.get("/api/poll/health").data["checks"]["mqtt"]
    assert check["status"] == "ok" and check["connected"] is True and check["connects"] == 1
    assert check["base_topic"] == BASE and check["broker"] == f"127.0.0.1:{broker.port}"
    wait_for(lambda: app.mqtt.counters.sent > 10)
    metrics = http.get("/metrics").body.decode()
    assert "loop_mqtt_connected 1" in metrics
    sent = int(re.search(r'loop_mqtt_messages_total\{direction="sent"\} (\d+)', metrics)[1])
    assert sent > 10
    assert 'loop_health_check_status{check="mqtt"} 0' in metrics
    broker.stop()
    wait_for(lambda: not app.mqtt.connected, 10)
    check = http.get("/api/poll/health").data["checks"]["mqtt"]
    assert check["status"] == "degraded"
    assert check["reason"].startswith("disconnected since ")
    metrics = http.get("/metrics").body.decode()
    assert "loop_mqtt_connected 0" in metrics
    assert 'loop_health_check_status{check="mqtt"} 1' in metrics


def test_reconnects_and_republishes_after_the_broker_restarts(mqtt_app, broker):
    app = mqtt_app()
    upload(app, "cat.gif")
    wait_for(lambda: app.mqtt.outbox.held(f"{BASE}/item/state") == "cat.gif")
    broker.stop()  # no persistence: the restarted broker has lost every retained message
    wait_for(lambda: not app.mqtt.connected, 10)
    assert Client(app.server.port).get("/api/poll/status").status == 200
    broker.start()
    wait_for(lambda: app.mqtt.connected, 15)
    assert app.mqtt.counters.connects == 2
    held = wait_for(lambda: (h := retained_snapshot(broker.port)).get(
        f"{BASE}/item/state") == "cat.gif" and h, 10)
    assert held[f"{BASE}/availability"] == "online"
    assert f"homeassistant/light/{NODE}/light/config" in held
    assert Client(app.server.port).get("/api/poll/health").data["checks"]["mqtt"][
        "status"] == "ok"


def test_wrong_password_and_a_password_file(broker, make_app, tmp_path):
    app = make_app(**mqtt_settings(broker, **{"mqtt.password": "wrong"}))
    check = wait_for(lambda: (c := app.health()["checks"]["mqtt"])["reason"] and
                     "refused" in c["reason"] and c)
    assert check["status"] == "degraded" and not check["connected"]
    assert re.search(r"not authori[sz]ed|bad user name or password", check["reason"], re.I)
    app.stop()
    secret = tmp_path / "mqtt.password"
    secret.write_text(LOOP_PASSWORD + "\n")
    again = make_app(**mqtt_settings(broker, **{"mqtt.password": "",
                                                "mqtt.password_file": str(secret)}))
    wait_for(lambda: again.mqtt.connected, 10)


@pytest.mark.parametrize("key, value, reason", [
    ("password_file", "/nonexistent/mqtt.password", "cannot read mqtt.password_file"),
    ("ca_file", "/nonexistent/ca.crt", "cannot use mqtt.ca_file"),
])
def test_an_unusable_secret_file_leaves_loop_running(broker, make_app, key, value, reason):
    extra = {f"mqtt.{key}": value, "mqtt.password": ""}
    if key == "ca_file":
        extra["mqtt.tls"] = True
    app = make_app(**mqtt_settings(broker, **extra))
    check = app.health()["checks"]["mqtt"]
    assert check["status"] == "degraded" and check["reason"].startswith(reason)
    assert upload(app)  # LOOP itself works on


def loop_process(tmp_path, services, broker, name="svc", **mqtt):
    settings = {k.split(".", 1)[1]: v for k, v in mqtt_settings(broker).items()}
    settings.update(mqtt)
    config = write_config(tmp_path / f"{name}.json", tmp_path / f"{name}-data", mqtt=settings)
    return services(config)


def test_last_will_says_offline_when_loop_is_killed(tmp_path, services, broker, listeners):
    ha = listeners(broker.port)
    availability = f"{BASE}/availability"
    service = loop_process(tmp_path, services, broker)
    ha.wait_last(availability, "online")
    assert service.terminate() == 0  # a clean stop says offline itself
    ha.wait_last(availability, "offline")
    service = loop_process(tmp_path, services, broker)
    ha.wait_last(availability, "online")
    service.proc.kill()  # SIGKILL: only the broker's last will can say it
    service.proc.wait(10)
    ha.wait_last(availability, "offline", timeout=20)
    assert retained_snapshot(broker.port)[availability] == "offline"


class SilentBroker:
    """Accepts TCP connections and never sends a byte (nor reads one)."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.accepted = []
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted.append(conn)

    def close(self):
        self.sock.close()
        for conn in self.accepted:
            conn.close()


def test_a_broker_that_never_answers_blocks_neither_display_nor_api(tmp_path, services,
                                                                     broker):
    silent = SilentBroker()
    try:
        service = loop_process(tmp_path, services, broker, **{
            "port": silent.port, "keepalive_sec": 2, "reconnect_min_sec": 1,
            "reconnect_max_sec": 1})
        http = service.client
        assert http.upload([("cat.gif", gif_bytes(delays=(20, 20, 20)))]).status == 201
        shown = http.get("/api/poll/health").data["checks"]["display"]["frames_shown"]
        deadline = time.monotonic() + 5
        slowest = 0.0
        while time.monotonic() < deadline:  # through several connect attempts
            started = time.monotonic()
            assert http.get("/api/poll/status", timeout=10).status == 200
            slowest = max(slowest, time.monotonic() - started)
            time.sleep(0.2)  # polling is rate-limited to 10 a second per client
        assert slowest < 2.0, f"an API request took {slowest:.2f} s"  # liveness, generous
        health = http.get("/api/poll/health").data
        assert health["checks"]["display"]["frames_shown"] > shown + 20
        check = health["checks"]["mqtt"]
        assert check["status"] == "degraded" and not check["connected"]
        assert "no answer from the broker within 2 s" in check["reason"]
        assert len(silent.accepted) >= 2, "LOOP tries again after giving up on the silence"
        assert service.terminate(timeout=20) == 0
    finally:
        silent.close()


def test_tls_with_a_ca_file(tmp_path, make_app, listeners):
    need_mosquitto()
    openssl = shutil.which("openssl")
    if openssl is None:
        if os.environ.get("CI") == "true":
            pytest.fail("openssl is missing under CI; .ci/run must install it")
        pytest.skip("openssl is not installed")
    certs = tmp_path / "certs"
    certs.mkdir()

    def run(*args):
        subprocess.run([openssl, *args], cwd=certs, check=True, capture_output=True, timeout=60)

    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    run("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.crt", "-days", "2",
        "-subj", "/CN=LOOP test CA")
    run("req", *ec, "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=localhost")
    (certs / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    run("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
        "-CAcreateserial", "-out", "server.crt", "-days", "2", "-extfile", "san.ext")
    run("req", "-x509", *ec, "-keyout", "other.key", "-out", "other.crt", "-days", "2",
        "-subj", "/CN=another CA")
    tls = {"cafile": str(certs / "ca.crt"), "certfile": str(certs / "server.crt"),
           "keyfile": str(certs / "server.key")}
    broker = Mosquitto(str(tmp_path / "tls-broker"), {LOOP_USER: LOOP_PASSWORD},
                       tls=tls).start()
    try:
        app = make_app(**mqtt_settings(broker, **{"mqtt.tls": True,
                                                  "mqtt.ca_file": str(certs / "ca.crt")}))
        wait_for(lambda: app.mqtt.connected, 10)
        wrong = make_app(**mqtt_settings(broker, **{
            "system.data_dir": str(tmp_path / "data-2"),
            "mqtt.tls": True, "mqtt.ca_file": str(certs / "other.crt"),
            "mqtt.client_id": "loop-wrong-ca", "mqtt.base_topic": "loop/other"}))
        check = wait_for(lambda: (c := wrong.mqtt.check())["reason"] and
                         "certificate" in c["reason"] and c, 10)
        assert not check["connected"]
    finally:
        broker.stop()


# ---- the README's broker example ------------------------------------------------------
def readme_block(after: str) -> str:
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as fh:
        text = fh.read()
    start = text.index("```", text.index(after)) + 3
    start = text.index("\n", start) + 1
    return text[start:text.index("```", start)]


def test_the_readme_acl_lets_loop_and_home_assistant_in_and_keeps_others_out(
        tmp_path, make_app, listeners):
    need_mosquitto()
    acl = readme_block("<!-- mqtt:acl -->")
    assert "user loop" in acl and "user homeassistant" in acl
    broker = Mosquitto(str(tmp_path / "acl-broker"), {
        "loop": LOOP_PASSWORD, "homeassistant": HA_PASSWORD, "guest": "guest"},
        acl=acl).start()
    try:
        app = make_app(**mqtt_settings(broker, **{"mqtt.base_topic": "loop/kitchen"}))
        wait_for(lambda: app.mqtt.connected, 10)
        ha = listeners(broker.port)
        ha.wait_last("homeassistant/light/loop_kitchen/light/config", lambda v: True)
        ha.wait_last("loop/kitchen/light/state", lambda v: True)
        guest = listeners(broker.port, user="guest", password="guest")
        guest.publish("loop/kitchen/mode/set", "shuffle")  # the broker drops it
        ha.publish("loop/kitchen/mode/set", "one")
        ha.wait_last("loop/kitchen/mode/state", "one")
        assert app.mqtt.counters.received == 1 and app.mqtt.counters.commands_done == 1
        assert guest.on("loop/kitchen/light/state") == []  # and it reads nothing either
    finally:
        broker.stop()


# ---- without paho, or with Debian's paho 1.6 ------------------------------------------------
def write_blocker(path):
    """A `paho` package that refuses to import and leaves a mark when something tries."""
    package = path / "paho"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(
        f"open({str(path / 'imported')!r}, 'w').close()\n"
        "raise ImportError('paho-mqtt is not installed here (test)')\n")


def test_loop_never_loads_paho_when_mqtt_is_off(tmp_path, services):
    write_blocker(tmp_path / "nopaho")
    config = write_config(tmp_path / "config.json", tmp_path / "data")
    service = services(config, env={"PYTHONPATH": str(tmp_path / "nopaho")})
    assert service.client.upload([("cat.gif", gif_bytes())]).status == 201
    health = service.client.get("/api/poll/health").data
    assert "mqtt" not in health["checks"]
    assert not (tmp_path / "nopaho" / "imported").exists()
    assert service.terminate() == 0


def debian_paho_16(tmp_path) -> str:
    """A copy of Debian's python3-paho-mqtt (1.6), alone on a path (not its Pillow too)."""
    source = "/usr/lib/python3/dist-packages/paho"
    if not os.path.isdir(source):
        if os.environ.get("CI") == "true":
            pytest.fail("python3-paho-mqtt is missing under CI; .ci/run must install it")
        pytest.skip("Debian's python3-paho-mqtt is not installed")
    target = tmp_path / "paho16"
    shutil.copytree(source, target / "paho")
    return str(target)


@pytest.mark.parametrize("paho_kind", ["missing", "debian-1.6"])
def test_loop_runs_on_without_a_usable_paho(tmp_path, services, broker, paho_kind):
    if paho_kind == "missing":
        write_blocker(tmp_path / "nopaho")
        path, reason = str(tmp_path / "nopaho"), "paho-mqtt is not installed"
    else:
        path, reason = debian_paho_16(tmp_path), "paho-mqtt 1.6"
    settings = {k.split(".", 1)[1]: v for k, v in mqtt_settings(broker).items()}
    config = write_config(tmp_path / "config.json", tmp_path / "data", mqtt=settings)
    service = services(config, env={"PYTHONPATH": path})
    assert service.client.upload([("cat.gif", gif_bytes())]).status == 201
    check = service.client.get("/api/poll/health").data["checks"]["mqtt"]
    assert check["status"] == "degraded" and reason in check["reason"]
    assert "2." in check["reason"]  # says which version to install
    assert service.terminate() == 0


def test_the_suite_runs_on_paho_2():
    """make install and CI both pip-install requirements.txt: paho-mqtt 2.x."""
    import paho.mqtt
    assert paho.mqtt.__version__.startswith("2."), paho.mqtt.__version__
    assert "/usr/lib/python3/" not in paho.mqtt.__file__


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
