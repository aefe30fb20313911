# hpsearch: `make demo` runs the whole recipe on digits (coarse grid, refine, test, report); `make test` runs the tests.
# Both install into a local virtual environment first (.venv), on a machine that has never seen the project.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU wheel of this version lies on these machines; installing it first keeps pip from pulling
# several GB of CUDA packages for an unpinned torch. On a GPU machine: make install TORCH=torch
TORCH ?= torch==2.13.0

.PHONY: install demo test bench bench-quick bench-models bench-own bench-repeats bench-search clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q $(TORCH)
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $@

# The demo keeps its studies in out/demo.journal and starts afresh each time: its test set is used once per run.
DEMO := --storage out/demo.journal
demo: install
	rm -f out/demo.journal out/demo.journal.*
	mkdir -p out
	$(BIN)/hpsearch grid --task digits --study demo-coarse $(DEMO)
	$(BIN)/hpsearch refine --from demo-coarse --study demo-fine --repeats 3 $(DEMO)
	$(BIN)/hpsearch test --study demo-fine $(DEMO)
	$(BIN)/hpsearch report demo-coarse demo-fine --top 10 $(DEMO)
	$(BIN)/hpsearch report demo-coarse demo-fine --format html --output out/report.html --plots out/plots $(DEMO)

test: install
	$(BIN)/python -m pytest

# hpsearch against a plain Optuna + PyTorch reference, whole processes (a few minutes); writes out/bench.json
bench: install
	$(BIN)/python bench/run.py
	$(BIN)/python bench/own_code.py

# what --repeats 3 costs against --repeats 1 on the default grid and the 384-point grid (interleaved, a few minutes)
bench-repeats: install
	$(BIN)/python bench/repeats.py --large

# your own training code (examples/train_cnn.py) under hpsearch against Optuna's study.optimize and a shell loop
bench-own: install
	$(BIN)/python bench/own_code.py

bench-quick: install
	$(BIN)/python bench/run.py --quick

# the general models alone (mnist1d's 1-D CNN, a 2-D CNN on digits, a BatchNorm + Dropout MLP) against plain
# Optuna on the same task objects (a few minutes; also the last part of `make bench`); writes out/bench_general.json
bench-models: install
	$(BIN)/python bench/general.py

# epochs each search method (grid, random, TPE; with and without pruning) spends to come within 0.005
# of the exhaustive grid's best, over 10 seeds (several minutes); writes out/bench_search.json
bench-search: install
	$(BIN)/python bench/search_quality.py

clean:
	rm -rf $(VENV) out studies/*.journal studies/*.lock *.egg-info
