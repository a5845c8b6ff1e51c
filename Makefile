# One-command set-up and run on a fresh machine: `make run`; tests: `make test`.
# Creates .venv if missing; installs the CPU build of torch when no CUDA GPU is present.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
TORCH_PIN := torch==2.13.0
PYTEST_ARGS ?=

.PHONY: install run test lint bench clean test-min-diffusers

$(BIN)/attnplug:
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then \
		$(BIN)/python -m pip install -q torch; \
	else \
		$(BIN)/python -m pip install -q $(TORCH_PIN); \
	fi
	$(BIN)/python -m pip install -q -e ".[dev]"

install: $(BIN)/attnplug

run: install
	$(BIN)/attnplug demo --out outputs/demo
	@echo "open outputs/demo/report.html (and outputs/demo/contact_sheet.png)"

test: install
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check attnplug tests benchmarks demos

clean:
	rm -rf $(VENV) outputs

# The family tests against the minimum supported diffusers (pyproject: diffusers>=0.35), without touching .venv.
MIN_DIFFUSERS := 0.35.2
test-min-diffusers: install
	$(BIN)/python -m pip install -q --no-deps --target .min-diffusers "diffusers==$(MIN_DIFFUSERS)"
	PYTHONPATH=.min-diffusers $(BIN)/python -m pytest -q -p no:cacheprovider tests/processors/test_families.py tests/processors/test_layout.py
