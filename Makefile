# mlsched — one entry point for set-up, build, run and test.
#   make run    set everything up, then the main job
#   make test   set everything up, then the test suite
# Set-up installs what is missing: Debian packages (as root, or through sudo),
# a virtualenv in .venv with the package in editable mode and its extras.

SHELL        := /bin/bash
PYTHON       ?= python3
VENV         := .venv
PY           := $(VENV)/bin/python
PIP          := $(PY) -m pip --disable-pip-version-check
DEB_PACKAGES := clang-19 libbpf-dev bpftool libelf-dev zlib1g-dev pkg-config systemd strace
SUDO         := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
EXT_SUFFIX    = $(shell $(PY) -c 'import sysconfig; print(sysconfig.get_config_var("EXT_SUFFIX"))')
BPF_EXT       = src/mlsched/runtime/_bpf$(EXT_SUFFIX)
CONTRACT     := src/mlsched/runtime/_contract.py
# What the cffi extension is built from: the wire contract, the C side, the skeletons
# (each embeds its BPF object).
EXT_INPUTS   := cffi_build.py bpf/mlsched.h src/mlsched/runtime/_native/mlsched_native.c \
                src/mlsched/runtime/_native/mlsched_native.h bpf/mlsched.skel.h bpf/mlsched_inject.skel.h
DEFAULT_MODEL  := models/default/saved_model
DEFAULT_BUNDLE := models/default/bundle
# The host tool that measures what a move between two cores costs (bench/movecost.c).
MOVECOST     := build/movecost
PYTEST_ARGS  ?=

.PHONY: all setup deb venv build bpf ext contract model bundle run test lint bench movecost soak dist guest-kernel guest-bench guest-bench-4vcpu guest-learn clean distclean

all: build

setup: deb venv

deb: .stamp-deb
.stamp-deb:
	@missing=""; for p in $(DEB_PACKAGES); do \
	    dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	    echo "installing Debian packages:$$missing"; \
	    $(SUDO) apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing; \
	fi
	@touch $@

venv: $(VENV)/.stamp
$(VENV)/.stamp: pyproject.toml constraints.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q -c constraints.txt --upgrade pip setuptools wheel
	$(PIP) install -q -c constraints.txt -e '.[convert,dev]'
	@touch $@

build: setup bpf ext contract

bpf: deb
	$(MAKE) -C bpf

# The extension's file name comes from the venv's Python, so its rule exists once the
# venv does; `ext` makes the venv and the skeletons first, then asks for the file.
ext: venv bpf
	@$(MAKE) --no-print-directory $(BPF_EXT)

ifneq ($(wildcard $(PY)),)
$(BPF_EXT): $(EXT_INPUTS)
	$(PY) cffi_build.py

# The wire contract's layouts for the pure layers (committed; regenerated from the header).
contract: venv
	@$(MAKE) --no-print-directory $(CONTRACT)
$(CONTRACT): bpf/mlsched.h cffi_build.py
	$(PY) cffi_build.py --contract
endif

# Retrain the default model from its teacher (fixed seeds) and rebuild its bundle.
model: venv
	$(PY) -m mlsched.train.train -o $(DEFAULT_MODEL) --force

bundle: venv
	$(VENV)/bin/mlsched-convert $(DEFAULT_MODEL) -o $(DEFAULT_BUNDLE) --cpus 8 --force

SCENARIOS := "4 2 6 0.9 0.2" "2 4 4 0.5 0.5" "1 7 1 0.1 0.1"

# The three reference scenarios from the default bundle, then the live daemon in shadow
# mode beside CFS for 15 s with a small CPU load to migrate.
run: build
	@echo "reference scenarios (8-CPU host), default bundle:"
	@for s in $(SCENARIOS); do set -- $$s; \
	    printf '  cpu=%s idle=%s busy=%s src_load=%s dst_load=%s -> ' "$$@"; \
	    $(VENV)/bin/mlsched-lite decide --cpu $$1 --idle $$2 --busy $$3 --src-load $$4 --dst-load $$5; \
	done
	$(VENV)/bin/mlsched-lite run --duration 15 --interval 3 --load 3

# A sched_ext scheduler of ours in a guest kernel (the host kernel has no sched_ext).
guest-kernel: build
	$(MAKE) -C guest kernel

# One vCPU per domain, each pinned to a host core; every configuration paired with EEVDF
# round by round, intervals and the A/A noise floor (guest/README.md).
guest-bench: build
	$(MAKE) -C guest bench

# The same on 4 vCPUs (two per domain): more vCPUs than this host's 2 cores.
guest-bench-4vcpu: build
	$(MAKE) -C guest bench-4vcpu

# Record in the guest, train the learned models, convert, boot again and compare.
guest-learn: build
	$(MAKE) -C guest learn

test: build
	$(PY) -m pytest $(PYTEST_ARGS)

bench: build
	$(PY) -m bench.run

# What a move to the other core costs a task, by working set, on this host's own cores
# (the guest's emulated CPUs have no caches to lose): bench/movecost.json and a table.
# Timing-sensitive: run it on a quiet machine.
movecost: venv $(MOVECOST)
	$(PY) -m bench.movecost --tool $(MOVECOST)

$(MOVECOST): bench/movecost.c
	@mkdir -p $(@D)
	$(CC) -O2 -Wall -Wextra -o $@.tmp $< && mv $@.tmp $@

# 10 minutes at 1 M requests/s through the real ring into the real daemon (root: it mounts
# a private BPF filesystem); make test runs a 30-second version.
soak: build
	$(PY) -m support.soak --duration 600

dist: build
	$(PY) packaging/build_dist.py --out dist

lint: venv
	$(VENV)/bin/ruff check .

clean:
	$(MAKE) -C bpf clean
	rm -rf build src/mlsched/runtime/_bpf*.so src/mlsched/runtime/_bpf.c src/mlsched/runtime/_bpf.o .pytest_cache

distclean: clean
	rm -rf $(VENV) .stamp-deb dist
