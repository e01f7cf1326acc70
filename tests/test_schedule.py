"""Night/dim schedule: the pure core table-driven with fixed times in a real zone
(Europe/Berlin: DST spring-forward 2024-03-31 02:00 -> 03:00, fall-back 2024-10-27
03:00 -> 02:00), the override, the level-triggered Scheduler, and the API over a real socket."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from conftest import Client, wait_for

from loop import config
from loop.schedule import (
    Override,
    RuleError,
    Scheduler,
    decide,
    parse_rules,
    set_by_hand,
    wall_instant,
    wanted_state,
)

BERLIN = ZoneInfo("Europe/Berlin")


def local(text: str, fold: int = 0) -> datetime:
    """'2024-03-31 01:59' as Berlin wall time."""
    return datetime.fromisoformat(text).replace(tzinfo=BERLIN, fold=fold)


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def rule(start, end, brightness, days=(), name=None):
    out = {"days": list(days), "start": start, "end": end, "brightness": brightness}
    if name:
        out["name"] = name
    return out


NIGHT = rule("22:00", "07:00", 10)
FRIDAY_NIGHT = rule("22:00", "06:00", 5, ["friday"])
WEEKDAY_MORNING = rule("06:00", "08:00", 40, ["monday", "wednesday"])
EVENING = rule("20:00", "08:00", 30)
LATE = rule("22:00", "06:00", 0)
GAP = rule("02:30", "06:00", 20)  # starts inside the spring-forward gap
FOLD_START = rule("02:30", "03:30", 20)  # starts inside the fall-back fold
FOLD_END = rule("01:00", "02:30", 20)  # ends inside the fall-back fold
ALL_DAY = rule("00:00", "00:00", 50, ["sunday"])

# (rules, now, expected rule index, expected brightness, expected next change (UTC) or None)
CASES = [
    # midnight wrap: a rule whose end is before its start runs past midnight
    ([NIGHT], local("2024-06-10 21:59"), None, None, utc("2024-06-10 20:00")),
    ([NIGHT], local("2024-06-10 22:00"), 0, 10, utc("2024-06-11 05:00")),
    ([NIGHT], local("2024-06-11 00:00"), 0, 10, utc("2024-06-11 05:00")),
    ([NIGHT], local("2024-06-11 06:59"), 0, 10, utc("2024-06-11 05:00")),
    ([NIGHT], local("2024-06-11 07:00"), None, None, utc("2024-06-11 20:00")),
    # day lists name the day a window starts: Friday 22:00 .. Saturday 06:00 only
    ([FRIDAY_NIGHT], local("2024-06-14 05:00"), None, None, utc("2024-06-14 20:00")),  # Fri
    ([FRIDAY_NIGHT], local("2024-06-14 23:00"), 0, 5, utc("2024-06-15 04:00")),
    ([FRIDAY_NIGHT], local("2024-06-15 05:59"), 0, 5, utc("2024-06-15 04:00")),  # Sat
    ([FRIDAY_NIGHT], local("2024-06-15 23:00"), None, None, utc("2024-06-21 20:00")),  # next Fri
    ([WEEKDAY_MORNING], local("2024-06-10 07:00"), 0, 40, utc("2024-06-10 06:00")),  # Mon
    ([WEEKDAY_MORNING], local("2024-06-11 07:00"), None, None, utc("2024-06-12 04:00")),  # Tue
    # overlaps: the later rule wins where both are open
    ([EVENING, LATE], local("2024-06-10 21:00"), 0, 30, utc("2024-06-10 20:00")),
    ([EVENING, LATE], local("2024-06-10 23:00"), 1, 0, utc("2024-06-11 04:00")),
    ([EVENING, LATE], local("2024-06-11 06:30"), 0, 30, utc("2024-06-11 06:00")),
    ([LATE, EVENING], local("2024-06-10 23:00"), 1, 30, utc("2024-06-11 06:00")),
    # spring forward (02:00 -> 03:00 CEST): 02:30 does not exist; the window opens at the jump
    ([GAP], local("2024-03-31 01:59"), None, None, utc("2024-03-31 01:00")),
    ([GAP], local("2024-03-31 03:00"), 0, 20, utc("2024-03-31 04:00")),
    ([GAP], local("2024-03-30 02:30"), 0, 20, utc("2024-03-30 05:00")),  # the day before: CET
    ([GAP], local("2024-04-01 02:30"), 0, 20, utc("2024-04-01 04:00")),  # the day after: CEST
    # a night across the jump lasts an hour less of real time, and ends at 07:00 CEST
    ([NIGHT], local("2024-03-31 01:30"), 0, 10, utc("2024-03-31 05:00")),
    ([NIGHT], local("2024-03-31 06:59"), 0, 10, utc("2024-03-31 05:00")),
    ([NIGHT], local("2024-03-31 07:00"), None, None, utc("2024-03-31 20:00")),
    # fall back (03:00 CEST -> 02:00 CET): 02:00..02:59 happen twice; a start there fires once
    ([FOLD_START], local("2024-10-27 02:29"), None, None, utc("2024-10-27 00:30")),
    ([FOLD_START], local("2024-10-27 02:30"), 0, 20, utc("2024-10-27 02:30")),
    ([FOLD_START], local("2024-10-27 02:29", fold=1), 0, 20, utc("2024-10-27 02:30")),
    ([FOLD_START], local("2024-10-27 03:29"), 0, 20, utc("2024-10-27 02:30")),
    ([FOLD_START], local("2024-10-27 03:30"), None, None, utc("2024-10-28 01:30")),
    # an end inside the fold ends at its first occurrence and does not start again
    ([FOLD_END], local("2024-10-27 02:29"), 0, 20, utc("2024-10-27 00:30")),
    ([FOLD_END], local("2024-10-27 02:10", fold=1), None, None, utc("2024-10-28 00:00")),
    ([NIGHT], local("2024-10-27 06:59"), 0, 10, utc("2024-10-27 06:00")),  # 07:00 CET
    # a night across the fold lasts an hour more of real time
    ([NIGHT], local("2024-10-26 21:00"), None, None, utc("2024-10-26 20:00")),
    # start == end: 24 hours; back-to-back windows are one state with no change ahead
    ([ALL_DAY], local("2024-06-16 12:00"), 0, 50, utc("2024-06-16 22:00")),
    ([rule("00:00", "00:00", 50)], local("2024-06-16 12:00"), 0, 50, None),
    ([], local("2024-06-16 12:00"), None, None, None),
]


@pytest.mark.parametrize("rules, now, index, brightness, next_change", CASES)
def test_wanted_state(rules, now, index, brightness, next_change):
    wanted = wanted_state(parse_rules(rules), now)
    assert (wanted.rule, wanted.brightness, wanted.next_change) == \
        (index, brightness, next_change)


def test_wanted_state_is_the_same_instant_in_any_representation():
    rules = parse_rules([NIGHT])
    instant = local("2024-03-31 01:30")
    assert wanted_state(rules, instant) == wanted_state(rules, instant.astimezone(BERLIN))
    with pytest.raises(ValueError):
        wanted_state(rules, datetime(2024, 1, 1))  # naive times are refused


def walk(rules, start: datetime, hours: int, step_min: int = 10):
    """(utc instant, rule index) every few minutes of real time."""
    t = start.astimezone(UTC)
    out = []
    for _ in range(hours * 60 // step_min):
        out.append((t, wanted_state(rules, t.astimezone(BERLIN)).rule))
        t += timedelta(minutes=step_min)
    return out


@pytest.mark.parametrize("day", ["2024-03-30", "2024-10-26"])
@pytest.mark.parametrize("raw", [GAP, FOLD_START, FOLD_END, NIGHT, rule("02:00", "03:00", 1)])
def test_dst_weekends_fire_each_rule_once_a_day(day, raw):
    """Walking real time across a DST weekend: every window opens exactly once per day
    (never skipped, never twice), and next_change always names the next real change."""
    rules = parse_rules([raw])
    samples = walk(rules, local(f"{day} 12:00"), 72)
    openings = [t for (t, a), (_, b) in zip(samples, samples[1:]) if a is None and b == 0]
    assert len(openings) == 3, openings
    for t, index in samples:
        wanted = wanted_state(rules, t.astimezone(BERLIN))
        if wanted.next_change is not None:
            assert wanted.next_change > t
            assert wanted_state(rules, wanted.next_change.astimezone(BERLIN)).rule != index


def test_wall_instant_in_the_gap_is_the_jump_and_in_the_fold_the_first():
    assert wall_instant(datetime(2024, 3, 31).date(), 150, BERLIN) == utc("2024-03-31 01:00")
    assert wall_instant(datetime(2024, 3, 31).date(), 120, BERLIN) == utc("2024-03-31 01:00")
    assert wall_instant(datetime(2024, 3, 31).date(), 180, BERLIN) == utc("2024-03-31 01:00")
    assert wall_instant(datetime(2024, 10, 27).date(), 150, BERLIN) == utc("2024-10-27 00:30")


# ---- validation ----------------------------------------------------------------------------
@pytest.mark.parametrize("rules, message", [
    ([{"start": "22:00", "end": "07:00"}], "rules[0].brightness: is required"),
    ([NIGHT, dict(NIGHT, start="7:00")], "rules[1].start: must be \"HH:MM\""),
    ([dict(NIGHT, end="24:00")], "rules[0].end: must be \"HH:MM\""),
    ([dict(NIGHT, brightness=101)], "rules[0].brightness: must be a whole number 0..100"),
    ([dict(NIGHT, brightness=True)], "rules[0].brightness"),
    ([dict(NIGHT, brightness=5.5)], "rules[0].brightness"),
    ([dict(NIGHT, days=["fri"])], "rules[0].days: 'fri' is not one of monday"),
    ([dict(NIGHT, days=["friday", "friday"])], "rules[0].days: friday is listed twice"),
    ([dict(NIGHT, days="friday")], "rules[0].days: must be a list"),
    ([dict(NIGHT, brigthness=3)], "rules[0].brigthness: unknown field"),
    ([dict(NIGHT, name="x" * 41)], "rules[0].name"),
    (["22:00"], "rules[0]: must be an object"),
    ({"start": "22:00"}, "rules: must be a list"),
    ([NIGHT] * 33, "rules: at most 32 rules"),
])
def test_invalid_rules_name_the_rule_and_field(rules, message):
    with pytest.raises(RuleError) as caught:
        parse_rules(rules)
    assert message in str(caught.value)


def test_rules_round_trip_in_canonical_form():
    raw = [rule("22:00", "07:00", 10, ["sunday", "friday"], name="night")]
    rules = parse_rules(raw)
    assert [r.as_dict() for r in rules] == [
        {"days": ["friday", "sunday"], "start": "22:00", "end": "07:00", "brightness": 10,
         "name": "night"}]
    assert parse_rules([r.as_dict() for r in rules]) == rules


def test_config_holds_initial_rules_and_zone_checked():
    cfg = config.build({"schedule": {"rules": [NIGHT], "timezone": "Europe/Berlin"}})
    assert cfg.schedule.rules[0]["start"] == "22:00"
    with pytest.raises(config.ConfigError, match=r"schedule.rules: .*rules\[0\].end"):
        config.build({"schedule": {"rules": [dict(NIGHT, end="25:00")]}})
    with pytest.raises(config.ConfigError, match="schedule.timezone"):
        config.build({"schedule": {"timezone": "Mars/Olympus"}})


# ---- override ------------------------------------------------------------------------------
def test_override_holds_until_the_next_boundary_then_the_schedule_applies():
    rules = parse_rules([NIGHT])
    at = local("2024-06-10 23:00")
    manual, override = set_by_hand(rules, at, 60, manual=80)
    assert manual == 80 and override.until == utc("2024-06-11 05:00")
    assert decide(rules, local("2024-06-11 06:59"), 80, override).brightness == 60
    after = decide(rules, local("2024-06-11 07:00"), 80, override)
    assert after.brightness == 80 and after.override is None
    # set outside every window: it is the manual brightness, and the next window wins
    manual, override = set_by_hand(rules, local("2024-06-11 12:00"), 40, manual=80)
    assert (manual, override) == (40, None)
    assert decide(rules, local("2024-06-11 22:00"), manual, None).brightness == 10
    assert decide(rules, local("2024-06-12 07:00"), manual, None).brightness == 40


def test_override_ends_when_the_clock_moves_back_before_it_was_set():
    override = Override(60, utc("2024-06-10 21:00"), utc("2024-06-11 05:00"))
    assert override.holds(utc("2024-06-10 22:00"))
    assert not override.holds(utc("1970-01-01 00:10"))
    assert not override.holds(utc("2024-06-11 05:00"))
    assert Override.from_setting(override.as_setting()) == override
    assert Override.from_setting({"brightness": "x"}) is None


# ---- the Scheduler (fake clocks, a dict store) -----------------------------------------------
class FakeStore:
    def __init__(self, **settings):
        self._settings = dict({"brightness": 80}, **settings)
        self.durable_writes = 0

    @property
    def settings(self):
        return dict(self._settings)

    def update_settings(self, durable=False, **changes):
        self._settings.update(changes)
        self.durable_writes += int(durable)


class Clocks:
    def __init__(self, wall: datetime):
        self.wall = wall.timestamp()
        self.mono = 1000.0

    def advance(self, seconds):
        self.wall += seconds
        self.mono += seconds

    def jump(self, seconds):
        self.wall += seconds


def make_scheduler(now: datetime, rules=(), **settings):
    clocks = Clocks(now)
    store = FakeStore(**settings)
    panel = {"brightness": None}
    applied = []

    def apply(value):
        applied.append(value)
        panel["brightness"] = value
    scheduler = Scheduler(store, lambda: BERLIN, default_rules=rules, apply=apply,
                          current=lambda: panel["brightness"], clock=lambda: clocks.wall,
                          monotonic=lambda: clocks.mono)
    return scheduler, clocks, store, applied


def test_boot_in_the_middle_of_a_window_is_dimmed_at_once():
    scheduler, clocks, store, applied = make_scheduler(local("2024-06-11 03:00"), [NIGHT])
    assert scheduler.tick().brightness == 10
    assert applied == [10]
    status = scheduler.status()
    assert status["active_rule"] == 0 and status["override"] is False
    assert status["next_change"] == "2024-06-11T07:00:00+02:00"
    assert status["timezone"] == "Europe/Berlin"


def test_level_triggered_each_minute_and_only_then():
    scheduler, clocks, store, applied = make_scheduler(local("2024-06-10 21:58:30"), [NIGHT])
    scheduler.tick()
    assert applied == [80]
    clocks.advance(20)  # 21:58:50
    assert scheduler.tick() is None  # same minute: nothing to do
    clocks.advance(70)  # 22:00:00
    assert scheduler.tick().brightness == 10 and applied == [80, 10]
    clocks.advance(60)
    scheduler.tick()
    assert applied == [80, 10]  # already right: the player is not told again


def test_clock_jump_is_noticed_within_the_minute():
    """A Pi without an RTC boots at an old time; NTP then moves the clock into the night."""
    scheduler, clocks, store, applied = make_scheduler(local("2024-06-10 12:00:05"), [NIGHT])
    scheduler.tick()
    assert applied == [80]
    clocks.jump(11 * 3600)  # 23:00:05, same second-of-minute
    assert scheduler.due()
    assert scheduler.tick().brightness == 10
    assert scheduler.clock_jumps == 1


def test_manual_brightness_holds_until_the_boundary():
    scheduler, clocks, store, applied = make_scheduler(local("2024-06-10 23:00"), [NIGHT])
    scheduler.tick()
    decision = scheduler.set_brightness(60)
    assert decision.brightness == 60 and decision.override is not None
    assert store.settings["brightness"] == 80  # the day brightness is kept
    assert store.settings["brightness_override"]["until"] == "2024-06-11T05:00:00Z"
    assert scheduler.status()["override"] is True
    clocks.advance(7 * 3600 + 59 * 60)  # 06:59
    assert scheduler.tick().brightness == 60
    clocks.advance(60)  # 07:00: the override expires, the manual day brightness is back
    decision = scheduler.tick()
    assert decision.brightness == 80 and decision.override is None
    assert store.settings["brightness_override"] is None
    assert scheduler.status()["override"] is False


def test_override_survives_a_restart_and_rule_change_ends_it():
    scheduler, clocks, store, applied = make_scheduler(local("2024-06-10 23:00"), [NIGHT])
    scheduler.tick()
    scheduler.set_brightness(60)
    again = Scheduler(store, lambda: BERLIN, clock=lambda: clocks.wall,
                      monotonic=lambda: clocks.mono)
    assert again.evaluate().brightness == 60
    again.set_rules([NIGHT, rule("23:30", "06:00", 3)])
    assert again.decision.brightness == 10 and again.decision.override is None
    assert store.settings["schedule"][1]["brightness"] == 3
    assert store.durable_writes == 1


def test_stored_rules_win_over_config_rules_and_bad_ones_are_ignored():
    scheduler, *_ = make_scheduler(local("2024-06-10 23:00"), [NIGHT],
                                   schedule=[rule("22:00", "23:30", 1)])
    assert scheduler.tick().brightness == 1
    scheduler, *_ = make_scheduler(local("2024-06-10 23:00"), [NIGHT],
                                   schedule=[{"start": "nonsense"}])
    assert scheduler.rules == () and scheduler.tick().brightness == 80


# ---- API, status and the monitor thread -------------------------------------------------------
def test_schedule_api_status_and_monitor(make_app):
    app = make_app(schedule__timezone="Europe/Berlin")
    client = Client(app.server.port)
    fake = {"t": local("2024-06-10 21:59:30").timestamp()}
    app.scheduler.clock = lambda: fake["t"]
    reply = client.get("/api/schedule")
    assert reply.status == 200 and reply.data["rules"] == []
    assert reply.data["state"]["timezone"] == "Europe/Berlin"

    bad = client.put("/api/schedule", json_body={"rules": [NIGHT, dict(NIGHT, days=["sat"])]})
    assert bad.status == 422 and bad.json["error"] == "validation_failed"
    assert bad.json["message"].startswith("rules[1].days:")
    assert client.put("/api/schedule", json_body={"rule": []}).status == 422
    assert client.put("/api/schedule", json_body={}).status == 422

    reply = client.put("/api/schedule", json_body={"rules": [dict(NIGHT, name="night")]})
    assert reply.status == 200, reply
    assert reply.data["rules"] == [dict(NIGHT, name="night")]
    assert reply.data["state"]["next_change"] == "2024-06-10T22:00:00+02:00"
    assert app.store.settings["schedule"] == [dict(NIGHT, name="night")]

    status = client.get("/api/poll/status")
    etag = status.headers["ETag"]
    assert status.data["player"]["brightness"] == 80
    assert status.data["schedule"]["active_rule"] is None

    fake["t"] += 30  # 22:00:00 — the monitor thread notices the new minute by itself
    wait_for(lambda: app.player.brightness == 10)
    status = client.get("/api/poll/status", headers={"If-None-Match": etag})
    assert status.status == 200
    schedule = status.data["schedule"]
    assert schedule["active_rule"] == 0 and schedule["active_name"] == "night"
    assert schedule["next_change"] == "2024-06-11T07:00:00+02:00"
    assert status.data["player"]["brightness"] == 10

    # by hand inside the window: an override until 07:00, the manual 80 is kept for the day
    reply = client.put("/api/display", json_body={"brightness": 55})
    assert reply.status == 200 and reply.data["brightness"] == 55
    schedule = client.get("/api/poll/status").data["schedule"]
    assert schedule["override"] is True
    assert schedule["override_until"] == "2024-06-11T07:00:00+02:00"
    assert app.store.settings["brightness"] == 80

    fake["t"] = local("2024-06-11 07:00:01").timestamp()
    wait_for(lambda: app.player.brightness == 80)
    assert client.get("/api/poll/status").data["schedule"]["override"] is False


def test_schedule_from_config_applies_at_start(make_app):
    # a window that always contains now: every day, 24 hours
    app = make_app(schedule__rules=[rule("00:00", "00:00", 7)], display__brightness=90)
    assert app.player.brightness == 7
    assert app.store.settings["brightness"] == 90
    client = Client(app.server.port)
    assert client.get("/api/schedule").data["rules"] == [rule("00:00", "00:00", 7)]
