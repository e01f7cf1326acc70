"""The pure parts of the MQTT front: the debounce (injected clock), the topic layout, the item
options, the light command's rules, and the `mqtt` config keys. The broker-facing behaviour is
in test_mqtt.py."""

from __future__ import annotations

import json

import pytest
from conftest import ROOT  # noqa: F401  (puts the repository root on sys.path)

from loop import config
from loop.mqtt import commands, topics
from loop.mqtt.commands import MqttError, light_target
from loop.mqtt.outbox import Outbox


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


# ---- outbox ------------------------------------------------------------------------------
def test_a_change_goes_out_at_once_after_a_quiet_spell():
    clock = Clock()
    box = Outbox(0.25, clock)
    box.want("a", "1")
    assert box.due() == [("a", "1")]
    box.want("a", "1")  # what the broker holds: nothing to send
    assert box.due() == [] and box.next_due() is None
    clock.now += 10
    box.want("a", "2")
    assert box.due() == [("a", "2")]


def test_a_burst_becomes_one_message_per_period_with_the_last_value():
    clock = Clock()
    box = Outbox(0.25, clock)
    sent = []  # (time, payload)
    for n in range(100):  # 100 changes over one second
        box.want("light", str(n))
        sent += [(clock.now, payload) for _, payload in box.due()]
        clock.now += 0.01
    clock.now += 0.25
    sent += [(clock.now, payload) for _, payload in box.due()]
    assert sent[0] == (100.0, "0") and sent[-1][1] == "99"
    assert len(sent) <= 1 + 1 / 0.25 + 1  # the first at once, then one per period
    gaps = [b[0] - a[0] for a, b in zip(sent, sent[1:], strict=False)]
    assert all(gap >= 0.25 - 1e-9 for gap in gaps), gaps


def test_changed_and_changed_back_within_the_period_sends_nothing():
    clock = Clock()
    box = Outbox(1.0, clock)
    box.want("mode", "all")
    box.due()
    box.want("mode", "one")
    assert box.due() == []  # inside the period after the last message
    assert box.next_due() == pytest.approx(1.0)
    box.want("mode", "all")
    clock.now += 2
    assert box.due() == [] and box.next_due() is None


def test_topics_are_debounced_separately_and_keep_their_order():
    clock = Clock()
    box = Outbox(1.0, clock)
    box.want("config", "c")
    box.want("state", "s")
    box.want("memory", "40", hold_sec=60)
    assert box.due() == [("config", "c"), ("state", "s"), ("memory", "40")]
    clock.now += 2
    box.want("state", "t")
    box.want("memory", "41", hold_sec=60)
    assert box.due() == [("state", "t")]  # memory waits for its longer hold
    clock.now += 58
    assert box.due() == [("memory", "41")]


def test_forget_sends_everything_again_at_once():
    clock = Clock()
    box = Outbox(5.0, clock)
    box.want("a", "1")
    box.due()
    box.want("a", "2")  # pending for 5 s
    box.forget()  # a new connection
    box.want("a", "2")
    assert box.due() == [("a", "2")] and box.held("a") == "2"


# ---- topics ------------------------------------------------------------------------------
def test_command_topics_map_to_one_entity_level():
    layout = topics.Topics("loop/kitchen", "homeassistant")
    assert layout.entity_of("loop/kitchen/light/set") == "light"
    assert layout.entity_of("loop/kitchen/light/state") is None
    assert layout.entity_of("loop/kitchen/a/b/set") is None
    assert layout.entity_of("loop/kitchenette/light/set") is None
    assert layout.entity_of("x/loop/kitchen/light/set") is None
    assert layout.entity_of("loop/kitchen//set") is None
    assert layout.config("select", "item") == "homeassistant/select/loop_kitchen/item/config"
    assert topics.node_id("loop/my.host") == "loop_my_host"
    assert topics.hostname_label("my host/+#") == "my-host---"


def test_item_option_labels_are_unique_and_map_to_ids():
    a, b, c, d = "aaaaaa1111111111", "bbbbbb2222222222", "cccccc3333333333", "dddddd4444444444"
    labels = topics.option_labels([(a, "cat.gif"), (b, "dog.png"), (c, "cat.gif"),
                                   (d, "None")])
    assert labels == {"cat.gif (aaaaaa)": a, "dog.png": b, "cat.gif (cccccc)": c,
                      "None (dddddd)": d}
    # a real name that looks like another item's label: the other gets its whole id
    tricky = topics.option_labels([(a, "x (bbbbbb)"), (b, "x"), (c, "x")])
    assert len(tricky) == 3 and set(tricky.values()) == {a, b, c}


def test_the_temperature_entity_only_with_a_sensor():
    layout = topics.Topics("loop/k", "homeassistant")
    device = topics.Device("LOOP k", "64x32 headless", "http://10.0.0.2/")
    with_sensor = topics.discovery(layout, device, ["a"], temperature=True)
    without = topics.discovery(layout, device, ["a"], temperature=False)
    assert set(with_sensor) - set(without) == {
        "homeassistant/sensor/loop_k/temperature/config"}
    light = json.loads(with_sensor["homeassistant/light/loop_k/light/config"])
    assert light["device"]["configuration_url"] == "http://10.0.0.2/"


# ---- the light command ---------------------------------------------------------------------
@pytest.mark.parametrize("command, current, last_on, wanted", [
    ({"state": "OFF"}, 80, 80, 0),
    ({"state": "OFF", "brightness": 50}, 80, 80, 0),
    ({"state": "ON"}, 0, 37, 37),  # back on at the last brightness
    ({"state": "ON"}, 60, 37, 60),  # already on: unchanged
    ({"state": "ON", "brightness": 40}, 0, 37, 40),
    ({"brightness": 0}, 60, 60, 0),
    ({"brightness": 100, "transition": 2}, 60, 60, 100),
])
def test_light_commands(command, current, last_on, wanted):
    assert light_target(command, current, last_on) == wanted


@pytest.mark.parametrize("command", [{}, {"state": "on"}, {"brightness": 101},
                                     {"brightness": 1.5}, {"brightness": False},
                                     {"color": {"r": 1}}, {"state": "ON", "effect": "x"}])
def test_light_commands_refused(command):
    with pytest.raises(MqttError) as caught:
        light_target(command, 50, 50)
    assert caught.value.code == "validation_failed"


def test_payloads_are_checked_before_they_are_read():
    with pytest.raises(MqttError) as caught:
        commands.decode(b"x" * (commands.MAX_COMMAND_BYTES + 1))
    assert caught.value.code == "payload_too_large"
    assert commands.decode(b"x" * commands.MAX_COMMAND_BYTES)
    with pytest.raises(MqttError) as caught:
        commands.decode(b"\xc3")
    assert caught.value.code == "bad_payload"


def test_the_transport_actions_are_the_http_apis():
    from loop.http.api import TRANSPORT
    assert commands.TRANSPORT == TRANSPORT


# ---- config --------------------------------------------------------------------------------
def test_mqtt_is_off_by_default_and_needs_a_host_when_on():
    assert config.defaults().mqtt.enabled is False
    with pytest.raises(config.ConfigError, match="mqtt.host"):
        config.build({"mqtt": {"enabled": True}})
    cfg = config.build({"mqtt": {"enabled": True, "host": "broker.lan"}})
    assert cfg.mqtt.port == 1883 and cfg.mqtt.discovery_prefix == "homeassistant"


@pytest.mark.parametrize("key, value", [
    ("base_topic", "loop/+/x"), ("base_topic", "loop/#"), ("base_topic", "/loop"),
    ("base_topic", "loop/"), ("base_topic", "loop//x"), ("discovery_prefix", ""),
    ("discovery_prefix", "ha\x00"), ("client_id", "has space"), ("password_file", "relative"),
    ("ca_file", "ca.crt"), ("protocol", "4"), ("keepalive_sec", 1), ("port", 0),
])
def test_bad_mqtt_values_are_refused(key, value):
    with pytest.raises(config.ConfigError, match=f"mqtt.{key}"):
        config.build({"mqtt": {key: value}})


def test_password_and_password_file_are_exclusive_and_back_off_is_ordered():
    with pytest.raises(config.ConfigError, match="password_file"):
        config.build({"mqtt": {"password": "a", "password_file": "/etc/loop/p"}})
    with pytest.raises(config.ConfigError, match="reconnect_min_sec"):
        config.build({"mqtt": {"reconnect_min_sec": 10, "reconnect_max_sec": 5}})


def test_mqtt_keys_from_the_environment():
    raw = config.env_overrides({"LOOP_MQTT__ENABLED": "true", "LOOP_MQTT__HOST": "b",
                                "LOOP_MQTT__PORT": "8883"})
    cfg = config.build(raw)
    assert cfg.mqtt.enabled and cfg.mqtt.host == "b" and cfg.mqtt.port == 8883
