# InfraSpectre Edge. Two commands do everything on a fresh Debian 12 machine (as root):
#   make demo   the main job on embedded defaults
#   make test   install what is needed, then run every test tier
SHELL := /bin/bash
# Debian's own python3 (3.11), the interpreter the device image ships: host tests run
# the same minor version and the same locked wheels as the board.
PYTHON ?= /usr/bin/python3
VENV ?= .venv
BIN := $(VENV)/bin
# Host tools the tiers use. One per line so that additions merge cleanly.
APT_PACKAGES := \
	python3-venv \
	python3-dev \
	gcc \
	libc6-dev \
	gcc-aarch64-linux-gnu \
	libc6-dev-arm64-cross \
	iproute2 \
	sqlite3 \
	openssl \
	e2fsprogs \
	util-linux \
	iputils-ping \
	softflowd \
	time \
	nfdump \
	nats-server \
	tcpreplay \
	tcpdump \
	qemu-system-arm \
	device-tree-compiler \
	squashfs-tools \
	f2fs-tools \
	dosfstools \
	mtools \
	fdisk \
	socat \
	cpio \
	kmod \
	zstd \
	prometheus \
	shellcheck \
	debian-archive-keyring

# The shell scripts that ship (overlays/) or boot the card (image/): every file there whose
# first line is a shell's #! (busybox sh, /bin/sh), found afresh so new scripts are checked too.
SHELL_SCRIPTS = $(shell find overlays image -type f -exec awk 'FNR == 1 && /^\#!.*[\/ ](ba|da)?sh( |$$)/ { print FILENAME } { nextfile }' {} + | sort)

.PHONY: all deps apt venv qemu10 proto demo demo-board image test test-unit test-system test-board soak soak-board lint fmt clean

all: venv

apt:
	@missing=$$(for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "apt: installing" $$missing; \
	  if [ "$$(id -u)" != 0 ]; then echo "make: installing packages needs root: $$missing" >&2; exit 1; fi; \
	  DEBIAN_FRONTEND=noninteractive apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi

$(VENV)/.installed: pyproject.toml setup.py appliance/crypto/_ed25519_batch.c appliance/capture/_fastpath.c requirements.lock requirements-dev.lock | apt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check -r requirements.lock -r requirements-dev.lock
	$(BIN)/pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e .
	touch $@

venv: apt $(VENV)/.installed

deps: venv

# QEMU 10 for the raspi4b board tier, fetched (hash-checked) and unpacked into ./cache/qemu10;
# the system's QEMU is not replaced (docs/IMAGE.md, "QEMU 10 for the Pi 4").
qemu10: venv
	$(BIN)/python -m appliance.qemu.qemu10

# Regenerate appliance/wire/_generated from proto/ (the generated code is committed;
# tests/unit/wire/test_codegen.py proves that regenerating changes nothing).
proto: venv
	$(BIN)/python -m appliance.devkit.codegen

demo: venv
	$(BIN)/python -m appliance demo

# The same job on the card itself: built (or the kept build of these sources reused), booted
# on QEMU raspi3b, provisioned over its console, fed mirrored lab traffic (README, "Demo").
demo-board: venv
	$(BIN)/python -m appliance demo --board

# The Raspberry Pi SD card image (root: file ownership); downloads go to ./cache.
image: venv
	$(BIN)/infraspectre image build --board rpi --out out/rpi

lint: venv
	$(BIN)/ruff check appliance tests contrib
	$(BIN)/ruff format --check appliance tests contrib
	$(BIN)/mypy
	$(BIN)/mypy --strict contrib/grafana/build_dashboard.py
	shellcheck $(SHELL_SCRIPTS)

fmt: venv
	$(BIN)/ruff format appliance tests contrib
	$(BIN)/ruff check --fix appliance tests contrib

test-unit: venv
	$(BIN)/pytest -q tests/unit

test-system: venv
	$(BIN)/pytest -q tests/system

test-board: venv qemu10
	$(BIN)/pytest -q tests/board

# Every tier; non-zero on any failure. Lint is part of the contract.
test: venv qemu10
	$(MAKE) --no-print-directory lint
	$(BIN)/pytest -q --durations=25 tests

# Long campaigns, outside CI's budget (CI runs a bounded sample of each): the bus's
# decode -> validate -> store property tests with 200,000 examples each; and power cuts at
# all twelve checkpoints of an A/B update on the emulated Pi: one box cut at each in turn,
# then a fresh box per checkpoint, and a seeded chain of three (CI: one checkpoint drawn with
# a printed seed: UPDATE_CUT_SEED=N repeats it; docs/UPDATE.md); and A -> B through the bus on
# the emulated Pi with a cut during the download (CI: the loopback system tests).
soak: venv
	HYPOTHESIS_PROFILE=soak $(BIN)/pytest -q -p no:cacheprovider --timeout=0 tests/unit/bus/test_validate.py --hypothesis-show-statistics
	NATIVE_METER_EXAMPLES=3000 $(BIN)/pytest -q -p no:cacheprovider --timeout=0 tests/unit/capture/test_native_meter.py -k mixed --hypothesis-show-statistics
	UPDATE_SOAK=1 $(BIN)/pytest -q -p no:cacheprovider tests/board/test_update.py -k power_cut
	UPDATE_SOAK=1 $(BIN)/pytest -q -p no:cacheprovider tests/board/test_update_bus.py

# The full power-cut campaign on the emulated boards (CI runs one cut on virt in every `make
# test`): 20 cuts at seeded random points during mirrored traffic, 16 on virt and 4 on raspi3b.
# Replay a campaign with INFRASPECTRE_POWERCUT_SEED=N (the seed is printed).
soak-board: venv
	INFRASPECTRE_POWERCUTS=virt:16,raspi3b:4 $(BIN)/pytest -q -p no:cacheprovider tests/board/test_power_cuts.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
