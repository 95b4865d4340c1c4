# The two newcomer commands: `make run` and `make test`. Each creates/updates .venv itself.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install run test lint format bench chaos

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

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
