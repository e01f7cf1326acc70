"""The benchmark script's own pure helpers (statistics, result lines, table, analyses), so a
broken `make bench` shows up in `make test`. Nothing here measures or asserts timing."""

import json
import math

import pytest
from conftest import ROOT  # noqa: F401  (puts the repository root on sys.path)

from bench import common, inputs, load, pacing, playback, startup
from loop import config
from loop.media.frames import FrameFile
from loop.media.geometry import Target
from loop.media.render import render as render_upload


def test_percentile_interpolates_between_ranks():
    values = list(range(1, 101))
    assert common.percentile(values, 50) == pytest.approx(50.5)
    assert common.percentile(values, 99) == pytest.approx(99.01)
    assert common.percentile(values, 0) == 1 and common.percentile(values, 100) == 100
    assert common.percentile([7], 99) == 7
    assert common.percentile([], 50) is None
    assert common.median([3, 1, 2]) == 2 and common.median([4, 1, 3, 2]) == 2.5
    with pytest.raises(ValueError):
        common.percentile([1], 101)


def test_summary_scales_and_rounds():
    numbers = common.summary([0.001, 0.002, 0.003], scale=1000)
    assert numbers == {"p50": 2.0, "p99": pytest.approx(2.98), "max": 3.0, "mean": 2.0, "n": 3}
    assert common.summary([])["n"] == 0


def test_result_line_is_one_json_object_with_group_and_bench():
    record = common.result("memory", "idle_empty", rss_mb=24.123456, nan=math.nan,
                           nested={"x": 1.23456789}, goal="rss_mb <= 25", met=True)
    line = common.json_line(record)
    assert "\n" not in line
    parsed = json.loads(line)
    assert parsed["group"] == "memory" and parsed["bench"] == "idle_empty"
    assert parsed["rss_mb"] == 24.123 and parsed["nan"] is None
    assert parsed["nested"] == {"x": 1.235}
    assert list(parsed)[:2] == ["group", "bench"]
    with pytest.raises(ValueError):
        common.result("speed", "x")
    with pytest.raises(ValueError):
        common.json_line({"bench": "no group"})


def test_only_a_full_run_replaces_the_committed_results():
    from bench import run
    every = list(common.GROUPS)
    assert run.saves_results(every, quick=False, environ={})
    assert not run.saves_results(every, quick=True, environ={})  # BENCH_QUICK=1 make bench
    assert not run.saves_results(["pacing"], quick=False, environ={})
    assert run.saves_results(["pacing"], quick=True, environ={"BENCH_SAVE": "1"})


def test_every_group_is_known():
    assert common.GROUPS == ("memory", "polling", "pacing", "notify", "ingest", "startup",
                             "durability", "hardware")


def test_headline_verdict_and_table():
    rec = common.result("polling", "idle_c1", rps=1234.5, p50_ms=0.4321, p99_ms=3.0,
                        statuses={"200": 5}, runs=3, tool="wrk", n503=0, max_ms=9.0,
                        goal="p99_ms <= 10", met=False)
    assert common.headline(rec) == "rps=1234  p50_ms=0.432  p99_ms=3  n503=0"
    assert common.verdict(rec) == "MISSED"
    assert common.verdict({"error": "415"}) == "n/a: error"
    assert common.verdict({}) == ""
    table = common.results_table([rec, common.result("startup", "ready_empty", ready_s=0.2)])
    lines = table.splitlines()
    assert lines[0].split() == ["group", "bench", "numbers", "goal", "goal?"]
    assert set(lines[1].replace(" ", "")) == {"-"}
    assert lines[2].startswith("polling  idle_c1") and lines[2].endswith("MISSED")
    assert all(len(line) <= len(lines[1]) for line in lines)
    markdown = common.markdown_table([rec])
    assert markdown.splitlines()[2].startswith("| polling | idle_c1 | rps=1234")


def test_goal_check():
    assert common.goal_check(2, 2) is True and common.goal_check(3, 2) is False
    assert common.goal_check(None, 2) is None
    assert common.goal_check(5, 4, lower_is_better=False) is True


def test_service_config_lifts_every_rate_limit_and_validates():
    raw = common.service_config("/tmp/data", display={"cols": 128, "rows": 64})
    cfg = config.build(raw)
    assert cfg.web.rate_poll_per_sec >= 10000 and cfg.web.rate_upload_burst >= 10000
    assert cfg.display.driver == "headless" and cfg.display.cols == 128
    assert cfg.web.max_concurrent_requests == config.defaults().web.max_concurrent_requests


def shows(times_ms, indexes, cpu_step=50e-6):
    return [(t / 1000, i * cpu_step, index) for i, (t, index) in enumerate(zip(times_ms,
                                                                             indexes))]


def test_pacing_on_time_has_no_deviation():
    durations = [20, 30, 50]
    times, t = [], 0
    for n in range(9):
        times.append(t)
        t += durations[n % 3]
    numbers = pacing.analyse(shows(times, [n % 3 for n in range(9)]), durations)
    assert numbers["p99_dev_ms"] == pytest.approx(0, abs=1e-6)
    assert numbers["drift_ms"] == pytest.approx(0, abs=1e-6)
    assert numbers["late_frames"] == 0 and numbers["frames"] == 9
    assert numbers["cpu_per_frame_us"] == pytest.approx(50)
    assert numbers["met"] is True


def test_pacing_counts_skipped_frames_and_a_cut_frame_as_drift():
    durations = [20] * 5
    # frame 2 skipped (player caught up), still on the ideal schedule
    numbers = pacing.analyse(shows([0, 20, 60, 80], [0, 1, 3, 4]), durations)
    assert numbers["late_frames"] == 1 and numbers["drift_ms"] == pytest.approx(0, abs=1e-6)
    # the last frame of the loop cut short: everything after it is 20 ms early
    times = [0, 20, 40, 60, 80] + [80 + 20 * n for n in range(15)]
    numbers = pacing.analyse(shows(times, [n % 5 for n in range(20)]), durations)
    assert numbers["drift_ms"] == pytest.approx(-20) and numbers["met"] is False
    assert numbers["max_dev_ms"] == pytest.approx(20)
    # a late first frame alone is one deviation, not a shift of every other frame
    numbers = pacing.analyse(shows([3] + [20 * n for n in range(1, 20)],
                                   [n % 5 for n in range(20)]), durations)
    assert numbers["p50_dev_ms"] == pytest.approx(0, abs=1e-6)
    assert numbers["max_dev_ms"] == pytest.approx(3)


def test_pacing_select_reads_the_frame_from_its_colour():
    record = {"t": [1.0, 2.0, 3.0, 4.0], "cpu": [0, 0, 0, 0],
              "pixel": ["a00340", "b00140", "a00440", "a00540"]}
    assert pacing.select(record, inputs.TAG_20MS, 1.5, 4.0) == [(3.0, 0, 4), (4.0, 0, 5)]


def test_pacing_gif_frames_survive_rendering_exactly(tmp_path):
    """The bench identifies frames by colour; the renderer must keep them exact."""
    path = tmp_path / "pacing.gif"
    path.write_bytes(inputs.pacing_gif(inputs.TAG_MIXED, inputs.PACING_MIXED))
    frames_path = str(tmp_path / "frames.bin")
    render_upload(str(path), frames_path, Target(64, 32), config.defaults().media)
    frames = FrameFile(frames_path)
    try:
        assert list(frames.durations) == inputs.PACING_MIXED
        for index in range(frames.count):
            pixel = bytes(frames.frame(index)[:3])
            assert inputs.frame_tag(pixel) == (inputs.TAG_MIXED, index)
    finally:
        frames.close()


WRK_OUTPUT = """Running 2s test @ http://127.0.0.1:1/api/poll/status
WRKJSON {"requests": 2000, "duration_us": 2000000, "p50_us": 400, "p90_us": 900, "p99_us": 3500, "max_us": 9000, "mean_us": 510.2, "errors": {"connect": 0, "read": 1, "write": 0, "status": 3, "timeout": 0}, "statuses": {"200": 1997, "503": 3}}
"""  # noqa: E501


def test_wrk_result_line_is_parsed_and_normalised():
    numbers = load.normalise(load.parse_wrk(WRK_OUTPUT), "wrk")
    assert numbers["rps"] == 1000.0 and numbers["p99_ms"] == 3.5 and numbers["p50_ms"] == 0.4
    assert numbers["n503"] == 3 and numbers["n429"] == 0 and numbers["socket_errors"] == 1
    with pytest.raises(RuntimeError):
        load.parse_wrk("no result here")


def test_runs_of_one_configuration_combine_to_medians_and_sums():
    runs = [load.normalise(load.parse_wrk(WRK_OUTPUT), "wrk") for _ in range(2)]
    runs.append(dict(runs[0], rps=3000.0, p99_ms=10.0, statuses={"200": 10, "429": 2},
                     n429=2, n503=0))
    numbers = playback.combine(runs)
    assert numbers["rps"] == 1000.0 and numbers["p99_ms"] == 3.5
    assert numbers["p99_worst_ms"] == 10.0 and numbers["runs"] == 3
    assert numbers["n503"] == 6 and numbers["n429"] == 2
    assert numbers["statuses"] == {"200": 1997 * 2 + 10, "503": 6, "429": 2}


IMPORTTIME = """import time: self [us] | cumulative | imported package
import time:       100 |        100 |   posix
import time:       500 |        600 | site
import time:       300 |        300 |     json.decoder
import time:       200 |        500 |   json
import time:      1000 |       1000 |   PIL.Image
import time:        50 |       1550 | loop.app
"""


def test_importtime_profile_is_parsed_for_the_subtree():
    numbers = startup.parse_importtime(IMPORTTIME, "loop.app")
    assert numbers["import_ms"] == 1.55
    assert numbers["slowest_imports_ms"] == {"PIL.Image": 1.0, "json": 0.5, "json.decoder": 0.3}
    assert startup.parse_importtime(IMPORTTIME, "nothing")["import_ms"] is None


def test_bench_entry_point_is_the_makefile_target():
    with open(f"{ROOT}/Makefile") as fh:
        assert "$(PY) bench/run.py" in fh.read()


def test_brief_table_folds_polling_per_condition():
    recs = [common.result("polling", f"gif50fps_c{c}{e}", rps=1000.0 + c, p99_ms=float(c),
                          n503=1, n429=0, goal="p99_ms <= 10", met=c < 6)
            for c in (1, 4, 6) for e in ("", "_etag")]
    recs.append(common.result("memory", "idle_empty", rss_mb=30.0, uss_mb=17.0,
                              goal="rss_mb <= 25", met=False))
    rows = common.brief_rows(recs)
    assert rows[0] == ("memory", "idle_empty", "RSS 30 MB (USS 17 MB)", "rss_mb <= 25",
                       "MISSED")
    group, what, text, goal, verdict = rows[1]
    assert what.startswith("gif50fps") and "p99 1..6 ms" in text and "503: 6" in text
    assert verdict == "MISSED 2/6"
    assert common.brief_markdown(recs).count("\n") == len(rows) + 1


def test_hardware_group_says_why_it_cannot_run(monkeypatch, tmp_path):
    """Without a built binding the group is skipped with the reason, never built here."""
    from bench import hardware
    monkeypatch.setenv("RGBMATRIX_VENV", str(tmp_path / "no-venv"))
    reason = hardware.binding()
    assert isinstance(reason, str) and "make rgbmatrix" in reason
    records = []

    class Ctx:
        quick = True
        work = str(tmp_path)
        emit = staticmethod(records.append)
    hardware.run(Ctx())
    assert [(r["group"], r["bench"], r["skipped"]) for r in records] == [
        ("hardware", "real_library", reason)]
