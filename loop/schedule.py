"""The night/dim schedule: which brightness the clock wants, and a manual override.

Rules (a runtime setting, `settings["schedule"]`; `schedule.rules` in config.json holds the
first-start rules) look like

    {"days": ["friday", "saturday"], "start": "22:00", "end": "07:00", "brightness": 10,
     "name": "night", "show": "clock"}

`days` are lowercase weekday names (empty = every day) naming the day a window *starts*;
`start`/`end` are local wall-clock times; an `end` at or before `start` runs past midnight
(equal = 24 hours); `brightness` 0..100 (0 = panel off); `name` is optional. Where windows
overlap, the later rule in the list wins. Outside every window the manual brightness applies.

Evaluation is level-triggered: `wanted_state(rules, now)` is a pure function of the rules and
the clock, so a device booted in the middle of a window, or whose clock NTP has just moved, is
in the right state at the next evaluation. Daylight saving: a window edge whose wall time does
not exist that day (the spring-forward gap) happens when the clock jumps past it (a window
wholly inside the gap runs for its nominal length from the jump); one whose wall time happens
twice (fall-back) happens at the first occurrence only. So no rule is skipped for a day and
none fires twice.

`show` (optional) says what the panel shows while the rule is in force: "loop" (the default:
the loop, dimmed), "clock" (only the clock, at the rule's brightness) or "off" (nothing;
`brightness` may then be left out). Notifications of a high enough priority still show
(`notify.night_priority`; the player applies that).

A brightness set by hand while a rule is active holds until the next change of the wanted
state (`next_change`), then the schedule takes over again. One set while no rule is active is
simply the new manual brightness.

`Scheduler` is the stateful side: it runs on the monitor thread (`tick()`: every minute
boundary, after a clock jump, after a rule change; `evaluate()` at boot), persists through the
store, and hands the wanted brightness to the player.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta, tzinfo
from datetime import time as wall_time
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

log = logging.getLogger("loop.schedule")

DAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
MAX_RULES = 32
MAX_RULE_NAME = 40
RULE_KEYS = ("days", "start", "end", "brightness", "name", "show")
SHOWS = ("loop", "clock", "off")
HORIZON_DAYS = 8  # windows are generated for yesterday .. today + HORIZON_DAYS
JUMP_SEC = 2.0  # wall clock moving this much against the monotonic clock is a clock jump
OVERRIDE_SLACK_SEC = 60.0
_HHMM = re.compile(r"\A([01][0-9]|2[0-3]):([0-5][0-9])\Z")


class RuleError(ValueError):
    """An invalid rule; the message names the rule (by index) and the field."""

    def __init__(self, index: int | None, field: str | None, reason: str):
        where = "rules" if index is None else f"rules[{index}]"
        if field:
            where += f".{field}"
        super().__init__(f"{where}: {reason}")
        self.index, self.field, self.reason = index, field, reason


@dataclass(frozen=True)
class Rule:
    days: frozenset  # weekday numbers 0 = Monday; empty = every day
    start: int  # minutes after midnight
    end: int
    brightness: int
    name: str | None = None
    show: str = "loop"

    def applies(self, day: date) -> bool:
        return not self.days or day.weekday() in self.days

    def as_dict(self) -> dict:
        out = {"days": [DAYS[d] for d in sorted(self.days)], "start": _hhmm(self.start),
               "end": _hhmm(self.end), "brightness": self.brightness}
        if self.name:
            out["name"] = self.name
        if self.show != "loop":
            out["show"] = self.show
        return out


def _hhmm(minutes: int) -> str:
    return f"{minutes // 60:02d}:{minutes % 60:02d}"


def parse_rules(value) -> tuple[Rule, ...]:
    """Validate a JSON list of rules; raises RuleError naming the rule and field."""
    if not isinstance(value, (list, tuple)):
        raise RuleError(None, None, "must be a list of rules")
    if len(value) > MAX_RULES:
        raise RuleError(None, None, f"at most {MAX_RULES} rules")
    return tuple(_parse_rule(i, raw) for i, raw in enumerate(value))


def _parse_rule(index: int, raw) -> Rule:
    if not isinstance(raw, dict):
        raise RuleError(index, None, "must be an object with days, start, end, brightness")
    for key in raw:
        if key not in RULE_KEYS:
            raise RuleError(index, str(key)[:40], f"unknown field; allowed: {', '.join(RULE_KEYS)}")
    show = raw.get("show", "loop")
    if show not in SHOWS:
        raise RuleError(index, "show", f"must be one of {', '.join(SHOWS)}")
    for key in ("start", "end") + (("brightness",) if show != "off" else ()):
        if key not in raw:
            raise RuleError(index, key, "is required")
    days = raw.get("days", [])
    if not isinstance(days, (list, tuple)) or not all(isinstance(d, str) for d in days):
        raise RuleError(index, "days", "must be a list of weekday names (empty = every day)")
    numbers = set()
    for day in days:
        if day not in DAYS:
            raise RuleError(index, "days", f"{day[:20]!r} is not one of {', '.join(DAYS)}")
        if DAYS.index(day) in numbers:
            raise RuleError(index, "days", f"{day} is listed twice")
        numbers.add(DAYS.index(day))
    start, end = (_parse_time(index, key, raw[key]) for key in ("start", "end"))
    brightness = raw.get("brightness", 0)
    if isinstance(brightness, bool) or not isinstance(brightness, int) \
            or not 0 <= brightness <= 100:
        raise RuleError(index, "brightness", "must be a whole number 0..100 (0 = panel off)")
    name = raw.get("name")
    if name is not None and (not isinstance(name, str) or len(name) > MAX_RULE_NAME
                             or not name.isprintable()):
        raise RuleError(index, "name", f"must be text of at most {MAX_RULE_NAME} characters")
    return Rule(frozenset(numbers), start, end, brightness, (name or "").strip() or None,
                show)


def _parse_time(index: int, key: str, value) -> int:
    match = _HHMM.match(value) if isinstance(value, str) else None
    if not match:
        raise RuleError(index, key, 'must be "HH:MM" local time, 00:00..23:59')
    return int(match.group(1)) * 60 + int(match.group(2))


# ---- the pure core -------------------------------------------------------------------------
@dataclass(frozen=True)
class Wanted:
    """What the schedule wants at an instant."""
    rule: int | None  # index of the winning rule; None = no window is open
    brightness: int | None  # the winning rule's brightness; None = the manual one applies
    next_change: datetime | None  # next instant (UTC) the winner changes; None = never
    next_rule: int | None  # the winner from then on
    next_brightness: int | None
    show: str = "loop"  # what the winning rule shows


def wall_instant(day: date, minute: int, zone: tzinfo) -> datetime:
    """The UTC instant a local wall time happens on `day`.

    Ambiguous (fall-back) times take their first occurrence; a time inside a spring-forward
    gap happens when the clock jumps past it (the first instant whose wall time is later)."""
    wall = datetime.combine(day, wall_time(minute // 60, minute % 60))
    first = wall.replace(tzinfo=zone, fold=0).astimezone(UTC)
    if first.astimezone(zone).replace(tzinfo=None) == wall:
        return first
    # In a gap: fold=0 and fold=1 give instants on either side of the jump.
    late = wall.replace(tzinfo=zone, fold=1).astimezone(UTC)
    probe = min(first, late)
    end = max(first, late)
    while probe < end and probe.astimezone(zone).replace(tzinfo=None) < wall:
        probe += timedelta(minutes=1)
    return probe


def windows(rules, zone: tzinfo, first: date, last: date) -> list[tuple[datetime, datetime,
                                                                         int]]:
    """(start, end, rule index) in UTC of every window starting on a day first..last."""
    out = []
    day = first
    while day <= last:
        for index, rule in enumerate(rules):
            if not rule.applies(day):
                continue
            start = wall_instant(day, rule.start, zone)
            end_day = day + timedelta(days=1) if rule.end <= rule.start else day
            end = wall_instant(end_day, rule.end, zone)
            if end <= start:  # wholly inside a spring-forward gap: run for its nominal
                end = start + timedelta(minutes=(rule.end - rule.start) % 1440)  # length
            out.append((start, end, index))
        day += timedelta(days=1)
    return out


def wanted_state(rules, now: datetime) -> Wanted:
    """The winning rule at `now` (an aware datetime; its tzinfo is the rules' zone) and when
    that changes next. Pure: no clock, no I/O."""
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    rules = tuple(rules)
    if not rules:
        return Wanted(None, None, None, None, None)
    zone = now.tzinfo
    today = now.date()
    t = now.astimezone(UTC)
    spans = windows(rules, zone, today - timedelta(days=1),
                    today + timedelta(days=HORIZON_DAYS))
    limit = wall_instant(today + timedelta(days=HORIZON_DAYS + 1), 0, zone)

    # Sweep the window edges in time order, keeping how many windows of each rule are open.
    open_count = [0] * len(rules)
    events: dict[datetime, list[tuple[int, int]]] = {}
    for start, end, index in spans:
        if start <= t < end:
            open_count[index] += 1
        if t < start < limit:
            events.setdefault(start, []).append((index, +1))
        if t < end < limit:
            events.setdefault(end, []).append((index, -1))

    def winner():
        return max((i for i, n in enumerate(open_count) if n > 0), default=None)

    current = winner()
    for edge in sorted(events):
        for index, step in events[edge]:
            open_count[index] += step
        nxt = winner()
        if nxt != current:
            return Wanted(current, _brightness(rules, current), edge, nxt,
                          _brightness(rules, nxt), _show(rules, current))
    return Wanted(current, _brightness(rules, current), None, None, None,
                  _show(rules, current))


def _brightness(rules, index):
    return None if index is None else rules[index].brightness


def _show(rules, index) -> str:
    return "loop" if index is None else rules[index].show


@dataclass(frozen=True)
class Override:
    """A brightness set by hand while a rule was active."""
    brightness: int
    set_at: datetime  # UTC
    until: datetime | None  # UTC; None = until the rules change (no boundary ahead)

    def holds(self, now: datetime) -> bool:
        """Valid from when it was set (a clock moved back before that ends it) until its
        boundary."""
        now = now.astimezone(UTC)
        if now < self.set_at - timedelta(seconds=OVERRIDE_SLACK_SEC):
            return False
        return self.until is None or now < self.until

    def as_setting(self) -> dict:
        return {"brightness": self.brightness, "set_at": _iso(self.set_at),
                "until": _iso(self.until) if self.until else None}

    @classmethod
    def from_setting(cls, value) -> Override | None:
        try:
            brightness = value["brightness"]
            if isinstance(brightness, bool) or not isinstance(brightness, int) \
                    or not 0 <= brightness <= 100:
                return None
            until = value.get("until")
            return cls(brightness, _parse_iso(value["set_at"]),
                       _parse_iso(until) if until else None)
        except (TypeError, KeyError, ValueError, AttributeError):
            return None


@dataclass(frozen=True)
class Decision:
    brightness: int  # what the panel should show
    wanted: Wanted
    override: Override | None  # the override that holds, if any


def decide(rules, now: datetime, manual: int, override: Override | None) -> Decision:
    """The brightness to show: a holding override, else the winning rule, else `manual`."""
    wanted = wanted_state(rules, now)
    if override is not None and override.holds(now):
        return Decision(override.brightness, wanted, override)
    if wanted.brightness is not None:
        return Decision(wanted.brightness, wanted, None)
    return Decision(manual, wanted, None)


def set_by_hand(rules, now: datetime, value: int, manual: int) -> tuple[int, Override | None]:
    """A brightness set by hand: (new manual brightness, override). Inside a window it is an
    override until the next boundary; outside it is the new manual brightness."""
    wanted = wanted_state(rules, now)
    if wanted.rule is None:
        return value, None
    return manual, Override(value, now.astimezone(UTC), wanted.next_change)


def _iso(instant: datetime) -> str:
    return instant.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse_iso(text: str) -> datetime:
    value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if value.tzinfo is None:
        raise ValueError("naive time")
    return value.astimezone(UTC)


# ---- time zones ----------------------------------------------------------------------------
def zone_named(name: str) -> tzinfo:
    """A zone by IANA name ("" = the system's local zone); raises ValueError when unknown."""
    if not name:
        return system_zone()
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError) as exc:
        raise ValueError(f"{name!r} is not a known time zone (like Europe/Berlin)") from exc


def check_zone_name(name: str) -> str | None:
    """For config validation: a reason when `name` is not usable, else None."""
    try:
        zone_named(name)
    except ValueError as exc:
        return str(exc)
    return None


def system_zone(root: str = "/") -> tzinfo:
    """The machine's local zone: $TZ, the /etc/localtime link, /etc/timezone, the file
    itself; UTC when none of them says."""
    candidates = []
    tz = os.environ.get("TZ", "").lstrip(":")
    if tz:
        candidates.append(tz)
    localtime = os.path.join(root, "etc/localtime")
    try:
        target = os.readlink(localtime)
        if "zoneinfo/" in target:
            candidates.append(target.split("zoneinfo/", 1)[1])
    except OSError:
        pass
    try:
        with open(os.path.join(root, "etc/timezone"), encoding="utf-8") as fh:
            candidates.append(fh.read(100).strip())
    except OSError:
        pass
    for name in candidates:
        try:
            return ZoneInfo(name)
        except (ZoneInfoNotFoundError, ValueError, OSError):
            continue
    try:
        with open(localtime, "rb") as fh:
            return ZoneInfo.from_file(fh, key="localtime")
    except (OSError, ValueError):
        return UTC


def zone_label(zone: tzinfo) -> str:
    return getattr(zone, "key", None) or str(zone)


# ---- the stateful side (monitor thread, API threads) ---------------------------------------
class Scheduler:
    """Holds the rules and the override, decides the brightness, tells the player.

    `apply(brightness)` is called with the wanted brightness whenever an evaluation finds the
    panel elsewhere (level-triggered), and `apply_show(show)` likewise with the winning rule's
    `show`. `zone` is a callable returning the tzinfo (config may change on SIGHUP); `clock`
    the wall clock and `monotonic` the monotonic one (tests inject both)."""

    def __init__(self, store, zone, *, default_rules=(), apply=None, current=None,
                 apply_show=None, current_show=None, clock=time.time,
                 monotonic=time.monotonic):
        self.store, self.zone = store, zone
        self.apply = apply or (lambda brightness: None)
        self.current = current or (lambda: None)  # what the panel shows now, if known
        self.apply_show = apply_show or (lambda show: None)
        self.current_show = current_show or (lambda: None)
        self.clock, self.monotonic = clock, monotonic
        self.default_rules = tuple(default_rules)
        self._lock = threading.RLock()
        self._rules: tuple[Rule, ...] = ()
        self._override: Override | None = None
        self._minute = None
        self._anchor = None  # (wall, monotonic) at the last evaluation: clock-jump detection
        self._dirty = True
        self.clock_jumps = 0
        self.version = 0
        self.decision: Decision | None = None
        self.load()

    # ---- state from the store --------------------------------------------------------------
    def load(self) -> None:
        """(Re)read rules and override from the store's settings (start-up, after a restore)."""
        settings = self.store.settings
        with self._lock:
            raw = settings.get("schedule")
            try:
                self._rules = parse_rules(raw if raw is not None else
                                          [r.as_dict() if isinstance(r, Rule) else r
                                           for r in self.default_rules])
            except RuleError as exc:
                log.error("stored schedule ignored (%s); no rules apply", exc)
                self._rules = ()
            override = settings.get("brightness_override")
            self._override = Override.from_setting(override) if override else None
            self._dirty = True

    @property
    def rules(self) -> tuple[Rule, ...]:
        return self._rules

    def manual(self) -> int:
        return int(self.store.settings.get("brightness", 80))

    def now(self) -> datetime:
        return datetime.fromtimestamp(self.clock(), self.zone())

    # ---- changes -----------------------------------------------------------------------
    def set_rules(self, raw) -> tuple[Rule, ...]:
        """New rules (validated; RuleError otherwise), saved at once. Saving ends an override:
        the edited schedule applies."""
        rules = parse_rules(raw)
        with self._lock:
            self.store.update_settings(durable=True, schedule=[r.as_dict() for r in rules],
                                       brightness_override=None)
            self._rules, self._override = rules, None
        self.evaluate("rules changed")
        return rules

    def set_brightness(self, value: int) -> Decision:
        """A brightness set by hand (PUT /api/display); the caller shows the decision."""
        with self._lock:
            manual, override = set_by_hand(self._rules, self.now(), value, self.manual())
            self._override = override
            self.store.update_settings(brightness=manual, brightness_override=(
                override.as_setting() if override else None))
            return self.evaluate("set by hand", apply=False)

    # ---- evaluation --------------------------------------------------------------------
    def due(self) -> bool:
        """True at a new wall-clock minute, after a clock jump, or after a change."""
        wall, mono = self.clock(), self.monotonic()
        if self._dirty or self._anchor is None or int(wall // 60) != self._minute:
            return True
        last_wall, last_mono = self._anchor
        return abs((wall - last_wall) - (mono - last_mono)) > JUMP_SEC

    def tick(self) -> Decision | None:
        """Called on every monitor round: evaluates when due. Never waits for the lock (a
        rule change holds it across its index write): when it is busy nothing happens, and
        the schedule is still due at the next round."""
        if not self.due():
            return None
        return self.evaluate(blocking=False)

    def evaluate(self, reason: str = "", apply: bool = True,
                 blocking: bool = True) -> Decision | None:
        """Decide now; tell the player when the panel is elsewhere (outside the lock, so the
        monitor thread never waits on the display thread). With `blocking=False`, None when
        another thread holds the lock."""
        if not self._lock.acquire(blocking=blocking):
            return None
        try:
            wall, mono = self.clock(), self.monotonic()
            if self._anchor is not None:
                moved = (wall - self._anchor[0]) - (mono - self._anchor[1])
                if abs(moved) > JUMP_SEC:
                    self.clock_jumps += 1
                    log.warning("the wall clock jumped by %+.0f s; schedule re-evaluated",
                                moved)
            self._anchor = (wall, mono)
            self._minute = int(wall // 60)
            self._dirty = False
            now = datetime.fromtimestamp(wall, self.zone())
            decision = decide(self._rules, now, self.manual(), self._override)
            if self._override is not None and decision.override is None:
                log.info("manual brightness override ended; the schedule applies again")
                self._override = None
                self.store.update_settings(brightness_override=None)
            previous = self.decision
            self.decision = decision
            if previous is None or _summary(previous) != _summary(decision):
                self.version += 1
                if previous is not None or reason:
                    log.info("schedule%s: brightness %d (%s)", f" ({reason})" if reason else "",
                             decision.brightness, self._describe(decision))
        finally:
            self._lock.release()
        if apply and self.current() != decision.brightness:
            self.apply(decision.brightness)
        if self.current_show() != decision.wanted.show:
            self.apply_show(decision.wanted.show)
        return decision

    def seconds_to_next_minute(self) -> float:
        return 60.0 - self.clock() % 60.0

    # ---- views -------------------------------------------------------------------------
    def _describe(self, decision: Decision) -> str:
        if decision.override is not None:
            return "manual override"
        rule = decision.wanted.rule
        if rule is None:
            return "no rule active"
        return f"rule {rule}" + (f" {self._rules[rule].name}" if self._rules[rule].name
                                 else "")

    def status(self) -> dict:
        """For /api/poll/status and GET /api/schedule."""
        decision = self.decision
        if decision is None:
            decision = self.evaluate()
        zone = self.zone()
        wanted, override = decision.wanted, decision.override
        rules = self._rules
        rule = wanted.rule if wanted.rule is not None and wanted.rule < len(rules) else None
        next_change = wanted.next_change
        if override is not None and override.until is not None:
            next_change = override.until
        return {
            "rules": len(rules),
            "active_rule": rule,
            "active_name": rules[rule].name if rule is not None else None,
            "rule_brightness": wanted.brightness,
            "show": wanted.show,
            "brightness": decision.brightness,
            "manual_brightness": self.manual(),
            "override": override is not None,
            "override_until": _local_iso(override.until, zone)
            if override is not None and override.until else None,
            "next_change": _local_iso(next_change, zone) if next_change else None,
            "next_rule": wanted.next_rule,
            "next_brightness": wanted.next_brightness,
            "timezone": zone_label(zone),
        }


def _summary(decision: Decision) -> tuple:
    w = decision.wanted
    return (decision.brightness, w.rule, w.next_change, w.next_rule, decision.override)


def _local_iso(instant: datetime, zone: tzinfo) -> str:
    return instant.astimezone(zone).isoformat(timespec="seconds")
