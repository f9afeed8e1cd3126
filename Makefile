# The study in two commands: `make reproduce` and `make test`. Each sets itself up first.
.DEFAULT_GOAL := help
SHELL := /bin/bash

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin

# Knobs (make reproduce STUDY=cifar-depth PROFILE=quick DATA=/path/to/cifar10-jpeg.tar.xz)
STUDY   ?= degradation
PROFILE ?=
DATA    ?=
JOBS    ?=
GPUS    ?=
PORT    ?= 5000
MODELS  ?= resnet18,resnet34

# A real file target: the venv is rebuilt only when pyproject.toml changes.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e .
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(BIN)/pip install -q -e '.[test]'
	touch $@

.PHONY: help
help: ## Show this help
	@echo "Plain vs residual networks (He et al. 2015): the degradation study."
	@echo
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "}; {printf "  make %-10s %s\n", $$1, $$2}'
	@echo
	@echo "Variables: STUDY=$(STUDY) PROFILE=<auto> DATA=<download> JOBS=<auto> GPUS=<auto> PORT=$(PORT)"

.PHONY: setup
setup: $(VENV)/.installed ## Create .venv with the package installed (editable)

STUDY_ARGS = --study $(STUDY) $(if $(PROFILE),--profile $(PROFILE)) $(if $(DATA),--data $(DATA)) \
             $(if $(JOBS),--jobs $(JOBS)) $(if $(GPUS),--gpus $(GPUS))

.PHONY: reproduce
reproduce: $(VENV)/.installed ## Run the study into MLflow (GPU: degradation, full; CPU: cifar-depth, laptop), then the report
	@status=0; $(BIN)/python -m resnet.study $(STUDY_ARGS) || status=$$?; \
	if [ $$status -ne 130 ]; then $(BIN)/python -m resnet.report || { [ $$status -ne 0 ] || status=1; }; fi; \
	echo; echo "Browse the runs: make ui   (MLflow on http://127.0.0.1:$(PORT))"; exit $$status

# The report is a real file: rebuilt when the package changes or the store has new runs.
reports/degradation.html: $(VENV)/.installed $(wildcard resnet/*.py resnet/templates/*) $(wildcard mlflow.db)
	$(BIN)/python -m resnet.report

.PHONY: report
report: reports/degradation.html ## Build reports/degradation.html from the finished runs in MLflow (no training)

.PHONY: ui
ui: $(VENV)/.installed ## Serve the MLflow UI for this project's store on 127.0.0.1 (PORT=5000)
	$(BIN)/python -m resnet.ui --port $(PORT)

# Debian's Chromium renders the report in the browser test; installed once, here as in CI.
.PHONY: chromium
chromium:
	@command -v chromium >/dev/null 2>&1 || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }

.PHONY: lint
lint: $(VENV)/.installed-test ## Check style with ruff (lines up to 120 characters, pyflakes, import order)
	$(BIN)/ruff check resnet tests

.PHONY: test
test: lint chromium ## Lint, then run the test suite (CPU only, a few minutes)
	$(BIN)/python -m pytest

.PHONY: clean
clean: ## Remove generated reports (keeps the venv, data cache and MLflow store)
	rm -rf reports/*.html reports/figures

.PHONY: bench
bench: $(VENV)/.installed ## Measure training images/s: the source document's loop vs ours (MODELS=...)
	$(BIN)/python -m resnet.bench $(if $(filter command line,$(origin MODELS)),--models $(MODELS))
