"""The topic layout and the Home Assistant discovery messages. Pure code.

Everything LOOP publishes or listens to lives under the base topic (default `loop/<hostname>`):

    <base>/availability        online | offline (retained; the last will says offline)
    <base>/<entity>/state      retained state, published on change
    <base>/<entity>/set        commands (LOOP subscribes to <base>/+/set)
    <base>/error               the answer to a refused command (not retained)

and the discovery messages under `<discovery_prefix>/<component>/<node>/<entity>/config`
(retained), one per entity, all naming the same device.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from loop import __version__
from loop.config import MODES

BUTTONS = (("next", "Next", "mdi:skip-next"), ("previous", "Previous", "mdi:skip-previous"),
           ("play", "Play", "mdi:play"), ("pause", "Pause", "mdi:pause"))
HEALTH_STATES = ("ok", "degraded", "failing")
PLAYBACK_STATES = ("starting", "playing", "paused", "idle")  # the player's status.state
NONE = "None"  # Home Assistant's "unknown" for a select and a sensor


def node_id(base: str) -> str:
    """The base topic as a discovery node id and unique-id prefix ([A-Za-z0-9_-] only)."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", base)


def hostname_label(hostname: str) -> str:
    """A host name as one topic level (no / + # or spaces)."""
    return re.sub(r"[^A-Za-z0-9_-]", "-", hostname)[:64] or "loop"


@dataclass(frozen=True)
class Topics:
    base: str
    prefix: str  # Home Assistant's discovery prefix

    @property
    def availability(self) -> str:
        return f"{self.base}/availability"

    @property
    def error(self) -> str:
        return f"{self.base}/error"

    @property
    def commands(self) -> str:
        """The subscription that receives every command."""
        return f"{self.base}/+/set"

    @property
    def ha_status(self) -> str:
        """Home Assistant's birth and last-will topic: `online` means rediscover."""
        return f"{self.prefix}/status"

    def state(self, entity: str) -> str:
        return f"{self.base}/{entity}/state"

    def command(self, entity: str) -> str:
        return f"{self.base}/{entity}/set"

    def entity_of(self, command_topic: str) -> str | None:
        """`kitchen` for `<base>/kitchen/set`, None for any other topic."""
        head, sep, rest = command_topic.partition(self.base + "/")
        if head or not sep or not rest.endswith("/set"):
            return None
        entity = rest[:-len("/set")]
        return entity if entity and "/" not in entity else None

    def config(self, component: str, entity: str) -> str:
        return f"{self.prefix}/{component}/{node_id(self.base)}/{entity}/config"


@dataclass(frozen=True)
class Device:
    name: str
    model: str
    configuration_url: str

    def as_dict(self, node: str) -> dict:
        return {"identifiers": [node], "name": self.name, "manufacturer": "LOOP",
                "model": self.model, "sw_version": __version__,
                "configuration_url": self.configuration_url}


def discovery(topics: Topics, device: Device, item_options: list[str], *,
              temperature: bool = True) -> dict[str, str]:
    """{config topic: JSON payload} for every entity (Home Assistant's MQTT discovery);
    `temperature` when the SoC has a sensor."""
    node = node_id(topics.base)
    common = {"device": device.as_dict(node),
              "origin": {"name": "LOOP", "sw_version": __version__},
              "availability_topic": topics.availability,
              "payload_available": "online", "payload_not_available": "offline"}
    out: dict[str, str] = {}

    def add(component: str, entity: str, **keys) -> None:
        payload = dict(keys, unique_id=f"{node}_{entity}", **common)
        out[topics.config(component, entity)] = json.dumps(payload, ensure_ascii=False,
                                                           sort_keys=True)

    add("light", "light", name="Panel", schema="json", icon="mdi:led-strip-variant",
        state_topic=topics.state("light"), command_topic=topics.command("light"),
        brightness=True, brightness_scale=100, supported_color_modes=["brightness"])
    add("select", "item", name="Playing", icon="mdi:playlist-play",
        state_topic=topics.state("item"), command_topic=topics.command("item"),
        options=list(item_options))
    add("select", "mode", name="Mode", icon="mdi:shuffle-variant",
        state_topic=topics.state("mode"), command_topic=topics.command("mode"),
        options=list(MODES))
    for action, name, icon in BUTTONS:
        add("button", action, name=name, icon=icon, command_topic=topics.command("playback"),
            payload_press=action)
    add("sensor", "playback", name="Playback", icon="mdi:play-pause",
        state_topic=topics.state("playback"), device_class="enum",
        options=list(PLAYBACK_STATES))
    add("sensor", "status", name="Health", icon="mdi:heart-pulse",
        state_topic=topics.state("status"), device_class="enum",
        options=list(HEALTH_STATES), entity_category="diagnostic")
    add("sensor", "memory", name="Memory", icon="mdi:memory",
        state_topic=topics.state("memory"), device_class="data_size",
        unit_of_measurement="MiB", state_class="measurement", entity_category="diagnostic")
    if temperature:
        add("sensor", "temperature", name="SoC temperature",
            state_topic=topics.state("temperature"), device_class="temperature",
            unit_of_measurement="°C", state_class="measurement",
            entity_category="diagnostic")
    # The start time, not a counter of seconds: it changes only at a restart, and Home
    # Assistant shows it as "3 hours ago" (its own convention for uptime).
    add("sensor", "uptime", name="Uptime", state_topic=topics.state("uptime"),
        device_class="timestamp", entity_category="diagnostic")
    add("binary_sensor", "panel", name="Panel working", state_topic=topics.state("panel"),
        device_class="running", payload_on="ON", payload_off="OFF",
        entity_category="diagnostic")
    # both send a notification with the default priority and duration (notify.duration_sec);
    # JSON on <base>/notify/set sets them (README, "An automation: the doorbell")
    add("text", "message", name="Message", icon="mdi:message-text",
        command_topic=topics.command("notify"), min=1, max=255, mode="text")
    add("notify", "notify", name="Notify", command_topic=topics.command("notify"))
    return out


def option_labels(items: list[tuple[str, str]]) -> dict[str, str]:
    """{label: item id} for the item select, in the given order: the item's name, made
    unique with the start of its id when two items share a name (or a name is "None")."""
    counts: dict[str, int] = {}
    for _, name in items:
        counts[name] = counts.get(name, 0) + 1
    labels: dict[str, str] = {}
    for item_id, name in items:
        label = name if counts[name] == 1 and name != NONE else f"{name} ({item_id[:6]})"
        if label in labels:  # a name that looks like another's label: the whole id
            label = f"{name} ({item_id})"
        labels.setdefault(label, item_id)
    return labels
