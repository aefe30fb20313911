# hpsearch: `make demo` runs the recipe's coarse grid on digits; `make test` runs the tests.
# Both install into a local virtual environment first (.venv), on a machine that has never seen the project.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU wheel of this version lies on these machines; installing it first keeps pip from pulling
# several GB of CUDA packages for an unpinned torch. On a GPU machine: make install TORCH=torch
TORCH ?= torch==2.13.0

.PHONY: install demo test bench bench-quick bench-search clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q $(TORCH)
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $@

demo: install
	$(BIN)/hpsearch grid --task digits --study demo-coarse
	mkdir -p out
	$(BIN)/hpsearch report demo-coarse --format csv --output out/demo-coarse.csv

test: install
	$(BIN)/python -m pytest

# hpsearch against a plain Optuna + PyTorch reference, whole processes (a few minutes); writes out/bench.json
bench: install
	$(BIN)/python bench/run.py

bench-quick: install
	$(BIN)/python bench/run.py --quick

# epochs each search method (grid, random, TPE; with and without pruning) spends to come within 0.005
# of the exhaustive grid's best, over 10 seeds (several minutes); writes out/bench_search.json
bench-search: install
	$(BIN)/python bench/search_quality.py

clean:
	rm -rf $(VENV) out studies/*.journal studies/*.lock *.egg-info
