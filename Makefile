# hostagent: `make run` and `make check` do everything from a fresh clone.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
RUN_DIR := $(CURDIR)/.run
# Two levels: what running needs (make run) and, on top of it, what
# testing and packaging need (make install, test, check, rpm).
RUN_STAMP := $(VENV)/.installed-run
STAMP := $(VENV)/.installed
SYSDEPS_RUN := .cache/sysdeps-run.stamp
SYSDEPS := .cache/sysdeps.stamp

.PHONY: all install install-run run check lint test fuzz bench check-vm bench-lab \
	clean rpm

all: install

$(SYSDEPS_RUN): contrib/install-deps.sh
	contrib/install-deps.sh run
	@mkdir -p $(@D) && touch $@

$(SYSDEPS): contrib/install-deps.sh $(SYSDEPS_RUN)
	contrib/install-deps.sh test
	@mkdir -p $(@D) && touch $@

$(RUN_STAMP): pyproject.toml $(SYSDEPS_RUN)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e .
	touch $@

$(STAMP): $(RUN_STAMP) $(SYSDEPS)
	$(BIN)/pip install -q -e '.[test]'
	touch $@

install-run: $(RUN_STAMP)

install: $(STAMP)

# The embedded default config: everything under ./.run, so the daemon
# needs nothing from /etc, /run or /var/lib.
define RUN_CONFIG
[server]
unix_socket = "$(RUN_DIR)/hostagent.sock"

[storage]
state_dir = "$(RUN_DIR)/state"
run_dir = "$(RUN_DIR)"

[log]
level = "info"
endef
export RUN_CONFIG

run: install-run
	@mkdir -p $(RUN_DIR)
	@printf '%s\n' "$$RUN_CONFIG" > $(RUN_DIR)/hostagent.toml
	@echo "hostagentd on $(RUN_DIR)/hostagent.sock; in another shell:"
	@echo "  export HOSTAGENT_SOCKET=$(RUN_DIR)/hostagent.sock"
	@echo "  $(CURDIR)/$(BIN)/hostagent-client Host ping"
	@# The shell's pid is the daemon's: exec keeps it.
	@echo "Stop it with Ctrl-C here, or: kill $$$$"; \
	exec $(BIN)/hostagentd --config $(RUN_DIR)/hostagent.toml

lint: install
	$(BIN)/ruff check hostagent tests contrib
	$(BIN)/ruff format --check hostagent tests contrib
	$(BIN)/mypy -p hostagent -p tests.bench

test: install
	$(BIN)/pytest -q tests --ignore=tests/vm

# The qemu lab (tests/vm/README.md): real iSCSI, NVMe/TCP, NFS and AoE in
# a guest.  setup.sh installs its packages and caches a kernel.
check-vm: install
	tests/vm/setup.sh
	$(BIN)/pytest -m "vm and not labbench" tests/vm

# The host tests and the qemu lab run side by side: the lab's guest is
# one emulated CPU and the host tests are mostly one process, on a
# 2-core machine.  -O prints each one's output whole when it ends.
check: lint
	$(MAKE) --no-print-directory -O -j2 test check-vm

# A long fuzz campaign (not part of check): FUZZ_MESSAGES lines in all.
FUZZ_MESSAGES ?= 100000
fuzz: install
	$(BIN)/python tests/fuzz_campaign.py --messages $(FUZZ_MESSAGES)

# The noarch RPM in dist/, from the work tree (tests/test_packaging.py
# builds it too, so make check covers it).
rpm: $(SYSDEPS)
	contrib/build-rpm.sh dist

# Every figure of the benchmark table, each beside its reference, in one
# run (needs root: loop devices).  Prints the table and writes
# tests/bench/results.json; exits 1 when a figure misses its target.
bench: install
	$(BIN)/python -m tests.bench

# The lab's measurements (8 iSCSI LUNs attached at once vs one by one):
# minutes of emulated logins, so not part of make check.
bench-lab: install
	tests/vm/setup.sh
	$(BIN)/pytest -s -m labbench tests/vm

clean:
	rm -rf $(VENV) $(RUN_DIR) .cache .mypy_cache .ruff_cache .pytest_cache dist
