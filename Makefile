# lbctl: `make deb` builds the Debian package servers install, `make setup` installs everything
# contributors need (idempotent), `make test` runs the whole suite, `make demo` shows 3 then 5
# replicas sharing 127.0.0.1:8080.
SHELL := /bin/bash
VENV  := .venv
PY    := $(VENV)/bin/python

# ENGINE=podman: set up Podman too (beside Docker). `make test` always does: the suite
# runs its core scenarios against both engines.
ENGINE ?= docker

.PHONY: setup deb demo test lint unit bench bench-smoke clean-host
setup:
	LBCTL_ENGINE=$(ENGINE) bash scripts/setup.sh

# lbctl_<version>_<arch>.deb in this directory; needs none of `make setup`'s development set
# (as root it installs its own build dependencies: gcc, libc6-dev, python3-venv, dpkg-dev).
deb:
	bash scripts/build-deb.sh

lint: setup
	$(VENV)/bin/ruff check lbctl tests bench harness
	$(VENV)/bin/mypy --strict lbctl tests harness bench

test: ENGINE = podman
test: setup lint
	$(VENV)/bin/pytest -v -p no:cacheprovider --durations=40 tests

unit: setup
	$(VENV)/bin/pytest -q -m "not engine and not kernel" tests

demo: setup
	bash scripts/demo.sh

# The full run (~12 min) rewrites bench/RESULTS.md and bench/results.png (matplotlib: the
# `bench` extra). bench-smoke is the harness's own check, a few seconds of load.
bench: setup
	$(VENV)/bin/pip install -q -e '.[bench]'
	$(PY) -m bench

bench-smoke: setup
	$(VENV)/bin/pytest -v -p no:cacheprovider --durations=40 tests/bench
