# Two commands, each working on a fresh machine: `make demo` and `make test`.
# Both create .venv when it is missing and install the project into it first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.mgnet-installed

.PHONY: demo test install lint clean

$(STAMP): setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	# torch is pinned to the CPU wheel first: an unpinned torch pulls gigabytes of CUDA wheels.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev]'
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
