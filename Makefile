# The README's commands. Each creates .venv on first use and re-installs only when the
# lock file (or the package metadata) changed.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
WORKDIR ?= /tmp/maskrcnn_jax_demo/workdir

.PHONY: demo test test-fast test-cluster venv torch-venv clean

venv: $(VENV)/.installed

$(VENV)/.installed: requirements.lock setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -r requirements.lock
	$(PY) -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e .
	$(PY) -m pip check
	touch $@

# The torch reference venv for the parity tests and bench/ (torch is never imported next to
# tensorflow: tests run its python in a subprocess). The stamp is written only after the
# install and an import check succeeded; a venv without it, or whose torch no longer imports,
# is repaired (or made afresh when its python or pip does not run).
TORCH_VENV := .venv-torch
TORCH_PY := $(TORCH_VENV)/bin/python

torch-venv:
	@$(TORCH_PY) -c "import torch, torchvision" 2>/dev/null || rm -f $(TORCH_VENV)/.installed
	@$(MAKE) --no-print-directory $(TORCH_VENV)/.installed

$(TORCH_VENV)/.installed: requirements-torch.txt
	$(TORCH_PY) -m pip --version >/dev/null 2>&1 || { rm -rf $(TORCH_VENV) && $(PYTHON) -m venv $(TORCH_VENV); }
	$(TORCH_PY) -m pip install -q --disable-pip-version-check -r requirements-torch.txt
	$(TORCH_PY) -c "import torch, torchvision"
	touch $@

demo: venv
	$(PY) main.py --config configs/demo.py --workdir $(WORKDIR) --mode train_and_eval

# Tests run on TEST_WORKERS pytest-xdist processes; the tests of one costly session fixture
# share a worker, and the longest groups start first (tests/conftest.py). Huge pages for the
# in-process tests' XLA buffers, as main.py gives itself (maskrcnn_jax/hostmem.py).
TEST_WORKERS ?= 2
PYTEST := GLIBC_TUNABLES=$${GLIBC_TUNABLES:-glibc.malloc.hugetlb=1} $(PY) -m pytest -q \
	-n $(TEST_WORKERS) --dist loadgroup --no-loadscope-reorder

# The whole suite: what CI runs.
test: venv torch-venv
	$(PYTEST) tests

# The edit loop: no torch, no multi-process runs, no long trainings (setup.cfg's markers).
test-fast: venv
	$(PYTEST) -m "not slow and not parity" tests

# Real launchers: the tiny config trained by 2 processes through mpirun and through srun on a
# single-node Slurm that it starts and stops, each equal to one process (tests/cluster.sh).
# As root it installs Debian's openmpi-bin, slurmd, slurmctld, slurm-client and munge.
test-cluster: venv
	tests/cluster.sh

clean:
	rm -rf $(VENV) $(TORCH_VENV) *.egg-info
