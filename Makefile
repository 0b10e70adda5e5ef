# Two entry points, both self-contained on a fresh clone:
#   make run   - create .venv, install, run the main job (the transfer pipeline on kfp's local runner)
#   make test  - create .venv, install, run the test suite
#   make test-browser - the MLflow UI in headless Chromium (needs chromium + chromedriver; .ci/run installs them)
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml constraints.txt | cksum | cut -d' ' -f1)

.PHONY: run test test-all test-browser screenshots lint bench gpu-check setup clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	# torch FIRST, alone: the CPU wheel; any resolver that picks torch itself pulls CUDA.
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -c constraints.txt -e '.[test]'
	rm -f $(VENV)/.installed-*
	touch $(STAMP)

setup: $(STAMP)

run: $(STAMP)
	$(BIN)/ahps run

lint: $(STAMP)
	$(BIN)/ruff check ahps ahps_core components pipelines tests
	$(BIN)/mypy ahps ahps_core components pipelines

test: $(STAMP)
	$(BIN)/python -m pytest -q

test-all: $(STAMP)
	$(BIN)/python -m pytest -q -m ''

# make run's job in a fresh store, MLflow's UI on loopback, headless Chromium on its parent and comparison runs (~2-3 min)
test-browser: $(STAMP)
	$(BIN)/python -m pytest -q -m browser tests/test_browser.py

# The same, keeping the README's screenshots of the comparison run in docs/screenshots
screenshots: $(STAMP)
	AHPS_SCREENSHOTS=docs/screenshots $(BIN)/python -m pytest -q -m browser tests/test_browser.py

bench: $(STAMP)
	$(BIN)/ahps bench paths
	$(BIN)/ahps bench train
	$(BIN)/ahps bench pipeline

# On a GPU node (under 8 minutes): checks and measures the GPU paths, one JSON report
gpu-check: $(STAMP)
	$(BIN)/ahps bench gpu --out gpu-check.json

clean:
	rm -rf $(VENV) mlruns local_outputs ahps_outputs
