# `make demo` and `make test` each set everything up first (tools/setup.sh is idempotent).
SHELL := /bin/bash
VENV  := .venv/bin
CORES ?= all

.PHONY: setup demo test lint clean
setup:
	@tools/setup.sh

demo: setup
	PATH=$(CURDIR)/.venv/bin:$$PATH $(VENV)/snakemake --cores $(CORES) --keep-going --configfile config/config.yaml
	@echo "Reports: results/*/report/report.html (and .pdf)"

test: setup
	PATH=$(CURDIR)/.venv/bin:$$PATH $(VENV)/python -m pytest -ra

lint: setup
	PATH=$(CURDIR)/.venv/bin:$$PATH $(VENV)/snakemake --lint --configfile config/config.yaml

clean:
	rm -rf results logs benchmarks .snakemake
