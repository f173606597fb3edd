# chat-backend — build, run, test, benchmark.
SHELL := /bin/bash
SWIFT ?= swift
BUILD_DIR ?= .build
BIN := $(BUILD_DIR)/debug/chat-backend
RELEASE_BIN := $(BUILD_DIR)/release/chat-backend
APT_BUILD_DEPS := libsqlite3-dev libpq-dev libssl-dev libsystemd-dev pkg-config
APT_TEST_DEPS := systemd python3-venv curl postgresql postgresql-client
APT_BENCH_DEPS := wrk
APT_DEB_DEPS := debhelper dpkg-dev lintian rsync python3
APT_SYSTEM_TEST_DEPS := debootstrap systemd-container util-linux
VENV := .venv

.PHONY: all build release run test test-swift test-e2e test-system deps test-deps deb deb-deps bench resources clean

all: build

# $(call apt-ensure,WHAT,PACKAGES): installs the missing PACKAGES (as root), or says exactly what to run.
define apt-ensure
	@missing=""; for p in $(2); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	  else echo "missing $(1) packages:$$missing"; echo "run: sudo apt-get install -y$$missing"; exit 1; fi; \
	fi
endef

# Install the C libraries the build links against.
deps:
	$(call apt-ensure,build,$(APT_BUILD_DEPS))

resources:
	@python3 scripts/embed-resources.py

build: deps resources
	$(SWIFT) build --product chat-backend

release: deps resources
	$(SWIFT) build -c release --product chat-backend

# Start the server on port 3006 with SQLite under ./data.
run: build
	$(BIN) serve --database-url sqlite://./data/chat.db

test-deps: deps
	$(call apt-ensure,test,$(APT_TEST_DEPS))
	@test -x $(VENV)/bin/python || python3 -m venv $(VENV)
	@$(VENV)/bin/pip install -q -r Tests/e2e/requirements.txt

# Everything, against a throwaway PostgreSQL started here (scripts/pg-test.sh) and stopped after:
# Swift unit, store-contract and HTTP tests (the HTTP tests once per store), then end-to-end tests
# against the built binary.
test: test-deps resources
	@set -e; trap 'scripts/pg-test.sh stop' EXIT; \
	export CHAT_TEST_POSTGRES="$$(scripts/pg-test.sh start)"; \
	echo "test Postgres: $$CHAT_TEST_POSTGRES"; \
	$(MAKE) test-swift; \
	$(MAKE) test-e2e
	@if [ "$$(id -u)" = 0 ]; then $(MAKE) test-system; \
	else echo "test-system skipped: it needs root (debootstrap, systemd-nspawn)"; fi

test-swift: resources
	$(SWIFT) build --build-tests
	$(SWIFT) test --skip-build
	@if [ -n "$$CHAT_TEST_POSTGRES" ]; then echo "HTTP API tests on Postgres:"; \
	  CHAT_TEST_BACKEND=postgres $(SWIFT) test --skip-build --filter ServiceTests; fi

test-e2e: build
	CHAT_BACKEND_BIN=$(abspath $(BIN)) $(VENV)/bin/python -m pytest -q Tests/e2e

deb-deps: deps
	$(call apt-ensure,packaging,$(APT_DEB_DEPS))

# The Debian package: packaging/out/chat-backend_<version>_amd64.deb, checked with lintian.
deb: deb-deps
	packaging/build-deb.sh

# Installs the package in a Debian 12 container booted with systemd and drives it from outside
# (Tests/system; DEVELOPERS.md says how it runs). Needs root.
test-system: deb test-deps
	$(call apt-ensure,system test,$(APT_SYSTEM_TEST_DEPS))
	CHAT_BACKEND_DEB=$(abspath packaging/out)/chat-backend_$$(dpkg-parsechangelog -l packaging/debian/changelog -S Version)_$$(dpkg-architecture -qDEB_HOST_ARCH).deb \
	  $(VENV)/bin/python -m pytest -q Tests/system

bench: release test-deps
	@command -v wrk >/dev/null || { [ "$$(id -u)" = 0 ] && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(APT_BENCH_DEPS); }
	CHAT_BACKEND_BIN=$(abspath $(RELEASE_BIN)) $(VENV)/bin/python scripts/bench.py sqlite postgres
	CHAT_BACKEND_BIN=$(abspath $(RELEASE_BIN)) $(VENV)/bin/python scripts/bench_realtime.py
	CHAT_BACKEND_BIN=$(abspath $(RELEASE_BIN)) $(VENV)/bin/python scripts/bench_peer.py

clean:
	rm -rf $(BUILD_DIR) $(VENV)
