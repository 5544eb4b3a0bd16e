# The two set-up commands of the README. Each installs what it needs first.
PYTHON ?= python

.PHONY: install install-dev train test test-fast

install:
	$(PYTHON) -m pip install -e .

install-dev:
	$(PYTHON) -m pip install -e ".[dev]"

train: install
	$(PYTHON) train.py

# the whole suite, slow end-to-end cases included (what .ci/run calls)
test: install-dev
	$(PYTHON) -m pytest -q -n 2 --dist loadfile

# the quick subset while developing
test-fast:
	$(PYTHON) -m pytest -q -n 2 --dist loadfile -m "not slow"
