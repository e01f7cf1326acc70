"""A real Mosquitto broker for the MQTT tests and `make bench`: its own process on a free
loopback port, with a password file (mosquitto_passwd) and optionally an ACL file and a TLS
listener. Never the system's service.
"""

from __future__ import annotations

import getpass
import os
import shutil
import socket
import subprocess
import time

MOSQUITTO = shutil.which("mosquitto") or ("/usr/sbin/mosquitto"
                                          if os.path.exists("/usr/sbin/mosquitto") else None)
MOSQUITTO_PASSWD = shutil.which("mosquitto_passwd")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Mosquitto:
    """`mosquitto -c <conf>` in `work_dir`; `users` is {name: password}."""

    def __init__(self, work_dir: str, users: dict[str, str], *, acl: str | None = None,
                 tls: dict | None = None, port: int | None = None):
        if MOSQUITTO is None or MOSQUITTO_PASSWD is None:
            raise FileNotFoundError("mosquitto and mosquitto_passwd are not installed "
                                    "(apt-get install mosquitto mosquitto-clients)")
        self.work_dir, self.users, self.acl, self.tls = work_dir, users, acl, tls
        self.port = port or free_port()
        self.proc: subprocess.Popen | None = None
        os.makedirs(work_dir, exist_ok=True)
        self.log_path = os.path.join(work_dir, "mosquitto.log")
        self.conf_path = os.path.join(work_dir, "mosquitto.conf")
        self._write_files()

    def _write_files(self) -> None:
        passwords = os.path.join(self.work_dir, "passwords")
        if os.path.exists(passwords):
            os.unlink(passwords)
        for n, (user, password) in enumerate(self.users.items()):
            subprocess.run([MOSQUITTO_PASSWD, *(["-c"] if n == 0 else []), "-b", passwords,
                            user, password], check=True, capture_output=True, timeout=30)
        lines = [f"listener {self.port} 127.0.0.1", "allow_anonymous false",
                 f"password_file {passwords}", "persistence false",
                 "log_type error", "log_type warning", "log_type notice",
                 "log_type information", "connection_messages true"]
        if os.geteuid() == 0:  # as root it would switch to the mosquitto user
            lines.append(f"user {getpass.getuser()}")
        if self.acl is not None:
            acl_path = os.path.join(self.work_dir, "acl")
            with open(acl_path, "w") as fh:
                fh.write(self.acl)
            lines.append(f"acl_file {acl_path}")
        if self.tls is not None:
            lines += [f"cafile {self.tls['cafile']}", f"certfile {self.tls['certfile']}",
                      f"keyfile {self.tls['keyfile']}"]
        with open(self.conf_path, "w") as fh:
            fh.write("\n".join(lines) + "\n")

    def start(self, timeout: float = 10.0) -> Mosquitto:
        log = open(self.log_path, "a")
        self.proc = subprocess.Popen([MOSQUITTO, "-c", self.conf_path], stdout=log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mosquitto exited with {self.proc.returncode}:\n"
                                   f"{self.log()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return self
            except OSError:
                time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"mosquitto did not listen on {self.port}:\n{self.log()}")

    def stop(self, timeout: float = 10.0) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout)
        self.proc = None

    def log(self) -> str:
        try:
            with open(self.log_path, errors="replace") as fh:
                return fh.read()
        except OSError:
            return ""
