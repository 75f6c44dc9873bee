# hostagent: `make run` and `make check` do everything from a fresh clone.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
RUN_DIR := $(CURDIR)/.run
STAMP := $(VENV)/.installed
SYSDEPS := .cache/sysdeps.stamp

.PHONY: all install run check lint test fuzz bench check-vm clean rpm

all: install

$(SYSDEPS): contrib/install-deps.sh
	contrib/install-deps.sh
	@mkdir -p $(@D) && touch $@

$(STAMP): pyproject.toml $(SYSDEPS)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $@

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

run: install
	@mkdir -p $(RUN_DIR)
	@printf '%s\n' "$$RUN_CONFIG" > $(RUN_DIR)/hostagent.toml
	@echo "hostagentd on $(RUN_DIR)/hostagent.sock; try:"
	@echo "  $(BIN)/hostagent-client --socket $(RUN_DIR)/hostagent.sock Host ping"
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
	$(BIN)/pytest -m vm tests/vm

check: lint test check-vm

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

clean:
	rm -rf $(VENV) $(RUN_DIR) .cache .mypy_cache .ruff_cache .pytest_cache dist
