# make demo   -> runs the demo (tiny model) on this machine's CPU
# make test   -> runs the test suite on 2 worker processes, a test file per worker (markers slow,
#                oracle, tpu_backend, t5x included; `long` not)
# make test-long -> the end-to-end runs of whole binaries marked `long` (minutes each)
# make lint   -> the style check CI runs first (pyink formatting, ruff: unused imports / names)
# make format -> applies the formatter
PY := .venv/bin/python

.PHONY: venv demo test test-long test-fast lint format clean
venv:
	bash .ci/setup_venv.sh

demo: venv
	PY=$(PY) bash launch/demo.sh

test: venv
	$(PY) -m pytest -q -n 2 --dist loadfile tests -m "not long"

test-long: venv
	$(PY) -m pytest -q tests -m long

test-fast: venv
	$(PY) -m pytest -q tests -m "not slow and not oracle and not tpu_backend and not long"

lint: venv
	.venv/bin/pyink --check --diff .
	.venv/bin/ruff check .

format: venv
	.venv/bin/pyink .
	.venv/bin/ruff check --fix .

clean:
	rm -rf .venv
