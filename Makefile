# `make demo` and `make test` each set everything up first (tools/setup.sh is idempotent).
SHELL := /bin/bash
VENV  := .venv/bin
CORES ?= all

.PHONY: setup demo showcase audit vit test test-fast mutation references lint clean
setup:
	@tools/setup.sh

demo: setup  # two models, every stage at small budgets: about 10 minutes on a 2-core CPU
	PATH=$(CURDIR)/.venv/bin:$$PATH $(VENV)/snakemake --cores $(CORES) --keep-going --configfile config/demo.yaml

showcase: setup  # the five-model showcase (config/config.yaml): a pretrained 224 px model, transfer learning, an MLP
	PATH=$(CURDIR)/.venv/bin:$$PATH $(VENV)/snakemake --cores $(CORES) --keep-going --configfile config/config.yaml

CONFIG ?= my.yaml
ARGS ?=
audit: setup  # your config: make audit CONFIG=my.yaml [ARGS="-n" or targets]; the config is checked first (YAML line and column)
	$(VENV)/python tools/check_config.py $(CONFIG)
	PATH=$(CURDIR)/.venv/bin:$$PATH $(VENV)/snakemake --cores $(CORES) --keep-going $(ARGS) --configfile $(CONFIG)

vit: setup  # the second config: a small ViT from scratch beside the demo's CNN, the two as an ensemble, a Hugging Face ViT and the CNN's ONNX export
	$(VENV)/python tools/make_hf_vit.py --out runs/vit/hf_vit_fmnist
	PATH=$(CURDIR)/.venv/bin:$$PATH $(VENV)/snakemake --cores $(CORES) --keep-going --directory runs/vit --configfile config/vit.yaml

# WORKERS: pytest-xdist workers (tests/conftest.py keeps the tests that share a workflow run on one, and orders
# the groups). Two on a 2-core machine: a workflow run leaves a core idle between its jobs. WORKERS=1: one process.
WORKERS ?= 2
PARALLEL = $(if $(filter-out 1,$(WORKERS)),-n $(WORKERS) --dist loadgroup --no-loadscope-reorder)
test: setup
	PATH=$(CURDIR)/.venv/bin:$$PATH $(VENV)/python -m pytest -ra $(PARALLEL)

test-fast: setup  # the quick unit tests: no snakemake, no test over about 2 s (marked slow); make test runs all
	PATH=$(CURDIR)/.venv/bin:$$PATH $(VENV)/python -m pytest -m "not e2e and not slow" -q $(PARALLEL)

MODULES ?= --all
mutation: setup  # the mutation score of the verdict modules: make mutation MODULES="report.checks core.stats"
	$(VENV)/python tools/mutation.py $(MODULES)

references: setup  # docs/reference/ from the code (the schema, the checks, the methods, the presets)
	$(VENV)/python tools/make_references.py

lint: setup  # the workflow (snakemake --lint, snakefmt) and the Python (ruff); settings in pyproject.toml
	PATH=$(CURDIR)/.venv/bin:$$PATH $(VENV)/snakemake --lint --configfile config/config.yaml
	$(VENV)/snakefmt --check Snakefile rules
	$(VENV)/ruff check scripts tools tests

clean:
	rm -rf results logs benchmarks .snakemake runs
