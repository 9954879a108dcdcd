# Two commands, each working on a fresh machine: `make demo` and `make test`.
# Both create .venv when it is missing and install the project into it first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.mgnet-installed
# The exact torch of the project's own set-up (the CPU build); the package metadata accepts any torch>=2.3.
CONSTRAINTS := constraints/cpu.txt
# Where the CPU build of torch is published (empty: only the configured indexes).  One retry only: behind a
# firewall that index is unreachable and pip's default five retries per package cost over a minute.
TORCH_INDEX ?= https://download.pytorch.org/whl/cpu

.PHONY: demo test install lint clean

$(STAMP): setup.cfg pyproject.toml $(CONSTRAINTS)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	# torch first, from the CPU index: an unconstrained torch from PyPI pulls gigabytes of CUDA wheels.
	$(PY) -m pip install -q -c $(CONSTRAINTS) $(if $(TORCH_INDEX),--retries 1 --extra-index-url $(TORCH_INDEX)) torch
	# The distribution was called "mgnet" before (a name another project holds on PyPI): drop that install.
	$(PY) -m pip uninstall -q -y mgnet 2>/dev/null || true
	$(PY) -m pip install -q -c $(CONSTRAINTS) -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/mgnet solve --problem poisson --shape 1023 1023 --smoother rbgs --cycle V --rtol 1e-8 \
		--compare-pyamg --plot demo-history.png
	@echo
	@echo "More: 'make test'; 'python benchmarks/smoothers.py --help' compares classical and learned smoothers;"
	@echo "      'mgnet train --model mgnet_mnist --data-dir ../shared/data/mnist' trains an MgNet classifier."

test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(PY) -m pytest

lint: $(STAMP)
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
