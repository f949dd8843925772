PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo demo-abide test lint bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/confed demo --out demo-output

demo-abide: $(STAMP)
	$(BIN)/confed demo --data ../shared/data/abide-pcp-ho111 --out demo-abide

test: $(STAMP)
	$(BIN)/python -m pytest -q tests

lint: $(STAMP)
	$(BIN)/ruff check sites harmonization consortium tests benchmarks

clean:
	rm -rf $(VENV) demo-output demo-abide .pytest_cache
