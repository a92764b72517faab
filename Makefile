# Mailward: `make run` starts everything on this machine; `make test` installs what the tests need and runs them.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip --disable-pip-version-check -q

# Debian packages the test suite starts for real (see ../shared/RECIPES.md).
TEST_DEBS := redis-server postgresql clamav-daemon slapd ldap-utils chromium libmagic1 openssl spamd rspamd
# Debian packages `make run` needs on a bare machine (the venv module; SpamAssassin's rule files, which the ingress
# evaluates natively, and its sa-update).
RUN_DEBS  := python3-venv spamassassin

# pytest's own flags; e.g. `make test PYTEST_ARGS="-k ingress -x"`.
PYTEST_ARGS ?=

.PHONY: run test lint typecheck test-sqlite test-postgres venv test-venv system-deps clean

run: venv
	@$(MAKE) --no-print-directory debs DEBS="$(RUN_DEBS)"
	$(VENV)/bin/mailward run

venv: $(VENV)/.installed

$(VENV)/.installed: setup.cfg pyproject.toml
	@$(PYTHON) -c 'import ensurepip, venv' 2>/dev/null || $(MAKE) --no-print-directory debs DEBS="$(RUN_DEBS)"
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip
	$(PIP) install -e .
	@touch $@

test-venv: $(VENV)/.test-installed

$(VENV)/.test-installed: $(VENV)/.installed setup.cfg
	$(PIP) install -e '.[test]'
	@touch $@

# Install missing Debian packages (as root, or through sudo); a no-op when all are there.
debs:
	@missing=""; for p in $(DEBS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  SUDO=""; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing >/dev/null; \
	fi

system-deps:
	@$(MAKE) --no-print-directory debs DEBS="$(TEST_DEBS)"

lint: test-venv
	$(VENV)/bin/ruff check .

typecheck: test-venv
	$(VENV)/bin/mypy tenants smtp worker mailward

# Each database's run keeps its own pytest cache (rspamd's compiled hyperscan databases live there) and temp folder,
# so the two can run side by side.
PYTEST_DB = MAILWARD_TEST_DB=$(1) $(PY) -m pytest -q -o cache_dir=.pytest_cache/$(1) \
	--basetemp=$${TMPDIR:-/tmp}/mailward-pytest-$(1)-$$$$ $(PYTEST_ARGS)

test-sqlite: test-venv system-deps
	$(call PYTEST_DB,sqlite)

test-postgres: test-venv system-deps
	$(call PYTEST_DB,postgres)

# The suite runs twice, on SQLite (the embedded default) and on PostgreSQL (production), side by side: most tests
# wait on servers and sockets, so two runs use both cores. Each run's output is printed whole when both are done.
test: lint typecheck test-venv system-deps
	@mkdir -p test-output; \
	( $(call PYTEST_DB,sqlite) ) >test-output/pytest-sqlite.log 2>&1 & sqlite=$$!; \
	( $(call PYTEST_DB,postgres) ) >test-output/pytest-postgres.log 2>&1 & postgres=$$!; \
	wait $$sqlite; rs=$$?; wait $$postgres; rp=$$?; \
	echo "=== tests on SQLite (exit $$rs)"; cat test-output/pytest-sqlite.log; \
	echo "=== tests on PostgreSQL (exit $$rp)"; cat test-output/pytest-postgres.log; \
	[ $$rs -eq 0 ] && [ $$rp -eq 0 ]

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache .mypy_cache .ruff_cache
