# ebpfseccomp: the two commands a newcomer needs are `make demo` and `make test`.
# Each installs what it needs (Debian packages, the project venv) and is safe
# to run twice.  Kernel builds are cached outside the clone, in $(CACHE).

SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
CACHE ?= $(HOME)/.cache/ebpfseccomp
export EBPFSECCOMP_CACHE := $(CACHE)

.PHONY: all deps venv lint test host-test kernel vm-test vm-shell demo bench clean help

all: help

help:
	@echo "make demo       boot the patched kernel and show the whole story"
	@echo "make test       lint, host tests, kernel build, VM tests (what CI runs)"
	@echo "make host-test  tests that need no VM"
	@echo "make kernel     build the patched kernel (BASELINE=1: unpatched)"
	@echo "make vm-test    run the VM-marked tests and selftests in the VM"
	@echo "make bench      print the benchmark figures (docs/benchmarks.md)"

# Debian packages and the project venv.
deps:
	@vm/install-deps

venv: deps

lint: deps
	$(VENV)/bin/ruff check ebpfseccomp tests tools vm bench

host-test: deps
	$(PY) -m pytest -q -m "not vm"

kernel: deps
	@vm/build-kernel $(if $(BASELINE),--baseline)

vm-test: kernel
	@vm/vm-test

test: deps lint kernel
	$(PY) -m pytest -q --vm

demo: kernel
	@vm/demo

bench: deps
	$(PY) bench/bench_toolchain.py

clean:
	rm -rf build .pytest_cache .hypothesis
