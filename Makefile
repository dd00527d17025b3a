# The README's two quick-start commands, plus lint and benchmarks.
PY ?= python3
VENV ?= .venv
BIN = $(VENV)/bin
OUT ?= out

.PHONY: demo test lint bench setup clean

$(BIN)/relay-impact: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

setup: $(BIN)/relay-impact

# The main job on the bundled sample logs.
demo: setup
	$(BIN)/relay-impact run sample_logs/ --config sample_logs/tenant.toml --out $(OUT)

# The whole test suite (what CI runs).
test: setup
	$(BIN)/python -m pytest -q

lint: setup
	$(BIN)/ruff check pipeline tests benchmarks

# Benchmarks (minutes; not part of the tests). Sizes as the issues state them.
bench: setup
	$(BIN)/python benchmarks/bench_engine.py --messages 10e6
	$(BIN)/python benchmarks/bench_exchange_tracking.py --size-mb 1000
	$(BIN)/python benchmarks/bench_postfix.py --size-mb 1024
	$(BIN)/python benchmarks/bench_exim.py --size-mb 200

clean:
	rm -rf $(OUT) .pytest_cache
