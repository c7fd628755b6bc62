# The two commands a new user needs: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
export NO_MKDOCS_2_WARNING := 1
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-floor docs lint format bench bench-check bench-venv clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "torch==2.13.0"
	$(BIN)/python -m pip install -q -e ".[dev,plot,hf,lightning]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/curvops demo --out demo_output

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	CURVOPS_DOCS_EXECUTE=false $(BIN)/mkdocs build --strict --quiet  # the tests run the notebooks
	$(BIN)/python -m pytest -q -p no:cacheprovider

# The declared dependency floors (numpy 2.0, scipy 1.13) beside torch 2.13, on the algorithm
# and operator tests: pyproject's lower bounds are tested, not guessed.
test-floor:
	$(PYTHON) -m venv .venv-floor
	.venv-floor/bin/python -m pip install -q "torch==2.13.0" "numpy==2.0.*" "scipy==1.13.*"
	.venv-floor/bin/python -m pip install -q --no-deps -e .
	.venv-floor/bin/python -m pip install -q "einops>=0.7" "tqdm>=4.60" "pytest>=7" "hypothesis>=6.80"
	.venv-floor/bin/python -m pytest -q -p no:cacheprovider tests/linalg tests/operators/exact tests/core/test_watch.py

docs: $(STAMP)
	$(BIN)/mkdocs build --strict
	@echo "open build/site/index.html"

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: $(STAMP)
	$(BIN)/python benchmarks/run.py

# CI: the quick benchmark (< 3 min); fails only if a curvops result is WRONG, never on speed.
# Peers that are not installed are skipped with a note.
bench-check: $(STAMP)
	$(BIN)/python benchmarks/run.py --quick --check

# The peers in their own venv (.venv-bench), --no-deps so torch stays at 2.13.0 (no
# torchvision: PyPI's breaks beside it); then: .venv-bench/bin/python benchmarks/run.py
BENCH_PEERS := curvlinops-for-pytorch==3.0.1 backpack-for-pytorch==1.7.1 einconv==0.1.0 \
	unfoldNd==0.2.3 linear_operator==0.6.1 opt_einsum==3.4.0 PyHessian==0.1 \
	hessian-eigenthings==1.0.0a5 nngeometry==0.4
bench-venv:
	$(PYTHON) -m venv .venv-bench
	.venv-bench/bin/python -m pip install -q "torch==2.13.0"
	.venv-bench/bin/python -m pip install -q -e ".[plot]" scikit-learn
	.venv-bench/bin/python -m pip install -q --no-deps $(BENCH_PEERS)

clean:
	rm -rf $(VENV) demo_output build
