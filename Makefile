# Two commands on a fresh machine with Python >= 3.10 and make:
#
#   make demo   train the DCGAN on synthetic faces on this machine's CPU by running notebooks 01-04 headless
#               (papermill), leaving generated/demo/training.gif and the executed notebooks in generated/demo/notebooks/
#   make test   run the test suite
#
# Both first create .venv and install the project into it (once, and again whenever pyproject.toml changes).
# Re-running `make demo` resumes the demo run (delete generated/demo to start again).

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed

DEMO_OUT := generated/demo
DEMO_LOG := $(DEMO_OUT)/papermill.log
# The notebooks run with their defaults: `size = "auto"` sizes the run to this machine (on a CPU: minutes of training
# at the speed measured here); only the run folder is given, so that 04 animates the run 03 trained.
DEMO_RUN := -p out $(DEMO_OUT)
PAPERMILL := $(BIN)/papermill --cwd notebooks --no-progress-bar --stdout-file -

# Runs notebook $(1) with papermill's arguments $(2). What it prints (the size, the estimate, a line per epoch) shows as
# it comes; papermill's own messages go to $(DEMO_LOG), whose end is shown if the notebook fails. Ctrl-C prints one
# line: the trap's (make, interrupted too, then stops without a message of its own since this shell exits with 0).
notebook = @trap 'echo; echo "make demo: stopped in notebooks/$(1).ipynb; make demo again continues the run"; exit 0' INT; \
	echo "== notebooks/$(1).ipynb"; \
	$(PAPERMILL) notebooks/$(1).ipynb $(DEMO_OUT)/notebooks/$(1).ipynb $(2) 2>>$(DEMO_LOG) \
	|| { tail -n 15 $(DEMO_LOG); echo "make demo: notebooks/$(1).ipynb failed (papermill's log: $(DEMO_LOG))"; exit 1; }

.PHONY: demo test screenshots

demo: $(INSTALLED)
	@mkdir -p $(DEMO_OUT)/notebooks
	$(call notebook,01_dataset)
	$(call notebook,02_models)
	$(call notebook,03_training,$(DEMO_RUN))
	$(call notebook,04_gif,$(DEMO_RUN))
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
