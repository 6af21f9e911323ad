# Two commands on a fresh Debian machine with Python 3.11+: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Debian packages the integration tests run for real (installed only when missing and root).
SYSTEM_PACKAGES := bind9 bind9-utils bind9-dnsutils haproxy chromium faketime
SYSTEM_BINARIES := /usr/sbin/named /usr/bin/dig /usr/sbin/haproxy /usr/bin/chromium /usr/bin/faketime

.PHONY: demo test lint bench system-packages clean

$(BIN)/activate: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $(BIN)/activate

demo: $(BIN)/activate
	$(BIN)/trafficflip demo

system-packages:
	@missing=""; for b in $(SYSTEM_BINARIES); do [ -x $$b ] || missing=yes; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $(SYSTEM_PACKAGES); \
	  else echo "not root: tests that need $(SYSTEM_PACKAGES) will be skipped"; fi; \
	fi

lint: $(BIN)/activate
	$(BIN)/ruff check trafficflip providers tests bench
	$(BIN)/mypy

test: $(BIN)/activate system-packages lint
	$(BIN)/pytest -q

bench: $(BIN)/activate system-packages
	$(BIN)/python bench/failover_latency.py
	$(BIN)/python bench/probe_engine.py
	$(BIN)/python bench/probe_engine.py --check tcp
	$(BIN)/python bench/probe_clients.py
	$(BIN)/python bench/probe_service.py --checks 1000
	$(BIN)/python bench/probe_service.py --checks 5000 --curve 1,2,4
	$(BIN)/python bench/bind_flip.py

clean:
	rm -rf $(VENV) build *.egg-info
