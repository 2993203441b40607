# Two entry points for a fresh clone: `make bench` (default benchmark) and `make test`.
# Both create the virtual environment on first use (pinned versions: constraints.txt).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: bench test test-all lint clean-env

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt torch==2.13.0
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[dev]'
	touch $@

bench: $(VENV)/.installed
	$(BIN)/bench run --suite accuracy

test: $(VENV)/.installed
	$(BIN)/python -m pytest -q

test-all: $(VENV)/.installed
	$(BIN)/python -m pytest -q -m ''

lint: $(VENV)/.installed
	$(BIN)/ruff check benchmark baselines methods tests

clean-env:
	rm -rf $(VENV)
