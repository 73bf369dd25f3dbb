# Two commands on a fresh clone: `make demo` and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# torch and torchvision are pinned as a pair that imports together; pip would otherwise pick
# the newest torch and its GPU packages.
TORCH := torch==2.14.1 torchvision==0.29.1
STAMP := $(VENV)/.installed
# The same without Keras or TensorFlow: the tests that need no reference framework.
CORE_VENV := .venv-core
CORE_STAMP := $(CORE_VENV)/.installed
LINTED := torch_mobilenets convert tests benchmarks examples hubconf.py

.PHONY: demo test test-full test-soak test-export test-core lint clean

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet $(TORCH)
	$(PY) -m pip install --quiet -e ".[test,lint]"
	# Keras 2, the writer of most users' files: its metadata asks for the full tensorflow,
	# which tensorflow-cpu already is.
	$(PY) -m pip install --quiet --no-deps tf-keras==2.21.0
	touch $(STAMP)

$(CORE_STAMP): pyproject.toml Makefile
	test -x $(CORE_VENV)/bin/python || $(PYTHON) -m venv $(CORE_VENV)
	$(CORE_VENV)/bin/python -m pip install --quiet $(TORCH)
	$(CORE_VENV)/bin/python -m pip install --quiet -e . pytest hypothesis
	touch $(CORE_STAMP)

# Offline: seeded Keras models in the official files' layout -> torch-mobilenets convert ->
# PyTorch, compared with Keras. `make demo WEIGHTS=path/to/official.h5` converts a real file.
demo: $(STAMP)
	$(PY) -m convert.demo $(if $(WEIGHTS),--weights $(WEIGHTS))

# The default suite: everything but the full official grid, the wheel test included.
test: $(STAMP)
	$(PY) -m pytest

# Every official (alpha, rows) combination of V1, V2 and V3, with and without the top.
test-full: $(STAMP)
	$(PY) -m pytest -m "not soak and not export"

# 500 fuzzed and 200 good files converted in one process; fds and memory must stay bounded.
test-soak: $(STAMP)
	$(PY) -m pytest -m soak tests/test_soak.py

# Every deployment path for every model at 224, 225 and the dynamic default (about an hour).
test-export: $(STAMP)
	$(PY) -m pytest tests/test_export.py -m "export or not export"

# The tests that need no Keras, in a venv without Keras or TensorFlow. A test that needs a package
# of the test extra fails where it is missing, unless its extra is left out, as here (a skip).
test-core: $(CORE_STAMP)
	TORCH_MOBILENETS_TEST_WITHOUT="keras keras-cv bench build" \
		$(CORE_VENV)/bin/python -m pytest -m "not keras and not wheel"

lint: $(STAMP)
	$(VENV)/bin/ruff check $(LINTED)
	$(VENV)/bin/ruff format --check $(LINTED)
	$(VENV)/bin/mypy

clean:
	rm -rf $(VENV) $(CORE_VENV) .pytest_cache .mypy_cache .ruff_cache build dist
