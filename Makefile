# Every command a newcomer needs; `make help` lists them. Only Python is required: the first
# target that needs it makes the virtual environment in .venv and installs the project into it.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.DEFAULT_GOAL := help
.PHONY: help run test migrate lint token clean

help: ## list the commands
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F ':.*## ' '{printf "  make %-8s %s\n", $$1, $$2}'

$(STAMP): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev,test,lint]'
	touch $(STAMP)

run: $(STAMP) ## serve on PORT (8080); without DATABASE_URL, on an embedded PostgreSQL in .dev/
	$(PY) -m service serve --dev --workers 1

test: $(STAMP) ## run the tests on TEST_DATABASE_URL's server, or on an embedded PostgreSQL
	$(PY) -m pytest $(PYTEST_ARGS)

migrate: $(STAMP) ## apply pending migrations to DATABASE_URL (embedded in .dev/ when unset)
	$(PY) -m service migrate --dev

lint: $(STAMP) ## ruff and mypy
	$(PY) -m ruff check service tests .ci bench deploy
	$(PY) -m ruff format --check service tests .ci bench deploy
	$(PY) -m mypy service

.PHONY: bench
bench: $(STAMP) ## load-test on a fresh database with wrk and pgbench (BENCH_ARGS=--quick, see bench/)
	$(PY) -c 'import matplotlib' 2>/dev/null || $(PY) -m pip install --quiet -e '.[bench]'
	$(PY) -m bench $(BENCH_ARGS)

token: $(STAMP) ## print a token for USER_ID (JWT_SECRET, or the development secret)
	$(PY) -m service token --dev --user-id $(USER_ID)

clean: ## remove the virtual environment and the development database and secret
	rm -rf $(VENV) .dev
