# make demo   -> runs the demo (tiny model) on this machine's CPU
# make test   -> runs the whole test suite on 2 worker processes, a test file per worker (markers
#                slow, oracle, tpu_backend, t5x included)
# make lint   -> the style check CI runs first (pyink formatting, ruff: unused imports / names)
# make format -> applies the formatter
PY := .venv/bin/python

.PHONY: venv demo test test-fast lint format clean
venv:
	bash .ci/setup_venv.sh

demo: venv
	PY=$(PY) bash launch/demo.sh

test: venv
	$(PY) -m pytest -q -n 2 --dist loadfile tests

test-fast: venv
	$(PY) -m pytest -q tests -m "not slow and not oracle and not tpu_backend"

lint: venv
	.venv/bin/pyink --check --diff .
	.venv/bin/ruff check .

format: venv
	.venv/bin/pyink .
	.venv/bin/ruff check --fix .

clean:
	rm -rf .venv
