"""One source played from its first frame over the loop: a notification or the night clock.

Pure: the caller passes `now` (monotonic) and shows the frame `due` returns. A notification
plays for `seconds` or `repeat` passes of its animation; the night clock has neither and
plays until it is taken off. A track that falls behind by more than a frame starts counting
again from now instead of skipping frames: a marquee slows for a moment, it never jumps.
"""

from __future__ import annotations


class Track:
    """Which frame of `frames` is due when, and when the track is over."""

    def __init__(self, frames, now: float, seconds: float | None = None,
                 repeat: int | None = None):
        self.frames = frames
        self.ends_at = now + seconds if seconds is not None else None
        self.repeat = repeat if frames.count > 1 else None  # a still plays for its seconds
        self.index = 0  # the next frame to show
        self.loops = 0
        self.deadline = now  # when frame `index` is due
        self.finishing = False  # the last frame of the last pass is on screen
        self.started = False

    def due(self, now: float) -> int | None:
        """The frame to show now, or None when nothing new is due."""
        frames = self.frames
        if frames.count == 1:
            if self.started:
                return None
            self.started = True
            return 0
        if self.finishing or now < self.deadline:
            return None
        self.started = True
        durations = frames.durations
        if now - self.deadline > durations[self.index] / 1000:
            self.deadline = now  # late: go on from here, skipping nothing
        index = self.index
        self.deadline += durations[index] / 1000
        self.index += 1
        if self.index == frames.count:
            self.index = 0
            self.loops += 1
            self.finishing = self.repeat is not None and self.loops >= self.repeat
        return index

    def over(self, now: float) -> bool:
        """True once the track has played its time (the last frame its full duration)."""
        if self.ends_at is not None and now >= self.ends_at:
            return True
        return self.finishing and now >= self.deadline

    def wait(self, now: float) -> float | None:
        """Seconds until `due` or `over` may change; None = not before something else does."""
        moments = [self.ends_at] if self.ends_at is not None else []
        if self.frames.count > 1:
            moments.append(self.deadline)
        elif not self.started:
            moments.append(now)
        return max(0.0, min(moments) - now) if moments else None
