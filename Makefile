# `make demo` and `make test` work on a fresh machine: each installs what it needs first.
VENV := .venv
BIN := $(VENV)/bin
PYTHON ?= python3

.PHONY: demo test check lint typecheck bench docs screenshots install system-deps browser clean

demo: install
	$(BIN)/prefect-opencomputer demo

test: install browser check
	$(BIN)/pytest

check: lint typecheck

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: install
	$(BIN)/mypy

bench: install
	$(BIN)/python -m bench

# docs/images/*.png: the Prefect UI pictures of the README, taken again by the browser test's own run.
screenshots: install browser
	PREFECT_OPENCOMPUTER_SCREENSHOTS=docs/images $(BIN)/pytest -m browser -k prefect_ui tests/prefect/test_real_prefect_server.py

# docs/reference.md from the docstrings (a test fails while the committed page is out of date).
docs: install
	$(BIN)/python docs/build_reference.py

install: system-deps $(VENV)/.installed

# bubblewrap runs the local server's sandboxes; as root we install it, otherwise we say how.
system-deps:
	@if ! command -v bwrap >/dev/null 2>&1; then \
		if [ "$$(id -u)" = 0 ]; then \
			echo "installing bubblewrap"; \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq bubblewrap >/dev/null; \
		else \
			echo "bubblewrap is missing: run 'sudo apt-get install -y bubblewrap' (or make as root)"; exit 1; \
		fi; \
	fi

# Debian's chromium for the browser test of the Prefect UI; as root we install it, otherwise that test skips.
browser:
	@if ! command -v chromium >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
		echo "installing chromium (browser tests)"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	fi

$(BIN)/python:
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
		{ echo "Python >= 3.11 is needed (found: $$($(PYTHON) --version))"; exit 1; }
	$(PYTHON) -m venv $(VENV)

# uv installs the locked-down set in seconds; it lives inside the venv, nothing global changes.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --disable-pip-version-check uv
	VIRTUAL_ENV=$(VENV) $(BIN)/uv pip install --quiet --compile-bytecode -e '.[dev]'
	@touch $@

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
