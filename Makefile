# chat-backend — build, run, test, benchmark.
SHELL := /bin/bash
SWIFT ?= swift
# Builds use exactly the dependency versions in Package.resolved, the ones the tests ran with.
RESOLVED := --force-resolved-versions
BUILD_DIR ?= .build
BIN := $(BUILD_DIR)/debug/chat-backend
RELEASE_BIN := $(BUILD_DIR)/release/chat-backend
APT_BUILD_DEPS := libsqlite3-dev libpq-dev libssl-dev libsystemd-dev zlib1g-dev pkg-config
APT_TEST_DEPS := systemd python3-venv curl postgresql postgresql-client chromium sqlite3
APT_BENCH_DEPS := wrk
APT_DEB_DEPS := debhelper dpkg-dev lintian rsync python3
APT_SYSTEM_TEST_DEPS := debootstrap systemd-container util-linux
VENV := .venv

.PHONY: all build release run test test-swift test-e2e test-system deps test-deps deb deb-deps bench profile check-reproducible clean screenshots

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

build: deps
	$(SWIFT) build $(RESOLVED) --product chat-backend

release: deps
	$(SWIFT) build $(RESOLVED) -c release --product chat-backend

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
test: test-deps
	@set -e; trap 'scripts/pg-test.sh stop' EXIT; \
	export CHAT_TEST_POSTGRES="$$(scripts/pg-test.sh start)"; \
	echo "test Postgres: $$CHAT_TEST_POSTGRES"; \
	$(MAKE) test-swift; \
	$(MAKE) test-e2e
	@if [ "$$(id -u)" = 0 ]; then $(MAKE) test-system; \
	else echo "test-system skipped: it needs root (debootstrap, systemd-nspawn)"; fi

test-swift: deps
	$(SWIFT) build $(RESOLVED) --build-tests
	$(SWIFT) test $(RESOLVED) --skip-build
	@if [ -n "$$CHAT_TEST_POSTGRES" ]; then echo "HTTP API tests on Postgres:"; \
	  CHAT_TEST_BACKEND=postgres $(SWIFT) test $(RESOLVED) --skip-build --filter ServiceTests; fi

test-e2e: build
	CHAT_BACKEND_BIN=$(abspath $(BIN)) $(VENV)/bin/python -m pytest -q Tests/e2e

# The browser scenarios that take screenshots; `make screenshots` runs them to write docs/screenshots/*.png
# (1280×800, the README's pictures) instead of into pytest's temporary directories.
SCREENSHOT_TESTS := \
  Tests/e2e/test_console.py::test_sign_in_chat_with_a_streaming_agent_reload_and_sign_out \
  Tests/e2e/test_console_inbox.py::test_staff_take_a_handoff_live_from_the_inbox \
  Tests/e2e/test_console_admin.py::test_an_admin_manages_accounts_and_a_disabled_or_deleted_users_console_ends_at_once \
  Tests/e2e/test_console_admin.py::test_activity_charts_and_counts_follow_new_messages \
  Tests/e2e/test_widget.py::test_a_visitor_chats_through_the_widget_and_staff_answer_live

screenshots: build test-deps
	CHAT_SCREENSHOTS=$(abspath docs/screenshots) CHAT_BACKEND_BIN=$(abspath $(BIN)) $(VENV)/bin/python -m pytest -q $(SCREENSHOT_TESTS)

deb-deps: deps
	$(call apt-ensure,packaging,$(APT_DEB_DEPS))

# The Debian package: packaging/out/chat-backend_<version>_amd64.deb, checked with lintian.
deb: deb-deps
	packaging/build-deb.sh

# Where the package is built: a copy of the sources and SwiftPM's build directory (packaging/build-deb.sh).
DEB_ROOT := /var/tmp/chat-backend-deb

# Builds the package twice, the second time from scratch (a fresh copy of the sources, an empty
# build directory), and checks that the two .deb files are identical (README, "Verifying a package"). Takes two full release builds.
check-reproducible: deb
	rm -rf packaging/out/again $(DEB_ROOT)
	CHAT_DEB_OUT=packaging/out/again packaging/build-deb.sh
	@deb=chat-backend_$$(dpkg-parsechangelog -l packaging/debian/changelog -S Version)_$$(dpkg-architecture -qDEB_HOST_ARCH).deb; \
	sha256sum packaging/out/$$deb packaging/out/again/$$deb; \
	if cmp -s packaging/out/$$deb packaging/out/again/$$deb; then echo "reproducible: the two builds are identical"; \
	else echo "NOT reproducible: packaging/out/$$deb and packaging/out/again/$$deb differ"; \
	  echo "(the binaries before stripping: packaging/out/chat-backend.unstripped and packaging/out/again/chat-backend.unstripped)"; exit 1; fi

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

# Where a send and a history read spend their time: perf samples of the release server under wrk.
profile: release test-deps
	@command -v perf >/dev/null || { [ "$$(id -u)" = 0 ] && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq linux-perf; }
	CHAT_BACKEND_BIN=$(abspath $(RELEASE_BIN)) $(VENV)/bin/python scripts/profile.py

clean:
	rm -rf $(BUILD_DIR) $(VENV) $(DEB_ROOT)
