# Two commands on a fresh Debian machine with Python 3.11+: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Debian packages the integration tests run for real (installed only when missing and root).
# podman, runc and debootstrap build and run the image (tests/test_container.py); faketime
# steps a running service's wall clock; prometheus brings promtool for the alert rule tests;
# etcd-server and iptables run the cluster tests.
SYSTEM_PACKAGES := bind9 bind9-utils bind9-dnsutils haproxy chromium podman runc debootstrap \
	faketime prometheus etcd-server iptables
SYSTEM_BINARIES := /usr/sbin/named /usr/bin/dig /usr/sbin/haproxy /usr/bin/chromium \
	/usr/bin/podman /usr/sbin/runc /usr/sbin/debootstrap /usr/bin/faketime /usr/bin/promtool \
	/usr/bin/etcd /usr/sbin/iptables

.PHONY: demo test lint bench system-packages image clean

$(BIN)/activate: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test,demo]'
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

# The container image, with podman (or docker); on a host that cannot pull the official
# python image, on a local Debian base built once and kept (docs/container.md).
image: system-packages
	sh container/build-image.sh

lint: $(BIN)/activate
	$(BIN)/ruff check trafficflip providers tests bench
	$(BIN)/mypy
	$(BIN)/lint-imports

test: $(BIN)/activate system-packages lint
	$(BIN)/pytest -q

bench: $(BIN)/activate system-packages
	$(BIN)/python bench/failover_latency.py
	$(BIN)/python bench/probe_engine.py
	$(BIN)/python bench/probe_engine.py --check tcp
	$(BIN)/python bench/probe_clients.py
	$(BIN)/python bench/probe_parsers.py
	$(BIN)/python bench/probe_service.py --checks 1000
	$(BIN)/python bench/probe_service.py --checks 5000 --curve 1,2,4
	$(BIN)/python bench/bind_flip.py
	$(BIN)/python bench/mass_failover.py --services 500 2000 --quota 5
	$(BIN)/python bench/mass_failover.py --services 500 2000 --quota 5 --shared-checks
	$(BIN)/python bench/fleet_size.py --services 1000 5000 10000

clean:
	rm -rf $(VENV) build *.egg-info
