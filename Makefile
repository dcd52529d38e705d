# pdvault — the two commands: `make run` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PORT   ?= 50051
DATA   ?= .pdvault
MODE   ?= one

.PHONY: run test install install-test proto lint typecheck clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e .
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed pyproject.toml
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@

install: $(VENV)/.installed
install-test: $(VENV)/.installed-test

run: install
	$(VENV)/bin/pdvault up --data-dir $(DATA) --port $(PORT) --regions-mode $(MODE)

test: install-test
	$(PY) -m pytest

proto: install-test
	$(PY) -m vault._protogen

lint: install-test
	$(VENV)/bin/ruff check vault tests loadtests
	$(VENV)/bin/mypy

clean:
	rm -rf $(VENV) build *.egg-info
