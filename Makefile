# LOOP: `make run` to try it (headless, http://127.0.0.1:8080), `make test` for the suite.
PYTHON ?= python3
VENV ?= .venv
VENV_ARGS ?=
PY := $(VENV)/bin/python
RUN_STAMP := $(VENV)/.installed-run
DEV_STAMP := $(VENV)/.installed-dev
# The emulator needs Pillow >= 10; CI's run on Debian's Pillow 9.4 leaves it out.
DEV_REQS ?= requirements-dev.txt requirements-emulator.txt

.PHONY: run demo test lint bench install uninstall rollback selftest clean rgbmatrix

# `make run` needs only the runtime packages; the test tools come with `make test`.
$(RUN_STAMP): requirements.txt
	$(PYTHON) -m venv $(VENV_ARGS) $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	touch $@

$(DEV_STAMP): $(RUN_STAMP) $(DEV_REQS)
	$(PY) -m pip install -q $(addprefix -r ,$(DEV_REQS))
	touch $@

run: $(RUN_STAMP)
	$(PY) loop.py --config config.json --data-dir var --host 127.0.0.1 --port 8080 --display headless

# With `make run` going: three generated samples, uploaded in order (LOOP_URL, LOOP_TOKEN).
demo: $(RUN_STAMP)
	$(PY) contrib/demo.py

lint: $(DEV_STAMP)
	$(PY) -m ruff check loop loop.py tests contrib $(wildcard bench)

test: lint
	$(PY) -m pytest -q tests

# The real LED binding (hzeller/rpi-rgb-led-matrix) built from a local copy of its source into
# its own venv on Debian's Python and Pillow, once per source tree, by deploy/rgbmatrix.sh as
# on the Pi. `make test` needs no separate step: the simulated-Pi tests build it on first use
# (and skip, saying why, without the source or a compiler; under CI=true that fails).
# The source sits beside the project (../shared/vendor); a clone made elsewhere (CI's
# `git clone . /tmp/ci`) finds it beside the local repository it was cloned from.
VENDORED := shared/vendor/rpi-rgb-led-matrix
ORIGIN := $(shell git config --get remote.origin.url 2>/dev/null)
RGBMATRIX_SRC ?= $(firstword $(wildcard ../$(VENDORED) $(if $(ORIGIN),$(dir $(ORIGIN))$(VENDORED))) ../$(VENDORED))
RGBMATRIX_VENV ?= .venv-rgbmatrix
export RGBMATRIX_SRC RGBMATRIX_VENV
rgbmatrix:
	@sh tests/hwsim/build-rgbmatrix.sh "$(RGBMATRIX_SRC)" "$(RGBMATRIX_VENV)"

bench: $(DEV_STAMP)
	$(PY) bench/run.py

install:
	sh deploy/install.sh

uninstall:
	sh deploy/install.sh --uninstall

rollback:
	sh deploy/install.sh --rollback

# On the Pi: `sudo make selftest` tests the installed app with the installed venv (where the
# LED binding lives) and /etc/loop/config.json; SELFTEST_ARGS passes flags, e.g.
# SELFTEST_ARGS=--stop-service or --json. Elsewhere (no `make install`) it tests this tree with
# the project's venv, ./config.json and ./var, and says what only the Pi can show.
selftest:
	@prefix=$${PREFIX:-/opt/loop}; \
	if [ -x "$$prefix/venv/bin/python" ] && [ -f "$$prefix/app/loop.py" ]; then \
	  "$$prefix/venv/bin/python" "$$prefix/app/loop.py" \
	    --config "$${LOOP_CONFIG:-/etc/loop/config.json}" --selftest $(SELFTEST_ARGS); \
	else \
	  $(MAKE) --no-print-directory $(RUN_STAMP) && \
	  $(PY) loop.py --config "$${LOOP_CONFIG:-config.json}" --data-dir var --selftest \
	    $(SELFTEST_ARGS); \
	fi

clean:
	rm -rf $(VENV) var .pytest_cache .ruff_cache
