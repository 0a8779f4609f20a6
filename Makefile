# pycopy: the two commands of the README, and the pieces they are made of.
PY ?= python3
PYTEST_ARGS ?=

.PHONY: demo test deps unit e2e lint molecule bench wheel accel accel-clean

demo: deps            ## the main job on the built-in local lab (as root)
	bash scripts/demo.sh

test: deps            ## every test: unit, property, end-to-end, lint, Molecule
	$(PY) -m pytest -ra --durations=30 $(PYTEST_ARGS) tests

deps:
	bash scripts/install-deps.sh

unit: deps
	$(PY) -m pytest -q -m "not lab" tests/unit tests/offline tests/metrics tests/compare

e2e: deps
	$(PY) -m pytest -q tests/e2e

lint: deps
	$(PY) -m ruff check pycopy_engine tests bench

molecule: deps
	$(PY) -m pytest -q -m molecule tests/ansible

bench:
	PYCOPY_EXTRA_APT=nginx-light bash scripts/install-deps.sh
	$(PY) bench/run.py

accel:                ## optional: the engine's hot modules compiled with mypyc, in place
	$(PY) scripts/build_accel.py

accel-clean:          ## back to the pure-Python engine
	$(PY) scripts/build_accel.py --clean

wheel:
	$(PY) -m pip wheel --no-deps -w dist .
