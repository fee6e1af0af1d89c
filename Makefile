# legacyflo-daemon — developer entry points.
#   make test   install everything the tests need (Debian packages as root, Python packages), then
#               ruff, mypy --strict and the whole pytest suite. CI runs exactly this (.ci/run).
#   make demo   start two local IMAP servers, drop a sample CSV, run the daemon, show the results.
#   make bench  the performance benchmark (not part of the test suite).
PYTHON ?= python3
APT_PACKAGES := dovecot-imapd openssl systemd procps

.PHONY: test deps check-deps lint typecheck pytest demo bench

test: deps lint typecheck pytest

# PIP_BREAK_SYSTEM_PACKAGES: Debian's own python3 refuses system-wide installs (PEP 668); the
# variable lets pip install there too (a pyenv or venv Python ignores it).
deps:
	@if ! command -v dovecot >/dev/null 2>&1 || ! command -v systemd-analyze >/dev/null 2>&1 \
		|| ! test -x /bin/kill; then \
		echo "installing Debian packages: $(APT_PACKAGES)"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(APT_PACKAGES); \
	fi
	PIP_BREAK_SYSTEM_PACKAGES=1 $(PYTHON) -m pip install --quiet --disable-pip-version-check -e '.[test]'

lint:
	$(PYTHON) -m ruff check legacyflo_daemon tests bench
	$(PYTHON) -m ruff format --check legacyflo_daemon tests bench

typecheck:
	$(PYTHON) -m mypy

pytest:
	$(PYTHON) -m pytest -q

demo: deps
	$(PYTHON) -m bench.demo

bench: deps
	$(PYTHON) -m bench.bench_check
	$(PYTHON) -m bench.bench_copy
