# legacyflo-daemon — developer entry points.
#   make test   install everything the tests need (Debian packages as root, Python packages into
#               the project's virtual environment .venv), then ruff, mypy --strict, the import
#               rules (lint-imports) and the whole pytest suite. CI runs exactly this (.ci/run).
#               Cyrus IMAP and Courier-IMAP, which conflict with Dovecot as packages, are
#               unpacked into .servers/ by testkit/install-servers.sh (see there).
#   make demo   start two local IMAP servers, drop a sample CSV, run the daemon, show the results.
#   make bench  the performance benchmark (not part of the test suite).
#   make wheel  the installable wheel in dist/ (see README.md "Installing for production").
#
# Nothing is ever installed into the system Python: every Python package goes into .venv
# (PYTHON names the interpreter that creates it), and every target runs .venv's interpreter
# and tools, never the system ones; PYTHON is used only to create .venv.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
SERVERS_DIR := .servers
APT_PACKAGES := dovecot-imapd openssl systemd procps postgresql
SOURCES := legacyflo_daemon tests testkit bench demo

.PHONY: test deps venv lint typecheck imports pytest demo bench wheel

test: deps lint typecheck imports pytest

deps: venv
	@if ! command -v dovecot >/dev/null 2>&1 || ! command -v systemd-analyze >/dev/null 2>&1 \
		|| ! test -x /bin/kill \
		|| ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then \
		echo "installing Debian packages: $(APT_PACKAGES)"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(APT_PACKAGES); \
	fi
	sh testkit/install-servers.sh $(SERVERS_DIR)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[test]'

venv:
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)

lint:
	$(PY) -m ruff check $(SOURCES)
	$(PY) -m ruff format --check $(SOURCES)

typecheck:
	$(PY) -m mypy

imports:
	$(VENV)/bin/lint-imports

pytest:
	$(PY) -m pytest -q

demo: deps
	$(PY) -m demo

bench: deps
	$(PY) -m bench.bench_check
	$(PY) -m bench.bench_copy
	$(PY) -m bench.bench_scaling

# --no-build-isolation: build with .venv's setuptools (from '.[test]'), nothing fetched.
wheel: venv
	$(PY) -m pip install --quiet --disable-pip-version-check 'setuptools>=70.1'
	$(PY) -m pip wheel --no-deps --no-build-isolation --disable-pip-version-check -w dist .
