# The two newcomer commands: `make run` and `make test`. Each creates/updates .venv itself.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# The runtime dependencies, pinned with hashes (`make lock` writes it from pyproject.toml).
LOCK := requirements.lock
# e.g. `make lock LOCK_FLAGS=--upgrade` to move every pin to the newest allowed release
LOCK_FLAGS ?=

.PHONY: install run test lint format bench chaos lock settings-docs

# The runtime set exactly as locked and hash-checked (what the image installs), then the project
# and its dev tools on top, with the lock's pins as constraints so no dev tool moves one.
$(STAMP): pyproject.toml $(LOCK)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q --require-hashes -r $(LOCK)
	sed -e 's/ *\\$$//' -e '/^[A-Za-z0-9]/!d' $(LOCK) > $(VENV)/runtime-pins.txt
	$(BIN)/python -m pip install -q -e '.[dev]' -c $(VENV)/runtime-pins.txt
	touch $(STAMP)

# Re-resolve the lock after a change to pyproject.toml's dependencies. Universal (one file for every
# platform and Python >= 3.11, markers where they differ); existing pins are kept where they still fit.
lock:
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	test -x $(BIN)/uv || $(BIN)/python -m pip install -q 'uv>=0.5'
	$(BIN)/uv pip compile pyproject.toml --universal --python-version 3.11 --generate-hashes \
		--custom-compile-command 'make lock' --quiet $(LOCK_FLAGS) --output-file $(LOCK)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/mailsvc dev

test: $(STAMP)
	$(BIN)/pytest

lint: $(STAMP)
	$(BIN)/ruff check mailsvc bench devtools tests migrations
	$(BIN)/ruff format --check mailsvc bench devtools tests migrations
	$(BIN)/mypy

format: $(STAMP)
	$(BIN)/ruff check --fix mailsvc bench devtools tests migrations
	$(BIN)/ruff format mailsvc bench devtools tests migrations

bench: $(STAMP)
	$(BIN)/mailsvc bench

# the standard chaos run (issue 11): >= 100 kills, every server restart and network fault, 20 minutes
# of faults; the JSON report is kept in bench-results/, the summary line goes to stderr
chaos: $(STAMP)
	mkdir -p bench-results
	$(BIN)/mailsvc bench chaos > bench-results/chaos.json

# .env.example and README's settings table, rewritten from the declarations in mailsvc/settings/
settings-docs: $(STAMP)
	$(BIN)/python -m devtools.settings_docs
