"""Circuit breaker: transitions, back-off and snapshot, driven by a fake clock (no sleeps)."""

import threading

import pytest

from loop.playback.breaker import Breaker


class FakeClock:
    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def make(clock: FakeClock, rand: float = 0.5, **kw) -> Breaker:
    # rand 0.5 makes the jitter factor exactly 1.
    return Breaker(clock=clock, rand=lambda: rand, **kw)


def trip(b: Breaker) -> None:
    for i in range(b.max_failures):
        b.record_failure(f"err {i}")


def test_starts_closed_and_allows():
    b = make(FakeClock())
    assert b.state == "closed"
    assert b.allow() and b.allow()


@pytest.mark.parametrize("max_failures", [1, 3, 5])
def test_opens_after_exactly_max_failures(max_failures):
    b = make(FakeClock(), max_failures=max_failures)
    for _ in range(max_failures - 1):
        b.record_failure("boom")
    assert b.state == "closed" and b.allow()
    b.record_failure("boom")
    assert b.state == "open"
    assert not b.allow()


def test_success_resets_consecutive_failures():
    b = make(FakeClock())
    for _ in range(4):
        b.record_failure("boom")
    b.record_success(0.01)
    for _ in range(4):
        b.record_failure("boom")
    assert b.state == "closed"
    assert b.snapshot()["consecutive_failures"] == 4
    b.record_failure("boom")
    assert b.state == "open"


@pytest.mark.parametrize(
    "elapsed, slow",
    [(0.0, False), (0.5, False), (0.501, True), (0.812, True), (30.0, True)],
)
def test_slow_calls_count_as_failures(elapsed, slow):
    b = make(FakeClock(), slow_call_sec=0.5)
    for _ in range(5):
        b.record_success(elapsed)
    assert b.state == ("open" if slow else "closed")


def test_slow_call_error_message():
    b = make(FakeClock())
    b.record_success(0.812)
    assert b.snapshot()["last_error"] == "slow call: 812 ms"
    assert b.snapshot()["consecutive_failures"] == 1


@pytest.mark.parametrize(
    "reset_sec, max_reset_sec, delays",
    [
        (5.0, 300.0, [5, 10, 20, 40, 80, 160, 300, 300, 300]),
        (5.0, 60.0, [5, 10, 20, 40, 60, 60]),
        (1.0, 1.0, [1, 1, 1]),
        (10.0, 4.0, [4, 4]),  # a cap below the base wins
    ],
)
def test_backoff_doubles_per_consecutive_opening_and_is_capped(reset_sec, max_reset_sec, delays):
    clock = FakeClock()
    b = make(clock, reset_sec=reset_sec, max_reset_sec=max_reset_sec)
    trip(b)
    for delay in delays:
        opened_at = clock.t
        assert b.snapshot()["retry_in_sec"] == pytest.approx(delay)
        clock.t = opened_at + delay - 0.01
        assert not b.allow()
        assert b.state == "open"
        clock.t = opened_at + delay
        assert b.allow()
        assert b.state == "half_open"
        b.record_failure("still broken")  # the trial fails: open again, doubled
        assert b.state == "open"


@pytest.mark.parametrize("rand, factor", [(0.5, 1.0), (0.0, 0.9), (1.0, 1.1)])
def test_jitter_is_plus_minus_ten_percent(rand, factor):
    clock = FakeClock()
    b = make(clock, rand=rand)
    trip(b)
    assert b.snapshot()["retry_in_sec"] == pytest.approx(5.0 * factor)
    clock.t += 5.0 * factor
    assert b.allow()
    b.record_failure("again")
    assert b.snapshot()["retry_in_sec"] == pytest.approx(10.0 * factor)


def test_half_open_allows_exactly_one_trial():
    clock = FakeClock()
    b = make(clock)
    trip(b)
    clock.t += 5.0
    assert b.allow()
    assert [b.allow() for _ in range(5)] == [False] * 5
    clock.t += 1000.0  # time alone never grants a second trial
    assert not b.allow()
    assert b.state == "half_open"
    assert b.snapshot()["retry_in_sec"] is None


def test_would_allow_asks_without_taking_the_trial():
    clock = FakeClock()
    b = make(clock)
    assert b.would_allow()
    trip(b)
    assert not b.would_allow()
    clock.t += 5.0
    assert [b.would_allow() for _ in range(3)] == [True] * 3
    assert b.state == "open"  # asking changed nothing: the trial is still there to take
    assert b.allow() and b.state == "half_open"
    assert not b.would_allow()  # the one trial is out


def test_trial_success_closes_and_resets_backoff_exponent():
    clock = FakeClock()
    b = make(clock)
    trip(b)  # 5 s
    clock.t += 5.0
    assert b.allow()
    b.record_failure("trial failed")  # 10 s
    clock.t += 10.0
    assert b.allow()
    b.record_success(0.01)
    assert b.state == "closed"
    assert b.snapshot()["consecutive_failures"] == 0
    assert b.allow()
    trip(b)
    assert b.snapshot()["retry_in_sec"] == pytest.approx(5.0)  # back to the base, not 20


def test_slow_trial_reopens():
    clock = FakeClock()
    b = make(clock)
    trip(b)
    clock.t += 5.0
    assert b.allow()
    b.record_success(2.0)
    assert b.state == "open"
    assert b.snapshot()["retry_in_sec"] == pytest.approx(10.0)


def test_reset_clears_history_and_backoff():
    clock = FakeClock()
    b = make(clock)
    trip(b)
    clock.t += 5.0
    b.allow()
    b.record_failure("trial failed")
    b.reset()
    assert b.state == "closed"
    assert b.allow()
    snap = b.snapshot()
    assert snap["consecutive_failures"] == 0
    assert snap["last_error"] is None
    assert snap["retry_in_sec"] is None
    assert snap["openings"] == 2  # lifetime counter for metrics survives
    trip(b)
    assert b.snapshot()["retry_in_sec"] == pytest.approx(5.0)


def test_snapshot_fields_through_a_cycle():
    clock = FakeClock()
    b = make(clock, max_failures=2)
    assert b.snapshot() == {
        "state": "closed",
        "consecutive_failures": 0,
        "openings": 0,
        "last_error": None,
        "retry_in_sec": None,
        "max_failures": 2,
    }
    b.record_failure("OSError: gpio")
    b.record_failure("OSError: gpio 2")
    clock.t += 2.0
    assert b.snapshot() == {
        "state": "open",
        "consecutive_failures": 2,
        "openings": 1,
        "last_error": "OSError: gpio 2",
        "retry_in_sec": pytest.approx(3.0),
        "max_failures": 2,
    }
    clock.t += 60.0
    assert b.snapshot()["retry_in_sec"] == 0.0  # overdue, never negative


def test_call_runs_fn_times_it_and_records():
    clock = FakeClock()
    b = make(clock)
    seen = []

    def fast(x, y):
        seen.append((x, y))
        clock.t += 0.1

    def slow():
        clock.t += 0.6

    assert b.call(fast, 1, 2) is True
    assert seen == [(1, 2)]
    assert b.call(slow) is False
    assert b.snapshot()["last_error"] == "slow call: 600 ms"
    assert b.snapshot()["consecutive_failures"] == 1


@pytest.mark.parametrize("exc", [OSError, RuntimeError, ValueError, TypeError, MemoryError])
def test_call_never_raises_and_opens_on_exceptions(exc):
    b = make(FakeClock())
    calls = 0

    def broken():
        nonlocal calls
        calls += 1
        raise exc("panel gone")

    assert [b.call(broken) for _ in range(5)] == [False] * 5
    assert b.state == "open"
    assert b.snapshot()["last_error"] == f"{exc.__name__}: panel gone"
    assert b.call(broken) is False
    assert calls == 5  # not called while open


def test_call_as_half_open_trial():
    clock = FakeClock()
    b = make(clock)
    trip(b)
    clock.t += 5.0
    assert b.call(lambda: None) is True
    assert b.state == "closed"


def test_call_lets_keyboard_interrupt_through():
    b = make(FakeClock())

    def interrupted():
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        b.call(interrupted)


def test_months_of_reopenings_stay_capped_without_overflow():
    clock = FakeClock()
    b = make(clock, reset_sec=5.0, max_reset_sec=300.0)
    trip(b)
    for _ in range(3000):  # an exponent this large would overflow float without a clamp
        clock.t += 400.0
        assert b.allow()
        b.record_failure("dead panel")
    assert b.snapshot()["retry_in_sec"] == pytest.approx(300.0)
    assert b.snapshot()["openings"] == 3001


def test_snapshot_is_consistent_while_the_display_thread_mutates():
    clock = FakeClock()
    b = make(clock, max_failures=1)
    stop = threading.Event()
    bad = []

    def reader():
        while not stop.is_set():
            snap = b.snapshot()
            # state and retry time are published together: open always has a retry time.
            if (snap["state"] == "open") != (snap["retry_in_sec"] is not None):
                bad.append(snap)

    t = threading.Thread(target=reader)
    t.start()
    try:
        for _ in range(20000):
            b.record_failure("x")  # open
            clock.t += 10.0
            b.allow()  # half_open
            b.record_success(0.0)  # closed
    finally:
        stop.set()
        t.join()
    assert bad == []


@pytest.mark.parametrize(
    "kw",
    [
        {"max_failures": 0},
        {"slow_call_sec": 0},
        {"reset_sec": -1},
        {"max_reset_sec": 0},
        {"jitter": 1.0},
        {"jitter": -0.1},
    ],
)
def test_rejects_bad_parameters(kw):
    with pytest.raises(ValueError):
        Breaker(**kw)
