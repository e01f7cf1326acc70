"""Commands from `<base>/<entity>/set`: parsed, checked and applied through the same calls and
with the same rules as the HTTP API (`PUT /api/display`, `POST /api/playback/...`,
`PUT /api/playback/mode`, `POST /api/playback/select`, `POST /api/notify`).

A refused command raises `MqttError` (the MQTT front's one error type), which the front
answers on `<base>/error`; the codes are the HTTP API's.
"""

from __future__ import annotations

import json

from loop.config import MODES
from loop.library.store import valid_id

MAX_COMMAND_BYTES = 4096  # every command fits in far less; longer payloads are refused unread
TRANSPORT = ("play", "pause", "toggle", "next", "previous")  # as POST /api/playback/{action}
LIGHT_KEYS = ("state", "brightness", "transition")  # transition: sent by HA, not supported


class MqttError(Exception):
    """A refused command, or a reason the MQTT front cannot run; `code` is machine-readable."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code, self.message = code, message


def check_brightness(value) -> int:
    """The HTTP API's rule (PUT /api/display): a whole number 0..100, not a boolean."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 100:
        raise MqttError("validation_failed", "brightness must be a number 0..100")
    return value


def decode(payload: bytes) -> str:
    if len(payload) > MAX_COMMAND_BYTES:
        raise MqttError("payload_too_large", f"commands are limited to {MAX_COMMAND_BYTES} "
                        "bytes")
    try:
        return payload.decode("utf-8")
    except UnicodeDecodeError:
        raise MqttError("bad_payload", "the payload is not UTF-8 text") from None


def json_object(text: str) -> dict:
    try:
        value = json.loads(text)
    except ValueError:
        raise MqttError("bad_json", "the payload is not valid JSON") from None
    if not isinstance(value, dict):
        raise MqttError("bad_json", "the payload must be a JSON object")
    return value


def light_target(value: dict, current: int, last_on: int) -> int:
    """The brightness a JSON-schema light command asks for: OFF is 0, ON alone turns the
    panel back on at its last brightness (or keeps it as it is)."""
    unknown = set(value) - set(LIGHT_KEYS)
    if unknown:
        raise MqttError("validation_failed", f"{sorted(unknown)[0][:40]} cannot be changed")
    state = value.get("state")
    if state not in (None, "ON", "OFF"):
        raise MqttError("validation_failed", "state must be ON or OFF")
    if "brightness" in value:
        check_brightness(value["brightness"])
    elif state is None:
        raise MqttError("validation_failed", "send state (ON or OFF) and/or brightness")
    if state == "OFF":
        return 0
    if "brightness" in value:
        return value["brightness"]
    return current if current > 0 else last_on


class Commands:
    """Applies commands to the app's components (the MQTT worker thread calls `run`)."""

    def __init__(self, app):
        self.app = app
        self.labels: dict[str, str] = {}  # the item select's options: {label: item id}
        saved = app.store.settings.get("brightness") or 0
        self.last_on = saved if saved > 0 else (app.cfg.display.brightness or 100)

    def seen_brightness(self, value: int) -> None:
        """The panel's brightness now: an ON after an OFF goes back to the last one above 0."""
        if value > 0:
            self.last_on = value

    def run(self, entity: str, payload: bytes) -> None:
        handler = {"light": self.light, "item": self.item, "mode": self.mode,
                   "playback": self.playback, "notify": self.notify}.get(entity)
        if handler is None:
            raise MqttError("not_found", f"no command topic {entity[:60]}/set")
        handler(decode(payload))

    def light(self, text: str) -> None:
        target = light_target(json_object(text), self.app.player.brightness, self.last_on)
        self.app.set_brightness(target)

    def item(self, text: str) -> None:
        """An option of the select (a name), an item id, or the name of any library item."""
        wanted = text.strip()
        view = self.app.store.view
        item_id = self.labels.get(wanted)
        if item_id is None and valid_id(wanted):
            item_id = wanted
        if item_id is None:
            named = [m["id"] for m in view.items if m.get("name") == wanted]
            item_id = named[0] if len(named) == 1 else None
        if item_id is None or view.get(item_id) is None:
            raise MqttError("not_found", f"no such item: {wanted[:80]}")
        if item_id in view.pending:
            raise MqttError("conflict", "that item is being re-rendered for the panel; it "
                            "plays when that is done")
        self.app.player.command("select", item_id=item_id)

    def mode(self, text: str) -> None:
        mode = text.strip()
        if mode not in MODES:
            raise MqttError("validation_failed", f"mode must be one of {', '.join(MODES)}")
        self.app.player.command("mode", mode=mode)

    def playback(self, text: str) -> None:
        action = text.strip()
        if action not in TRANSPORT:
            raise MqttError("validation_failed", f"playback must be one of "
                            f"{', '.join(TRANSPORT)}")
        self.app.player.command(action)

    def notify(self, text: str) -> None:
        """A notification through `App.notify` (POST /api/notify's path and checks): a JSON
        object is its fields (`text` or `item`, `priority`, `duration_sec`, `id`, ...); any
        other payload is the text itself, shown with the defaults (what Home Assistant's
        text and notify entities send)."""
        try:
            value = json.loads(text)
        except ValueError:
            value = None
        self.app.notify(value if isinstance(value, dict) else {"text": text})
