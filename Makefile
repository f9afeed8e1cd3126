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

.PHONY: reproduce
reproduce: $(VENV)/.installed ## Run the degradation study (GPU: full profile; CPU: smoke), then build the report
	@echo "The study runner is not built yet (issue 4): nothing was trained."; exit 1

.PHONY: test
test: $(VENV)/.installed-test ## Run the test suite (CPU only, a few minutes)
	$(BIN)/python -m pytest

.PHONY: clean
clean: ## Remove generated reports (keeps the venv, data cache and MLflow store)
	rm -rf reports/*.html reports/figures
