"""Frame-pacing analysis (pure functions; the recording comes from bench/paced_service.py).

The ideal schedule of a looping animation is a start time plus the cumulative delays of every
frame since, whether the player showed it or skipped it; the start is chosen so that the median
deviation is zero (a late first frame would otherwise shift all the others). The
frame's identity comes from its colour, so a skipped frame is noticed and counted, and the
ideal time of the next one still includes its delay.
"""

from __future__ import annotations

from bench.common import goal_check, median, percentile, summary
from bench.inputs import frame_tag

P99_GOAL_MS = 2.0
CPU_GOAL_US = 100.0


def select(record: dict, tag: int, start: float, end: float):
    """(time, thread cpu, frame index) of the shows of GIF `tag` within [start, end]."""
    out = []
    for t, cpu, pixel in zip(record["t"], record["cpu"], record["pixel"]):
        if start <= t <= end:
            gif, index = frame_tag(bytes.fromhex(pixel))
            if gif == tag:
                out.append((t, cpu, index))
    return out


def analyse(shows, durations_ms) -> dict:
    """Deviation from the ideal schedule, drift, skipped frames and CPU per frame.

    `shows`: [(monotonic seconds, thread CPU seconds, frame index)] in order of showing.
    """
    n = len(durations_ms)
    if len(shows) < 2 or n == 0:
        return {"frames": len(shows), "error": "too few frames recorded"}
    cumulative = [0]
    for d in durations_ms:
        cumulative.append(cumulative[-1] + d)
    total = cumulative[-1]
    t0, _, first = shows[0]
    ideal = t0
    deviations = [0.0]  # ms, late is positive
    intervals = []  # |actual interval - nominal interval| in ms
    skipped = 0
    previous_t, previous_i = t0, first
    for t, _, index in shows[1:]:
        steps = (index - previous_i) % n or n
        nominal = (cumulative[index] - cumulative[previous_i]) % total or total
        ideal += nominal / 1000
        skipped += steps - 1
        deviations.append((t - ideal) * 1000)
        intervals.append(abs((t - previous_t) * 1000 - nominal))
        previous_t, previous_i = t, index
    # Anchor the ideal schedule at the median offset rather than at the first frame, so one
    # late first frame does not shift every other frame; drift is how far the schedule moved
    # from the first tenth of the window to the last tenth.
    offset = median(deviations)
    deviations = [d - offset for d in deviations]
    tenth = max(1, len(deviations) // 10)
    drift = sum(deviations[-tenth:]) / tenth - sum(deviations[:tenth]) / tenth
    absolute = [abs(d) for d in deviations]
    cpu_us = (shows[-1][1] - shows[0][1]) / (len(shows) - 1) * 1e6
    shortest = min(durations_ms)
    stats = summary(absolute)
    p99 = stats["p99"]
    return {
        "p99_dev_ms": p99, "drift_ms": drift, "cpu_per_frame_us": cpu_us,
        "late_frames": skipped, "p50_dev_ms": stats["p50"], "max_dev_ms": stats["max"],
        "over_2ms": sum(1 for d in absolute if d > 2.0),
        "interval_err_p99_ms": percentile(intervals, 99),
        "frames": len(shows), "seconds": shows[-1][0] - t0,
        "goal": f"p99_dev <= {P99_GOAL_MS:g}, |drift| <= {shortest} (1 frame), "
                f"cpu <= {CPU_GOAL_US:g}",
        "met": bool(goal_check(p99, P99_GOAL_MS) and goal_check(abs(drift), shortest)
                    and goal_check(cpu_us, CPU_GOAL_US)),
    }
