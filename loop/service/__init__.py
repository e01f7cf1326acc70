"""The service: wiring every component together from config, start and stop order, signals,
the command line (app.py), and the on-device self-test (selftest.py).

The top of the arrows: this package may import every other one; nothing imports it
(docs/architecture.md, "Packages").
"""
