# ebpfseccomp: the two commands a newcomer needs are `make demo` and `make test`.
# Each installs what it needs (Debian packages, the project venv) and is safe
# to run twice.  Kernel builds are cached outside the clone, in $(CACHE).

SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
CACHE ?= $(HOME)/.cache/ebpfseccomp
export EBPFSECCOMP_CACHE := $(CACHE)
# Kernel flavour of make kernel / vm-test / vm-shell / selftest-baseline:
# normal, or debug (KASAN, UBSAN, lockdep, kmemleak; docs/vm.md; x86_64 only).
FLAVOR ?= normal
# The flavours make test boots, each against its own baseline.
TEST_FLAVORS ?= normal debug
# KARCH=arm64: the cross-built arm64 kernel (kernel, vm-test, selftest-baseline).
# Not ARCH, which the kernel's own make reads.
KARCH ?=
ARCH_OPT := $(if $(KARCH),--arch $(KARCH))
# EBPFSECCOMP_ARM64=0: make test leaves out the arm64 build and boot.
ARM64_KERNEL := $(if $(filter 0,$(EBPFSECCOMP_ARM64)),,kernel-arm64)

.PHONY: all deps venv lint test host-test kernel kernel-arm64 vm-test vm-shell demo bench bench-kernel \
	selftest-baseline check-series clean help

all: help

help:
	@echo "make demo       boot the patched kernel and show the whole story"
	@echo "make test       lint, host tests, kernel build, VM tests (what CI runs)"
	@echo "make host-test  tests that need no VM"
	@echo "make kernel     build the patched kernel (BASELINE=1: unpatched; FLAVOR=debug: KASAN etc.;"
	@echo "                KARCH=arm64: arm64)"
	@echo "make vm-test    run the VM-marked tests and selftests in the VM"
	@echo "make bench      print the benchmark figures (docs/benchmarks.md)"
	@echo "make bench-kernel  kernel build / VM boot / filter overhead figures"
	@echo "make selftest-baseline  measure seccomp_bpf on the unpatched kernel"
	@echo "make check-series  each kernel patch applies, builds and passes checkpatch"
	@echo "make vm-shell   an interactive shell in the VM"
	@echo "vm/run -- CMD   run one command in the VM (see docs/vm.md)"

# Debian packages and the project venv.
deps:
	@vm/install-deps

venv: deps

VM_PY_SCRIPTS := vm/run vm/vm-test vm/selftest-baseline vm/demo-syscalls.py

lint: deps
	$(VENV)/bin/ruff check ebpfseccomp tests tools vm bench $(wildcard $(VM_PY_SCRIPTS))
	bash -n vm/build-kernel vm/install-deps vm/guest-test vm/check-series vm/demo vm/demo-guest

host-test: deps
	$(PY) -m pytest -q -m "not vm"

kernel: deps
	@vm/build-kernel $(if $(BASELINE),--baseline) --flavor $(FLAVOR) $(ARCH_OPT)

# The arm64 kernel and selftests, cross-built (pytest --vm boots it too).
kernel-arm64: deps
	@vm/build-kernel --arch arm64

vm-test: kernel
	@vm/vm-test --flavor $(FLAVOR) $(ARCH_OPT)

vm-shell: kernel
	@vm/run --interactive --flavor $(FLAVOR)

selftest-baseline: deps
	@vm/build-kernel --baseline --flavor $(FLAVOR) $(ARCH_OPT)
	@vm/selftest-baseline --flavor $(FLAVOR) $(ARCH_OPT)

check-series: kernel
	@vm/check-series

# JUnit XML for CI systems: host tests, every guest test and every kselftest
# case (one test case each, from its TAP) of every flavour and arch, in
# build/junit.xml.  The kernels are built here (not as prerequisites) so that
# the summary can tell a build of this run from a cached one.
test: deps lint
	@mkdir -p build
	@export EBPFSECCOMP_RUN_STARTED=$$(date +%s) && \
	for f in $(TEST_FLAVORS); do vm/build-kernel --flavor $$f || exit 1; done && \
	$(if $(ARM64_KERNEL),vm/build-kernel --arch arm64 &&) \
	$(PY) -m pytest -q --vm $(foreach f,$(TEST_FLAVORS),--vm-flavor $(f)) \
		-o junit_family=xunit2 --junitxml=build/junit.xml

demo: kernel
	@vm/demo

bench: deps
	$(PY) bench/bench_toolchain.py

bench-kernel: kernel
	$(PY) bench/bench_kernel.py

clean:
	rm -rf build .pytest_cache .hypothesis
