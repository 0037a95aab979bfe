# The two commands a newcomer needs are `make demo` and `make test`; each does
# its own setup (system packages when root, a virtual environment in .venv).

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: test unit setup system-packages lab-up lab-down lab-status demo bench clean

test: setup
	$(PY) -m pytest

unit: $(VENV)/.installed
	$(PY) -m pytest tests/unit

setup: system-packages $(VENV)/.installed

demo: setup
	$(PY) -m lab.demo

bench: setup
	$(PY) -m bench

lab-up: setup
	$(PY) -m lab up

lab-down: $(VENV)/.installed
	$(PY) -m lab down

lab-status: $(VENV)/.installed
	$(PY) -m lab status

system-packages:
	@scripts/install-system-packages

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q -e '.[deploy,test]'
	touch $@

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .hypothesis
