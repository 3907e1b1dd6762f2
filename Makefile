# Every target builds what it needs from nothing; the venv is reinstalled only when
# pyproject.toml changes (tracked by a stamp file).
PYTHON ?= python3
VENV := .venv
VPY := $(VENV)/bin/python
STAMP := $(VENV)/.stamp

.PHONY: all venv .venv test lint demo bench constraints clean distclean

all: test

venv .venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(VPY) || $(PYTHON) -m venv $(VENV)
	$(VPY) -m pip install -e '.[pipelines,dev]'
	touch $@

test: $(STAMP)
	$(VPY) -m pytest -q

lint: $(STAMP)
	$(VPY) -m ruff check .

demo: $(STAMP)
	RAY_AUTH_MODE=disabled $(VPY) -m pipelines.demo

bench: $(STAMP)
	$(VPY) bench/model_step.py
	$(VPY) bench/roi_align.py
	$(VPY) bench/loader.py
	$(VPY) bench/train_scaling.py

# The versions the container image installs (infra/docker/Dockerfile): this venv's, without
# local version labels such as +cpu (PyPI has none) and without this project itself.
constraints: $(STAMP)
	{ echo "# pip constraints for infra/docker/Dockerfile: make constraints (from .venv)"; \
	  $(VPY) -m pip freeze --exclude-editable | sed -E 's/\+[A-Za-z0-9.]+$$//'; } \
	  > infra/constraints.txt

# clean keeps the venv (slow to rebuild); distclean removes it too.
clean:
	rm -rf build dist *.egg-info .pytest_cache .ruff_cache .hypothesis bench_results
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV)
