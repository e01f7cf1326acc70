"""Notifications: "show this now" over whatever plays. The request's fields, and the queue that
decides which one is on the panel. Pure: no I/O, no clock of its own (every decision takes
`now`, a monotonic time), no knowledge of frames (a notification's `source` is opaque here).

Rules (docs/notifications.md, "Notifications"):

- A higher priority interrupts a lower one at once; equal priorities queue in the order they
  were posted. The loop is the lowest of all: any notification interrupts it.
- An interrupted notification goes back to the queue at its place and later plays again from
  its start.
- Posting an id that is queued or on screen replaces that notification in place (its place in
  the queue is kept; on screen, the new content shows at once). Retracting removes it.
- `expires_at`: not shown after this, even if still queued; one on screen is taken off.
- While a night rule is active only priorities from `gate` up are shown; the rest wait
  (and may expire meanwhile).
- At most `capacity` notifications, on screen included. One more is refused with 429 (see
  `QueueFull`); a replacement always fits.

The queue is shared by the request threads (post, retract, list) and the display thread
(choose, finish): a lock guards it, held only for these in-memory steps, never across I/O.
`version` moves on every change, so the display thread compares one integer per frame and
calls `choose` only when something changed or `next_event` (an expiry) is due.
"""

from __future__ import annotations

import itertools
import math
import re
import threading
from dataclasses import dataclass

from loop.media.errors import MediaError

PRIORITIES = ("low", "normal", "high", "critical")
ID_PATTERN = re.compile(r"\A[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}\Z")
FIELDS = ("id", "priority", "duration_sec", "repeat", "expires_sec", "brightness")
MAX_DURATION_SEC = 86400.0
MAX_EXPIRES_SEC = 7 * 86400.0
MAX_REPEAT = 1000


def _bad(field: str, reason: str) -> MediaError:
    return MediaError(400, "bad_request", f"{field}: {reason}")


@dataclass(frozen=True)
class Fields:
    """The notification fields of a request, checked."""
    id: str | None
    priority: int  # index into PRIORITIES
    duration_sec: float | None
    repeat: int | None
    expires_sec: float | None
    brightness: int | None


def parse_fields(body: dict) -> Fields:
    """Check the notification fields of `body` (other keys are the caller's); 400 naming the
    field."""
    note_id = body.get("id")
    if note_id is not None and (not isinstance(note_id, str) or not ID_PATTERN.match(note_id)):
        raise _bad("id", "must be 1-64 of A-Z a-z 0-9 _ . : - (starting with a letter or "
                   "digit)")
    priority = body.get("priority", "normal")
    if priority not in PRIORITIES:
        raise _bad("priority", f"must be one of {', '.join(PRIORITIES)}")
    duration = _number(body, "duration_sec", (int, float), 0.1, MAX_DURATION_SEC)
    repeat = _number(body, "repeat", int, 1, MAX_REPEAT)
    if duration is not None and repeat is not None:
        raise _bad("repeat", "give duration_sec or repeat, not both")
    expires = _number(body, "expires_sec", (int, float), 1, MAX_EXPIRES_SEC)
    brightness = _number(body, "brightness", int, 1, 100)
    return Fields(note_id, PRIORITIES.index(priority), duration, repeat, expires, brightness)


def _number(body: dict, key: str, kind, lo, hi):
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, kind) or not lo <= value <= hi:
        what = "a whole number" if kind is int else "a number"
        raise _bad(key, f"must be {what} {lo:g}..{hi:g}")
    return value


@dataclass(eq=False)
class Notification:
    """One notification. `source` is what the display thread plays (frames); `seconds` or
    `repeat` says how long (exactly one is set); `about` describes it for people."""
    id: str
    priority: int
    source: object
    seconds: float | None
    repeat: int | None
    brightness: int | None
    posted_at: float
    expires_at: float | None
    about: dict
    seq: int = 0

    def expired(self, now: float) -> bool:
        return self.expires_at is not None and now >= self.expires_at


class QueueFull(MediaError):
    """429: the queue holds `capacity` notifications. Chosen over 507 because the condition
    passes by itself as notifications finish or expire, and 429 with Retry-After is what
    clients (curl --retry, CI scripts, MQTT bridges) already back off and retry on."""

    def __init__(self, capacity: int, retry_sec: float):
        super().__init__(429, "queue_full", f"{capacity} notifications are already queued "
                         "(notify.max_queued): retract one, replace one by its id, or retry")
        self.headers = {"Retry-After": str(max(1, math.ceil(retry_sec)))}


class NotificationQueue:
    """The notifications on screen or waiting; see the module docstring for the rules."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self._items: list[Notification] = []  # in the order they were posted (by seq)
        self._seq = itertools.count(1)
        self._lock = threading.Lock()
        self.showing: Notification | None = None
        self.gate: int | None = None  # the night gate of the last choice
        self.version = 0
        self.replaced = self.retracted = self.expired = self.refused = 0

    # ---- request threads ------------------------------------------------------------------
    def check_room(self, note_id: str | None, now: float) -> None:
        """Raise QueueFull before any work when a new notification would not fit."""
        with self._lock:
            self._drop_expired(now)
            if self._full(note_id):
                self.refused += 1
                raise QueueFull(self.capacity, self._retry_after(now))

    def post(self, note: Notification, now: float) -> Notification | None:
        """Queue `note`; returns the notification it replaced (same id), if any."""
        with self._lock:
            self._drop_expired(now)
            old = next((n for n in self._items if n.id == note.id), None)
            if old is None and self._full(note.id):
                self.refused += 1
                raise QueueFull(self.capacity, self._retry_after(now))
            if old is not None:
                note.seq = old.seq  # a replacement keeps its place
                self._items[self._items.index(old)] = note
                self.replaced += 1
            else:
                note.seq = next(self._seq)
                self._items.append(note)
            self.version += 1
            return old

    def retract(self, note_id: str) -> Notification | None:
        """Remove the notification with that id; returns it, or None when there is none."""
        with self._lock:
            note = next((n for n in self._items if n.id == note_id), None)
            if note is not None:
                self._items.remove(note)
                self.retracted += 1
                self.version += 1
            return note

    def listing(self, now: float, ages: bool = True) -> list[dict]:
        """The queue for people: on screen first, then in the order it will show. `ages`
        adds `age_sec`/`expires_in_sec`, which move with the clock (not in the status
        snapshot, whose encoding is kept per version: it has the absolute times)."""
        with self._lock:
            notes = sorted(self._items, key=_order)
            showing, gate = self.showing, self.gate
        out = []
        for note in notes:
            if note.expired(now):
                continue
            state = "showing" if note is showing else (
                "held" if gate is not None and note.priority < gate else "queued")
            entry = dict(note.about, id=note.id, priority=PRIORITIES[note.priority],
                         state=state, brightness=note.brightness,
                         duration_sec=note.seconds, repeat=note.repeat)
            if ages:
                entry.update(age_sec=round(now - note.posted_at, 1),
                             expires_in_sec=None if note.expires_at is None
                             else round(note.expires_at - now, 1))
            out.append(entry)
        out.sort(key=lambda entry: entry["state"] != "showing")
        return out

    def __len__(self) -> int:
        return len(self._items)

    # ---- the display thread ---------------------------------------------------------------
    def choose(self, now: float, gate: int | None = None) -> tuple[Notification | None, int]:
        """What should be on the panel now (None = the loop, or the night clock), and the
        version this choice saw. `gate`: the lowest priority shown (a night rule), None =
        every priority."""
        with self._lock:
            self._drop_expired(now)
            self.gate = gate
            eligible = [n for n in self._items if gate is None or n.priority >= gate]
            best = min(eligible, key=_order, default=None)
            current = self.showing
            if current is not None and current in eligible \
                    and (best is None or best.priority <= current.priority):
                best = current  # equal priorities wait their turn
            elif best is not current:
                self.showing = best
                self.version += 1
            return best, self.version

    def finish(self, note: Notification) -> None:
        """`note` has played its time (it is removed unless it was replaced meanwhile)."""
        with self._lock:
            if note in self._items:
                self._items.remove(note)
                self.version += 1
            if self.showing is note:
                self.showing = None
                self.version += 1

    def next_event(self) -> float | None:
        """The earliest expiry in the queue (when `choose` must run again), or None."""
        with self._lock:
            return min((n.expires_at for n in self._items if n.expires_at is not None),
                       default=None)

    def clear(self) -> list[Notification]:
        """Drop every notification (the service stops)."""
        with self._lock:
            dropped, self._items, self.showing = self._items, [], None
            self.version += 1
            return dropped

    # ---- under the lock -------------------------------------------------------------------
    def _full(self, note_id: str | None) -> bool:
        replacing = note_id is not None and any(n.id == note_id for n in self._items)
        return not replacing and len(self._items) >= self.capacity

    def _drop_expired(self, now: float) -> None:
        kept = [n for n in self._items if not n.expired(now)]
        if len(kept) != len(self._items):
            self.expired += len(self._items) - len(kept)
            self._items = kept
            self.version += 1

    def _retry_after(self, now: float) -> float:
        expiries = [n.expires_at - now for n in self._items if n.expires_at is not None]
        return min(expiries, default=10.0)


def _order(note: Notification) -> tuple:
    return (-note.priority, note.seq)
