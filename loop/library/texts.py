"""Text and clock items in the library: created from a JSON spec, edited by replacing them.

The spec's canonical JSON goes through the same intake as an upload (a job, the budget, the
commit protocol), so the item's id is the hash of that JSON: the same text twice is the same
item. An edit changes the content, so it makes the edited item (a new id) and puts it where
the old one was in the loop, with its name (unless that was the automatic one), loop count
and duration; then the old item is deleted. The rendering happens on the request thread,
never on the display thread.
"""

from __future__ import annotations

import dataclasses
import logging

from loop.library.store import MAX_NAME
from loop.media import generated
from loop.media.errors import MediaError

log = logging.getLogger("loop.texts")

KINDS = ("text", "clock")
CARRIED = ("loop_count", "duration_sec")


class TextItems:
    """Creates and edits text and clock items through the intake."""

    def __init__(self, store, intake):
        self.store, self.intake = store, intake

    def create(self, body: dict) -> tuple[int, dict]:
        """(201 new | 200 existing, the intake's result) for a `POST /api/media` JSON body."""
        name = body.get("name")
        if name is not None and (not isinstance(name, str) or not name.strip()
                                 or len(name) > MAX_NAME):
            raise MediaError(400, "bad_request", f"name: must be 1..{MAX_NAME} characters")
        spec = generated.parse_item(body, allowed=("name",))
        status, results = self._commit(spec, name or spec.name())
        return status, results[0]

    def spec_of(self, item: dict) -> dict:
        """The item's spec as JSON fields (`{"text": …}` or `{"clock": {…}}`), from its
        original, which is the source of truth (a restored item has no copy in its meta)."""
        spec = generated.read_spec(self.store.original_path_for(item))
        if spec is None:
            raise MediaError(409, "conflict", "this item's original is not a text or clock")
        fields = dataclasses.asdict(spec)
        return {"clock": fields} if item.get("kind") == "clock" else fields

    def edit(self, item: dict, changes: dict) -> dict:
        """Apply spec `changes` (text options, or `{"clock": {…}}`) to a text or clock item;
        the edited item's meta (its id is new unless nothing changed)."""
        old = self.spec_of(item)
        if item.get("kind") == "clock":
            if set(changes) - {"clock"} or not isinstance(changes.get("clock"), dict):
                raise MediaError(400, "bad_request", "clock: send the clock's fields as "
                                 "{\"clock\": {…}}")
            merged = {"clock": dict(old["clock"], **changes["clock"])}
        else:
            merged = dict(old, **changes)
        spec = generated.parse_item(merged)
        if spec.canonical() == generated.parse_item(old).canonical():
            return item
        auto_name = item.get("name") == generated.parse_item(old).name()
        status, results = self._commit(spec, spec.name() if auto_name else item["name"])
        new = results[0]["item"]
        if new["id"] != item["id"]:
            carried = {k: item.get(k) for k in CARRIED if item.get(k) is not None}
            if not auto_name:
                carried["name"] = item["name"]
            if carried:
                new = self.store.update_item(new["id"], carried)
            loop = [i for i in self.store.view.loop if i != new["id"]]
            if item["id"] in loop:
                loop[loop.index(item["id"])] = new["id"]
            self.store.set_loop(loop)
            self.store.delete_item(item["id"])
        return new

    def _commit(self, spec, name: str) -> tuple[int, list]:
        received = self.intake.receive_bytes(spec.canonical(), name)
        status, results = self.intake.process_all([received])
        if status >= 400:
            raise MediaError(status, results[0]["code"], results[0]["error"])
        return status, results
