# The two set-up commands of the README: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test lint bench setup fuzz

$(BIN)/edge-agent: pyproject.toml setup.py
	bash scripts/bootstrap.sh
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

setup: $(BIN)/edge-agent

demo: setup
	$(BIN)/edge-agent demo

test: setup
	$(BIN)/ruff check edge_agent tests scripts
	$(BIN)/ruff format --check edge_agent tests scripts
	$(BIN)/mypy edge_agent
	$(BIN)/pytest -q

bench: setup
	$(BIN)/python scripts/bench.py --out bench.json

# Every fuzz target (scripts/fuzz/targets.py) for FUZZ_SECONDS each; findings land in fuzz-artifacts/.
FUZZ_SECONDS ?= 600
fuzz: setup
	$(BIN)/pip install --quiet atheris
	$(BIN)/python scripts/fuzz/run.py --seconds $(FUZZ_SECONDS) --json fuzz.json
