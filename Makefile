# The two commands a newcomer runs (see README):
#   make demo   - install, fetch the data, run the quickstart
#   make test   - install, fetch the data and PostgreSQL, run the test suite
# Both create ./.venv on first use and reinstall only when setup.cfg/pyproject.toml change.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
FMNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
PYTEST_ARGS ?=

.PHONY: demo test install data postgres lint lock clean

demo: install data
	$(BIN)/raynas run configs/quickstart.yaml

test: install data postgres
	$(BIN)/python -m pytest $(PYTEST_ARGS)

install: $(VENV)/.installed

# constraints.txt pins every package to the version the test suite passed with (`make lock`)
$(VENV)/.installed: setup.cfg pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev,postgres]'
	touch $@

# Re-resolve the newest versions setup.cfg allows into constraints.txt (in a scratch venv);
# run `make test` afterwards and commit constraints.txt only when it passes.
LOCK_VENV ?= /tmp/raynas-lock-venv
lock:
	rm -rf $(LOCK_VENV)
	$(PYTHON) -m venv $(LOCK_VENV)
	$(LOCK_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(LOCK_VENV)/bin/python -m pip install --quiet -e '.[dev,postgres]'
	{ echo "# The exact versions the test suite passed with; used by make install. Regenerate: make lock"; \
	  $(LOCK_VENV)/bin/python -m pip freeze --exclude-editable | grep -v '^-e ' | LC_ALL=C sort -f; } > constraints.txt
	rm -rf $(LOCK_VENV)

# Fashion-MNIST from Debian's dataset-fashion-mnist; elsewhere raynas downloads it on first use
# (or set RAYNAS_DATA / data.root to a folder holding the four IDX files).
data:
	@if [ -f $(FMNIST) ] || [ -n "$$RAYNAS_DATA" ]; then :; \
	elif command -v apt-get >/dev/null 2>&1; then \
		echo "installing Fashion-MNIST (apt-get install dataset-fashion-mnist)"; \
		$(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq dataset-fashion-mnist >/dev/null; \
	else echo "no apt-get: Fashion-MNIST will be downloaded on first use"; fi

# PostgreSQL for the tests of a shared study (tests/helpers/postgres.py starts a private server
# with initdb/pg_ctl; it uses no system cluster); elsewhere those tests are skipped.
postgres:
	@if ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null 2>&1; then :; \
	elif command -v apt-get >/dev/null 2>&1; then \
		echo "installing PostgreSQL (apt-get install postgresql)"; \
		$(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq postgresql >/dev/null; \
	else echo "no apt-get: the PostgreSQL tests are skipped unless initdb is on PATH"; fi

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

clean:
	rm -rf $(VENV) .pytest_cache runs
