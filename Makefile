# make demo   -> runs the demo (tiny model) on this machine's CPU
# make test   -> runs the whole test suite (markers slow, oracle, tpu_backend included)
PY := .venv/bin/python

.PHONY: venv demo test test-fast clean
venv:
	bash .ci/setup_venv.sh

demo: venv
	PY=$(PY) bash launch/demo.sh

test: venv
	$(PY) -m pytest -q tests

test-fast: venv
	$(PY) -m pytest -q tests -m "not slow and not oracle and not tpu_backend"

clean:
	rm -rf .venv
