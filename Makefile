# Two commands on a fresh machine with Python >= 3.10 and make:
#
#   make demo   train the DCGAN on synthetic faces on this machine's CPU by running notebooks 01-04 headless
#               (papermill), leaving generated/demo/training.gif and the executed notebooks in generated/demo/notebooks/
#   make test   run the test suite
#
# Both first create .venv and install the project into it (once, and again whenever pyproject.toml changes).
# Re-running `make demo` resumes the demo run; after changing the DEMO_* settings below, delete generated/demo first.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed

DEMO_OUT := generated/demo
# Each notebook gets the knobs of its own `parameters` cell (tests/test_notebooks.py checks that they exist there).
DEMO_DATA := -p image_size 32 -p max_images 8000
DEMO_MODEL := $(DEMO_DATA) -p g_width 32 -p d_width 32
DEMO_TRAIN := $(DEMO_MODEL) -p epochs 35 -p batch_size 128 -p out $(DEMO_OUT)
DEMO_03 := $(DEMO_TRAIN) -p manual_steps 100
PAPERMILL := $(BIN)/papermill --cwd notebooks

.PHONY: demo test screenshots

demo: $(INSTALLED)
	mkdir -p $(DEMO_OUT)/notebooks
	$(PAPERMILL) notebooks/01_dataset.ipynb $(DEMO_OUT)/notebooks/01_dataset.ipynb $(DEMO_DATA)
	$(PAPERMILL) notebooks/02_models.ipynb $(DEMO_OUT)/notebooks/02_models.ipynb $(DEMO_MODEL)
	$(PAPERMILL) notebooks/03_training.ipynb $(DEMO_OUT)/notebooks/03_training.ipynb $(DEMO_03)
	$(PAPERMILL) notebooks/04_gif.ipynb $(DEMO_OUT)/notebooks/04_gif.ipynb $(DEMO_TRAIN)
	@echo
	@echo "The faces taking shape, epoch by epoch: $(DEMO_OUT)/training.gif"
	@echo "The executed notebooks (outputs included): $(DEMO_OUT)/notebooks/"

test: $(INSTALLED)
	$(BIN)/python -m pytest

# Not part of `make test`: notebooks 03-05 run in JupyterLab in headless Chromium (minutes of CPU training), and
# screenshots of what a learner sees land in generated/screenshots/. Needs `apt-get install chromium` and
# `$(BIN)/pip install playwright` (tests/browser/screenshots.py).
screenshots: $(INSTALLED)
	$(BIN)/python tests/browser/screenshots.py generated/screenshots

# The stamp file is newer than pyproject.toml once the install succeeded; the venv itself is only created if missing.
$(INSTALLED): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -e ".[dev]"
	touch $@
