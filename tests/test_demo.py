"""`make demo` (contrib/demo.py): three generated samples uploaded to a running LOOP, in order."""

import os
import subprocess
import sys

from conftest import ROOT, write_config

DEMO = os.path.join(ROOT, "contrib", "demo.py")


def run_demo(port: int, out) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, DEMO, "--url", f"http://127.0.0.1:{port}",
                           "--out", str(out)], capture_output=True, text=True, timeout=120)


def test_demo_uploads_three_samples_that_join_the_loop_in_order(tmp_path, services):
    service = services(write_config(tmp_path / "config.json", tmp_path / "data"))
    done = run_demo(service.port, tmp_path / "samples")
    assert done.returncode == 0, done.stdout + done.stderr
    names = ["loop-bounce.gif", "loop-bars.png", "loop-spin.gif"]
    assert sorted(os.listdir(tmp_path / "samples")) == sorted(names)  # kept for curl recipes
    items = service.client.get("/api/media").data["items"]
    assert [i["name"] for i in items] == names and all(i["in_loop"] for i in items)
    assert [i["kind"] for i in items] == ["animation", "image", "animation"]
    again = run_demo(service.port, tmp_path / "samples")  # the same bytes: duplicates, no error
    assert again.returncode == 0, again.stderr
    assert len(service.client.get("/api/media").data["items"]) == 3


def test_demo_says_plainly_when_loop_is_not_running(tmp_path):
    from conftest import free_loopback_port
    done = run_demo(free_loopback_port(), tmp_path / "samples")
    assert done.returncode != 0
    assert "cannot reach LOOP" in done.stderr and "make run" in done.stderr
