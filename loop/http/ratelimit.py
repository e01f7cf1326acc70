"""Per-client token buckets with a bounded table.

One bucket per (client, class): a class is a kind of request (polling, control, uploads,
static files) with its own rate and burst. The table holds at most `table_size` buckets and
evicts the least recently used one when full, so a flood of spoofed source addresses costs
bounded memory. An evicted client simply starts again with a full bucket: the cost of the
bound is that such a flood can give a real client a fresh burst, never that it is locked out.
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable


class _Bucket:
    __slots__ = ("tokens", "stamp")

    def __init__(self, tokens: float, stamp: float) -> None:
        self.tokens = tokens
        self.stamp = stamp  # clock time `tokens` was last brought up to date


class RateLimiter:
    """Token buckets keyed by (client, class), thread-safe, bounded in size."""

    def __init__(
        self,
        classes: dict[str, tuple[float, int]],
        table_size: int = 1024,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """classes: name -> (tokens per second, burst)."""
        for name, (rate, burst) in classes.items():
            if rate <= 0 or burst < 1:
                raise ValueError(f"rate class {name!r}: rate must be > 0 and burst >= 1")
        if table_size < 1:
            raise ValueError("table_size must be at least 1")
        self._classes = dict(classes)
        self._table_size = table_size
        self._clock = clock
        self._buckets: OrderedDict[tuple[str, str], _Bucket] = OrderedDict()
        # Request threads share the table; this is not the display hot path, a lock is fine.
        self._lock = threading.Lock()
        self.rejected = 0

    def check(self, client: str, cls: str) -> float:
        """Take one token for (client, cls): 0.0 when allowed, else seconds until one is due.

        The wait is for Retry-After; the caller rounds it up. Unknown `cls` raises KeyError.
        """
        rate, burst = self._classes[cls]
        key = (client, cls)
        with self._lock:
            now = self._clock()
            bucket = self._buckets.get(key)
            if bucket is None:
                if len(self._buckets) >= self._table_size:
                    self._buckets.popitem(last=False)
                bucket = self._buckets[key] = _Bucket(float(burst), now)
            else:
                self._refill(bucket, rate, burst, now)
                self._buckets.move_to_end(key)
            if bucket.tokens >= 1.0:
                bucket.tokens -= 1.0
                return 0.0
            self.rejected += 1
            return (1.0 - bucket.tokens) / rate

    def evict_idle(self) -> int:
        """Drop buckets that have refilled completely (idle clients); return how many."""
        with self._lock:
            now = self._clock()
            idle = []
            for key, bucket in self._buckets.items():
                rate, burst = self._classes[key[1]]
                self._refill(bucket, rate, burst, now)
                if bucket.tokens >= burst:
                    idle.append(key)
            for key in idle:
                del self._buckets[key]
            return len(idle)

    def __len__(self) -> int:
        """Number of buckets held."""
        with self._lock:
            return len(self._buckets)

    @staticmethod
    def _refill(bucket: _Bucket, rate: float, burst: int, now: float) -> None:
        # Only move forward: a clock that stepped back must neither drain nor later mint tokens.
        elapsed = now - bucket.stamp
        if elapsed > 0:
            bucket.tokens = min(float(burst), bucket.tokens + elapsed * rate)
            bucket.stamp = now


CLASSES = ("poll", "control", "upload", "static")


def rate_classes(web) -> dict[str, tuple[float, int]]:
    """The classes of the `web` config section: name -> (tokens per second, burst)."""
    return {name: (getattr(web, f"rate_{name}_per_sec"), getattr(web, f"rate_{name}_burst"))
            for name in CLASSES}


def retry_after(seconds: float) -> str:
    """A `Retry-After` value: whole seconds, rounded up, at least 1."""
    return str(max(1, math.ceil(seconds)))
