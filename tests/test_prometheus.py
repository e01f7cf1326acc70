"""contrib/prometheus: the alert rules are valid (`promtool check rules`), fire as their unit
tests say (`promtool test rules`), the example config is valid, and every metric the rules
use is one a real LOOP exposes on /metrics.

Without promtool (Debian package `prometheus`) these skip, except under CI=true, where a
missing promtool is a failure."""

from __future__ import annotations

import os
import re
import shutil
import subprocess

import pytest
from conftest import ROOT, Client

CONTRIB = os.path.join(ROOT, "contrib", "prometheus")
RULES = os.path.join(CONTRIB, "loop-alerts.yml")
ALERTS = ("LoopDown", "LoopDisplayBreakerOpen", "LoopDiskLow", "LoopMemoryOverBudget",
          "LoopTemperatureHigh", "LoopRestarting")


def promtool(*args) -> subprocess.CompletedProcess:
    tool = shutil.which("promtool")
    if tool is None:
        reason = "promtool is not installed (Debian package prometheus)"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{reason}; CI=true requires it", pytrace=False)
        pytest.skip(reason)
    return subprocess.run([tool, *args], cwd=CONTRIB, capture_output=True, text=True,
                          timeout=60)


def test_promtool_check_rules():
    done = promtool("check", "rules", RULES)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout


def test_promtool_rule_unit_tests():
    done = promtool("test", "rules", "loop-alerts.test.yml")
    assert done.returncode == 0, done.stdout + done.stderr


def test_promtool_check_example_config():
    done = promtool("check", "config", "prometheus.yml")
    assert done.returncode == 0, done.stdout + done.stderr


def test_rules_cover_the_issue_and_use_only_real_metric_names(app):
    with open(RULES) as fh:
        text = fh.read()
    for alert in ALERTS:
        assert f"alert: {alert}\n" in text, alert
    used = set(re.findall(r"\bloop_[a-z0-9_]+", text))
    exposed = Client(app.server.port).get("/metrics").body.decode()
    names = set(re.findall(r"^# TYPE (loop_[a-z0-9_]+) ", exposed, re.M))
    # exposed only where the hardware has them (a SoC sensor, the firmware's flags)
    conditional = {"loop_soc_temperature_celsius", "loop_firmware_throttled"}
    with open(os.path.join(ROOT, "loop", "http", "metrics.py")) as fh:
        source = fh.read()
    names |= {name for name in conditional if f'"{name}"' in source}
    assert used and used <= names, sorted(used - names)
