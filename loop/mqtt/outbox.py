"""The retained messages LOOP wants the broker to hold, published on change and debounced.

Pure code with an injected clock. The front offers every topic's current payload as often as
it likes; a payload equal to what the broker already holds costs nothing. A change goes out
at once when its topic has been quiet for `hold` seconds, otherwise when that time is up,
with the latest value then: a burst of changes (a schedule sweep, a script hammering the API)
becomes at most one message per topic per `hold`, and the last value always arrives.
"""

from __future__ import annotations

import time
from collections.abc import Callable


class Outbox:
    """Per-topic debounce of retained state."""

    def __init__(self, hold_sec: float, clock: Callable[[], float] = time.monotonic):
        self.hold_sec = hold_sec
        self.clock = clock
        self._held: dict[str, str] = {}  # what the broker holds (as far as LOOP knows)
        self._sent_at: dict[str, float] = {}
        self._pending: dict[str, tuple[str, float]] = {}  # topic: (payload, due time)

    def want(self, topic: str, payload: str, hold_sec: float | None = None) -> None:
        """The broker should hold `payload` on `topic`; `hold_sec` overrides the debounce
        (telemetry is published less often than state)."""
        if self._held.get(topic) == payload:
            self._pending.pop(topic, None)  # changed and changed back: nothing to send
            return
        if topic in self._pending:
            self._pending[topic] = (payload, self._pending[topic][1])
            return
        hold = self.hold_sec if hold_sec is None else hold_sec
        last = self._sent_at.get(topic)
        due = self.clock() if last is None else max(self.clock(), last + hold)
        self._pending[topic] = (payload, due)

    def due(self) -> list[tuple[str, str]]:
        """The messages to publish now, in the order they were first wanted; they count as
        held from here on."""
        now = self.clock()
        out = [(topic, payload) for topic, (payload, due) in self._pending.items()
               if due <= now]
        for topic, payload in out:
            del self._pending[topic]
            self._held[topic] = payload
            self._sent_at[topic] = now
        return out

    def next_due(self) -> float | None:
        """Seconds until the next pending message is due, or None when nothing waits."""
        if not self._pending:
            return None
        return max(0.0, min(due for _, due in self._pending.values()) - self.clock())

    def held(self, topic: str) -> str | None:
        return self._held.get(topic)

    def forget(self) -> None:
        """The broker may have lost everything (a new connection, Home Assistant restarted):
        the next offers are all sent, at once."""
        self._held.clear()
        self._sent_at.clear()
        self._pending.clear()
