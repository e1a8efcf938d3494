# Entry points, each setting up what it needs in .venv/ on a fresh machine:
#   make demo   the Django example under gunicorn with gcfork, under load, ending in the report
#   make test   lint, type-check, docs check and the test suite
#   make torture  the 30-minute torture run of docs/reliability.md (TORTURE_OUT: its JSON)
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test lint clean torture

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check -e '.[test,bench,examples]'
	touch $@

lint: $(BIN)/.installed
	$(BIN)/ruff check gcfork tests examples benchmarks
	$(BIN)/mypy gcfork
	$(BIN)/python -m gcfork settings --check docs/configuration.md

test: lint
	$(BIN)/pytest

TORTURE_OUT ?= torture.json
torture: $(BIN)/.installed
	$(BIN)/python benchmarks/torture.py --minutes 30 --out $(TORTURE_OUT)

demo: $(BIN)/.installed
	$(BIN)/gcfork bench --example django

clean:
	rm -rf $(VENV) .venvs bench-results
