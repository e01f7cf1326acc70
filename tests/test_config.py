"""Configuration: defaults, file, environment and flags, and one clear error per bad key."""

import json
import subprocess
import sys

import pytest
from conftest import ROOT

from loop import config


def load(tmp_path, raw=None, env=None, argv=()):
    path = tmp_path / "config.json"
    path.write_text(json.dumps(raw or {}))
    args = config.argument_parser().parse_args(["--config", str(path), *argv])
    return config.load(args, env or {})


def test_shipped_config_names_every_key_with_its_default():
    with open(f"{ROOT}/config.json") as fh:
        shipped = json.load(fh)
    assert set(shipped) == set(config.SCHEMA)
    for section, keys in config.SCHEMA.items():
        assert set(shipped[section]) == set(keys), section
    cfg = config.build(shipped)
    assert cfg.web.port == 80 and cfg.web.host == "0.0.0.0"
    assert cfg.web.max_concurrent_requests == 6
    assert cfg.web.request_timeout_seconds == 300
    assert cfg.processing.max_concurrent_jobs == 3
    assert cfg.processing.job_cleanup_hours == 1
    assert cfg.display.breaker_max_failures == 5
    assert cfg.system.shutdown_timeout_sec == 15
    assert cfg.system.min_free_disk_percent == 10
    assert cfg.system.memory_limit_mb < 512 / 2


def test_layers_file_env_flags(tmp_path):
    cfg = load(tmp_path, {"web": {"port": 1000, "host": "1.2.3.4"}},
               env={"LOOP_WEB__PORT": "2000", "LOOP_DISPLAY__DISABLE_HARDWARE_PULSING": "yes",
                    "LOOP_WEB__ALLOW_NETWORKS": "10.0.0.0/8, 192.168.0.0/16"},
               argv=["--port", "3000", "--data-dir", "/x"])
    assert cfg.web.port == 3000  # flag beats env beats file
    assert cfg.web.host == "1.2.3.4"
    assert cfg.system.data_dir == "/x"
    assert cfg.display.disable_hardware_pulsing is True
    assert cfg.web.allow_networks == ("10.0.0.0/8", "192.168.0.0/16")


@pytest.mark.parametrize("raw, needle", [
    ({"web": {"port": 70000}}, "web.port: 70000 is out of range"),
    ({"web": {"port": "80"}}, "web.port: '80' is not allowed"),
    ({"web": {"nope": 1}}, "web.nope: unknown key"),
    ({"nah": {}}, "nah: unknown section"),
    ({"display": {"rows": 33}}, "display.rows: 33 is not allowed; must be even"),
    ({"display": {"hardware_mapping": "pi9"}}, "display.hardware_mapping: 'pi9'"),
    ({"display": {"led_rgb_sequence": "RRG"}}, "permutation"),
    ({"display": {"disable_hardware_pulsing": 1}}, "expected true or false"),
    ({"web": {"allow_networks": ["300.1.1.1/8"]}}, "not a CIDR"),
    ({"display": {"rotation": 45}}, "display.rotation"),
])
def test_bad_values_name_the_key(tmp_path, raw, needle):
    with pytest.raises(config.ConfigError) as err:
        load(tmp_path, raw)
    assert needle in str(err.value)


def test_bad_env_value(tmp_path):
    with pytest.raises(config.ConfigError, match="LOOP_WEB__PORT"):
        load(tmp_path, env={"LOOP_WEB__PORT": "eighty"})
    with pytest.raises(config.ConfigError, match="unknown key web.bogus"):
        load(tmp_path, env={"LOOP_WEB__BOGUS": "1"})


def test_bad_file_exits_2_with_one_line(tmp_path):
    path = tmp_path / "config.json"
    path.write_text('{"web": {"port": -1}}')
    proc = subprocess.run([sys.executable, f"{ROOT}/loop.py", "--config", str(path)],
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0
    assert "web.port: -1 is out of range" in proc.stderr
    path.write_text("{not json")
    proc = subprocess.run([sys.executable, f"{ROOT}/loop.py", "--config", str(path)],
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2 and "not valid JSON" in proc.stderr


def test_help_documents_flags():
    proc = subprocess.run([sys.executable, f"{ROOT}/loop.py", "--help"], capture_output=True,
                          text=True, timeout=30)
    assert proc.returncode == 0
    for flag in ("--config", "--data-dir", "--host", "--port", "--display"):
        assert flag in proc.stdout


def test_replace_validates():
    cfg = config.defaults()
    assert cfg.replace(**{"web.port": 8080}).web.port == 8080
    with pytest.raises(config.ConfigError):
        cfg.replace(**{"web.port": -5})


def test_the_configuration_reference_matches_the_schema():
    with open(f"{ROOT}/docs/configuration.md") as fh:
        reference = fh.read()
    start = reference.index("-->\n", reference.index("<!-- config:begin")) + 4
    end = reference.index("<!-- config:end -->")
    assert reference[start:end] == config.markdown_reference(), \
        "regenerate the tables in docs/configuration.md with: python3 -m loop.config"
