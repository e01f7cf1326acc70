"""Per-client token buckets, driven by a fake clock (no sleeps)."""

import threading

import pytest

from loop.http.ratelimit import RateLimiter


class FakeClock:
    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


CLASSES = {"poll": (2.0, 3), "upload": (0.5, 1)}


def make(clock, table_size=1024, classes=CLASSES):
    return RateLimiter(classes, table_size=table_size, clock=clock)


@pytest.mark.parametrize(
    "cls, burst, retry",
    [("poll", 3, 0.5), ("upload", 1, 2.0)],
)
def test_burst_then_refusal_with_retry_time(cls, burst, retry):
    rl = make(FakeClock())
    assert [rl.check("10.0.0.1", cls) for _ in range(burst)] == [0.0] * burst
    assert rl.check("10.0.0.1", cls) == pytest.approx(retry)
    assert rl.rejected == 1


def test_retry_after_is_honest():
    clock = FakeClock()
    rl = make(clock)
    rl.check("a", "upload")
    wait = rl.check("a", "upload")
    assert wait == pytest.approx(2.0)
    clock.t += wait - 0.1
    assert rl.check("a", "upload") == pytest.approx(0.1)  # still refused: 0.1 s to go
    clock.t += 0.1
    assert rl.check("a", "upload") == 0.0


def test_refill_over_time_and_capped_at_burst():
    clock = FakeClock()
    rl = make(clock)
    for _ in range(3):
        rl.check("a", "poll")
    clock.t += 1.0  # 2 tokens at 2/s
    assert [rl.check("a", "poll") for _ in range(3)] == [0.0, 0.0, pytest.approx(0.5)]
    clock.t += 100.0  # long idle refills only up to the burst
    results = [rl.check("a", "poll") for _ in range(4)]
    assert results[:3] == [0.0] * 3
    assert results[3] > 0


def test_classes_are_independent():
    rl = make(FakeClock())
    rl.check("a", "upload")
    assert rl.check("a", "upload") > 0
    assert rl.check("a", "poll") == 0.0


def test_clients_are_independent():
    rl = make(FakeClock())
    rl.check("a", "upload")
    assert rl.check("a", "upload") > 0
    assert rl.check("b", "upload") == 0.0


def test_unknown_class_is_a_key_error_and_holds_nothing():
    rl = make(FakeClock())
    with pytest.raises(KeyError):
        rl.check("a", "nope")
    assert len(rl) == 0


def test_table_bound_holds_under_a_flood_of_clients():
    clock = FakeClock()
    rl = make(clock, table_size=64)
    largest = 0
    for i in range(10_000):
        assert rl.check(f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}", "poll") == 0.0
        largest = max(largest, len(rl))
    assert largest == 64
    assert len(rl) == 64


def test_eviction_is_least_recently_used():
    rl = make(FakeClock(), table_size=3)
    rl.check("a", "upload")  # a's bucket is now empty
    rl.check("b", "upload")
    rl.check("c", "upload")
    assert rl.check("a", "upload") > 0  # touching a makes b the oldest
    rl.check("d", "upload")  # evicts b, not a
    assert rl.check("a", "upload") > 0  # a kept its empty bucket
    assert rl.check("b", "upload") == 0.0  # b starts again with a full bucket
    rl.check("e", "upload")
    rl.check("f", "upload")
    rl.check("g", "upload")
    assert rl.check("a", "upload") == 0.0  # evicted by the flood: a fresh burst, not a lockout


def test_evict_idle_drops_only_full_buckets():
    clock = FakeClock()
    rl = make(clock, classes={"c": (1.0, 2)})
    rl.check("busy", "c")
    rl.check("busy", "c")
    rl.check("idle", "c")
    clock.t += 1.0  # busy: 1 of 2 tokens, idle: full
    assert rl.evict_idle() == 1
    assert len(rl) == 1
    assert rl.check("busy", "c") == 0.0
    assert rl.check("busy", "c") > 0  # its state survived the sweep
    clock.t += 10.0
    assert rl.evict_idle() == 1
    assert len(rl) == 0
    assert rl.evict_idle() == 0


def test_rejected_counts_refusals_only():
    rl = make(FakeClock())
    for client in ("a", "b"):
        for _ in range(5):
            rl.check(client, "poll")  # 3 allowed, 2 refused each
    assert rl.rejected == 4


def test_concurrent_checks_never_overspend_a_bucket():
    rl = make(FakeClock(), classes={"c": (1.0, 1000)})
    allowed = []

    def worker():
        allowed.append(sum(rl.check("a", "c") == 0.0 for _ in range(200)))

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(allowed) == 1000
    assert rl.rejected == 600


@pytest.mark.parametrize(
    "classes, table_size",
    [({"c": (0.0, 1)}, 10), ({"c": (1.0, 0)}, 10), ({"c": (1.0, 1)}, 0)],
)
def test_rejects_bad_parameters(classes, table_size):
    with pytest.raises(ValueError):
        RateLimiter(classes, table_size=table_size)
