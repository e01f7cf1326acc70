"""Files in the data directory that guard the panel across processes: the crash marker
(panel inits that never came back) and the panel lock (which process drives the panel)."""

from __future__ import annotations

import fcntl
import logging
import os

from loop.display.preflight import read_file
from loop.durable import fsync_dir, write_json_atomic

logger = logging.getLogger("loop.display")

MARKER_NAME = "display-init.marker"

def _marker_path(data_dir: str) -> str:
    return os.path.join(data_dir, MARKER_NAME)


def init_crash_count(data_dir: str) -> int:
    """Consecutive panel inits that never came back (0 = no marker)."""
    raw = read_file(_marker_path(data_dir), 64)
    if raw is None:
        return 0
    try:
        return max(1, int(raw.decode("ascii").strip()))
    except (UnicodeDecodeError, ValueError):
        return 1  # a marker is there, whatever it says: at least one init did not return


def set_marker(data_dir: str, count: int) -> None:
    if count <= 0:
        clear_crash_marker(data_dir)
    else:
        os.makedirs(data_dir, exist_ok=True)
        write_json_atomic(_marker_path(data_dir), count)


def clear_crash_marker(data_dir: str) -> None:
    """Operator reset: forget failed panel inits, so the next start tries the panel again."""
    try:
        os.unlink(_marker_path(data_dir))
    except FileNotFoundError:
        return
    fsync_dir(data_dir)


LOCK_NAME = "display.lock"


def _lock_pid(fd: int) -> int:
    try:
        return int(os.pread(fd, 32, 0).decode("ascii").strip() or 0)
    except (OSError, UnicodeDecodeError, ValueError):
        return 0


class PanelLock:
    """{data_dir}/display.lock, flock()ed by the process that drives the panel (the service,
    or a self-test), with its pid inside. The kernel drops an flock when its process dies, so
    the lock never goes stale. The self-test refuses to run while another process holds it;
    the service runs headless while a self-test holds it."""

    def __init__(self, data_dir: str):
        self.path = os.path.join(data_dir, LOCK_NAME)
        self._fd: int | None = None

    def acquire(self) -> int | None:
        """Take the lock. None when this process has it (or nothing can be locked: no
        writable data directory, a file system without flock), else the holder's pid (0
        when it is unknown)."""
        if self._fd is not None:
            return None
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o660)
        except OSError as exc:
            logger.warning("cannot open the panel lock %s: %s", self.path, exc)
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = _lock_pid(fd)
            os.close(fd)
            return pid
        except OSError as exc:
            logger.warning("cannot lock %s: %s", self.path, exc)
            os.close(fd)
            return None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
        self._fd = fd
        return None

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)  # closing the only descriptor drops the flock


def panel_lock_holder(data_dir: str) -> int | None:
    """The pid of the process holding {data_dir}/display.lock (0 when unknown), None when no
    process holds it."""
    try:
        fd = os.open(os.path.join(data_dir, LOCK_NAME), os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return _lock_pid(fd)
    except OSError:
        return None
    finally:
        os.close(fd)
    return None


