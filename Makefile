PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo demo-abide test test-fast lint bench clean chromium

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/confed demo --out demo-output --serve

demo-abide: $(STAMP)
	$(BIN)/confed demo --data ../shared/data/abide-pcp-ho111 --out demo-abide

# Browser tests (portal, report) need Debian's chromium: installed here when missing.
chromium:
	@command -v chromium >/dev/null 2>&1 || (apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium)

test: $(STAMP) chromium
	$(BIN)/python -m pytest -q tests

# The edit loop: everything except tests marked slow (> 20 s), PostgreSQL and browser.
test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow and not postgres and not browser" tests

lint: $(STAMP)
	$(BIN)/ruff check sites harmonization consortium tests benchmarks

clean:
	rm -rf $(VENV) demo-output demo-abide .pytest_cache
