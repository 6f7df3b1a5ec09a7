# talkcli developer targets. `make install` builds .venv from nothing; `make test` runs the suite.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
TORCH_VERSION ?= 2.13.0

.PHONY: install test test-fast lint format bench demo clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	# torch first, pinned: a range would pull the newest CUDA build (gigabytes).
	$(PIP) install -q torch==$(TORCH_VERSION)
	# ssl = transformers 5 (Wav2Vec2/HuBERT features): it declares no torch, so torch stays as pinned.
	$(PIP) install -q -e ".[dev,ssl]"
	# No deps: lpips declares torchvision (see pyproject.toml); face-alignment wants opencv-python.
	# face-alignment's other imports (scipy, scikit-image, tqdm, numba) are declared in pyproject.toml.
	$(PIP) install -q --no-deps lpips==0.1.4 face-alignment==1.5.0
	$(PY) -c "import talkcli, torch; print('talkcli', talkcli.__version__, 'torch', torch.__version__)"
	touch $@

test: install
	$(PY) -m pytest -q

test-fast: install
	$(PY) -m pytest -q -m "not slow"

lint: install
	$(PY) -m ruff check talkcli tests benchmarks
	$(PY) -m ruff format --check talkcli tests benchmarks

format: install
	$(PY) -m ruff format talkcli tests benchmarks
	$(PY) -m ruff check --fix talkcli tests benchmarks

demo: install
	bash scripts/demo.sh

bench: install
	$(PY) -m benchmarks.run

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
