"""Circuit breaker around the display driver.

Sans-IO: time comes from an injected monotonic clock and randomness from an injected source,
nothing here sleeps. Only the display thread calls allow/record/call/reset; any other thread
may call `snapshot()` or read `state`, which read one tuple published by a single attribute
assignment, so they need no lock and never see a half-updated breaker.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import Any

CLOSED = "closed"
OPEN = "open"
HALF_OPEN = "half_open"

# 2**62 * any sane reset_sec is far beyond any cap, and stays a finite float; without this
# clamp a breaker re-opening every few minutes for weeks would overflow int -> float.
_MAX_EXPONENT = 62


class Breaker:
    """Opens after `max_failures` consecutive failures; one half-open trial per back-off."""

    def __init__(
        self,
        max_failures: int = 5,
        slow_call_sec: float = 0.5,
        reset_sec: float = 5.0,
        max_reset_sec: float = 300.0,
        clock: Callable[[], float] = time.monotonic,
        rand: Callable[[], float] = random.random,
        jitter: float = 0.1,
    ) -> None:
        if max_failures < 1:
            raise ValueError("max_failures must be at least 1")
        if slow_call_sec <= 0 or reset_sec <= 0 or max_reset_sec <= 0:
            raise ValueError("slow_call_sec, reset_sec and max_reset_sec must be positive")
        if not 0 <= jitter < 1:
            raise ValueError("jitter must be in [0, 1)")
        self.max_failures = max_failures
        self.slow_call_sec = slow_call_sec
        self.reset_sec = reset_sec
        self.max_reset_sec = max_reset_sec
        self._clock = clock
        self._rand = rand
        self._jitter = jitter
        self._state = CLOSED
        self._failures = 0  # consecutive failed calls
        self._streak = 0  # consecutive openings without a successful trial: the back-off exponent
        self._openings = 0  # lifetime total, for metrics (a Prometheus counter never goes down)
        self._last_error: str | None = None
        self._retry_at: float | None = None  # clock time when the half-open trial may run
        self._publish()

    @property
    def state(self) -> str:
        """One of "closed", "open", "half_open"."""
        return self._published[0]

    def allow(self) -> bool:
        """True when a call to the real driver may be made now.

        closed: True. open: False until the back-off has elapsed; then the breaker turns
        half_open and allows exactly one trial call; further calls get False until that
        trial's outcome is recorded.
        """
        if self._state == CLOSED:
            return True
        if self._state == OPEN and self._retry_at is not None and self._clock() >= self._retry_at:
            self._state = HALF_OPEN
            self._retry_at = None
            self._publish()
            return True
        return False

    def would_allow(self) -> bool:
        """True when allow() would say yes now (closed, or open with its back-off over);
        unlike allow() it changes nothing, so a caller can decide what the trial is."""
        if self._state == CLOSED:
            return True
        return self._state == OPEN and self._retry_at is not None \
            and self._clock() >= self._retry_at

    def record_success(self, elapsed: float) -> None:
        """Record a call that returned after `elapsed` seconds; a slow one counts as a failure."""
        if elapsed > self.slow_call_sec:
            self.record_failure(f"slow call: {elapsed * 1000:.0f} ms")
            return
        if self._state == HALF_OPEN:
            self._state = CLOSED
            self._streak = 0
        self._failures = 0
        self._publish()

    def record_failure(self, error: str) -> None:
        """Record a call that failed with `error` (a short human-readable reason)."""
        self._failures += 1
        self._last_error = error
        if self._state == HALF_OPEN or (
            self._state == CLOSED and self._failures >= self.max_failures
        ):
            self._open()
        self._publish()

    def call(self, fn: Callable[..., Any], *args: Any) -> bool:
        """Run fn(*args) if allowed and record the outcome; True only for a fast success.

        An exception from fn is recorded, never raised (BaseException such as
        KeyboardInterrupt still propagates). Returns False when the call was not allowed.
        """
        if not self.allow():
            return False
        start = self._clock()
        try:
            fn(*args)
        except Exception as exc:  # any driver error is a display failure
            self.record_failure(f"{type(exc).__name__}: {exc}")
            return False
        elapsed = self._clock() - start
        self.record_success(elapsed)
        return elapsed <= self.slow_call_sec

    def reset(self) -> None:
        """Operator reset: closed, failure history and back-off cleared (`openings` is kept)."""
        self._state = CLOSED
        self._failures = 0
        self._streak = 0
        self._last_error = None
        self._retry_at = None
        self._publish()

    def snapshot(self) -> dict[str, Any]:
        """The breaker's state for health and the API; safe to call from any thread."""
        state, failures, openings, last_error, retry_at = self._published
        retry_in = None if retry_at is None else max(0.0, retry_at - self._clock())
        return {
            "state": state,
            "consecutive_failures": failures,
            "openings": openings,
            "last_error": last_error,
            "retry_in_sec": retry_in,
            "max_failures": self.max_failures,
        }

    def _open(self) -> None:
        self._streak += 1
        self._openings += 1
        exponent = min(self._streak - 1, _MAX_EXPONENT)
        base = min(self.reset_sec * 2**exponent, self.max_reset_sec)
        # Jitter spreads the trials of many devices (or drivers) that failed together.
        delay = base * (1 + self._jitter * (2 * self._rand() - 1))
        self._state = OPEN
        self._retry_at = self._clock() + delay

    def _publish(self) -> None:
        # One attribute assignment: readers on other threads see the old tuple or the new one.
        self._published = (
            self._state,
            self._failures,
            self._openings,
            self._last_error,
            self._retry_at,
        )
