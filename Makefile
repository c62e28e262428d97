# `make demo` and `make test` each set themselves up: they create .venv if it is missing and
# install the package (with its test extra) into it whenever setup.cfg or pyproject.toml changes.

PYTHON_SYSTEM ?= python3
VENV ?= .venv
PYTHON := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed
PYTEST_WORKERS ?= 2

.PHONY: demo test benchmark clean

$(INSTALLED): setup.cfg pyproject.toml
	test -x $(PYTHON) || $(PYTHON_SYSTEM) -m venv $(VENV)
	$(PYTHON) -m pip install --quiet --disable-pip-version-check --upgrade pip
	$(PYTHON) -m pip install --quiet --disable-pip-version-check -e ".[test]"
	touch $(INSTALLED)

demo: $(INSTALLED)
	$(PYTHON) recipes/clip.py --output_dir=runs/clip
	$(PYTHON) export/export_model.py --model=runs/clip/model.keras --output_dir=runs/clip/export

# --capture=sys leaves TensorFlow's native stderr uncaptured, so that a worker that aborts
# leaves its fatal message in the log (with fd capture it dies with the worker).
test: $(INSTALLED)
	$(PYTHON) -m pytest -q -n $(PYTEST_WORKERS) --capture=sys --durations=15 tests

benchmark: $(INSTALLED)
	$(PYTHON) benchmarks/train_step.py
	$(PYTHON) benchmarks/distributed_loss.py
	$(PYTHON) benchmarks/siglip_memory.py
	$(PYTHON) benchmarks/moe.py
	$(PYTHON) benchmarks/fusion.py
	$(PYTHON) benchmarks/distill.py

clean:
	rm -rf runs build *.egg-info
