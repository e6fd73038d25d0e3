# The two commands a newcomer needs: `make serve` and `make test`.
# Both create .venv on first use, so a fresh clone needs nothing else.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: serve test lint typecheck pytest proto bench demo clean test-hostile test-deploy fuzz

$(STAMP): $(filter-out requirements/bench.txt,$(wildcard requirements/*.txt)) client/pyproject.toml server/pyproject.toml workers/pyproject.toml \
		examples/custom_gradients_package/pyproject.toml tests/support/registered/pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements/dev.txt
	$(PY) -m pip install -q --no-deps -e ./client -e ./workers -e ./server
	# registered functions (the gradserve.functions entry points): the example's, the tests'
	$(PY) -m pip install -q --no-deps -e ./examples/custom_gradients_package \
		-e ./tests/support/registered
	touch $(STAMP)

serve: $(STAMP)
	$(VENV)/bin/gradserve serve $(ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: $(STAMP)
	$(VENV)/bin/mypy

pytest: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

test: lint typecheck pytest

# The hostile-load suite at full size (1,000 unread streams, 150 pieces of
# 8 MiB...) and a 10-minute protocol fuzz; `make test` runs it small.
# The load test is named in a run of its own: beside its folder pytest drops it.
HOSTILE_FUZZ_SECONDS ?= 600
test-hostile: $(STAMP)
	GRADSERVE_HOSTILE_SCALE=full GRADSERVE_FUZZ_SECONDS=$(HOSTILE_FUZZ_SECONDS) \
		$(PY) -m pytest tests/hostile --timeout=1800 $(PYTEST_ARGS)
	GRADSERVE_HOSTILE_SCALE=full $(PY) -m pytest tests/hostile/load_hostile.py -s $(PYTEST_ARGS)
# The compose deployment on a real Docker engine (Debian host, as root; 3-5 min
# warm, about 10 when a requirement changed): docker/test-deploy.sh,
# docs/deployment.md "Testing the deployment".
test-deploy: $(STAMP)
	PYTHON=$(PY) bash docker/test-deploy.sh $(PYTEST_ARGS)
# The random-program differential test for longer than `make test` gives it:
# FUZZ_SECONDS (default 600) of programs from fresh hypothesis seeds (FUZZ_SEED).
FUZZ_SECONDS ?= 600
FUZZ_SEED ?= $(shell date +%s)
fuzz: $(STAMP)
	GRADSERVE_FUZZ_SECONDS=$(FUZZ_SECONDS) GRADSERVE_FUZZ_SEED=$(FUZZ_SEED) \
		$(PY) -m pytest tests/fuzz -k random --timeout=0 $(PYTEST_ARGS)

proto: $(STAMP)
	$(PY) -m grpc_tools.protoc -Iproto --python_out=client --grpc_python_out=client \
		--pyi_out=client proto/gradserve/v1/gradserve.proto

# The benchmark's own packages (the Ray Serve and FastAPI peers): not for `make test`.
BENCH_STAMP := $(VENV)/.bench-installed

$(BENCH_STAMP): requirements/bench.txt $(STAMP)
	$(PY) -m pip install -q -r requirements/bench.txt
	touch $(BENCH_STAMP)

bench: $(STAMP) $(BENCH_STAMP)
	$(PY) benchmarks/run_all.py $(ARGS)

demo: $(STAMP)
	$(PY) examples/run_all.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
