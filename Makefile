# LOOP: `make run` to try it (headless, http://127.0.0.1:8080), `make test` for the suite.
PYTHON ?= python3
VENV ?= .venv
VENV_ARGS ?=
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: run test lint bench install uninstall rollback selftest clean

$(STAMP): requirements.txt requirements-dev.txt
	$(PYTHON) -m venv $(VENV_ARGS) $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements-dev.txt
	touch $(STAMP)

run: $(STAMP)
	$(PY) loop.py --config config.json --data-dir var --host 127.0.0.1 --port 8080 --display headless

lint: $(STAMP)
	$(PY) -m ruff check loop loop.py tests $(wildcard bench)

test: lint
	$(PY) -m pytest -q tests

bench: $(STAMP)
	$(PY) bench/run.py

install:
	sh deploy/install.sh

uninstall:
	sh deploy/install.sh --uninstall

rollback:
	sh deploy/install.sh --rollback

selftest:
	$(PYTHON) loop.py --config $${LOOP_CONFIG:-/etc/loop/config.json} --selftest

clean:
	rm -rf $(VENV) var .pytest_cache .ruff_cache
