# `make demo` and `make test` work on a fresh machine: each installs what it needs first.
VENV := .venv
BIN := $(VENV)/bin
PYTHON ?= python3

.PHONY: demo test test-fast check lint typecheck bench bench-deps docs screenshots install system-deps browser sdk-ts clean

demo: install
	$(BIN)/prefect-opencomputer demo

test: install browser sdk-ts check
	$(BIN)/pytest

# The fast tier: every route over real HTTP on a stand-in runtime (host processes, no root, under a minute).
test-fast: $(VENV)/.installed
	$(BIN)/pytest tests/fast

check: lint typecheck

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: install
	$(BIN)/mypy

bench: install bench-deps
	$(BIN)/python -m bench

# The benchmarks compare an exec with a bare bubblewrap spawn, so they need Debian's bubblewrap.
bench-deps:
	@if ! command -v bwrap >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
		echo "installing bubblewrap (benchmark baseline)"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq bubblewrap >/dev/null; \
	fi

# docs/images/*.png: the Prefect UI pictures of the README, taken again by the browser test's own run.
screenshots: install browser
	PREFECT_OPENCOMPUTER_SCREENSHOTS=docs/images $(BIN)/pytest -m browser -k prefect_ui tests/prefect/test_real_prefect_server.py

# docs/reference.md from the docstrings (a test fails while the committed page is out of date).
docs: install
	$(BIN)/python docs/build_reference.py

install: system-deps $(VENV)/.installed

# The local server's sandboxes: a C compiler builds their helper, mmdebstrap their root filesystems,
# e2fsprogs formats their disks, xfsprogs the store that clones them, nft fences their networks,
# lxcfs shows each one its own size in /proc. As root we install what is missing, otherwise we say how.
SYSTEM_DEPS := cc:gcc mmdebstrap:mmdebstrap nft:nftables mkfs.ext4:e2fsprogs mkfs.xfs:xfsprogs lxcfs:lxcfs
system-deps:
	@missing=""; for dep in $(SYSTEM_DEPS); do \
		command -v "$${dep%%:*}" >/dev/null 2>&1 || missing="$$missing $${dep#*:}"; \
	done; \
	if [ -n "$$missing" ]; then \
		if [ "$$(id -u)" = 0 ]; then \
			echo "installing$$missing"; \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
		else \
			echo "missing:$$missing: run 'sudo apt-get install -y$$missing' (or make as root)"; exit 1; \
		fi; \
	fi

# Debian's chromium for the browser test of the Prefect UI; as root we install it, otherwise that test skips.
browser:
	@if ! command -v chromium >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
		echo "installing chromium (browser tests)"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	fi

# The official TypeScript SDK at its locked version, for its test against the local server (skips without node).
sdk-ts:
	@if command -v npm >/dev/null 2>&1 && [ ! -d tests/sdk_ts/node_modules/@opencomputer/sdk ]; then \
		echo "installing the TypeScript SDK (tests/sdk_ts)"; \
		npm ci --prefix tests/sdk_ts --no-audit --no-fund >/dev/null; \
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
