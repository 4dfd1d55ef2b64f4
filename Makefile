# The README's commands. Each creates .venv on first use and re-installs only when the
# lock file (or the package metadata) changed.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
WORKDIR ?= /tmp/maskrcnn_jax_demo/workdir

.PHONY: demo test venv clean

venv: $(VENV)/.installed

$(VENV)/.installed: requirements.lock setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -r requirements.lock
	$(PY) -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e .
	$(PY) -m pip check
	touch $@

demo: venv
	$(PY) main.py --config configs/demo.py --workdir $(WORKDIR) --mode train_and_eval

test: venv
	$(PY) -m pytest -q tests

clean:
	rm -rf $(VENV) *.egg-info
