PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install test test-slow test-all lint demo clean-venv gpu-check

install: $(STAMP)

$(STAMP): requirements.txt requirements-cpu.txt requirements-skull-strip.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet -r requirements-cpu.txt
	$(PY) -m pip install --quiet -r requirements-skull-strip.txt
	$(PY) -m pip install --quiet --no-deps -e .
	touch $(STAMP)

# The default suite; the slow learning check runs separately (CI runs both: .ci/run).
test: install
	$(PY) -m pytest -q -m "not slow" --durations=10

test-slow: install
	$(PY) -m pytest -q -m slow -s --durations=5

test-all: test test-slow

# Line length and import order (settings in pyproject.toml).
lint: install
	$(PY) -m ruff check .

clean-venv:
	rm -rf $(VENV)

demo: install
	$(PY) -m mgmt2d demo --out demo --overwrite

# The CUDA path in one command (README: "Measured on a GPU"): table on stdout and in $(GPU_CHECK_OUT)/gpu_check.md,
# figures in $(GPU_CHECK_OUT)/gpu_check.json; exit status 1 when a part fails. Without CUDA: the same parts, tiny, on
# the CPU. Rerun some parts: make gpu-check GPU_CHECK_FLAGS="--parts 4 6"
GPU_CHECK_OUT ?= gpu_check
GPU_CHECK_FLAGS ?=
gpu-check: install
	$(PY) benchmarks/gpu_check.py --out $(GPU_CHECK_OUT) --overwrite $(GPU_CHECK_FLAGS)
