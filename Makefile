# Two commands on a fresh clone: `make demo` and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# torch and torchvision are pinned as a pair that imports together; pip would otherwise pick
# the newest torch and its GPU packages.
TORCH := torch==2.14.1 torchvision==0.29.1
STAMP := $(VENV)/.installed

.PHONY: demo test test-full clean

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet $(TORCH)
	$(PY) -m pip install --quiet -e ".[test]"
	touch $(STAMP)

# Offline: seeded Keras models in the official files' layout -> python -m convert -> PyTorch,
# compared with Keras. `make demo WEIGHTS=path/to/official.h5` converts a real file instead.
demo: $(STAMP)
	$(PY) -m convert.demo $(if $(WEIGHTS),--weights $(WEIGHTS))

test: $(STAMP)
	$(PY) -m pytest

# Every official (alpha, rows) combination of V1, V2 and V3, with and without the top.
test-full: $(STAMP)
	$(PY) -m pytest -m "full or not full"

clean:
	rm -rf $(VENV) .pytest_cache
