"""The service's dealings with the operating system: the monitor thread (health sampling,
thresholds, the watchdog gate, housekeeping), sd_notify, dropping root, and what the SoC
reports (temperature, throttling).

Must not be here: HTTP, playback, the library's files. The monitor is handed the running
service as an object; it imports none of it (docs/architecture.md, "Packages").
"""
