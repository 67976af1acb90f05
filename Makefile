# Every target creates the virtualenv and installs what it needs when missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
HTMX := web/static/vendor/htmx.min.js

.PHONY: setup run test lint format bench clean browsers directory

setup: $(STAMP) $(HTMX)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

$(HTMX): package.json
	npm install --no-audit --no-fund --silent
	mkdir -p web/static/vendor
	cp node_modules/htmx.org/dist/htmx.min.js $(HTMX)

run: setup
	$(BIN)/backoffice dev

test: setup browsers directory
	$(BIN)/pytest $(PYTEST_ARGS)

# Debian's chromium drives the browser tests; Playwright never downloads a browser.
browsers:
	@command -v chromium >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null)

# Debian's OpenLDAP server: the directory sign-in tests start their own slapd.
directory:
	@test -x /usr/sbin/slapd && command -v ldapwhoami >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slapd ldap-utils >/dev/null)

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy .

format: setup
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: setup
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) node_modules web/static/vendor
