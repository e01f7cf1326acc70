"""Dropping root: started as root (the LED library needs /dev/mem and real-time priority),
LOOP becomes the service user (`system.user`) once the hardware is open. Shared by the
service (loop/service/app.py) and the self-test."""

from __future__ import annotations

import logging
import os
import pwd

log = logging.getLogger("loop.privileges")


def service_user(cfg) -> str | None:
    """The user to drop to, when started as root and that user exists."""
    if os.geteuid() != 0 or not cfg.display.drop_privileges:
        return None
    try:
        pwd.getpwnam(cfg.system.user)
    except KeyError:
        return None
    return cfg.system.user


def set_service_groups(cfg) -> None:
    """Before the panel opens: the LED library drops only uid/gid, so root's supplementary
    groups would survive it; take the service user's groups first."""
    user = service_user(cfg)
    if user:
        os.setgroups(os.getgrouplist(user, pwd.getpwnam(user).pw_gid))


def drop_privileges(cfg, was_root: bool) -> dict:
    """Started as root (`was_root`, before the panel opened): become system.user once the
    hardware is open, unless the LED library already did. Returns what happened
    ({"user", "dropped", "reason"}), which health and the self-test report."""
    if not was_root:
        return {"user": _user_name(), "dropped": False, "reason": "not root"}
    if os.geteuid() != 0:  # the LED library dropped to the service user itself
        return {"user": _user_name(), "dropped": True, "reason": None}
    if not cfg.display.drop_privileges:
        return {"user": "root", "dropped": False, "reason": "display.drop_privileges is false"}
    name = cfg.system.user
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        log.warning("running as root: the service user %r does not exist", name)
        return {"user": "root", "dropped": False, "reason": f"user {name} does not exist"}
    os.setgroups(os.getgrouplist(name, entry.pw_gid))
    os.setgid(entry.pw_gid)
    os.setuid(entry.pw_uid)
    return {"user": name, "dropped": True, "reason": None}


def _user_name() -> str:
    try:
        return pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        return str(os.geteuid())


