# The README's two commands: `make demo` (install + the main job) and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: install demo test clean

install: $(VENV)/.installed

$(VENV)/.installed: setup.py requirements/torch-cpu.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -r requirements/torch-cpu.txt
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

demo: install
	$(PY) -m prn_edge.demo

test: install
	$(PY) -m pytest

clean:
	rm -rf $(VENV) build *.egg-info
