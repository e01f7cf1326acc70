"""The main thread's wait for signals, without a lock in any signal handler.

A Python signal handler runs on the main thread between two bytecodes, whatever that thread is
doing, including holding a lock: inside `Event.wait`/`Event.clear`, a logging handler, an
import. A handler that takes a lock (`Event.set` does) can then wait for itself forever. So the
handlers here do nothing at all: `signal.set_wakeup_fd` makes the C-level handler write the
signal's number into a pipe, and the main loop reads the numbers and acts in ordinary code.
Other threads wake the same loop by writing `WAKE` (no signal has number 0).
"""

from __future__ import annotations

import os
import signal

WAKE = 0  # written by poke(): look at the app's state


def _noted(signum, frame) -> None:
    """The installed handler: the C-level handler has already written the number into the
    pipe; doing anything here could take a lock the interrupted code holds."""


class SignalPipe:
    """Installs do-nothing handlers for `signums` and delivers them through a pipe. Create
    and restore it on the main thread (set_wakeup_fd's rule)."""

    def __init__(self, signums):
        self.read_fd, self.write_fd = os.pipe2(os.O_CLOEXEC)
        os.set_blocking(self.write_fd, False)  # a signal handler must never block
        self._previous_fd = signal.set_wakeup_fd(self.write_fd, warn_on_full_buffer=False)
        self._previous = {signum: signal.signal(signum, _noted) for signum in signums}

    def wait(self) -> bytes:
        """Block until a signal or a poke arrives; the numbers that arrived (several signals
        in a row come as one read)."""
        return os.read(self.read_fd, 512)

    def poke(self) -> None:
        """Wake the waiting main thread (any thread)."""
        try:
            os.write(self.write_fd, bytes([WAKE]))
        except OSError:  # full: the reader wakes anyway; closed: it is gone
            pass

    def restore(self) -> None:
        """Put the previous handlers and wakeup fd back. The pipe itself stays open for the
        life of the process: a late poke from a straggling request thread must never write
        into a descriptor number that has been reused."""
        signal.set_wakeup_fd(self._previous_fd)
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
