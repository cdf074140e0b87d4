# Two commands for a new user: `make demo` and `make test`. Each bootstraps .venv from nothing.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
CLI := $(VENV)/bin/galaxy-edge
EDGE_STAMP := $(VENV)/.installed-edge
ALL_STAMP := $(VENV)/.installed-all
PIP_INSTALL := $(PY) -m pip install --disable-pip-version-check -q -c constraints.txt

.PHONY: demo test lint venv venv-edge clean train train-quick yardstick

$(PY):
	$(PYTHON) -m venv $(VENV)

# The demo needs only the on-device runtime: no TensorFlow.
$(EDGE_STAMP): pyproject.toml constraints.txt | $(PY)
	$(PIP_INSTALL) -e ".[edge]"
	touch $@

$(ALL_STAMP): pyproject.toml constraints.txt | $(PY)
	$(PIP_INSTALL) -e ".[edge,serve,train,dev]"
	touch $@ $(EDGE_STAMP)

venv-edge: $(EDGE_STAMP)
venv: $(ALL_STAMP)

DETECTOR := models/galaxy_detector_int8.tflite
# Two processes: the Pi emulation (one core) overlaps with TensorFlow training (see tests/conftest.py).
TEST_WORKERS ?= 2

demo: $(EDGE_STAMP)
	@if [ ! -f $(DETECTOR) ]; then \
		echo "No detector is shipped yet in models/ ($(DETECTOR)): the demo needs the trained models."; \
		exit 0; fi; \
	$(CLI) run --source samples --out out/demo

# Reproduce the shipped models from nothing (hours on 2 cores: see README); train-quick runs
# every step on tiny data into runs/quick as a smoke test.
train: $(ALL_STAMP)
	bash scripts/train_models.sh

train-quick: $(ALL_STAMP)
	QUICK=1 bash scripts/train_models.sh

# The benchmark's SSD MobileNet V2 300 int8 yardstick (built once; the bench never imports TensorFlow).
yardstick: $(ALL_STAMP)
	$(PY) -m export.yardstick

lint: $(ALL_STAMP)
	$(PY) -m ruff check .

test: $(ALL_STAMP)
	$(PY) -m ruff check .
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadgroup --durations=15

clean:
	rm -rf out .pytest_cache .ruff_cache
