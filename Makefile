# Crawlsite: `make run` to start everything, `make test` to run the whole suite.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.DEFAULT_GOAL := help
.PHONY: help run test bench clean

help: ## List the targets
	@echo "Crawlsite targets:"
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "} {printf "  make %-13s %s\n", $$1, $$2}'

$(PY):
	@$(PYTHON) -c 'import sys; sys.exit("Crawlsite needs Python 3.11 or newer (found %s); set PYTHON=python3.x" % sys.version.split()[0]) if sys.version_info < (3, 11) else None'
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

$(STAMP): requirements.txt | $(PY)
	$(PY) -m pip install --quiet -r requirements.txt
	@touch $(STAMP)

run: $(STAMP) ## Start Redis, the web server, workers, conductor and demo site (Ctrl-C stops all)
	@$(PY) -m launcher

test: $(STAMP) ## Run the whole test suite (own embedded Redis, throwaway database)
	$(PY) -m pytest -m "not browser" $(PYTEST_ARGS)
	$(PY) -m pytest -m browser $(PYTEST_ARGS)

bench: $(STAMP) ## Run the benchmarks and rewrite bench/RESULTS.md
	$(PY) -m pip install --quiet -r bench/requirements.txt
	$(PY) -m bench

clean: ## Remove the venv and local data (var/)
	rm -rf $(VENV) var
