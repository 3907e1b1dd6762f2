# Every target builds what it needs from nothing. The venv installs exactly the versions of
# the lock, infra/constraints.txt (what CI and the container image install too), and is
# reinstalled only when pyproject.toml or the lock changes (tracked by a stamp file).
PYTHON ?= python3
VENV := .venv
VPY := $(VENV)/bin/python
STAMP := $(VENV)/.stamp
LOCK := infra/constraints.txt

.PHONY: all venv .venv test test-fast test-integration lint demo bench constraints clean distclean

all: test

venv .venv: $(STAMP)

$(STAMP): pyproject.toml $(LOCK)
	test -x $(VPY) || $(PYTHON) -m venv $(VENV)
	$(VPY) -m pip install --constraint $(LOCK) -e '.[pipelines,export,dev]'
	touch $@

# The suite in its two tiers (tests/conftest.py): the unit tier on every core, test by test;
# then the integration tier (real Ray, servers, runs), slowest modules first, on two processes,
# module by module (its fixtures are module-wide). INTEGRATION_ARGS= (empty) runs it in one.
# Both tiers run whatever the first gives; the target fails if either did.
INTEGRATION_ARGS ?= -n 2 --dist loadfile --no-loadscope-reorder
test: $(STAMP)
	$(VPY) -m pytest -q -m unit -n auto; unit=$$?; \
	$(VPY) -m pytest -q -m integration $(INTEGRATION_ARGS); integration=$$?; \
	test $$unit -eq 0 -a $$integration -eq 0

# The unit tier alone: a few minutes, for iterating.
test-fast: $(STAMP)
	$(VPY) -m pytest -q -m unit -n auto

# The integration tier alone.
test-integration: $(STAMP)
	$(VPY) -m pytest -q -m integration $(INTEGRATION_ARGS)

lint: $(STAMP)
	$(VPY) -m ruff check .

demo: $(STAMP)
	RAY_AUTH_MODE=disabled $(VPY) -m pipelines.demo

bench: $(STAMP)
	$(VPY) -m bench.model_step
	$(VPY) -m bench.roi_align
	$(VPY) -m bench.loader
	$(VPY) -m bench.train_scaling

# A new lock, on purpose: the newest versions inside pyproject.toml's ranges, resolved in a
# venv of their own (not this one, which the old lock built), without local version labels such
# as +cpu (PyPI has none), without this project itself and pip, with setuptools (torch needs it). The next target that needs .venv
# reinstalls it from the new lock; then run make test.
LOCK_VENV := .venv-lock
constraints:
	rm -rf $(LOCK_VENV)
	$(PYTHON) -m venv $(LOCK_VENV)
	$(LOCK_VENV)/bin/python -m pip install --quiet -e '.[pipelines,export,dev]'
	{ echo "# The lock: pip constraints for make, CI and infra/docker/Dockerfile. Refresh with make constraints."; \
	  $(LOCK_VENV)/bin/python -m pip freeze --all --exclude-editable | grep -v '^pip==' \
	    | sed -E 's/\+[A-Za-z0-9.]+$$//'; } \
	  > $(LOCK).new
	mv $(LOCK).new $(LOCK)
	rm -rf $(LOCK_VENV)

# clean keeps the venv (slow to rebuild); distclean removes it too.
clean:
	rm -rf build dist *.egg-info .pytest_cache .ruff_cache .hypothesis bench_results
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV) $(LOCK_VENV)
