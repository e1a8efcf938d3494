# Entry points, each setting up what it needs in .venv/ on a fresh machine:
#   make demo   the Django example under gunicorn with gcfork, under load, ending in the report
#   make test   lint, type-check, docs check and the test suite
#   make torture  the 30-minute torture run of docs/reliability.md (TORTURE_OUT: its JSON)
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

# The interpreters of the per-version tests (tests/test_versions.py and the
# techniques' tests): pyenv's, and 3.14/3.15 from the interpreter installer,
# which `make test` runs when it can (as root; it needs only Debian's package
# registry). Under CI a listed interpreter that is missing fails its tests.
# TEST_PYTHONS="3.14=/path/python3.14 ..." points the tests elsewhere.
PYENV_PYTHONS := 3.10 3.11 3.12 3.13
INSTALLED_PYTHONS := 3.14 3.15
TEST_PYTHONS_INSTALLER ?= $(firstword $(wildcard $(abspath ../shared/pythons/install-python.sh) /work/shared/pythons/install-python.sh))
export TEST_PYTHONS_INSTALLER
export TEST_PYTHONS_EXPECTED := $(PYENV_PYTHONS) $(if $(TEST_PYTHONS_INSTALLER),$(INSTALLED_PYTHONS))

.PHONY: demo test lint clean torture pythons redis

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check -e '.[test,bench,examples]'
	touch $@

lint: $(BIN)/.installed
	$(BIN)/ruff check gcfork tests examples benchmarks
	$(BIN)/mypy gcfork
	$(BIN)/python -m gcfork settings --check docs/configuration.md

test: lint pythons redis
	$(BIN)/pytest

pythons:
	@if [ -z "$(TEST_PYTHONS_INSTALLER)" ]; then \
		echo "make pythons: no interpreter installer found; 3.14/3.15 tests use TEST_PYTHONS or skip"; \
	elif [ "$$(id -u)" = 0 ]; then \
		bash $(TEST_PYTHONS_INSTALLER) $(INSTALLED_PYTHONS) || [ -z "$$CI" ]; \
	else \
		echo "make pythons: not root, not installing $(INSTALLED_PYTHONS); the tests use what is installed"; \
	fi

# The broker of the Celery tests (tests/test_celery.py), from Debian's packages;
# the tests start their own redis-server on a free loopback port. Installed when
# missing and run as root; otherwise the tests skip (under CI as root, they fail).
redis:
	@if command -v redis-server >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ]; then \
		apt-get install -y -q redis-server >/dev/null || \
		{ apt-get update -q >/dev/null && apt-get install -y -q redis-server >/dev/null; } || [ -z "$$CI" ]; \
	else \
		echo "make redis: not root, not installing redis-server; the Celery tests skip"; \
	fi

TORTURE_OUT ?= torture.json
torture: $(BIN)/.installed
	$(BIN)/python benchmarks/torture.py --minutes 30 --out $(TORTURE_OUT)

demo: $(BIN)/.installed
	$(BIN)/gcfork bench --example django

clean:
	rm -rf $(VENV) .venvs bench-results
